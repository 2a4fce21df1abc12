"""Seed import path of :mod:`llmds.scheduling.indexed_heap`, where the module lives."""

from llmds.scheduling.indexed_heap import EmptyHeapError, IndexedHeap  # noqa: F401
