"""Dynamic micro-batching scheduler: collect requests, release them in batches.

A batch is released when ``max_batch_size`` requests are pending, when the
oldest pending request has waited ``max_wait_ms``, or on ``force``. Inside a
batch, requests whose SLO deadline is close come first (earliest deadline
first), then the rest by priority (higher first), ties in arrival order.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from llmds._checks import check_float, check_int
from llmds.errors import NotFoundError, StateError, ValidationError
from llmds.scheduling.indexed_heap import IndexedHeap

__all__ = ["Scheduler", "Request", "default_priority"]


class Request:
    """One submitted request, as seen by ``priority_fn``.

    ``arrival`` and ``deadline`` are in seconds of the scheduler's clock;
    ``deadline`` is ``arrival + slo_ms / 1000`` or ``None`` without an SLO.
    """

    __slots__ = ("request_id", "tokens", "slo_ms", "arrival", "deadline", "priority")

    def __init__(self, request_id: int, tokens: int, slo_ms: float | None, arrival: float) -> None:
        self.request_id = request_id
        self.tokens = tokens
        self.slo_ms = slo_ms
        self.arrival = arrival
        self.deadline = None if slo_ms is None else arrival + slo_ms / 1000.0
        self.priority = 0.0

    def __repr__(self) -> str:
        return (
            f"Request(id={self.request_id}, tokens={self.tokens}, slo_ms={self.slo_ms}, "
            f"arrival={self.arrival}, priority={self.priority})"
        )


def default_priority(req: Request) -> float:
    """Shorter requests first: ``1 / (tokens + 1)``."""
    return 1.0 / (req.tokens + 1.0)


class Scheduler:
    """Micro-batching scheduler over an ``IndexedHeap``.

    Parameters
    ----------
    max_batch_size : int
        Largest batch ``get_batch`` returns (> 0); this many pending requests
        release a batch at once.
    max_wait_ms : float
        How long the oldest pending request may wait before a partial batch is
        released (>= 0). Also the SLO urgency window: a request whose slack
        ``deadline - now`` is below it is scheduled earliest-deadline-first,
        ahead of the priority order.
    priority_fn : callable, optional
        ``Request -> float``, higher runs first; evaluated at ``submit`` and
        ``update_priority`` only. Default ``1 / (tokens + 1)``.
    clock : callable
        Returns seconds (monotonic); inject a fake clock in tests.

    Notes
    -----
    Request ids are consecutive ints from 0. Lifecycle: pending (after
    ``submit``) -> in flight (after ``get_batch``) -> done (``complete_batch``).
    An SLO miss is counted when a request completes after its deadline.
    """

    __slots__ = (
        "max_batch_size",
        "max_wait_ms",
        "_priority_fn",
        "_clock",
        "_next_id",
        "_pending",
        "_by_priority",
        "_by_deadline",
        "_in_flight",
        "_batch_count",
        "_released",
        "_processed",
        "_slo_misses",
    )

    def __init__(
        self,
        max_batch_size: int = 32,
        max_wait_ms: float = 50.0,
        priority_fn: Callable[[Request], float] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        max_batch_size = check_int("max_batch_size", max_batch_size, 1)
        max_wait_ms = check_float("max_wait_ms", max_wait_ms, 0.0)
        if priority_fn is not None and not callable(priority_fn):
            raise ValidationError(
                f"priority_fn must be callable (Request -> float), got {priority_fn!r}"
            )
        if not callable(clock):
            raise ValidationError(f"clock must be callable returning seconds, got {clock!r}")
        self.max_batch_size = max_batch_size
        self.max_wait_ms = float(max_wait_ms)
        self._priority_fn = priority_fn or default_priority
        self._clock = clock
        self._next_id = 0
        self._pending: OrderedDict[int, Request] = OrderedDict()  # arrival order
        self._by_priority = IndexedHeap(max_heap=True)  # {id: priority}, all pending
        self._by_deadline = IndexedHeap()  # {id: deadline}, pending requests with an SLO
        self._in_flight: dict[int, Request] = {}
        self._batch_count = 0
        self._released = 0
        self._processed = 0
        self._slo_misses = 0

    # ----------------------------------------------------------------- API

    def submit(self, tokens: int, slo_ms: float | None = None) -> int:
        """Queue a request of ``tokens`` tokens (optional SLO in ms); return its id."""
        tokens = check_int("tokens", tokens, 0)
        if slo_ms is not None:
            slo_ms = check_float("slo_ms", slo_ms, 0.0, low_open=True)
        rid = self._next_id
        req = Request(rid, tokens, None if slo_ms is None else float(slo_ms), self._clock())
        req.priority = self._evaluate(req)
        self._next_id += 1
        self._pending[rid] = req
        self._by_priority.push(rid, req.priority)
        if req.deadline is not None:
            self._by_deadline.push(rid, req.deadline)
        return rid

    def get_batch(self, force: bool = False) -> list[int] | None:
        """Release the next batch of request ids, or ``None`` if none is due.

        Due when ``max_batch_size`` requests are pending, when the oldest
        pending request has waited ``max_wait_ms`` or more, or when ``force``
        is true and anything is pending. Order: requests with an SLO whose
        slack ``deadline - now`` is below ``max_wait_ms``, earliest deadline
        first; then the others by priority, higher first; ties by arrival.
        """
        pending = self._pending
        if not pending:
            return None
        now = self._clock()
        if len(pending) < self.max_batch_size and not force:
            oldest = next(iter(pending.values()))
            if (now - oldest.arrival) * 1000.0 < self.max_wait_ms:
                return None
        k = min(len(pending), self.max_batch_size)
        window = self.max_wait_ms / 1000.0
        batch: list[int] = []
        by_deadline, by_priority = self._by_deadline, self._by_priority
        while len(batch) < k and by_deadline:
            deadline, rid = by_deadline.peek()
            if deadline - now >= window:
                break
            by_deadline.pop()
            by_priority.delete(rid)
            batch.append(rid)
        while len(batch) < k:
            _, rid = by_priority.pop()
            if rid in by_deadline:
                by_deadline.delete(rid)
            batch.append(rid)
        in_flight = self._in_flight
        for rid in batch:
            in_flight[rid] = pending.pop(rid)
        self._batch_count += 1
        self._released += k
        return batch

    def complete_batch(self, request_ids: Iterable[int]) -> None:
        """Mark in-flight requests as done; counts an SLO miss for each one past its deadline.

        All ids are checked first: an unknown or repeated id raises and
        nothing is completed.
        """
        if isinstance(request_ids, (str, bytes)) or not isinstance(request_ids, Iterable):
            raise ValidationError(f"request_ids must be an iterable of ints, got {request_ids!r}")
        ids = list(request_ids)
        for rid in ids:
            check_int("request id", rid)
        if len(set(ids)) != len(ids):
            raise ValidationError(f"request_ids contains duplicates: {ids!r}")
        for rid in ids:
            if rid not in self._in_flight:
                if rid in self._pending:
                    raise StateError(
                        f"request {rid!r} is still pending; get it from get_batch first"
                    )
                raise NotFoundError(
                    f"request {rid!r} is not in flight (unknown or already completed)"
                )
        now = self._clock()
        for rid in ids:
            req = self._in_flight.pop(rid)
            if req.deadline is not None and now > req.deadline:
                self._slo_misses += 1
        self._processed += len(ids)

    def update_priority(self, request_id: int, new_tokens: int) -> None:
        """Change a pending request's token count and re-evaluate its priority.

        Keeps its arrival position for tie-breaking. ``NotFoundError`` for an
        unknown or completed id, ``StateError`` if it is already in flight.
        """
        request_id = check_int("request_id", request_id)
        new_tokens = check_int("new_tokens", new_tokens, 0)
        req = self._pending.get(request_id)
        if req is None:
            if request_id in self._in_flight:
                raise StateError(
                    f"request {request_id!r} is already in flight; its priority is final"
                )
            raise NotFoundError(f"request {request_id!r} is not pending")
        old_tokens = req.tokens
        req.tokens = new_tokens
        try:
            priority = self._evaluate(req)
        except Exception:
            req.tokens = old_tokens
            raise
        req.priority = priority
        self._by_priority.update(request_id, priority)

    def stats(self) -> dict[str, Any]:
        """Queue and throughput counters.

        ``batch_count`` and ``avg_batch_size`` count batches released by
        ``get_batch``; ``total_processed`` counts completed requests.
        """
        return {
            "queue_size": len(self._pending),
            "in_flight": len(self._in_flight),
            "batch_count": self._batch_count,
            "total_processed": self._processed,
            "avg_batch_size": self._released / self._batch_count if self._batch_count else 0.0,
            "slo_misses": self._slo_misses,
        }

    def get_request(self, request_id: int) -> Request:
        """The pending or in-flight ``Request`` with this id (``NotFoundError`` otherwise)."""
        req = self._pending.get(request_id) if isinstance(request_id, int) else None
        if req is None and isinstance(request_id, int):
            req = self._in_flight.get(request_id)
        if req is None:
            raise NotFoundError(f"request {request_id!r} is neither pending nor in flight")
        return req

    # ----------------------------------------------------------- internals

    def _evaluate(self, req: Request) -> float:
        priority = self._priority_fn(req)
        if type(priority) is float and priority == priority:  # the common case
            return priority
        return check_float("priority_fn(request)", priority, finite=False)
