"""Step and request metrics of the cb_lab scheduler (``cb_lab.monitoring.metrics``).

``MetricsCollector.record_step(**scheduler.step())`` accepts every key a step
returns; requests named in ``finished_request_ids`` that are being tracked are
marked completed.  Step latencies also go to an :class:`llmds.utils.MetricsCollector`
so the summary carries p50/p95/p99 like every other llmds component.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable

from cb_lab.exceptions import MonitoringError, RequestNotFoundError, ValidationError
from llmds._checks import check_float, check_int
from cb_lab.monitoring.memory_profiler import MemoryProfiler
from llmds.utils import MetricsCollector as LatencyCollector

__all__ = ["StepMetrics", "RequestMetrics", "MetricsCollector", "MemoryProfiler"]


@dataclass(slots=True)
class StepMetrics:
    """What one scheduler step did."""

    step_id: int
    decode_tokens: int
    prefill_tokens: int
    active_requests: int
    finished_requests: int
    step_duration: float  # seconds
    status: str = "completed"
    total_tokens: int = 0
    finished_request_ids: tuple = ()
    preempted_request_ids: tuple = ()
    memory_usage_mb: float = 0.0  # RSS change since the collector's baseline
    gpu_memory_mb: float = 0.0


@dataclass(slots=True)
class RequestMetrics:
    """One tracked request's life cycle (times on the collector's clock)."""

    req_id: Hashable
    start_time: float
    end_time: float | None = None
    total_tokens: int = 0  # expected, as given to start_request_tracking
    prefill_tokens: int = 0
    decode_tokens: int = 0
    peak_memory_mb: float = 0.0
    status: str = "started"
    history: list = field(default_factory=list)  # statuses in order


class MetricsCollector:
    """Collects per-step and per-request metrics.

    Parameters
    ----------
    enable_memory_profiling : bool
        Sample this process's RSS at every recorded step (psutil).
    clock : callable
        Seconds, monotonic; request start/end times (default ``time.perf_counter``).
    """

    def __init__(
        self, enable_memory_profiling: bool = True, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.enable_memory_profiling = bool(enable_memory_profiling)
        self.clock = clock
        self.step_metrics: list[StepMetrics] = []
        self.request_metrics: dict[Hashable, RequestMetrics] = {}
        self.latency = LatencyCollector()  # step durations in ms
        self.memory_profiler = None
        if self.enable_memory_profiling:
            self.memory_profiler = MemoryProfiler()

    # ------------------------------------------------------------------ steps
    def record_step(
        self,
        step_id: int,
        decode_tokens: int,
        prefill_tokens: int,
        active_requests: int,
        finished_requests: int,
        step_duration: float,
        status: str = "completed",
        *,
        total_tokens: int | None = None,
        finished_request_ids: Iterable[Hashable] = (),
        preempted_request_ids: Iterable[Hashable] = (),
    ) -> StepMetrics:
        """Record one step (the keys of ``Scheduler.step()``); returns the stored record.

        Tracked requests in ``finished_request_ids`` are marked ``"completed"``;
        untracked ones are ignored.  Invalid counts raise ``ValidationError``
        and record nothing.
        """
        for name, val in (
            ("step_id", step_id),
            ("decode_tokens", decode_tokens),
            ("prefill_tokens", prefill_tokens),
            ("active_requests", active_requests),
            ("finished_requests", finished_requests),
        ):
            check_int(name, val, 0)
        step_duration = check_float("step_duration (seconds)", step_duration, 0.0)
        if not isinstance(status, str):
            raise ValidationError(f"status must be a str, got {type(status).__name__}")
        total = (
            decode_tokens + prefill_tokens
            if total_tokens is None
            else check_int("total_tokens", total_tokens, 0)
        )
        finished_ids = tuple(finished_request_ids)
        mem = gpu = 0.0
        if self.memory_profiler is not None:
            info = self.memory_profiler.log_memory_usage(f"step_{step_id}")
            mem, gpu = info["memory_delta_mb"], info["gpu_memory_mb"]
        m = StepMetrics(
            step_id,
            decode_tokens,
            prefill_tokens,
            active_requests,
            finished_requests,
            float(step_duration),
            status,
            total,
            finished_ids,
            tuple(preempted_request_ids),
            mem,
            gpu,
        )
        self.step_metrics.append(m)
        self.latency.record_latency(float(step_duration) * 1000.0)
        for rid in finished_ids:
            r = self.request_metrics.get(rid)
            if r is not None and r.end_time is None:
                self.finish_request(rid, "completed")
        return m

    def get_step_summary(self) -> dict[str, Any]:
        """Totals, mean step time, throughput and step-latency percentiles (ms)."""
        steps = self.step_metrics
        if not steps:
            return {
                "total_steps": 0,
                "total_tokens_processed": 0,
                "tokens_per_second": 0.0,
                "message": "No steps recorded",
            }
        dec = sum(s.decode_tokens for s in steps)
        pre = sum(s.prefill_tokens for s in steps)
        busy = sum(s.step_duration for s in steps)
        lat = self.latency.get_metrics()
        return {
            "total_steps": len(steps),
            "total_decode_tokens": dec,
            "total_prefill_tokens": pre,
            "total_tokens_processed": dec + pre,
            "total_duration": busy,
            "avg_step_duration": busy / len(steps),
            "tokens_per_second": (dec + pre) / busy if busy > 0 else 0.0,
            "step_latency_p50_ms": lat.latency_p50,
            "step_latency_p95_ms": lat.latency_p95,
            "step_latency_p99_ms": lat.latency_p99,
            "finished_requests": sum(s.finished_requests for s in steps),
            "total_memory_delta_mb": steps[-1].memory_usage_mb,
            "latest_gpu_memory_mb": steps[-1].gpu_memory_mb,
        }

    # --------------------------------------------------------------- requests
    def start_request_tracking(self, req_id: Hashable, total_tokens: int = 0) -> None:
        """Start tracking a request; raises ``MonitoringError`` if it already is."""
        check_int("total_tokens", total_tokens, 0)
        if req_id in self.request_metrics:
            raise MonitoringError(f"request {req_id!r} is already tracked; finish or reset first")
        self.request_metrics[req_id] = RequestMetrics(
            req_id, self.clock(), total_tokens=total_tokens, history=["started"]
        )

    def _get(self, req_id: Hashable) -> RequestMetrics:
        try:
            return self.request_metrics[req_id]
        except KeyError:
            raise RequestNotFoundError(
                f"request {req_id!r} is not tracked; call start_request_tracking first"
            ) from None

    def update_request_progress(
        self,
        req_id: Hashable,
        prefill_tokens: int | None = None,
        decode_tokens: int | None = None,
        status: str | None = None,
    ) -> None:
        """Set a tracked request's token counts and/or status."""
        r = self._get(req_id)
        if prefill_tokens is not None:
            r.prefill_tokens = check_int("prefill_tokens", prefill_tokens, 0)
        if decode_tokens is not None:
            r.decode_tokens = check_int("decode_tokens", decode_tokens, 0)
        if status is not None:
            r.status = status
            r.history.append(status)
        if self.memory_profiler is not None:
            r.peak_memory_mb = max(r.peak_memory_mb, self.memory_profiler.get_memory_delta())

    def finish_request(self, req_id: Hashable, status: str = "completed") -> None:
        """Mark a tracked request finished now (on the collector's clock)."""
        r = self._get(req_id)
        r.end_time = self.clock()
        r.status = status
        r.history.append(status)

    def get_request_summary(self, req_id: Hashable) -> dict[str, Any] | None:
        """Summary of one request, or None if it is not tracked."""
        r = self.request_metrics.get(req_id)
        if r is None:
            return None
        duration = (r.end_time if r.end_time is not None else self.clock()) - r.start_time
        tokens = r.prefill_tokens + r.decode_tokens
        return {
            "req_id": r.req_id,
            "duration": duration,
            "total_tokens": tokens,
            "expected_tokens": r.total_tokens,
            "prefill_tokens": r.prefill_tokens,
            "decode_tokens": r.decode_tokens,
            "tokens_per_second": tokens / duration if duration > 0 else 0.0,
            "peak_memory_mb": r.peak_memory_mb,
            "status": r.status,
            "completed": r.end_time is not None,
        }

    def get_all_requests_summary(self) -> list[dict[str, Any]]:
        return [self.get_request_summary(rid) for rid in self.request_metrics]

    def reset(self) -> None:
        """Forget every step and request (and re-baseline memory)."""
        self.step_metrics.clear()
        self.request_metrics.clear()
        self.latency.reset()
        if self.memory_profiler is not None:
            self.memory_profiler.set_baseline()
