"""Least-recently-used cache bounded by a token budget instead of an entry count.

Used for embeddings and retrieval results: each value costs ``token_of(value)``
tokens and the sum over all entries never exceeds ``token_budget``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from llmds._checks import check_int
from llmds.errors import CapacityError, ValidationError

__all__ = ["TokenLRU"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TokenLRU(Generic[K, V]):
    """LRU cache whose capacity is a token budget.

    Parameters
    ----------
    token_budget : int
        Maximum sum of ``token_of(value)`` over the cached values (> 0).
    token_of : callable
        ``value -> int``, the number of tokens a value costs (>= 0); called
        once per ``put``, the result is stored with the entry.
    on_evict : callable, optional
        ``(key, value) -> None``, called for every entry evicted by ``put`` or
        ``evict_until_budget`` (not for replaced values, ``pop`` or ``clear``),
        oldest first, after the cache is already in its final state.

    Notes
    -----
    Recency order: ``put`` and ``get`` make a key the most recent;
    ``in`` / ``__contains__`` does not. Eviction removes least-recent first.
    ``put``/``get`` are O(1) (plus evictions); ``evict_until_budget`` is
    O(number evicted).
    """

    __slots__ = ("_budget", "_token_of", "_on_evict", "_data", "_total")

    def __init__(
        self,
        token_budget: int,
        token_of: Callable[[V], int],
        on_evict: Callable[[K, V], object] | None = None,
    ) -> None:
        token_budget = check_int("token_budget", token_budget, 1)
        if not callable(token_of):
            raise ValidationError(f"token_of must be callable (value -> int), got {token_of!r}")
        if on_evict is not None and not callable(on_evict):
            raise ValidationError(
                f"on_evict must be callable (key, value) or None, got {on_evict!r}"
            )
        self._budget = token_budget
        self._token_of = token_of
        self._on_evict = on_evict
        # {key: (value, tokens)}, least recent first
        self._data: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._total = 0  # invariant: == sum of tokens over _data, <= _budget

    @property
    def token_budget(self) -> int:
        """The budget given at construction."""
        return self._budget

    def put(self, key: K, value: V) -> None:
        """Insert or replace ``key`` as the most recent entry, evicting LRU entries to fit.

        Replacing a key replaces both its value and its token count. Raises
        ``CapacityError`` when ``token_of(value)`` exceeds the whole budget; the
        cache (including any existing entry for ``key``) is then unchanged.
        """
        tokens = self._token_of(value)
        if type(tokens) is not int or tokens < 0:
            tokens = check_int("token_of(value)", tokens, 0)
        if tokens > self._budget:
            raise CapacityError(
                f"value costs {tokens} tokens, more than the whole token_budget={self._budget}; "
                "raise the budget or store a smaller value"
            )
        data = self._data
        try:
            old = data.pop(key, None)
        except TypeError:
            raise ValidationError(f"key must be hashable, got {type(key).__name__}") from None
        total = self._total + tokens
        if old is not None:
            total -= old[1]
        data[key] = (value, tokens)
        self._total = total
        if total > self._budget:
            self._evict_to(self._budget)  # stops before reaching `key`: it alone fits

    def get(self, key: K) -> V | None:
        """Return the value for ``key`` and make it most recent, or ``None`` if absent."""
        data = self._data
        try:
            entry = data.get(key)  # a miss must stay cheap: no KeyError round trip
        except TypeError:
            raise ValidationError(f"key must be hashable, got {type(key).__name__}") from None
        if entry is None:
            return None
        data.move_to_end(key)
        return entry[0]

    def pop(self, key: K, default: V | None = None) -> V | None:
        """Remove ``key`` and return its value (``default`` if absent); no callback."""
        try:
            entry = self._data.pop(key, None)
        except TypeError:
            raise ValidationError(f"key must be hashable, got {type(key).__name__}") from None
        if entry is None:
            return default
        self._total -= entry[1]
        return entry[0]

    def evict_until_budget(self, target_budget: int) -> list[tuple[K, V]]:
        """Evict least-recent entries until ``total_tokens() <= target_budget``.

        Returns the evicted ``(key, value)`` pairs, oldest first. The cache's
        own ``token_budget`` is not changed.
        """
        target_budget = check_int("target_budget", target_budget, 0)
        return self._evict_to(target_budget)

    def _evict_to(self, budget: int) -> list[tuple[K, V]]:
        """Pop least-recent entries until the total is within ``budget``; call ``on_evict``."""
        evicted: list[tuple[K, V]] = []
        data, total = self._data, self._total
        while total > budget:
            k, (v, t) = data.popitem(last=False)
            total -= t
            evicted.append((k, v))
        self._total = total
        if evicted and self._on_evict is not None:
            for k, v in evicted:
                self._on_evict(k, v)
        return evicted

    def total_tokens(self) -> int:
        """Sum of the token counts of the cached values."""
        return self._total

    def size(self) -> int:
        """Number of cached entries."""
        return len(self._data)

    def clear(self) -> None:
        """Drop every entry (``on_evict`` is not called)."""
        self._data.clear()
        self._total = 0

    def keys(self) -> list[K]:
        """Keys from least to most recent (a snapshot)."""
        return list(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        try:
            return key in self._data
        except TypeError:
            return False

    def __repr__(self) -> str:
        return (
            f"TokenLRU(size={len(self._data)}, total_tokens={self._total}, "
            f"token_budget={self._budget})"
        )
