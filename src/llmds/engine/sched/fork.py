"""Parallel sampling: a request with ``n > 1`` forks into ``n`` sequences once its prompt is computed.

The planner admits such a request with ``n`` seats of ``max_num_seqs`` and prefills it once.  In
the step that completes its prompt the caller samples ``n`` first tokens from the one logits row
and hands the planner the ``n - 1`` other sequences (``Planner.update(..., forks=...)``); each is
forked off the request here, taking its KV through the KV manager (``BlockManager.fork``: full
blocks shared by reference count, the partial last block copied, copy-on-write).  From then on
every sequence is a request of its own (``n == 1``): it decodes, is preempted and finishes alone.
"""

from __future__ import annotations

from typing import Hashable, Mapping

from llmds.engine.request import RequestState, RequestStatus
from llmds.errors import ValidationError

__all__ = ["check_forks", "fork_sequences"]


def check_forks(plan, forks: Mapping[Hashable, list], live: Mapping[Hashable, RequestState]) -> set:
    """The new requests' ids; ``ValidationError`` unless each key of ``forks`` is a request of
    ``plan`` that completes its prompt with ``n == len(children) + 1`` and every child is new."""
    completing = {s.request_id for s in plan.sampling if not s.num_output_tokens}
    for rid, children in forks.items():
        parent = live.get(rid)
        if rid not in completing or parent is None or parent.n != len(children) + 1:
            raise ValidationError(f"forks: request {rid!r} does not complete its prompt in this plan "
                                  f"with n = {len(children) + 1}")
        for child, _ in children:
            if child.request_id in live or child.status is not RequestStatus.WAITING or child.block_table:
                raise ValidationError(f"forks: {child.request_id!r} is not a new request")
    return {child.request_id for children in forks.values() for child, _ in children}


def fork_sequences(parent: RequestState, children: list[tuple[RequestState, int]], kv,
                   copies: list[tuple[int, int]]) -> list[RequestState]:
    """Fork ``children`` (``(new request, its first token)``) off ``parent``, whose prompt was just
    computed (its counters already advanced); returns them with their status set:

    * FINISHED_STOPPED / FINISHED_LENGTH: finished on the first token (no blocks taken);
    * RUNNING: holding ``parent``'s KV (the block copies are appended to ``copies``);
    * PREEMPTED: no block was free for the copy; recomputed later (the prompt's full blocks
      stay in the prefix cache, so mostly a hit).
    """
    parent.n = 1  # forked once: recomputing it after a preemption does not fork again
    out = []
    for child, t in children:
        child.num_computed_tokens = parent.num_computed_tokens
        child.num_output_tokens = 1
        child.output_token_ids.append(t)
        child.queue_order, child.admit_order = parent.queue_order, parent.admit_order
        if t in child.stop_token_ids:
            child.status = RequestStatus.FINISHED_STOPPED
        elif child.max_new_tokens <= 1:
            child.status = RequestStatus.FINISHED_LENGTH
        else:
            made = kv.fork(parent, child)
            if made is None:
                child.num_computed_tokens = 0
                child.num_preemptions += 1
                child.status = RequestStatus.PREEMPTED
            else:
                copies += made
                child.status = RequestStatus.RUNNING
        out.append(child)
    return out
