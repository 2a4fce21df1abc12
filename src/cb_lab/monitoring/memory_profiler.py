"""Memory profilers of the cb_lab API (``cb_lab.monitoring.memory_profiler``).

Adapters over :class:`llmds.utils.MemoryProfiler` (the one reader of this
process's memory): RSS/VMS in MiB plus, when torch is already imported and CUDA
is available, the CUDA allocator's counters.  The
memory source and clock can be injected, so tests drive them exactly.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from cb_lab.exceptions import MonitoringError
from llmds._checks import check_float
from llmds.utils import MemoryProfiler as _RSSProfiler

__all__ = ["MemoryProfiler", "MemorySnapshot", "DetailedMemoryProfiler", "MemoryLeakDetector"]

log = logging.getLogger("cb_lab.memory")
_MB = 1024.0 * 1024.0


def _cuda_mb() -> tuple[float, float]:
    """(allocated, reserved) CUDA MiB; zeros unless torch is loaded and CUDA is up."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return 0.0, 0.0
    return torch.cuda.memory_allocated() / _MB, torch.cuda.memory_reserved() / _MB


class MemoryProfiler(_RSSProfiler):
    """:class:`llmds.utils.MemoryProfiler` plus the cb_lab baseline API (MiB)."""

    __slots__ = ("baseline_memory",)

    def __init__(self) -> None:
        super().__init__()
        self.start()
        self.baseline_memory = self.get_current_memory()

    def get_current_memory(self) -> float:
        """Current RSS in MiB."""
        return self.sample() / _MB

    def get_gpu_memory(self) -> float:
        """CUDA memory allocated in MiB (0.0 without a GPU)."""
        return _cuda_mb()[0]

    def set_baseline(self) -> None:
        self.baseline_memory = self.get_current_memory()

    def get_memory_delta(self) -> float:
        """Current RSS minus the baseline, MiB."""
        return self.get_current_memory() - self.baseline_memory

    def log_memory_usage(self, context: str = "") -> dict[str, Any]:
        """Read and log (DEBUG) current, GPU and delta memory; returns them."""
        cur = self.get_current_memory()
        info = {
            "context": context,
            "current_memory_mb": cur,
            "gpu_memory_mb": self.get_gpu_memory(),
            "memory_delta_mb": cur - self.baseline_memory,
        }
        log.debug("memory %s: %.1f MiB (delta %+.2f)", context, cur, info["memory_delta_mb"])
        return info


@dataclass(frozen=True, slots=True)
class MemorySnapshot:
    timestamp: float
    rss_mb: float
    vms_mb: float
    gpu_allocated_mb: float = 0.0
    gpu_reserved_mb: float = 0.0
    torch_tensors_count: int = 0  # -1 when not counted
    context: str = ""


class DetailedMemoryProfiler:
    """Snapshots, baselines, peaks, per-context deltas and optional background sampling.

    Parameters
    ----------
    sampling_interval : float
        Seconds between background snapshots (``start_monitoring``), > 0.
    count_tensors : bool
        Count live torch tensors in each snapshot (scans the GC heap: slow).
    clock : callable
        Timestamp source (default ``time.perf_counter``).
    """

    def __init__(
        self,
        sampling_interval: float = 0.1,
        count_tensors: bool = False,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        sampling_interval = check_float("sampling_interval (seconds)", sampling_interval, 0.0, low_open=True)
        self.profiler = _RSSProfiler()  # llmds.utils: reads RSS/VMS and keeps the sampled RSS peak
        self.profiler.start()
        self.sampling_interval = sampling_interval
        self.count_tensors = count_tensors
        self.clock = clock
        self.snapshots: list[MemorySnapshot] = []
        self.baseline_snapshot: MemorySnapshot | None = None
        self.context_deltas: dict[str, dict[str, float]] = {}
        self._stack: list[str] = []
        self._lock = threading.Lock()
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def take_snapshot(self, context: str = "") -> MemorySnapshot:
        rss, vms = self.profiler.sample_info()
        alloc, reserved = _cuda_mb()
        tensors = -1
        torch = sys.modules.get("torch")
        if self.count_tensors and torch is not None:
            tensors = sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))
        snap = MemorySnapshot(
            self.clock(),
            rss / _MB,
            vms / _MB,
            alloc,
            reserved,
            tensors,
            context or ("->".join(self._stack) or "global"),
        )
        with self._lock:
            self.snapshots.append(snap)
        return snap

    def set_baseline(self, context: str = "baseline") -> None:
        self.baseline_snapshot = self.take_snapshot(context)

    def get_memory_delta(self, snapshot: MemorySnapshot | None = None) -> dict[str, float]:
        """Deltas of ``snapshot`` (default: the latest) against the baseline."""
        base = self.baseline_snapshot
        if base is None:
            raise MonitoringError("no baseline: call set_baseline() first")
        cur = snapshot if snapshot is not None else self.snapshots[-1]
        return {
            "rss_delta_mb": cur.rss_mb - base.rss_mb,
            "vms_delta_mb": cur.vms_mb - base.vms_mb,
            "gpu_allocated_delta_mb": cur.gpu_allocated_mb - base.gpu_allocated_mb,
            "gpu_reserved_delta_mb": cur.gpu_reserved_mb - base.gpu_reserved_mb,
            "tensor_count_delta": cur.torch_tensors_count - base.torch_tensors_count,
        }

    def get_peak_memory_usage(self) -> dict[str, float]:
        if not self.snapshots:
            return {}
        s = self.snapshots
        return {
            "peak_rss_mb": max(x.rss_mb for x in s),
            "peak_vms_mb": max(x.vms_mb for x in s),
            "peak_gpu_allocated_mb": max(x.gpu_allocated_mb for x in s),
            "peak_gpu_reserved_mb": max(x.gpu_reserved_mb for x in s),
        }

    def get_memory_timeline(self) -> list[MemorySnapshot]:
        return list(self.snapshots)

    def analyze_memory_growth(self) -> dict[str, Any]:
        """RSS growth over the snapshots: total and least-squares rate (MiB/s)."""
        s = self.snapshots
        if len(s) < 2:
            return {"message": "Insufficient data for analysis", "snapshots_analyzed": len(s)}
        t = np.array([x.timestamp for x in s])
        rss = np.array([x.rss_mb for x in s])
        rate = float(np.polyfit(t - t[0], rss, 1)[0]) if np.ptp(t) > 0 else 0.0
        return {
            "total_duration": float(t[-1] - t[0]),
            "total_rss_growth": float(rss[-1] - rss[0]),
            "rss_growth_rate_mb_per_sec": rate,
            "snapshots_analyzed": len(s),
        }

    def clear_snapshots(self) -> None:
        self.snapshots.clear()
        self.baseline_snapshot = None

    @contextmanager
    def profile_context(self, context_name: str) -> Iterator[None]:
        """Snapshot before and after the block; the delta goes to ``context_deltas`` and the log."""
        self._stack.append(context_name)
        start = self.take_snapshot(f"{context_name}_start")
        try:
            yield
        finally:
            end = self.take_snapshot(f"{context_name}_end")
            self._stack.pop()
            delta = {
                "rss_mb": end.rss_mb - start.rss_mb,
                "gpu_allocated_mb": end.gpu_allocated_mb - start.gpu_allocated_mb,
            }
            self.context_deltas[context_name] = delta
            log.info(
                "memory %s: RSS %+.2f MiB, GPU %+.2f MiB",
                context_name,
                delta["rss_mb"],
                delta["gpu_allocated_mb"],
            )

    def start_monitoring(self) -> None:
        """Snapshot every ``sampling_interval`` seconds in a daemon thread until stopped."""
        if self._thread is not None:
            return
        stop = self._stop = threading.Event()

        def loop() -> None:
            while True:  # at least one snapshot, even if stopped at once
                self.take_snapshot("monitoring")
                if stop.wait(self.sampling_interval):
                    return

        self._thread = threading.Thread(target=loop, name="cb_lab-memory", daemon=True)
        self._thread.start()

    def stop_monitoring(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = self._stop = None


class MemoryLeakDetector:
    """Flags sustained memory growth beyond ``threshold_mb``.

    A leak is reported when the last measurement exceeds the baseline by more
    than ``threshold_mb`` *and* the least-squares trend over all measurements
    is rising.

    Parameters
    ----------
    threshold_mb : float
        Allowed growth in MiB (> 0).
    memory_fn : callable, optional
        Returns the current memory in MiB (default: this process's RSS).
    """

    def __init__(
        self, threshold_mb: float = 10.0, memory_fn: Callable[[], float] | None = None
    ) -> None:
        self.threshold_mb = check_float("threshold_mb", threshold_mb, 0.0, low_open=True)
        if memory_fn is None:
            memory_fn = _RSSProfiler().get_current_rss_mb  # llmds.utils: this process's RSS, MiB
        self.memory_fn = memory_fn
        self.baseline_memory: float | None = None
        self.measurements: list[float] = []
        self.labels: list[str] = []

    def set_baseline(self) -> None:
        self.baseline_memory = float(self.memory_fn())
        self.measurements = [self.baseline_memory]
        self.labels = ["baseline"]

    def record_measurement(self, label: str = "") -> None:
        cur = float(self.memory_fn())
        self.measurements.append(cur)
        self.labels.append(label)
        if self.baseline_memory is not None and cur - self.baseline_memory > self.threshold_mb:
            log.warning(
                "memory grew by %.2f MiB (threshold %.2f) at %s",
                cur - self.baseline_memory,
                self.threshold_mb,
                label,
            )

    def check_for_leaks(self) -> dict[str, Any]:
        """Status ``"insufficient_data"`` (< 3 readings), ``"normal"`` or ``"leak_detected"``."""
        n = len(self.measurements)
        if n < 3:
            return {"status": "insufficient_data", "measurements_count": n}
        y = np.asarray(self.measurements)
        slope = float(np.polyfit(np.arange(n, dtype=np.float64), y, 1)[0])
        base = self.baseline_memory if self.baseline_memory is not None else float(y[0])
        growth = float(y[-1] - base)
        leak = growth > self.threshold_mb and slope > 0
        return {
            "status": "leak_detected" if leak else "normal",
            "slope_mb_per_measurement": slope,
            "total_growth_mb": growth,
            "measurements_count": n,
            "threshold_mb": self.threshold_mb,
        }

    def reset(self) -> None:
        self.baseline_memory = None
        self.measurements = []
        self.labels = []
