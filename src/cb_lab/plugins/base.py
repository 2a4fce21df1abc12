"""Plugin base classes and manager of cb_lab (defined in :mod:`llmds.engine.plugins`)."""

from llmds.engine.plugins import (
    AttentionPlugin,
    AttentionRecord,
    CachePlugin,
    PluginManager,
    SchedulerPlugin,
)

__all__ = ["SchedulerPlugin", "AttentionPlugin", "CachePlugin", "AttentionRecord", "PluginManager"]
