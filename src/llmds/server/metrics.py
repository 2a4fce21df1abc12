"""What only the server measures: retrieval latency and requests in flight.

One metrics path: nothing the engine measures is measured again here; the engine's own counters
live in :class:`~llmds.engine.metrics.EngineMetrics`, and :mod:`llmds.server.prometheus` exports
both at ``/metrics``.
"""

from __future__ import annotations

import threading

from llmds.engine.metrics import Histogram

__all__ = ["ServerMetrics", "RETRIEVAL_BUCKETS"]

RETRIEVAL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServerMetrics:
    """What the server itself measures (the engine's metrics live in ``engine.metrics``)."""

    def __init__(self) -> None:
        self.retrieval_latency_seconds = Histogram("retrieval_latency_seconds", RETRIEVAL_BUCKETS,
                                                   threading.Lock())
        self.in_flight = 0  # admitted requests not yet closed (ServerState.enter / leave)
