"""Measurement helpers shared by benchmarks, the engine and the server.

``Timer`` and ``MemoryProfiler`` time and size a block of code;
``compute_percentiles`` / ``calculate_statistics`` summarise repeated
measurements (the confidence interval uses Student's t, computed here so that
scipy is not a dependency); ``MetricsCollector`` accumulates latencies.

This module imports nothing from llmds except ``llmds.errors`` and
``llmds._checks`` (both standard library only).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmds._checks import check_float, check_int
from llmds.errors import ValidationError

__all__ = [
    "Timer",
    "MemoryProfiler",
    "memory_profiler",
    "compute_percentiles",
    "calculate_statistics",
    "t_ppf",
    "LatencyMetrics",
    "MetricsCollector",
]


class Timer:
    """Context manager measuring wall time with ``time.perf_counter``.

    ``elapsed`` (seconds) is set when the block exits; read inside the block it
    gives the time so far.
    """

    __slots__ = ("_start", "_end")

    def __init__(self) -> None:
        self._start: float | None = None
        self._end: float | None = None

    def __enter__(self) -> Timer:
        self._end = None
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._end = time.perf_counter()

    @property
    def elapsed(self) -> float:
        """Seconds between entering and leaving the block (0.0 before entering)."""
        if self._start is None:
            return 0.0
        end = self._end if self._end is not None else time.perf_counter()
        return end - self._start


class MemoryProfiler:
    """Track the peak resident set size (RSS) of this process.

    RSS is only observed when ``start``/``sample`` are called, so the peak is
    the largest *sampled* value: sample inside long phases to catch spikes.
    """

    __slots__ = ("_process", "_initial", "_peak", "_last")

    def __init__(self) -> None:
        import psutil  # core dependency, imported here so `import llmds.utils` stays light

        self._process = psutil.Process()
        self._initial = 0
        self._peak = 0
        self._last = 0

    def start(self) -> None:
        """Record the current RSS as the baseline and reset the peak to it."""
        rss = self._process.memory_info().rss
        self._initial = self._peak = self._last = rss

    def sample(self) -> int:
        """Read the current RSS in bytes, update the peak and return it."""
        return self.sample_info()[0]

    def sample_info(self) -> tuple[int, int]:
        """Read the current ``(rss, vms)`` in bytes, updating the RSS peak."""
        info = self._process.memory_info()
        rss = info.rss
        self._last = rss
        if rss > self._peak:
            self._peak = rss
        return rss, info.vms

    def get_peak_rss_bytes(self) -> int:
        """Largest sampled RSS in bytes (0 before ``start``)."""
        return self._peak

    def get_peak_rss_mb(self) -> float:
        """Largest sampled RSS in MiB."""
        return self._peak / (1024 * 1024)

    def get_current_rss_mb(self) -> float:
        """Current RSS in MiB (takes a fresh sample, updating the peak)."""
        return self.sample() / (1024 * 1024)

    def get_memory_delta_mb(self) -> float:
        """Peak sampled RSS minus the baseline recorded by ``start``, in MiB."""
        return (self._peak - self._initial) / (1024 * 1024)


@contextmanager
def memory_profiler() -> Iterator[MemoryProfiler]:
    """Yield a started ``MemoryProfiler``; a final sample is taken on exit."""
    profiler = MemoryProfiler()
    profiler.start()
    try:
        yield profiler
    finally:
        profiler.sample()


# ---------------------------------------------------------------- statistics


def _as_finite_array(values: Iterable[float], what: str) -> np.ndarray:
    try:
        arr = np.asarray(
            list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64
        )
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{what} must be a sequence of numbers: {exc}") from None
    if arr.ndim != 1:
        raise ValidationError(f"{what} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ValidationError(f"{what} is empty; need at least one value")
    if not np.isfinite(arr).all():
        raise ValidationError(f"{what} contains NaN or infinite values; drop them first")
    return arr


def compute_percentiles(values: Iterable[float]) -> dict[str, float]:
    """P50, P95 and P99 of ``values`` with linear interpolation (numpy's default).

    Raises ``ValidationError`` for an empty input or non-finite values.
    """
    arr = _as_finite_array(values, "values")
    p50, p95, p99 = np.percentile(arr, [50.0, 95.0, 99.0])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99)}


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float, y: float) -> float:
    """Regularized incomplete beta I_x(a, b) for a, b > 0, 0 <= x <= 1, y = 1 - x.

    ``y`` is passed separately so that x close to 1 keeps its precision.
    """
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    )
    front = math.exp(log_front)
    # the continued fraction converges fast for x < (a+1)/(a+b+2); use symmetry otherwise
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, y) / b


def _t_sf(t: float, df: float) -> float:
    """Upper tail P(T > t) of Student's t for t >= 0."""
    t2 = t * t
    return 0.5 * _betainc(0.5 * df, 0.5, df / (df + t2), t2 / (df + t2))


def t_ppf(p: float, df: float) -> float:
    """Quantile function (inverse CDF) of Student's t with ``df`` degrees of freedom.

    Solves ``P(T > t) = 1 - p`` on the exact tail (regularized incomplete beta)
    by safeguarded Newton steps; agrees with ``scipy.stats.t.ppf`` to ~1e-10.
    """
    if not (0.0 < p < 1.0):
        raise ValidationError(f"p must be in (0, 1), got {p!r}")
    if not (df > 0.0) or math.isinf(df):
        raise ValidationError(f"df must be a positive finite number, got {df!r}")
    if p == 0.5:
        return 0.0
    tail = p if p < 0.5 else 1.0 - p  # solve for the upper tail, mirror at the end
    log_norm = math.lgamma(0.5 * (df + 1.0)) - math.lgamma(0.5 * df) - 0.5 * math.log(df * math.pi)
    lo, hi = 0.0, 1.0
    while _t_sf(hi, df) > tail:  # bracket: sf decreases in t
        lo, hi = hi, hi * 2.0
        if hi > 1e300:
            return math.copysign(math.inf, p - 0.5)
    t = 0.5 * (lo + hi)
    for _ in range(200):
        f = _t_sf(t, df) - tail  # > 0 means t is too small
        if f > 0.0:
            lo = t
        else:
            hi = t
        pdf = math.exp(log_norm - 0.5 * (df + 1.0) * math.log1p(t * t / df))
        step = f / pdf if pdf > 0.0 else 0.0
        t_new = t + step  # d(sf)/dt = -pdf
        if not (lo < t_new < hi):
            t_new = 0.5 * (lo + hi)  # Newton left the bracket: bisect instead
        if abs(t_new - t) <= 1e-14 * max(1.0, abs(t)):
            t = t_new
            break
        t = t_new
    return t if p > 0.5 else -t


def calculate_statistics(values: Iterable[float], confidence_level: float = 0.95) -> dict[str, Any]:
    """Summary statistics of repeated measurements.

    Returns ``mean``, ``std`` (sample, ddof=1), ``min``, ``max``, ``p50``,
    ``p95``, ``p99``, ``ci_lower``/``ci_upper`` (two-sided Student-t confidence
    interval of the mean at ``confidence_level``), ``cv`` (100·std/|mean|, in
    percent; ``inf`` when the mean is 0 but the values vary) and ``count``.
    With one value the spread is unknown: ``std`` is 0 and the interval
    collapses to the mean.
    """
    confidence_level = check_float("confidence_level", confidence_level, 0.0, 1.0, low_open=True,
                                   high_open=True)
    arr = _as_finite_array(values, "values")
    n = int(arr.size)
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if n > 1 else 0.0
    if n > 1:
        half = t_ppf(0.5 + confidence_level / 2.0, n - 1) * std / math.sqrt(n)
    else:
        half = 0.0
    if mean != 0.0:
        cv = 100.0 * std / abs(mean)
    else:
        cv = 0.0 if std == 0.0 else math.inf
    pct = compute_percentiles(arr)
    return {
        "mean": mean,
        "std": std,
        "min": float(arr.min()),
        "max": float(arr.max()),
        "p50": pct["p50"],
        "p95": pct["p95"],
        "p99": pct["p99"],
        "ci_lower": mean - half,
        "ci_upper": mean + half,
        "cv": cv,
        "count": n,
    }


# ------------------------------------------------------------------- metrics


@dataclass(frozen=True, slots=True)
class LatencyMetrics:
    """Latency summary in milliseconds; all zeros when nothing was recorded."""

    latency_p50: float
    latency_p95: float
    latency_p99: float
    count: int
    mean: float
    latency_max: float


class MetricsCollector:
    """Accumulates latencies (milliseconds) and summarises them.

    Parameters
    ----------
    max_samples : int or None
        Keep only the most recent ``max_samples`` latencies for the
        percentiles (a long-running server needs a bound); ``None`` keeps all.
        ``count`` always counts every recorded latency.
    """

    __slots__ = ("_samples", "_count")

    def __init__(self, max_samples: int | None = None) -> None:
        if max_samples is not None:
            max_samples = check_int("max_samples", max_samples, 1)
        self._samples: deque[float] = deque(maxlen=max_samples)
        self._count = 0

    def record_latency(self, ms: float) -> None:
        """Record one latency in milliseconds (finite, non-negative)."""
        self._samples.append(check_float("latency (ms)", ms, 0.0))
        self._count += 1

    def get_metrics(self) -> LatencyMetrics:
        """Percentiles, mean and max over the kept samples; ``count`` over all."""
        if not self._samples:
            return LatencyMetrics(0.0, 0.0, 0.0, self._count, 0.0, 0.0)
        arr = np.fromiter(self._samples, dtype=np.float64, count=len(self._samples))
        p50, p95, p99 = np.percentile(arr, [50.0, 95.0, 99.0])
        return LatencyMetrics(
            float(p50), float(p95), float(p99), self._count, float(arr.mean()), float(arr.max())
        )

    def reset(self) -> None:
        """Forget every recorded latency."""
        self._samples.clear()
        self._count = 0
