"""cb_lab monitoring: record_step(**step()) round trip, request tracking, memory profilers."""

from __future__ import annotations

import pytest
import torch

from cb_lab.core.kv_cache import DenseKVCache
from cb_lab.core.request import Request
from cb_lab.core.scheduler import Scheduler
from cb_lab.exceptions import MonitoringError, RequestNotFoundError, ValidationError
from cb_lab.model.tiny_llm import TinyLLM
from cb_lab.monitoring.memory_profiler import (
    DetailedMemoryProfiler,
    MemoryLeakDetector,
    MemoryProfiler,
)
from cb_lab.monitoring.metrics import MetricsCollector, StepMetrics


def _fake_clock(start=0.0, step=1.0):
    t = [start - step]

    def clock():
        t[0] += step
        return t[0]

    return clock


def test_record_step_round_trip():
    collector = MetricsCollector(enable_memory_profiling=False, clock=_fake_clock(100.0))
    sched = Scheduler(TinyLLM(), 6, 3, clock=_fake_clock(step=0.5))
    lengths = {"a": (5, 3), "b": (2, 1), "c": (4, 0)}
    for rid, (n, m) in lengths.items():
        collector.start_request_tracking(rid, total_tokens=n + m)
        sched.add_request(Request(rid, torch.randn(n, 16), m, DenseKVCache()))
    collector.start_request_tracking("never-added")
    steps = []
    while sched.active:
        s = sched.step()
        steps.append(s)
        rec = collector.record_step(**s)
        assert isinstance(rec, StepMetrics)
        for key, value in s.items():  # every key of step() is kept
            got = getattr(rec, key)
            assert (list(got) if isinstance(got, tuple) else got) == value, key
    assert [m.step_id for m in collector.step_metrics] == [s["step_id"] for s in steps]
    for rid in lengths:
        summary = collector.get_request_summary(rid)
        assert summary["completed"] and summary["status"] == "completed"
    assert not collector.get_request_summary("never-added")["completed"]
    # "c" (max_new_tokens=0) finished at add, reported by the first step before "b" (1 token)
    assert steps[0]["finished_request_ids"] == ["c", "b"]
    summary = collector.get_step_summary()
    total = sum(s["total_tokens"] for s in steps)
    assert summary["total_steps"] == len(steps) and summary["total_tokens_processed"] == total
    assert summary["avg_step_duration"] == 0.5
    assert summary["tokens_per_second"] == total / (0.5 * len(steps))
    assert summary["step_latency_p50_ms"] == 500.0


def test_record_step_rejects_bad_values_and_records_nothing():
    c = MetricsCollector(enable_memory_profiling=False)
    good = dict(
        step_id=0,
        decode_tokens=1,
        prefill_tokens=2,
        active_requests=1,
        finished_requests=0,
        step_duration=0.1,
    )
    for key, bad in [
        ("decode_tokens", -1),
        ("step_id", 1.5),
        ("step_duration", float("nan")),
        ("step_duration", -0.1),
        ("active_requests", True),
    ]:
        with pytest.raises(ValidationError):
            c.record_step(**{**good, key: bad})
    with pytest.raises(TypeError):
        c.record_step(**good, unknown_key=1)
    assert c.step_metrics == [] and c.get_step_summary()["total_steps"] == 0
    assert c.record_step(**good).total_tokens == 3


def test_request_tracking_errors_and_progress():
    c = MetricsCollector(enable_memory_profiling=False, clock=_fake_clock(step=2.0))
    c.start_request_tracking("r", total_tokens=10)
    with pytest.raises(MonitoringError):
        c.start_request_tracking("r")
    with pytest.raises(RequestNotFoundError):
        c.update_request_progress("x", decode_tokens=1)
    with pytest.raises(RequestNotFoundError):
        c.finish_request("x")
    c.update_request_progress("r", prefill_tokens=6, decode_tokens=4, status="decoding")
    c.finish_request("r")
    s = c.get_request_summary("r")
    assert s["total_tokens"] == 10 and s["duration"] == 2.0 and s["tokens_per_second"] == 5.0
    assert c.request_metrics["r"].history == ["started", "decoding", "completed"]
    assert c.get_request_summary("x") is None
    c.reset()
    assert c.request_metrics == {} and c.step_metrics == []


def test_memory_profiler_with_collector():
    c = MetricsCollector()  # memory profiling on: every step carries an RSS delta
    rec = c.record_step(0, 0, 1, 1, 0, 0.01)
    assert isinstance(rec.memory_usage_mb, float) and rec.gpu_memory_mb == 0.0
    p = MemoryProfiler()
    cur = p.get_current_memory()
    assert cur > 0 and p.get_gpu_memory() == 0.0
    p.set_baseline()
    info = p.log_memory_usage("ctx")
    assert info["context"] == "ctx" and info["current_memory_mb"] > 0
    assert info["memory_delta_mb"] == pytest.approx(info["current_memory_mb"] - p.baseline_memory)


def test_leak_detector_with_injected_memory():
    readings = iter([100.0, 100.0, 101.0, 100.5, 100.0])
    d = MemoryLeakDetector(threshold_mb=5.0, memory_fn=lambda: next(readings))
    d.set_baseline()
    d.record_measurement("a")
    assert d.check_for_leaks()["status"] == "insufficient_data"
    for i in range(3):
        d.record_measurement(str(i))
    r = d.check_for_leaks()
    assert r["status"] == "normal" and r["total_growth_mb"] == 0.0 and r["measurements_count"] == 5

    growing = iter([100.0 + 4 * i for i in range(6)])
    d = MemoryLeakDetector(threshold_mb=5.0, memory_fn=lambda: next(growing))
    d.set_baseline()
    for i in range(5):
        d.record_measurement(f"step_{i}")
    r = d.check_for_leaks()
    assert r["status"] == "leak_detected" and r["total_growth_mb"] == 20.0
    assert r["slope_mb_per_measurement"] == pytest.approx(4.0)
    with pytest.raises(ValidationError):
        MemoryLeakDetector(threshold_mb=0)


def test_detailed_profiler():
    p = DetailedMemoryProfiler(clock=_fake_clock())
    with pytest.raises(MonitoringError):
        p.get_memory_delta()
    assert p.get_peak_memory_usage() == {}
    p.set_baseline()
    with p.profile_context("outer"):
        with p.profile_context("inner"):
            snap = p.take_snapshot()
        assert snap.context == "outer->inner"
    assert set(p.context_deltas) == {"outer", "inner"}
    assert [s.timestamp for s in p.snapshots] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    d = p.get_memory_delta()
    assert set(d) >= {"rss_delta_mb", "vms_delta_mb", "gpu_allocated_delta_mb"}
    assert p.get_peak_memory_usage()["peak_rss_mb"] == max(s.rss_mb for s in p.snapshots)
    assert p.analyze_memory_growth()["snapshots_analyzed"] == 6
    p.start_monitoring()
    p.stop_monitoring()  # the sampler always takes at least one snapshot
    assert p.snapshots[-1].context == "monitoring"
    p.clear_snapshots()
    assert p.snapshots == [] and p.baseline_snapshot is None
    with pytest.raises(ValidationError):
        DetailedMemoryProfiler(sampling_interval=0)
