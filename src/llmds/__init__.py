# ruff: noqa: F401  (the TYPE_CHECKING imports only inform type checkers)
"""llmds: the data structures of an LLM serving stack.

Top-level names are resolved lazily (PEP 562) so ``import llmds`` imports only
the standard library; numpy/numba load with the first structure you touch and
torch only with the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmds._lazy import lazy_exports

__version__ = "0.2.0"

_EXPORTS = {
    "PagedAllocator": "llmds.paged_allocator",
    "PageStats": "llmds.paged_allocator",
    "KVCache": "llmds.kv_cache",
    "TokenLRU": "llmds.token_lru",
    "IndexedHeap": "llmds.indexed_heap",
    "Scheduler": "llmds.scheduler",
    "AdmissionController": "llmds.admissions",
    "CountMinSketch": "llmds.cmsketch",
    "Tokenizer": "llmds.retrieval.tokenizer",
    "InvertedIndex": "llmds.retrieval.inverted_index",
    "HNSW": "llmds.retrieval.hnsw",
    "RetrievalPipeline": "llmds.retrieval.pipeline",
    "Timer": "llmds.utils",
    "MemoryProfiler": "llmds.utils",
    "MetricsCollector": "llmds.utils",
    "LLMDSError": "llmds.errors",
    "ValidationError": "llmds.errors",
    "CapacityError": "llmds.errors",
    "NotFoundError": "llmds.errors",
    "StateError": "llmds.errors",
    "CorruptFileError": "llmds.errors",
    "EmptyHeapError": "llmds.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


__getattr__, __dir__ = lazy_exports("llmds", _EXPORTS, globals())


if TYPE_CHECKING:  # pragma: no cover
    from llmds.admissions import AdmissionController
    from llmds.cmsketch import CountMinSketch
    from llmds.errors import (
        CapacityError,
        CorruptFileError,
        EmptyHeapError,
        LLMDSError,
        NotFoundError,
        StateError,
        ValidationError,
    )
    from llmds.retrieval.hnsw import HNSW
    from llmds.indexed_heap import IndexedHeap
    from llmds.retrieval.inverted_index import InvertedIndex
    from llmds.kv_cache import KVCache
    from llmds.paged_allocator import PagedAllocator, PageStats
    from llmds.retrieval.pipeline import RetrievalPipeline
    from llmds.scheduler import Scheduler
    from llmds.token_lru import TokenLRU
    from llmds.retrieval.tokenizer import Tokenizer
    from llmds.utils import MemoryProfiler, MetricsCollector, Timer
