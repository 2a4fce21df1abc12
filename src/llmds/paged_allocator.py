"""Seed import path of :mod:`llmds.memory.paged_allocator`, where the module lives."""

from llmds.memory.paged_allocator import PageStats, PagedAllocator  # noqa: F401
