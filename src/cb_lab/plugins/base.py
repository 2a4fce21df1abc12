"""Plugin hooks of the cb_lab scheduler and the manager that dispatches them.

The scheduler calls the manager at these points of every ``step()``, in order::

    before_step(scheduler)
      on_attention(scheduler, record)                once per forward pass
      before_append(cache, k, v) / after_append(...)  per request whose KV grows
      on_request_finished(scheduler, request)        per request that finished
    after_step(scheduler, stats)

and ``on_request_added(scheduler, request)`` from ``add_request`` (a request
with ``max_new_tokens=0`` gets ``on_request_finished`` right after).  Within a
hook point, plugins run in registration order.  A plugin's exception is not
swallowed: it propagates out of the scheduler call.  The built-in plugins are
in :mod:`cb_lab.plugins.builtin`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from cb_lab.exceptions import ValidationError

__all__ = ["SchedulerPlugin", "AttentionPlugin", "CachePlugin", "AttentionRecord", "PluginManager"]


class _Plugin:
    def get_name(self) -> str:
        return type(self).__name__

    def configure(self, config: dict[str, Any]) -> None:
        """Apply a config dict: each key must name an existing attribute."""
        for key, value in config.items():
            if key.startswith("_") or not hasattr(self, key):
                raise ValidationError(f"{self.get_name()} has no setting {key!r}")
            setattr(self, key, value)


class SchedulerPlugin(_Plugin):
    """Scheduler life-cycle hooks (all optional no-ops)."""

    def before_step(self, scheduler: Any) -> None: ...

    def after_step(self, scheduler: Any, step_stats: dict[str, Any]) -> None: ...

    def on_request_added(self, scheduler: Any, request: Any) -> None: ...

    def on_request_finished(self, scheduler: Any, request: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class AttentionRecord:
    """One forward pass's attention, as the scheduler ran it.

    ``weights`` is ``[heads, N, M]`` for N query tokens over M keys (the
    requests' cached keys, then the N new ones); ``q_seq``/``q_pos`` and
    ``k_seq``/``k_pos`` ([N], [M] int64) give each row's and column's request
    index (into ``req_ids``) and position (-1 for cached keys).
    """

    step_id: int
    req_ids: tuple
    q_seq: torch.Tensor
    q_pos: torch.Tensor
    k_seq: torch.Tensor
    k_pos: torch.Tensor
    weights: torch.Tensor


class AttentionPlugin(_Plugin):
    """Receives the attention probabilities of every forward pass."""

    def on_attention(self, scheduler: Any, record: AttentionRecord) -> None: ...


class CachePlugin(_Plugin):
    """Hooks around every KV append; ``after_append`` may modify the cache (e.g. compress it)."""

    def before_append(self, cache: Any, k_new: torch.Tensor, v_new: torch.Tensor) -> None: ...

    def after_append(self, cache: Any, k_new: torch.Tensor, v_new: torch.Tensor) -> None: ...


class PluginManager:
    """Registered plugins by kind, their configs, and dispatch to the hooks."""

    def __init__(self) -> None:
        self.scheduler_plugins: list[SchedulerPlugin] = []
        self.attention_plugins: list[AttentionPlugin] = []
        self.cache_plugins: list[CachePlugin] = []
        self.plugin_configs: dict[str, dict[str, Any]] = {}

    def _register(self, plugins: list, plugin, kind: type, config) -> None:
        if not isinstance(plugin, kind):
            raise ValidationError(f"expected a {kind.__name__}, got {type(plugin).__name__}")
        if any(p is plugin for p in plugins):
            raise ValidationError(f"{plugin.get_name()} is already registered")
        if config:
            plugin.configure(config)
            self.plugin_configs[plugin.get_name()] = dict(config)
        plugins.append(plugin)

    def register_scheduler_plugin(
        self, plugin: SchedulerPlugin, config: dict | None = None
    ) -> None:
        self._register(self.scheduler_plugins, plugin, SchedulerPlugin, config)

    def register_attention_plugin(
        self, plugin: AttentionPlugin, config: dict | None = None
    ) -> None:
        self._register(self.attention_plugins, plugin, AttentionPlugin, config)

    def register_cache_plugin(self, plugin: CachePlugin, config: dict | None = None) -> None:
        self._register(self.cache_plugins, plugin, CachePlugin, config)

    def get_plugin_config(self, plugin_name: str) -> dict[str, Any]:
        return dict(self.plugin_configs.get(plugin_name, {}))

    def set_plugin_config(self, plugin_name: str, config: dict[str, Any]) -> None:
        """Store ``config`` and apply it to every registered plugin of that name."""
        if not isinstance(config, dict):
            raise ValidationError(f"config must be a dict, got {type(config).__name__}")
        for p in self._all():
            if p.get_name() == plugin_name:
                p.configure(config)
        self.plugin_configs[plugin_name] = dict(config)

    def list_plugins(self) -> dict[str, list[str]]:
        return {
            "scheduler": [p.get_name() for p in self.scheduler_plugins],
            "attention": [p.get_name() for p in self.attention_plugins],
            "cache": [p.get_name() for p in self.cache_plugins],
        }

    def _all(self):
        return [*self.scheduler_plugins, *self.attention_plugins, *self.cache_plugins]

    # ----------------------------------------------------------- dispatch
    def before_step(self, scheduler) -> None:
        for p in self.scheduler_plugins:
            p.before_step(scheduler)

    def after_step(self, scheduler, stats: dict[str, Any]) -> None:
        for p in self.scheduler_plugins:
            p.after_step(scheduler, stats)

    def request_added(self, scheduler, request) -> None:
        for p in self.scheduler_plugins:
            p.on_request_added(scheduler, request)

    def request_finished(self, scheduler, request) -> None:
        for p in self.scheduler_plugins:
            p.on_request_finished(scheduler, request)

    def attention(self, scheduler, record: AttentionRecord) -> None:
        for p in self.attention_plugins:
            p.on_attention(scheduler, record)

    def append(self, cache, k_new: torch.Tensor, v_new: torch.Tensor) -> None:
        """``cache.append(k_new, v_new)`` wrapped in the cache plugins' hooks."""
        for p in self.cache_plugins:
            p.before_append(cache, k_new, v_new)
        cache.append(k_new, v_new)
        for p in self.cache_plugins:
            p.after_append(cache, k_new, v_new)
