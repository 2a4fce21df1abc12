"""Heavy hitters: a Count-Min Sketch plus a bounded min-heap of the most-counted keys.

The sketch counts every key in O(depth) counters whatever the number of
distinct keys; the heap (an :class:`~llmds.scheduling.indexed_heap.IndexedHeap` keyed by
the key, scored by its estimate) remembers the ``capacity`` keys with the
largest estimates seen so far, so "which keys are hot" needs no scan over all
keys.  Used by ``RetrievalPipeline`` for hot documents and hot queries.

Counting is buffered: ``record`` appends to a plain list and the sketch and heap
are updated in one batch when ``flush_every`` keys are pending or before any
read, so the per-request cost is a list append.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

import numpy as np

from llmds._checks import check_float, check_int
from llmds.sketches.cmsketch import CountMinSketch
from llmds.scheduling.indexed_heap import IndexedHeap

__all__ = ["HeavyHitters"]


class HeavyHitters:
    """Approximate counts of int or str keys and the ``capacity`` hottest keys.

    Parameters
    ----------
    capacity : int
        Keys kept in the hot set (>= 1).
    width, depth, seed : int
        Count-Min parameters (conservative update; estimates never under-count).
    flush_every : int
        Pending keys that trigger a batch update (>= 1).

    Notes
    -----
    A key enters the hot set when its estimate exceeds the smallest estimate
    in a full set (that key leaves). Estimates are refreshed when read, so
    ``hot`` reports current estimates even for keys not recently recorded.
    """

    __slots__ = ("capacity", "flush_every", "_sketch", "_heap", "_members", "_pending")

    def __init__(
        self,
        capacity: int = 1024,
        width: int = 4096,
        depth: int = 4,
        seed: int = 0,
        flush_every: int = 4096,
    ) -> None:
        self.capacity = check_int("capacity", capacity, 1)
        self.flush_every = check_int("flush_every", flush_every, 1)
        self._sketch = CountMinSketch(width, depth, seed=seed, conservative=True)
        self._heap = IndexedHeap()  # min-heap {key: estimate when last updated}
        self._members: set[Hashable] = set()  # the heap's keys (it has no key iterator)
        self._pending: list[Any] = []  # recorded keys not yet counted, in order

    def record(self, keys: Iterable[Any]) -> None:
        """Count each key once (repeats count again)."""
        self._pending.extend(keys)
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Apply pending keys to the sketch and the hot set."""
        keys = self._pending
        if not keys:
            return
        self._pending = []
        ints = all(type(k) is int for k in keys)
        batch: Any = np.array(keys, np.int64) if ints else keys
        self._sketch.add_many(batch)
        uniq = np.unique(batch).tolist() if ints else list(dict.fromkeys(keys))
        est = self._sketch.estimate_many(np.array(uniq, np.int64) if ints else uniq).tolist()
        heap, members = self._heap, self._members
        for k, e in zip(uniq, est):
            if k in members:
                heap.update(k, e)
            elif len(members) < self.capacity:
                heap.push(k, e)
                members.add(k)
            elif e > heap.peek()[0]:
                members.discard(heap.pop()[1])
                heap.push(k, e)
                members.add(k)

    def estimate(self, key: Any) -> int:
        """Estimated count of ``key`` (never below the true count)."""
        self.flush()
        return self._sketch.estimate(key)

    def hot(self, threshold: float) -> list[Any]:
        """Hot-set keys with estimate >= ``threshold``, largest first (ties by key)."""
        threshold = check_float("threshold", threshold, finite=False)
        self.flush()
        if not self._members:
            return []
        keys = list(self._members)
        est = self._sketch.estimate_many(keys).tolist()
        ranked = sorted((-e, k) for k, e in zip(keys, est) if e >= threshold)
        return [k for _, k in ranked]

    def discard(self, key: Any) -> None:
        """Drop ``key`` from the hot set (sketch counts stay); pending records apply first."""
        self.flush()
        if key in self._members:
            self._heap.delete(key)
            self._members.discard(key)

    def total(self) -> int:
        """Number of keys recorded."""
        return self._sketch.get_total_count() + len(self._pending)

    def __len__(self) -> int:
        """Keys in the hot set."""
        self.flush()
        return len(self._members)

    def __repr__(self) -> str:
        hot = len(self._members)
        return f"HeavyHitters(capacity={self.capacity}, hot={hot}, total={self.total()})"
