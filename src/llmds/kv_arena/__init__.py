"""The CortexStream KV arena: a request-keyed API over the engine's block manager and KV storage.

    arena.py     TensorKVCache: allocate_for / append_tokens / free_for, views, block map
    runs.py      RunPlacement: each table one run of blocks with a growth room (zero-copy views)
    policies.py  what to do when the arena is full (wait, reject, shrink the cap)
    _report.py   the guide's dumpCacheStats / dumpBlockMap text

The engine never imports this package; cb_lab does (its ``PagedKVCache(pool=...)``).
"""

from __future__ import annotations

from llmds._lazy import lazy_exports

_EXPORTS = {
    "TensorKVCache": "llmds.kv_arena.arena",
    "KVArenaStats": "llmds.kv_arena.arena",
    "RunPlacement": "llmds.kv_arena.runs",
    "AllocationGrant": "llmds.kv_arena.policies",
    "AllocationPolicy": "llmds.kv_arena.policies",
    "allocate_with_policy": "llmds.kv_arena.policies",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports("llmds.kv_arena", _EXPORTS, globals())
