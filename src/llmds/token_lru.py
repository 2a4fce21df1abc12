"""Seed import path of :mod:`llmds.memory.token_lru`, where the module lives."""

from llmds.memory.token_lru import TokenLRU  # noqa: F401
