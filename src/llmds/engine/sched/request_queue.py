"""The planner's waiting queue and urgency orders: ``"fcfs"``, ``"priority"``, ``"edf"``.

Queue order (which waiting request is admitted next):

* ``fcfs``: by arrival (the order of ``Planner.add``);
* ``priority``: by ``(priority, arrival)``, lower priority value first (as vLLM);
* ``edf``: by ``(deadline, priority, arrival)``, requests without a deadline last.

A request's key is fixed when it is added and packed into one int (so the
heap compares ints, not tuples); a preempted or cancelled request is pushed
back with the same key, so it regains its original position.

Urgency among *running* requests (service order and the preemption victim,
which is the maximum) uses the same components with the admission counter in
place of arrival: the victim is the lowest-priority, most recently admitted
request.
"""

from __future__ import annotations

import struct
from typing import Callable, Hashable

from llmds._checks import check_choice
from llmds.engine.request import RequestState
from llmds.scheduling.indexed_heap import IndexedHeap

__all__ = ["POLICIES", "RequestQueue", "urgency_key"]

POLICIES = ("fcfs", "priority", "edf")


def _float_order(x: float) -> int:
    """Order-preserving map of a float to an int in [0, 2**64)."""
    b = struct.unpack("<q", struct.pack("<d", x))[0]
    return (b if b >= 0 else -(b & 0x7FFFFFFFFFFFFFFF)) + (1 << 63)


def _rank_fcfs(s: RequestState):
    return s.admit_order


def _rank_priority(s: RequestState):
    return (s.priority, s.admit_order)


def _rank_edf(s: RequestState):
    return (float("inf") if s.deadline is None else s.deadline, s.priority, s.admit_order)


_RANKS = {"fcfs": _rank_fcfs, "priority": _rank_priority, "edf": _rank_edf}


def urgency_key(policy: str) -> Callable[[RequestState], object]:
    """Sort key of running requests under ``policy``: ascending = most urgent first."""
    return _RANKS[check_choice("policy", policy, POLICIES)]


class RequestQueue:
    """Waiting requests in queue order (an :class:`~llmds.scheduling.indexed_heap.IndexedHeap` of ids).

    ``add`` fixes a new request's key (``seq.queue_order``); ``requeue`` puts a
    request back at that key.  O(log n) push, pop and remove.
    """

    __slots__ = ("policy", "_heap", "_arrivals")

    def __init__(self, policy: str = "fcfs") -> None:
        self.policy = check_choice("policy", policy, POLICIES)
        self._heap = IndexedHeap()  # {request_id: queue score}, smallest first
        self._arrivals = 0

    def __len__(self) -> int:
        return len(self._heap)

    def __contains__(self, request_id: Hashable) -> bool:
        return request_id in self._heap

    def add(self, seq: RequestState) -> None:
        """Queue a new request behind every request added before it (within its class)."""
        seq.queue_order = self._score(seq, self._arrivals)
        self._arrivals += 1
        self._heap.push(seq.request_id, seq.queue_order)

    def requeue(self, seq: RequestState) -> None:
        """Put a preempted (or un-admitted) request back at its original position."""
        self._heap.push(seq.request_id, seq.queue_order)

    def peek(self) -> Hashable:
        """The id of the next request to admit (the queue must not be empty)."""
        return self._heap.peek()[1]

    def pop(self) -> Hashable:
        return self._heap.pop()[1]

    def remove(self, request_id: Hashable) -> None:
        self._heap.delete(request_id)

    def _score(self, seq: RequestState, arrival: int) -> int:
        policy = self.policy
        if policy == "fcfs":
            return arrival
        prio = (seq.priority + (1 << 63)) << 64
        if policy == "priority":
            return prio + arrival
        dl = (1 << 64) if seq.deadline is None else _float_order(seq.deadline)
        return (dl << 128) + prio + arrival
