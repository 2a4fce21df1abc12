"""The result cache of a :class:`~llmds.retrieval.pipeline.RetrievalPipeline`."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from llmds.memory.token_lru import TokenLRU

__all__ = ["ResultCache"]

Results = list[tuple[int, float]]


class ResultCache:
    """Result lists in a :class:`~llmds.memory.token_lru.TokenLRU` of ``budget`` tokens (0 disables).

    An entry costs ``1 + len(results)``.  The pipeline's keys end with the index
    generation, so results of an index that has changed since are never served.
    Not thread-safe (the pipeline holds its lock); ``hits`` / ``misses`` count lookups.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._lru: TokenLRU | None = TokenLRU(budget, _result_tokens) if budget else None
        self.hits = 0
        self.misses = 0

    def lookup(self, keys: list[Hashable]) -> list[Results | None]:
        """The cached results of each key (a fresh list), None where there are none."""
        out: list[Results | None] = [None] * len(keys)
        if self._lru is not None:
            get = self._lru.get
            for i, key in enumerate(keys):
                hit = get(key)
                if hit is not None:
                    out[i] = list(hit)
        missed = out.count(None)
        self.hits += len(keys) - missed
        self.misses += missed
        return out

    def put(self, key: Hashable, results: Results) -> None:
        if self._lru is not None:
            self._lru.put(key, tuple(results))

    def clear(self) -> None:
        if self._lru is not None and len(self._lru):
            self._lru.clear()

    def stats(self) -> dict[str, Any]:
        lru = self._lru
        return {"enabled": lru is not None, "entries": len(lru) if lru is not None else 0,
                "tokens": lru.total_tokens() if lru is not None else 0,
                "token_budget": self.budget, "hits": self.hits, "misses": self.misses}


def _result_tokens(results: tuple) -> int:
    """Cache cost of one result list: one unit per hit plus one for the entry."""
    return 1 + len(results)
