"""Step and request metrics of cb_lab (defined in :mod:`llmds.engine.lab_metrics`)."""

from llmds.engine.lab_memory import MemoryProfiler
from llmds.engine.lab_metrics import MetricsCollector, RequestMetrics, StepMetrics

__all__ = ["MetricsCollector", "StepMetrics", "RequestMetrics", "MemoryProfiler"]
