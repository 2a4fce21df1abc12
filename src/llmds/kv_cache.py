"""Seed import path of :mod:`llmds.memory.kv_cache`, where the module lives."""

from llmds.memory.kv_cache import KVCache  # noqa: F401
