"""cb_lab plugins: hooks really called in order, and the four built-ins really doing their job."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from cb_lab.core.kv_cache import DenseKVCache, PagedKVCache
from cb_lab.core.request import Request
from cb_lab.core.scheduler import Scheduler
from cb_lab.exceptions import ValidationError
from cb_lab.model.tiny_llm import TinyLLM
from cb_lab.monitoring.metrics import MetricsCollector
from cb_lab.plugins.base import AttentionPlugin, CachePlugin, PluginManager, SchedulerPlugin
from cb_lab.plugins.builtin import (
    AttentionVisualizationPlugin,
    CacheCompressionPlugin,
    LoggingPlugin,
    MetricsPlugin,
)

DIM = 16


class Recorder(SchedulerPlugin, AttentionPlugin, CachePlugin):
    def __init__(self, log):
        self.log = log

    def before_step(self, scheduler):
        self.log.append(("before_step", scheduler.step_id))

    def after_step(self, scheduler, stats):
        self.log.append(("after_step", stats["step_id"]))

    def on_request_added(self, scheduler, request):
        self.log.append(("added", request.req_id))

    def on_request_finished(self, scheduler, request):
        self.log.append(("finished", request.req_id))

    def on_attention(self, scheduler, record):
        self.log.append(("attention", record.req_ids, tuple(record.weights.shape)))

    def before_append(self, cache, k, v):
        self.log.append(("before_append", len(cache), k.size(0)))

    def after_append(self, cache, k, v):
        self.log.append(("after_append", len(cache)))


def test_hooks_are_called_in_order():
    log = []
    rec = Recorder(log)
    pm = PluginManager()
    pm.register_scheduler_plugin(rec)
    pm.register_attention_plugin(rec)
    pm.register_cache_plugin(rec)
    sched = Scheduler(TinyLLM(DIM), 4, 3, plugins=pm)
    sched.add_request(Request("a", torch.randn(3, DIM), 2, DenseKVCache()))
    sched.add_request(Request("b", torch.randn(2, DIM), 1, DenseKVCache()))
    sched.add_request(Request("z", torch.randn(2, DIM), 0, DenseKVCache()))
    while sched.active:
        sched.step()
    sched.step()  # empty step: still before/after
    assert log == [
        ("added", "a"),
        ("added", "b"),
        ("added", "z"),
        ("finished", "z"),
        # step 0: a prefills 3, b prefills 1 (budget 4)
        ("before_step", 0),
        ("attention", ("a", "b"), (1, 4, 4)),
        ("before_append", 0, 3),
        ("after_append", 3),
        ("before_append", 0, 1),
        ("after_append", 1),
        ("after_step", 0),
        # step 1: a decodes (attends 3 cached + itself), b finishes its prompt: 1 cached + 1 new
        ("before_step", 1),
        ("attention", ("a", "b"), (1, 2, 6)),
        ("before_append", 3, 1),
        ("after_append", 4),
        ("before_append", 1, 1),
        ("after_append", 2),
        ("finished", "a"),
        ("finished", "b"),
        ("after_step", 1),
        ("before_step", 2),
        ("after_step", 2),
    ]


def test_plugin_manager_registration_and_config():
    pm = PluginManager()
    log_plugin = LoggingPlugin("DEBUG")
    pm.register_scheduler_plugin(log_plugin)
    pm.register_scheduler_plugin(MetricsPlugin())
    pm.register_cache_plugin(CacheCompressionPlugin(0.7), {"num_sink_tokens": 1})
    assert pm.list_plugins() == {
        "scheduler": ["LoggingPlugin", "MetricsPlugin"],
        "attention": [],
        "cache": ["CacheCompressionPlugin"],
    }
    assert pm.get_plugin_config("CacheCompressionPlugin") == {"num_sink_tokens": 1}
    assert pm.cache_plugins[0].num_sink_tokens == 1
    pm.set_plugin_config("LoggingPlugin", {"log_level": "INFO"})
    assert log_plugin.log_level == "INFO" and pm.get_plugin_config("LoggingPlugin") == {
        "log_level": "INFO"
    }
    assert pm.get_plugin_config("Unknown") == {}
    with pytest.raises(ValidationError):
        pm.set_plugin_config("LoggingPlugin", {"no_such_knob": 1})
    with pytest.raises(ValidationError):
        pm.register_cache_plugin(LoggingPlugin())  # wrong kind
    with pytest.raises(ValidationError):
        pm.register_scheduler_plugin(log_plugin)  # twice
    with pytest.raises(ValidationError):
        LoggingPlugin("LOUD")
    with pytest.raises(ValidationError):
        CacheCompressionPlugin(0.0)
    with pytest.raises(ValidationError):
        CacheCompressionPlugin(1.5)


def test_logging_plugin_logs_through_logging(caplog):
    pm = PluginManager()
    pm.register_scheduler_plugin(LoggingPlugin("WARNING"))
    sched = Scheduler(TinyLLM(DIM), plugins=pm)
    with caplog.at_level(logging.WARNING, logger="cb_lab.scheduler"):
        sched.add_request(Request("user1", torch.randn(3, DIM), 2, DenseKVCache()))
        while sched.active:
            sched.step()
    msgs = [r.getMessage() for r in caplog.records if r.name == "cb_lab.scheduler"]
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == "cb_lab.scheduler")
    assert msgs[0] == "request 'user1' added: prompt=3 max_new_tokens=2"
    assert any(m.startswith("step 0 completed: decode=0 prefill=3") for m in msgs)
    assert "request 'user1' finished (FINISHED_LENGTH): 2 tokens generated" in msgs
    caplog.clear()
    pm.set_plugin_config("LoggingPlugin", {"log_level": "DEBUG"})
    with caplog.at_level(logging.INFO, logger="cb_lab.scheduler"):
        sched.step()
    assert not [r for r in caplog.records if r.name == "cb_lab.scheduler"]  # DEBUG is below INFO


def test_metrics_plugin_feeds_the_collector():
    ticks = iter(range(10_000))
    collector = MetricsCollector(enable_memory_profiling=False, clock=lambda: float(next(ticks)))
    pm = PluginManager()
    pm.register_scheduler_plugin(MetricsPlugin(collector))
    sched = Scheduler(TinyLLM(DIM), 6, 3, plugins=pm, clock=lambda: 0.0)
    for i, (n, m) in enumerate([(4, 3), (2, 2), (5, 1)]):
        sched.add_request(Request(i, torch.randn(n, DIM), m, DenseKVCache()))
    steps = []
    while sched.active:
        steps.append(sched.step())
    assert len(collector.step_metrics) == len(steps)
    assert [m.total_tokens for m in collector.step_metrics] == [s["total_tokens"] for s in steps]
    summary = collector.get_step_summary()
    assert summary["total_tokens_processed"] == (4 + 2 + 5) + (2 + 1 + 0)
    for i, (n, m) in enumerate([(4, 3), (2, 2), (5, 1)]):
        r = collector.get_request_summary(i)
        assert r["completed"] and r["prefill_tokens"] == n and r["decode_tokens"] == m
        assert r["expected_tokens"] == n + m


def _run_with_compression(ratio, cache_cls=DenseKVCache):
    model = TinyLLM(DIM, seed=11)
    pm = PluginManager()
    if ratio is not None:
        pm.register_cache_plugin(CacheCompressionPlugin(ratio, num_sink_tokens=2, min_tokens=4))
    sched = Scheduler(model, 8, 4, plugins=pm, release_finished_kv=False)
    g = torch.Generator().manual_seed(0)
    reqs = [
        Request(i, torch.randn(n, DIM, generator=g), 12, cache_cls())
        for i, n in enumerate((16, 11))
    ]
    for r in reqs:
        sched.add_request(r)
    while sched.active:
        sched.step()
    return reqs, pm


def test_compression_ratio_one_is_exact_and_drift_grows_as_ratio_shrinks():
    base, _ = _run_with_compression(None)
    out = lambda reqs: torch.cat([torch.stack(r.generated_tokens) for r in reqs])  # noqa: E731
    same, _ = _run_with_compression(1.0)
    assert torch.equal(out(same), out(base))
    drift = {}
    for ratio in (0.75, 0.5, 0.25):
        reqs, pm = _run_with_compression(ratio)
        drift[ratio] = (out(reqs) - out(base)).norm().item() / out(base).norm().item()
        plugin = pm.cache_plugins[0]
        for r in reqs:  # the cache really shrank to the target
            seen = r.kv_cache.num_appended
            assert len(r.kv_cache) == max(4, math.ceil(ratio * seen))
        assert plugin.tokens_dropped > 0
    assert 0 < drift[0.75] < drift[0.5] < drift[0.25]


def test_compression_keeps_sinks_and_recent_tokens():
    for cache in (DenseKVCache(), PagedKVCache(block_size=3)):
        plugin = CacheCompressionPlugin(0.5, num_sink_tokens=2, min_tokens=1)
        rows = torch.arange(20, dtype=torch.float32).repeat(2, 1).T  # row i == [i, i]
        for i in range(0, 20, 4):
            k = rows[i : i + 4]
            cache.append(k, -k)
            plugin.after_append(cache, k, -k)
        k, v = cache.get_kv()
        assert k[:, 0].tolist() == [0, 1] + list(range(12, 20))  # 2 sinks + 8 most recent = 10
        assert torch.equal(v, -k)


def test_attention_visualization_writes_pngs(tmp_path):
    viz = AttentionVisualizationPlugin(save_dir=str(tmp_path / "viz"))
    pm = PluginManager()
    pm.register_attention_plugin(viz)
    sched = Scheduler(TinyLLM(DIM), 8, 4, plugins=pm)
    sched.add_request(Request("a", torch.randn(5, DIM), 2, DenseKVCache()))
    sched.add_request(Request("b", torch.randn(3, DIM), 2, DenseKVCache()))
    steps = 0
    while sched.active:
        sched.step()
        steps += 1
    assert len(viz.saved_files) == steps
    assert [p.rsplit("/", 1)[-1] for p in viz.saved_files] == [f"step_{i:05d}.png" for i in range(steps)]
    for path in viz.saved_files:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    stats = viz.get_attention_statistics()
    assert stats["total_computations"] == steps and 0 < stats["average_sparsity"] < 1
