"""llmds.utils: percentiles and statistics against numpy/scipy, timers, memory, metrics."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmds import utils
from llmds.errors import ValidationError
from llmds.utils import (
    MemoryProfiler,
    MetricsCollector,
    Timer,
    calculate_statistics,
    compute_percentiles,
    memory_profiler,
    t_ppf,
)

finite = st.floats(-1e6, 1e6, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=1, max_size=200))
def test_percentiles_match_numpy(values):
    got = compute_percentiles(values)
    want = np.percentile(np.array(values), [50, 95, 99])
    assert [got["p50"], got["p95"], got["p99"]] == pytest.approx(want.tolist(), rel=1e-12, abs=1e-9)


def test_percentiles_linear_interpolation_exact():
    got = compute_percentiles([1, 2, 3, 4])
    assert got == {"p50": 2.5, "p95": pytest.approx(3.85), "p99": pytest.approx(3.97)}
    assert compute_percentiles([7.0]) == {"p50": 7.0, "p95": 7.0, "p99": 7.0}


@pytest.mark.parametrize("bad", [[], [1.0, math.nan], [math.inf], [[1, 2], [3, 4]], ["a"], None])
def test_bad_values(bad):
    with pytest.raises(ValidationError):
        compute_percentiles(bad)
    with pytest.raises(ValidationError):
        calculate_statistics(bad)


def test_t_ppf_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in [0.5, 1, 2, 3, 4, 5, 7, 10, 19, 29, 30, 99, 1000, 1e5]:
        for p in [
            1e-10,
            1e-4,
            0.005,
            0.025,
            0.05,
            0.1,
            0.3,
            0.5,
            0.6,
            0.9,
            0.95,
            0.975,
            0.995,
            0.9999,
        ]:
            want = stats.t.ppf(p, df)
            assert t_ppf(p, df) == pytest.approx(want, rel=1e-9, abs=1e-12), (p, df)


@pytest.mark.parametrize(
    "p,df", [(0.0, 5), (1.0, 5), (-0.1, 5), (0.5, 0), (0.5, -1), (0.5, math.inf)]
)
def test_t_ppf_bad_args(p, df):
    with pytest.raises(ValidationError):
        t_ppf(p, df)


@settings(max_examples=40, deadline=None)
@given(st.lists(finite, min_size=2, max_size=60), st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_statistics_match_numpy_and_scipy(values, level):
    stats = pytest.importorskip("scipy.stats")
    arr = np.array(values)
    got = calculate_statistics(values, confidence_level=level)
    mean, std = arr.mean(), arr.std(ddof=1)
    half = stats.t.ppf(0.5 + level / 2, len(arr) - 1) * std / math.sqrt(len(arr))
    tol = dict(rel=1e-9, abs=1e-6)
    assert got["count"] == len(arr)
    assert got["mean"] == pytest.approx(mean, **tol)
    assert got["std"] == pytest.approx(std, **tol)
    assert got["min"] == arr.min() and got["max"] == arr.max()
    assert got["p95"] == pytest.approx(np.percentile(arr, 95), **tol)
    assert got["ci_lower"] == pytest.approx(mean - half, **tol)
    assert got["ci_upper"] == pytest.approx(mean + half, **tol)
    if mean != 0:
        assert got["cv"] == pytest.approx(100 * std / abs(mean), rel=1e-9)


def test_statistics_known_values_and_edge_cases():
    got = calculate_statistics(
        [10.0, 12.0, 14.0]
    )  # mean 12, std 2, t(0.975, 2) = 4.302652729749464
    half = 4.302652729749464 * 2 / math.sqrt(3)
    assert got["mean"] == 12.0 and got["std"] == 2.0
    assert got["ci_lower"] == pytest.approx(12 - half, rel=1e-12)
    assert got["cv"] == pytest.approx(100 * 2 / 12)
    one = calculate_statistics([5.0])
    assert one["std"] == 0.0 and one["ci_lower"] == one["ci_upper"] == 5.0 and one["count"] == 1
    assert calculate_statistics([0.0, 0.0])["cv"] == 0.0
    assert calculate_statistics([-1.0, 1.0])["cv"] == math.inf
    for bad in (0.0, 1.0, 1.5, -0.5, True, "0.95"):
        with pytest.raises(ValidationError):
            calculate_statistics([1.0, 2.0], confidence_level=bad)


def test_timer_uses_perf_counter(monkeypatch):
    ticks = iter([10.0, 10.25])
    monkeypatch.setattr(utils.time, "perf_counter", lambda: next(ticks))
    with Timer() as t:
        pass
    assert t.elapsed == 0.25
    assert Timer().elapsed == 0.0


def test_timer_reads_the_monotonic_clock_and_freezes_on_exit():
    before = time.perf_counter()
    with Timer() as t:
        sum(range(1000))
    after = time.perf_counter()
    first = t.elapsed
    assert 0.0 < first <= after - before  # inside the bracket of the same clock
    assert t.elapsed == first  # frozen after exit


def test_memory_profiler_sees_an_allocation():
    # A fresh anonymous mapping with every page written is resident memory the
    # allocator cannot serve from pages it already holds (np.ones could reuse a
    # freed arena in a long test process).
    import mmap

    size = 64 * 1024 * 1024
    prof = MemoryProfiler()
    prof.start()
    base = prof.get_peak_rss_bytes()
    block = mmap.mmap(-1, size)
    page = b"\x01" * mmap.PAGESIZE
    for offset in range(0, size, mmap.PAGESIZE):
        block[offset : offset + mmap.PAGESIZE] = page
    prof.sample()
    assert prof.get_peak_rss_bytes() >= base + 48 * 1024 * 1024
    assert prof.get_memory_delta_mb() >= 48
    assert prof.get_peak_rss_mb() == prof.get_peak_rss_bytes() / 2**20
    block.close()
    assert prof.get_current_rss_mb() > 0
    assert prof.get_peak_rss_bytes() >= base + 48 * 1024 * 1024  # peak is kept


def test_memory_profiler_context_manager_samples_on_exit():
    import mmap

    size = 64 * 1024 * 1024
    with memory_profiler() as prof:
        assert prof.get_peak_rss_bytes() > 0  # started
        block = mmap.mmap(-1, size)  # written, never sampled inside the block
        for offset in range(0, size, mmap.PAGESIZE):
            block[offset] = 1
        assert prof.get_memory_delta_mb() < 48
    assert prof.get_memory_delta_mb() >= 48  # the exit sampled it
    block.close()


def test_metrics_collector():
    mc = MetricsCollector()
    empty = mc.get_metrics()
    assert (empty.count, empty.latency_p50, empty.mean) == (0, 0.0, 0.0)
    values = [float(v) for v in range(1, 101)]
    for v in values:
        mc.record_latency(v)
    m = mc.get_metrics()
    want = np.percentile(values, [50, 95, 99])
    assert (m.latency_p50, m.latency_p95, m.latency_p99) == tuple(want.tolist())
    assert m.count == 100 and m.mean == 50.5 and m.latency_max == 100.0
    mc.record_latency(np.float32(1.5))
    mc.record_latency(0)
    assert mc.get_metrics().count == 102
    for bad in (-1.0, math.nan, math.inf, True, "3", None):
        with pytest.raises(ValidationError):
            mc.record_latency(bad)
    assert mc.get_metrics().count == 102
    mc.reset()
    assert mc.get_metrics().count == 0


def test_metrics_collector_window():
    mc = MetricsCollector(max_samples=3)
    for v in (100.0, 1.0, 2.0, 3.0):
        mc.record_latency(v)
    m = mc.get_metrics()
    assert m.count == 4 and m.latency_max == 3.0 and m.mean == 2.0
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValidationError):
            MetricsCollector(max_samples=bad)
