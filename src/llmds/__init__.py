# ruff: noqa: F401  (the TYPE_CHECKING imports only inform type checkers)
"""llmds: the data structures of an LLM serving stack, and a serving engine built from them.

Subsystems, one package each: ``memory`` (the block pool, the prefix index, the seed KVCache,
TokenLRU), ``scheduling`` (IndexedHeap, the seed Scheduler, AdmissionController),
``sketches`` (CountMinSketch, HeavyHitters), ``retrieval`` (BM25, HNSW, fusion, the hybrid
pipeline), ``engine`` (LLMEngine: ``sched/`` the step planner, ``kv/`` the block manager and
the K/V tensors), ``kv_arena`` (the CortexStream arena), ``server`` (the OpenAI-compatible
server); ``cli``.  The other top-level modules are the seed's import paths, one-line
re-exports (``llmds.kv_cache``, ``llmds.hnsw``, ...), and the shared ``errors``, ``utils``.

Top-level names are resolved lazily (PEP 562) so ``import llmds`` imports only
the standard library; numpy/numba load with the first structure you touch and
torch only with the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmds._lazy import lazy_exports

__version__ = "0.2.0"

_EXPORTS = {
    "PagedAllocator": "llmds.memory.paged_allocator",
    "PageStats": "llmds.memory.paged_allocator",
    "KVCache": "llmds.memory.kv_cache",
    "TokenLRU": "llmds.memory.token_lru",
    "IndexedHeap": "llmds.scheduling.indexed_heap",
    "Scheduler": "llmds.scheduling.scheduler",
    "AdmissionController": "llmds.scheduling.admissions",
    "CountMinSketch": "llmds.sketches.cmsketch",
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
    from llmds.scheduling.admissions import AdmissionController
    from llmds.sketches.cmsketch import CountMinSketch
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
    from llmds.scheduling.indexed_heap import IndexedHeap
    from llmds.retrieval.inverted_index import InvertedIndex
    from llmds.memory.kv_cache import KVCache
    from llmds.memory.paged_allocator import PagedAllocator, PageStats
    from llmds.retrieval.pipeline import RetrievalPipeline
    from llmds.scheduling.scheduler import Scheduler
    from llmds.memory.token_lru import TokenLRU
    from llmds.retrieval.tokenizer import Tokenizer
    from llmds.utils import MemoryProfiler, MetricsCollector, Timer
