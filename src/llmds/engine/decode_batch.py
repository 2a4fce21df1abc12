"""The decode batch: running requests past their prefill, advanced in O(1) per step.

Every request in the batch decodes exactly one token per decode step (the
planner schedules the whole batch), so instead of bumping three counters per
request per step the batch keeps one *clock* and each request stores its
counters as offsets against it (``RequestState._attach_clock``): one tick
advances ``num_computed_tokens``, ``num_tokens`` and ``num_output_tokens`` of
every member.  The per-request events are indexed by the clock value at
which they happen, so a step touches only the requests that have one:

    _cross: {clock % block_size: {request_id: seq}}  # need a new block now
    _due:   {clock: {request_id: seq}}               # reach max_new_tokens then

A member crosses a block boundary when ``(offset + clock) % block_size == 0``
and reaches ``max_new_tokens`` at ``clock = max_new_tokens - output offset``;
offsets are fixed while it stays, so both keys are computed once.  What is
left per member and step is C-level: copying the batch into the plan and,
when token ids are given, appending them to the output lists (``map`` over
a dict view) and testing them against the members' stop ids (a set
disjointness test; members are checked one by one only on a hit).
"""

from __future__ import annotations

from collections import deque
from typing import Hashable

from llmds.engine.request import RequestState

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
        self.clock = [0]  # decode ticks so far, shared with the members (one-element list)
        self._seqs: dict[Hashable, RequestState] = {}
        self._outs: dict[Hashable, list[int]] = {}  # same keys and order: output_token_ids lists
        self._cross: dict[int, dict[Hashable, RequestState]] = {}
        self._due: dict[int, dict[Hashable, RequestState]] = {}
        self._stops: dict[int, int] = {}  # {stop id: members using it}

    def __len__(self) -> int:
        return len(self._seqs)

    def members(self) -> list[RequestState]:
        """The members in batch order (a new list)."""
        return list(self._seqs.values())

    def crossing(self) -> list[RequestState]:
        """Members whose next decode starts a new block (``num_computed_tokens % block_size == 0``)."""
        part = self._cross.get(self.clock[0] % self.block_size)
        return list(part.values()) if part else []

    # ---------------------------------------------------------------- members
    def enter(self, s: RequestState) -> None:
        """Add a request that just sampled a token with all earlier tokens computed."""
        rid = s.request_id
        s._attach_clock(self.clock)
        self._seqs[rid] = s
        self._outs[rid] = s.output_token_ids
        self._cross.setdefault(-s._num_computed % self.block_size, {})[rid] = s
        self._due.setdefault(s.max_new_tokens - s._num_output, {})[rid] = s
        stops = self._stops
        for t in s.stop_token_ids:
            stops[t] = stops.get(t, 0) + 1

    def leave(self, s: RequestState) -> None:
        """Remove a member; its counters become plain values again."""
        rid = s.request_id
        del self._seqs[rid]
        del self._outs[rid]
        r = -s._num_computed % self.block_size
        part = self._cross[r]
        del part[rid]
        if not part:
            del self._cross[r]
        t = s.max_new_tokens - s._num_output
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
        s._detach_clock()

    # ------------------------------------------------------------------- step
    def advance(self, token_ids: list[int] | None) -> tuple[list[RequestState], list[RequestState]]:
        """One decode step for every member: tick, record ``token_ids`` (batch order).

        Returns ``(stopped, due)``: members that sampled one of their stop ids,
        and the others that reached ``max_new_tokens``.  Both are still members
        (the caller finishes them and calls :meth:`leave`).
        """
        now = self.clock[0] = self.clock[0] + 1
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
