"""The decode batch: running requests past their prefill, with their events indexed by step.

Every request in the batch decodes exactly one token per decode step (the
planner schedules the whole batch), so one step adds one to each member's
``num_computed_tokens`` and ``num_output_tokens`` (plain counters) and appends
the sampled ids with C-level list operations.  What needs per-request work is
found without scanning: the batch counts its steps in ``clock`` and indexes
each member's events by the clock value at which they happen::

    _cross: {clock % block_size: {request_id: seq}}  # need a new block at that step
    _due:   {clock: {request_id: seq}}               # reach max_new_tokens at that step

A member crosses a block boundary when ``num_computed_tokens % block_size ==
0``; since its counters and the clock advance together, ``clock -
num_computed_tokens`` is fixed while it stays, and so is ``clock -
num_output_tokens``: both keys are computed once at ``enter`` and again at
``leave``.  Stop ids are checked with one set-disjointness test per step
(members are checked one by one only on a hit).
"""

from __future__ import annotations

from collections import deque
from typing import Hashable

from llmds.engine.request import RequestState, RequestStatus

__all__ = ["DecodeBatch"]


class DecodeBatch:
    """Requests in decode phase, in insertion order (the order of ``StepPlan.decode``).

    Parameters
    ----------
    block_size : int
        KV block size; ``crossing()`` returns the members at a block boundary.
    """

    __slots__ = ("block_size", "clock", "_seqs", "_outs", "_cross", "_due", "_stops")

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.clock = 0  # decode steps so far
        self._seqs: dict[Hashable, RequestState] = {}
        self._outs: dict[Hashable, list[int]] = {}  # same keys and order: output_token_ids lists
        self._cross: dict[int, dict[Hashable, RequestState]] = {}
        self._due: dict[int, dict[Hashable, RequestState]] = {}
        self._stops: dict[int, int] = {}  # {stop id: members using it}

    def __len__(self) -> int:
        return len(self._seqs)

    def __contains__(self, request_id: Hashable) -> bool:
        return request_id in self._seqs

    def members(self) -> list[RequestState]:
        """The members in batch order (a new list)."""
        return list(self._seqs.values())

    def crossing(self) -> list[RequestState]:
        """Members whose next decode starts a new block (``num_computed_tokens % block_size == 0``)."""
        part = self._cross.get(self.clock % self.block_size)
        return list(part.values()) if part else []

    # ---------------------------------------------------------------- members
    def enter(self, s: RequestState) -> None:
        """Add a request that just sampled a token with all earlier tokens computed."""
        rid = s.request_id
        self._seqs[rid] = s
        self._outs[rid] = s.output_token_ids
        self._cross.setdefault((self.clock - s.num_computed_tokens) % self.block_size, {})[rid] = s
        self._due.setdefault(self.clock + s.max_new_tokens - s.num_output_tokens, {})[rid] = s
        stops = self._stops
        for t in s.stop_token_ids:
            stops[t] = stops.get(t, 0) + 1

    def leave(self, s: RequestState) -> None:
        """Remove a member."""
        rid = s.request_id
        del self._seqs[rid]
        del self._outs[rid]
        r = (self.clock - s.num_computed_tokens) % self.block_size
        part = self._cross[r]
        del part[rid]
        if not part:
            del self._cross[r]
        t = self.clock + s.max_new_tokens - s.num_output_tokens
        part = self._due.get(t)
        if part is not None and rid in part:  # absent once popped by advance()
            del part[rid]
            if not part:
                del self._due[t]
        stops = self._stops
        for t in s.stop_token_ids:
            c = stops[t] - 1
            if c:
                stops[t] = c
            else:
                del stops[t]

    # ------------------------------------------------------------------- step
    def advance(self, token_ids: list[int] | None) -> list[RequestState]:
        """One decode step for every member: count it, record ``token_ids`` (batch order).

        Returns the members that finished, which leave the batch: those that sampled one
        of their stop ids (FINISHED_STOPPED), then the others that reached
        ``max_new_tokens`` (FINISHED_LENGTH).
        """
        stopped, due = self._advance(token_ids)
        for s in stopped:
            self.leave(s)
            s.status = RequestStatus.FINISHED_STOPPED
        for s in due:
            self.leave(s)
            s.status = RequestStatus.FINISHED_LENGTH
        return stopped + due

    def _advance(self, token_ids: list[int] | None) -> tuple[list[RequestState], list[RequestState]]:
        now = self.clock = self.clock + 1
        for s in self._seqs.values():
            s.num_computed_tokens += 1
            s.num_output_tokens += 1
        stopped: list[RequestState] = []
        if token_ids is not None:
            deque(map(list.append, self._outs.values(), token_ids), maxlen=0)
            stops = self._stops
            if stops and not stops.keys().isdisjoint(token_ids):
                for s, t in zip(self._seqs.values(), token_ids):
                    if t in stops and t in s.stop_token_ids:
                        stopped.append(s)
        due = self._due.pop(now, None)
        if not due:
            return stopped, []
        if stopped:
            ids = {id(s) for s in stopped}
            return stopped, [s for s in due.values() if id(s) not in ids]
        return stopped, list(due.values())
