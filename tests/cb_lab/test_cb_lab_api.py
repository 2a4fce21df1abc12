"""The cb-lab API reference: every documented import path, its examples run as written, the exceptions."""

from __future__ import annotations

import builtins
import importlib
import json
import subprocess
import sys

import pytest
import torch

import cb_lab.exceptions as cbe
from llmds import errors

DOCUMENTED = {
    "cb_lab.core.request": ["Request"],
    "cb_lab.core.scheduler": ["Scheduler"],
    "cb_lab.core.kv_cache": ["BaseKVCache", "DenseKVCache", "PagedKVCache"],
    "cb_lab.core.batch_builder": ["build_ragged_batch", "TokenMeta"],
    "cb_lab.model.tiny_llm": ["TinyLLM"],
    "cb_lab.plugins.base": ["PluginManager", "SchedulerPlugin", "AttentionPlugin", "CachePlugin"],
    "cb_lab.plugins.builtin": ["LoggingPlugin", "MetricsPlugin", "CacheCompressionPlugin",
                               "AttentionVisualizationPlugin"],
    "cb_lab.monitoring.metrics": ["MetricsCollector", "StepMetrics"],
    "cb_lab.monitoring.memory_profiler": ["MemoryProfiler", "DetailedMemoryProfiler", "MemorySnapshot",
                                          "MemoryLeakDetector"],
    "cb_lab.exceptions": ["CBLabException", "ValidationError", "RequestError", "SchedulerError",
                          "KVCacheError", "ModelError", "ConfigurationError", "MemoryError"],
}


@pytest.mark.parametrize("module", sorted(DOCUMENTED))
def test_documented_import_paths(module):
    mod = importlib.import_module(module)
    for name in DOCUMENTED[module]:
        assert getattr(mod, name) is not None, f"{module}.{name}"
        if name != "MemoryError":
            assert name in mod.__all__


def test_top_level_names_resolve_lazily():
    import cb_lab

    for name in cb_lab.__all__:
        assert getattr(cb_lab, name) is not None
    assert cb_lab.Scheduler is importlib.import_module("cb_lab.core.scheduler").Scheduler
    with pytest.raises(AttributeError):
        cb_lab.NoSuchThing  # noqa: B018


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         check=True, capture_output=True, text=True).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_llmds_never_imports_cb_lab():
    mods = _modules_after("import llmds.engine.sched.planner, llmds.engine.kv.block_manager, llmds.kv_arena.arena")
    assert not any(m == "cb_lab" or m.startswith("cb_lab.") for m in mods)


def test_import_cb_lab_and_llmds_do_not_import_torch():
    mods = _modules_after("import llmds, cb_lab, cb_lab.core, cb_lab.plugins, cb_lab.monitoring")
    assert "torch" not in mods and "matplotlib" not in mods


# ------------------------------------------------------------------ exceptions
def test_exception_hierarchy():
    # one hierarchy: cb_lab's base and ValidationError are llmds's own classes
    assert cbe.CBLabException is errors.LLMDSError and cbe.ValidationError is errors.ValidationError
    for name in cbe.__all__:
        cls = getattr(cbe, name)
        assert issubclass(cls, cbe.CBLabException) and issubclass(cls, errors.LLMDSError)
    pairs = {"ValidationError": (errors.ValidationError, ValueError),
             "ConfigurationError": (errors.ValidationError, ValueError),
             "RequestError": (errors.StateError, RuntimeError),
             "RequestNotFoundError": (errors.NotFoundError, KeyError),
             "SchedulerError": (errors.StateError, RuntimeError),
             "DuplicateRequestError": (errors.ValidationError, ValueError),
             "KVCacheError": (errors.StateError, RuntimeError),
             "KVMemoryError": (errors.CapacityError, ValueError),
             "ModelError": (errors.StateError, RuntimeError),
             "MonitoringError": (errors.StateError, RuntimeError)}
    for name, bases in pairs.items():
        assert all(issubclass(getattr(cbe, name), b) for b in bases), name
    # the documented MemoryError is only an alias inside cb_lab.exceptions
    assert cbe.MemoryError is cbe.KVMemoryError and cbe.MemoryError is not builtins.MemoryError
    assert not issubclass(cbe.KVMemoryError, builtins.MemoryError)
    assert "MemoryError" not in cbe.__all__
    ns: dict = {}
    exec("from cb_lab.exceptions import *", ns)
    assert "MemoryError" not in ns
    for name in cbe.__all__:
        assert not hasattr(builtins, name), f"{name} shadows a builtin"
    assert getattr(importlib.import_module("cb_lab"), "MemoryError", None) is None


# ------------------------------------------------------------------- examples
def test_basic_usage_example(capsys):
    import torch
    from cb_lab.core.scheduler import Scheduler
    from cb_lab.core.request import Request
    from cb_lab.core.kv_cache import DenseKVCache
    from cb_lab.model.tiny_llm import TinyLLM

    # Create model and scheduler
    model = TinyLLM(dim=16)
    scheduler = Scheduler(model, max_tokens_per_step=8, prefill_chunk_size=4)

    # Create request
    device = torch.device("cpu")
    prompt = torch.randn(10, 16, device=device)
    cache = DenseKVCache(device)
    request = Request("user1", prompt, 5, cache)

    # Add request and run
    scheduler.add_request(request)

    while scheduler.active:
        stats = scheduler.step()
        print(f"Step {stats['step_id']}: {stats['decode_tokens']} decode, {stats['prefill_tokens']} prefill")

    lines = capsys.readouterr().out.splitlines()
    assert lines == ["Step 0: 0 decode, 4 prefill", "Step 1: 0 decode, 4 prefill", "Step 2: 0 decode, 2 prefill",
                     "Step 3: 1 decode, 0 prefill", "Step 4: 1 decode, 0 prefill", "Step 5: 1 decode, 0 prefill",
                     "Step 6: 1 decode, 0 prefill"]
    assert len(request.generated_tokens) == 5 and request.finished


def test_scheduler_and_request_snippets(capsys):
    from cb_lab.core.kv_cache import DenseKVCache
    from cb_lab.core.request import Request
    from cb_lab.core.scheduler import Scheduler
    from cb_lab.model.tiny_llm import TinyLLM

    cache = DenseKVCache()
    req = Request("test", torch.randn(10, 16), 5, cache)
    chunk = req.get_prefill_chunk(3)  # Get up to 3 tokens for prefill
    assert chunk.shape == (3, 16)

    model, prompt = TinyLLM(), torch.randn(6, 16)
    scheduler = Scheduler(model, max_tokens_per_step=6)
    req = Request("user1", prompt, 5, DenseKVCache())
    scheduler.add_request(req)
    while scheduler.active:
        stats = scheduler.step()
        print(f"Step {stats['step_id']}: processed {stats['total_tokens']} tokens")
    assert capsys.readouterr().out.splitlines()[:2] == ["Step 0: processed 4 tokens",
                                                         "Step 1: processed 2 tokens"]


def test_cache_and_batch_snippets():
    from cb_lab.core.batch_builder import build_ragged_batch
    from cb_lab.core.kv_cache import DenseKVCache, PagedKVCache
    from cb_lab.core.request import Request

    k_new, v_new = torch.randn(3, 16), torch.randn(3, 16)
    cache = DenseKVCache(torch.device("cpu"))
    cache.append(k_new, v_new)
    k, v = cache.get_kv()
    assert torch.equal(k, k_new)
    cache = PagedKVCache(block_size=32, device=torch.device("cpu"))  # the doc says "cuda"; CPU here
    cache.append(k_new, v_new)
    k, v = cache.get_kv()
    assert torch.equal(v, v_new)

    # Working with Different Cache Types
    prompt1, prompt2 = torch.randn(4, 16), torch.randn(3, 16)
    dense_cache = DenseKVCache(torch.device("cpu"))
    paged_cache = PagedKVCache(block_size=32, device=torch.device("cpu"))
    req1 = Request("user1", prompt1, 5, dense_cache)
    req2 = Request("user2", prompt2, 3, paged_cache)
    assert req1.kv_cache is dense_cache and req2.kv_cache is paged_cache

    chunks = [("req1", 0, torch.randn(3, 16)), ("req2", 0, torch.randn(2, 16))]
    tokens, meta, mask = build_ragged_batch(chunks)
    assert tokens.shape == (5, 16) and len(meta) == 5 and mask.shape == (5, 5)


def test_model_snippet():
    from cb_lab.core.batch_builder import build_ragged_batch
    from cb_lab.core.kv_cache import DenseKVCache
    from cb_lab.model.tiny_llm import TinyLLM

    model = TinyLLM(dim=16)
    tokens, _, ragged_mask = build_ragged_batch([("a", 0, torch.randn(4, 16))])
    output, keys, values = model.forward_prefill_ragged(tokens, ragged_mask)
    cache = DenseKVCache()
    cache.append(keys, values)
    out, new_k, new_v = model.forward_decode(output[-1], cache)
    assert out.shape == new_k.shape == new_v.shape == (1, 16)
    assert torch.equal(model(tokens), output)


def test_error_handling_example():
    from cb_lab.core.kv_cache import DenseKVCache
    from cb_lab.core.request import Request
    from cb_lab.exceptions import RequestError, ValidationError

    cache, invalid_prompt, caught = DenseKVCache(), torch.randn(16), []
    try:
        req = Request("test", invalid_prompt, 5, cache)  # noqa: F841
    except ValidationError as e:
        caught.append(f"Validation failed: {e}")
    except RequestError as e:
        caught.append(f"Request error: {e}")
    assert caught and caught[0].startswith("Validation failed: prompt must be a non-empty 2-D tensor")


def test_plugin_examples(capsys):
    from cb_lab.plugins.base import PluginManager
    from cb_lab.plugins.builtin import CacheCompressionPlugin, LoggingPlugin, MetricsPlugin

    manager = PluginManager()
    manager.register_scheduler_plugin(LoggingPlugin())
    manager.register_scheduler_plugin(MetricsPlugin())
    plugins = manager.list_plugins()
    print(f"Registered scheduler plugins: {plugins['scheduler']}")

    # Create plugin manager
    manager = PluginManager()
    # Register plugins
    manager.register_scheduler_plugin(LoggingPlugin("DEBUG"))
    manager.register_scheduler_plugin(MetricsPlugin())
    manager.register_cache_plugin(CacheCompressionPlugin(0.7))
    # Set plugin configurations
    manager.set_plugin_config("LoggingPlugin", {"log_level": "INFO"})
    # List registered plugins
    plugins = manager.list_plugins()
    print(f"Plugins: {plugins}")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Registered scheduler plugins: ['LoggingPlugin', 'MetricsPlugin']"
    assert out[1] == ("Plugins: {'scheduler': ['LoggingPlugin', 'MetricsPlugin'], 'attention': [], "
                      "'cache': ['CacheCompressionPlugin']}")
    assert manager.scheduler_plugins[0].log_level == "INFO"


def test_metrics_example(capsys):
    from cb_lab.core.kv_cache import DenseKVCache
    from cb_lab.core.request import Request
    from cb_lab.core.scheduler import Scheduler
    from cb_lab.model.tiny_llm import TinyLLM
    from cb_lab.monitoring.metrics import MetricsCollector

    metrics = MetricsCollector()
    # Start tracking request
    metrics.start_request_tracking("user1", total_tokens=15)
    # adapted: the example's `requests` come from a scheduler run
    scheduler = Scheduler(TinyLLM(), clock=iter(range(100)).__next__)
    requests = [Request("user1", torch.randn(10, 16), 5, DenseKVCache())]
    scheduler.add_request(requests[0])
    while scheduler.active:
        metrics.record_step(**scheduler.step())
        # During execution
        for req in requests:
            if req.in_decode:
                metrics.update_request_progress(req.req_id, decode_tokens=len(req.generated_tokens))
    # Get summary
    summary = metrics.get_step_summary()
    print(f"Processed {summary['total_tokens_processed']} tokens at {summary['tokens_per_second']:.2f} tok/s")
    assert capsys.readouterr().out == "Processed 14 tokens at 2.00 tok/s\n"  # 14 tokens in 7 steps of 1 s
    assert metrics.get_request_summary("user1")["completed"]


def test_memory_profiling_examples():
    from cb_lab.core.kv_cache import DenseKVCache
    from cb_lab.core.request import Request
    from cb_lab.core.scheduler import Scheduler
    from cb_lab.model.tiny_llm import TinyLLM
    from cb_lab.monitoring.memory_profiler import DetailedMemoryProfiler, MemoryLeakDetector

    scheduler = Scheduler(TinyLLM())
    scheduler.add_request(Request("a", torch.randn(4, 16), 3, DenseKVCache()))
    # Basic memory profiling
    profiler = DetailedMemoryProfiler()
    profiler.set_baseline()
    with profiler.profile_context("inference"):
        # Run your inference code
        scheduler.step()
    delta = profiler.get_memory_delta()
    assert isinstance(delta["rss_delta_mb"], float)
    assert [s.context for s in profiler.snapshots] == ["baseline", "inference_start", "inference_end"]

    def some_heavy_function():
        return torch.zeros(1000).sum()

    profiler = DetailedMemoryProfiler()
    with profiler.profile_context("heavy_computation"):
        result = some_heavy_function()  # noqa: F841
    assert "heavy_computation" in profiler.context_deltas

    # Leak detection (adapted: 10 steps instead of 100)
    def run_inference_step():
        scheduler.step()

    detector = MemoryLeakDetector(threshold_mb=5.0)
    detector.set_baseline()
    for i in range(10):
        run_inference_step()
        detector.record_measurement(f"step_{i}")
    results = detector.check_for_leaks()
    assert results["status"] in ("normal", "leak_detected") and results["measurements_count"] == 11
