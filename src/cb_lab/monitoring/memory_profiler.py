"""Memory profilers of cb_lab (defined in :mod:`llmds.engine.lab_memory`)."""

from llmds.engine.lab_memory import (
    DetailedMemoryProfiler,
    MemoryLeakDetector,
    MemoryProfiler,
    MemorySnapshot,
)

__all__ = ["MemoryProfiler", "DetailedMemoryProfiler", "MemorySnapshot", "MemoryLeakDetector"]
