"""cb_lab: a continuous-batching lab on top of llmds.engine.

The documented import paths (``cb_lab.core.scheduler.Scheduler``,
``cb_lab.core.request.Request``, ``cb_lab.model.tiny_llm.TinyLLM``, ...) are
thin re-exports of ``llmds.engine``; the step policy is the engine's planner.
Top-level names load lazily, so ``import cb_lab`` does not import torch.
"""

from __future__ import annotations

from llmds._lazy import lazy_exports

__version__ = "0.2.0"

_EXPORTS = {
    "Request": "cb_lab.core.request",
    "Scheduler": "cb_lab.core.scheduler",
    "BaseKVCache": "cb_lab.core.kv_cache",
    "DenseKVCache": "cb_lab.core.kv_cache",
    "PagedKVCache": "cb_lab.core.kv_cache",
    "build_ragged_batch": "cb_lab.core.batch_builder",
    "TinyLLM": "cb_lab.model.tiny_llm",
    "PluginManager": "cb_lab.plugins.base",
    "MetricsCollector": "cb_lab.monitoring.metrics",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


__getattr__, __dir__ = lazy_exports("cb_lab", _EXPORTS, globals())
