"""cb_lab: continuous batching, step by step, on llmds's engine core.

The teaching code (``TinyLLM``, dense and paged KV caches, ragged batches,
plugins, monitoring, its errors) lives here at its reference's import paths
(``cb_lab.core.scheduler.Scheduler``, ``cb_lab.core.request.Request``, ...).
Which request computes how many tokens each step is decided by
``llmds.engine``'s planner and, with a ``BlockManager``, its block tables hold
the paged caches' K/V.  cb_lab imports llmds; llmds never imports cb_lab.
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
