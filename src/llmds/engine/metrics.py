"""The engine's metrics: counters, gauges and histograms under vLLM's metric names.

The engine records here; the server exports the same objects in Prometheus text (one path).
Histograms keep Prometheus semantics (cumulative bucket counts, sum, count) with vLLM's bucket
bounds, plus the most recent ``max_samples`` observations in a
:class:`llmds.utils.MetricsCollector` for percentiles.  Prefix-cache queries and hits count
tokens, as vLLM's do.  Updates and snapshots take one lock, so a reader thread (the server) sees
consistent histograms while the engine thread records.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from dataclasses import dataclass

from llmds.utils import MetricsCollector

__all__ = ["Histogram", "HistogramSnapshot", "EngineMetrics"]

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
               20.0, 40.0, 80.0)
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                   120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    buckets: tuple[float, ...]  # upper bounds, +Inf implied
    cumulative: tuple[int, ...]  # len(buckets) + 1 counts, the last is the total
    sum: float
    count: int


class Histogram:
    """Cumulative-bucket histogram (Prometheus) with a window of recent samples for percentiles."""

    __slots__ = ("name", "buckets", "_counts", "_sum", "_count", "recent", "_lock")

    def __init__(self, name: str, buckets: tuple[float, ...], lock: threading.Lock, max_samples: int = 10_000) -> None:
        self.name = name
        self.buckets = buckets
        self._counts = [0] * (len(buckets) + 1)
        self._sum = 0.0
        self._count = 0
        self.recent = MetricsCollector(max_samples=max_samples)  # milliseconds, as MetricsCollector keeps them
        self._lock = lock

    def observe(self, seconds: float) -> None:
        with self._lock:
            self._counts[bisect_left(self.buckets, seconds)] += 1
            self._sum += seconds
            self._count += 1
            self.recent.record_latency(seconds * 1000.0)

    def snapshot(self) -> HistogramSnapshot:
        with self._lock:
            cum, acc = [], 0
            for c in self._counts:
                acc += c
                cum.append(acc)
            return HistogramSnapshot(self.buckets, tuple(cum), self._sum, self._count)

    def percentiles(self) -> dict[str, float]:
        """p50 / p95 / p99 in seconds over the recent window (zeros when empty)."""
        with self._lock:
            m = self.recent.get_metrics()
        return {"p50": m.latency_p50 / 1000.0, "p95": m.latency_p95 / 1000.0, "p99": m.latency_p99 / 1000.0}


class EngineMetrics:
    """Everything the engine measures (read by ``/metrics`` and the benchmarks)."""

    def __init__(self, max_samples: int = 10_000) -> None:
        self.lock = threading.Lock()
        h = lambda name, b: Histogram(name, b, self.lock, max_samples)  # noqa: E731
        self.time_to_first_token_seconds = h("time_to_first_token_seconds", TTFT_BUCKETS)
        self.inter_token_latency_seconds = h("inter_token_latency_seconds", ITL_BUCKETS)
        self.e2e_request_latency_seconds = h("e2e_request_latency_seconds", REQUEST_BUCKETS)
        self.request_queue_time_seconds = h("request_queue_time_seconds", REQUEST_BUCKETS)
        # counters
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.num_preemptions = 0
        self.prefix_cache_queries = 0  # prompt tokens looked up
        self.prefix_cache_hits = 0  # ... found cached
        self.num_steps = 0
        self.step_seconds = 0.0
        self.forward_seconds = 0.0
        self.structured_mask_seconds = 0.0  # filling and applying grammar masks (constrained requests)
        self.structured_jump_forward_tokens = 0  # output tokens a grammar forced, computed without sampling
        self.requests_finished: dict[str, int] = {"stop": 0, "length": 0, "abort": 0, "error": 0}
        # gauges (set every step)
        self.num_requests_running = 0
        self.num_requests_waiting = 0
        self.kv_cache_usage_perc = 0.0
        self.num_pinned_blocks = 0

    def histograms(self) -> list[Histogram]:
        return [self.time_to_first_token_seconds, self.inter_token_latency_seconds,
                self.e2e_request_latency_seconds, self.request_queue_time_seconds]

    def summary(self) -> dict[str, float]:
        """Counters, gauges and latency percentiles as one flat dict."""
        out: dict[str, float] = {
            "prompt_tokens": self.prompt_tokens,
            "generation_tokens": self.generation_tokens,
            "num_preemptions": self.num_preemptions,
            "prefix_cache_queries": self.prefix_cache_queries,
            "prefix_cache_hits": self.prefix_cache_hits,
            "prefix_cache_hit_rate": self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0,
            "num_steps": self.num_steps,
            "step_seconds": self.step_seconds,
            "forward_seconds": self.forward_seconds,
            "structured_mask_seconds": self.structured_mask_seconds,
            "structured_jump_forward_tokens": self.structured_jump_forward_tokens,
            "outside_forward_fraction": 1.0 - self.forward_seconds / self.step_seconds if self.step_seconds else 0.0,
            "num_requests_running": self.num_requests_running,
            "num_requests_waiting": self.num_requests_waiting,
            "kv_cache_usage_perc": self.kv_cache_usage_perc,
        }
        for hist in self.histograms():
            for k, v in hist.percentiles().items():
                out[f"{hist.name}_{k}"] = v
        return out
