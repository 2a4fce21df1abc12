"""Built-in cb_lab plugins (defined in :mod:`llmds.engine.plugins`)."""

from llmds.engine.plugins import (
    AttentionVisualizationPlugin,
    CacheCompressionPlugin,
    LoggingPlugin,
    MetricsPlugin,
)

__all__ = [
    "LoggingPlugin",
    "MetricsPlugin",
    "CacheCompressionPlugin",
    "AttentionVisualizationPlugin",
]
