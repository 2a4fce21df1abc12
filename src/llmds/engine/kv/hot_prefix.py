"""Hot prefixes stay cached: Count-Min counts of prompt-prefix blocks, and pins for the hot ones.

Every prompt's full blocks are counted by their chain keys (block ``i``'s key names the whole
prefix ``[0, (i + 1) * block_size)``, as in the prefix index) in a :class:`CountMinSketch`.  The
*hot prefix* of a prompt is its longest run of leading blocks whose estimate reaches
``threshold``: a system prompt shared by many requests, not the user text after it.  Once a
request has computed its prompt, its hot prefix is pinned in the block manager, so eviction
under memory pressure takes cold blocks first.

Bounded: pinned blocks never exceed ``max_pinned_blocks``; a hotter prefix displaces the coldest
pinned one.  Cooling: counts live in two windows of ``window`` prompts (estimate = current +
previous); at each rotation the older window is dropped and prefixes that fell below the
threshold are unpinned.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from llmds.sketches.cmsketch import CountMinSketch
from llmds.errors import CapacityError, StateError
from llmds.memory.prefix_cache import prefix_keys

__all__ = ["HotPrefixes"]


class HotPrefixes:
    """Counts prompt prefixes and pins the hot ones through ``pin(tokens)`` / ``unpin(blocks)``.

    Parameters
    ----------
    block_size : int
    threshold : int
        Estimate at which a prefix block is hot (>= 1).
    max_pinned_blocks : int
        Blocks all pins together may hold.
    pin, unpin : callables
        ``Planner.pin_prefix`` / ``Planner.unpin`` (the planner checks that pins never leave a
        live request unable to finish).
    window : int
        Prompts per counting window.
    """

    def __init__(self, block_size: int, threshold: int, max_pinned_blocks: int, pin, unpin,
                 window: int = 256) -> None:
        self.block_size = block_size
        self.threshold = threshold
        self.max_pinned_blocks = max_pinned_blocks
        self._pin, self._unpin = pin, unpin
        self.window = window
        self._cur = CountMinSketch(4096, 4, seed=1, conservative=True)
        self._prev = CountMinSketch(4096, 4, seed=1, conservative=True)
        self._seen = 0
        self.pinned: dict[int, tuple[list[int], list[int]]] = {}  # {last chain key: (keys, block ids)}
        self.num_pins = 0
        self.num_unpins = 0

    @property
    def num_pinned_blocks(self) -> int:
        """Distinct blocks held by pins (nested prefixes share their leading blocks)."""
        return len({b for _, blocks in self.pinned.values() for b in blocks})

    def keys_of(self, token_ids: Sequence[int]) -> list[int]:
        """Chain keys of the prompt's full blocks, leaving its last token out (it is never cached)."""
        return prefix_keys(token_ids, self.block_size, (len(token_ids) - 1) // self.block_size)

    def observe(self, keys: list[int]) -> None:
        """Count one prompt's prefix blocks."""
        if not keys:
            return
        self._cur.add_many(np.asarray(keys, dtype=np.int64))
        self._seen += 1
        if self._seen >= self.window:
            self._rotate()

    def _estimates(self, keys: list[int]) -> np.ndarray:
        arr = np.asarray(keys, dtype=np.int64)
        return self._cur.estimate_many(arr) + self._prev.estimate_many(arr)

    def hot_length(self, keys: list[int]) -> int:
        """Leading blocks of this prompt whose estimate reaches the threshold."""
        if not keys or self.threshold <= 0:
            return 0
        cold = np.flatnonzero(self._estimates(keys) < self.threshold)
        return int(cold[0]) if cold.size else len(keys)

    def maybe_pin(self, token_ids: Sequence[int], keys: list[int]) -> None:
        """Pin the hot prefix of a prompt whose KV is computed (call between steps)."""
        j = self.hot_length(keys)
        if j == 0 or keys[j - 1] in self.pinned or any(keys[j - 1] in ks for ks, _ in self.pinned.values()):
            return  # already pinned, alone or as the head of a longer pinned prefix
        heat = int(self._estimates(keys[j - 1:j])[0])
        while self.pinned and self.num_pinned_blocks + j > self.max_pinned_blocks:
            coldest = min(self.pinned, key=lambda k: int(self._estimates([k])[0]))
            if int(self._estimates([coldest])[0]) >= heat:
                return  # everything pinned is at least as hot
            self._drop(coldest)
        if j > self.max_pinned_blocks:
            return
        try:
            blocks = self._pin(list(token_ids[: j * self.block_size]))
        except (CapacityError, StateError):
            return
        if blocks:
            # a shorter pinned prefix of this one is subsumed: its blocks are this pin's head
            for key in keys[:j - 1]:
                if key in self.pinned:
                    self._drop(key)
            self.pinned[keys[j - 1]] = (keys[:j], blocks)
            self.num_pins += 1

    def _drop(self, key: int) -> None:
        _, blocks = self.pinned.pop(key)
        self._unpin(blocks)
        self.num_unpins += 1

    def _rotate(self) -> None:
        self._prev, self._cur = self._cur, self._prev
        self._cur.reset()
        self._seen = 0
        for key in [k for k in self.pinned if int(self._estimates([k])[0]) < self.threshold]:
            self._drop(key)

    def clear(self) -> None:
        for key in list(self.pinned):
            self._drop(key)
