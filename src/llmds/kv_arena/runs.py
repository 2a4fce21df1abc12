"""Run placement: each block table one run of consecutive blocks, with a growth room.

The CortexStream arena's placement for its :class:`~llmds.engine.kv.block_manager.BlockManager`
(``BlockManager(..., placement=RunPlacement)``; the protocol is
:class:`~llmds.engine.kv.placement.Placement`).  A request whose block table is one run of
consecutive ids has zero-copy K/V views (``KVStorage.view``), so this placement keeps runs
where it can.  The engine does not use it: it reads K/V through block tables, and runs gave it
nothing measurable (:mod:`llmds.engine.kv.placement`).

* **Placement.**  A new table without prefix hits takes ``n`` blocks from the
  head of the free list when the head holds a run of consecutive uncached ids
  long enough for the request's *peak* (the blocks it holds at its longest);
  else the first uncached free run by address that holds the peak, else one
  that holds ``n`` (a vectorized scan, O(num_blocks)); else any ``n`` blocks.
  The rest of the chosen run, up to the peak, becomes the request's **room**.
* **Rooms** are blocks taken from the allocator (refcount 1) and held for one
  request's growth: ``[block_table[-1] + 1, room end)``.  Growth takes them
  first (no allocator call), then the next block if it is free and uncached,
  then any blocks.  Rooms are reclaimable: they count as free (``num_free``),
  and when the allocator runs short of blocks without cached content, rooms
  are released, the most recently placed first, before any cached prefix
  block is evicted or anything is refused.
* Tables that start with prefix hits are not runs in general; their new
  blocks come from the free list in its order and they get no room.

The per-request state lives here, keyed by ``id(seq)`` while the table is
non-empty: ``{id: (seq, room end)}`` for requests holding a room (placement
order) and the ids of tables that are not one run.  Invariants (checked by the
tests): every room block has refcount 1 and is in no table; ``num_room_blocks``
is the sum of the rooms; a request with a room has a contiguous table;
``num_tables`` / ``num_contiguous`` count the non-empty tables and those that
are one ascending run.
"""

from __future__ import annotations

import numpy as np

from llmds.engine.kv.placement import is_run
from llmds.engine.request import RequestState
from llmds.memory._runs import true_runs
from llmds.memory.paged_allocator import PagedAllocator

__all__ = ["RunPlacement"]


class RunPlacement:
    """Run placement, rooms and contiguity counts for one block manager's tables."""

    __slots__ = ("allocator", "num_blocks", "num_room_blocks", "num_tables", "num_contiguous",
                 "_rooms", "_split")

    def __init__(self, allocator: PagedAllocator) -> None:
        self.allocator = allocator
        self.num_blocks = allocator.max_pages
        self.num_room_blocks = 0
        self.num_tables = 0  # non-empty tables
        self.num_contiguous = 0  # ... that are one ascending run
        self._rooms: dict[int, tuple[RequestState, int]] = {}  # {id(seq): (seq, room end)}
        self._split: set[int] = set()  # id(seq) of non-empty tables that are not one run

    @property
    def num_free(self) -> int:
        """Free blocks, counting rooms (reclaimable) and cached free blocks."""
        return self.allocator.num_free + self.num_room_blocks

    def ensure_free(self, n: int) -> None:
        """Release rooms, newest first, until ``n`` free blocks hold no cached content:
        a room is given up before any cached prefix block is evicted."""
        a, rooms = self.allocator, self._rooms
        while rooms and a.num_free - a.num_cached_free < n:
            seq, end = rooms.popitem()[1]
            a.free(self._take_room(seq, end))

    def _take_room(self, seq: RequestState, end: int) -> list[int]:
        """The blocks of ``seq``'s room (already out of ``_rooms``), still referenced."""
        start = seq.block_table[-1] + 1
        self.num_room_blocks -= end - start
        return list(range(start, end))

    def room_end(self, seq: RequestState) -> int:
        """One past ``seq``'s room (0 when it holds none)."""
        r = self._rooms.get(id(seq))
        return 0 if r is None else r[1]

    def is_contiguous(self, seq: RequestState) -> bool:
        return id(seq) not in self._split

    def free_mask(self) -> np.ndarray:
        """Boolean ``[num_blocks]``: True for free blocks and room blocks."""
        mask = self.allocator.free_mask()
        for seq, end in self._rooms.values():
            mask[seq.block_table[-1] + 1 : end] = True
        return mask

    def stats(self) -> dict[str, int]:
        return {"block_tables": self.num_tables, "contiguous_tables": self.num_contiguous,
                "room_blocks": self.num_room_blocks}

    # ------------------------------------------------------------ new tables
    def place(self, seq: RequestState, n: int, peak: int) -> None:
        """Give an empty ``seq`` a table of ``n`` new blocks (a run when possible) and a room up
        to ``peak`` blocks.  The caller checked ``n <= num_free``."""
        peak = max(peak, n)
        self.ensure_free(n)
        a = self.allocator
        if a.head_run(peak) == peak:  # O(peak): fresh pools, and tables freed whole, come back ascending
            blocks = a.alloc(n)
            room = peak - n
            if room:
                a.alloc(room)  # the head's next blocks: this run's continuation
        else:
            blocks, room = self._scan(n, peak)
        self.adopt(seq, blocks)
        if room:
            self._rooms[id(seq)] = (seq, blocks[-1] + 1 + room)
            self.num_room_blocks += room

    def _scan(self, n: int, peak: int) -> tuple[list[int], int]:
        a = self.allocator
        mask = a.free_mask()
        if a.num_cached_free:  # leave reusable prefix blocks to the prefix cache
            mask &= ~a.cached_mask()
        starts, lengths = true_runs(mask)
        ok = np.flatnonzero(lengths >= peak)
        if not ok.size:
            ok = np.flatnonzero(lengths >= n)
        if not ok.size:
            return a.alloc(n), 0
        s = int(starts[ok[0]])
        take = min(int(lengths[ok[0]]), peak)
        for p in range(s, s + take):
            a.take(p)  # free and uncached: a plain O(1) allocation
        return list(range(s, s + n)), take - n

    def adopt(self, seq: RequestState, blocks: list[int]) -> None:
        """Make ``blocks`` (already referenced) the table of an empty ``seq``."""
        seq.block_table = blocks
        if blocks:
            self.num_tables += 1
            if is_run(blocks):
                self.num_contiguous += 1
            else:
                self._split.add(id(seq))

    def release(self, seq: RequestState) -> tuple[list[int], list[int]]:
        """Stop counting ``seq``'s table and room; returns ``(table, room blocks)`` for the caller
        to free in one call (and leaves ``seq.block_table`` empty)."""
        bt = seq.block_table
        room: list[int] = []
        if bt:
            key = id(seq)
            r = self._rooms.pop(key, None)
            if r is not None:
                room = self._take_room(seq, r[1])
            self.num_tables -= 1
            if key in self._split:
                self._split.discard(key)
            else:
                self.num_contiguous -= 1
            seq.block_table = []
        return bt, room

    # ----------------------------------------------------------------- growth
    def grow(self, seq: RequestState, k: int) -> None:
        """Append ``k`` blocks to ``seq``'s non-empty table: room, next free block, then any.
        The caller checked ``k <= num_free``."""
        bt, key = seq.block_table, id(seq)
        r = self._rooms.get(key)
        if r is not None:
            end, last = r[1], bt[-1]
            n = min(k, end - last - 1)
            bt.extend(range(last + 1, last + 1 + n))
            self.num_room_blocks -= n
            k -= n
            if last + 1 + n == end:
                del self._rooms[key]
        if not k:
            return
        a = self.allocator
        contig = key not in self._split
        if contig:
            while k and a.try_take(bt[-1] + 1):
                bt.append(bt[-1] + 1)
                k -= 1
            if not k:
                return
        self.ensure_free(k)
        new = a.alloc(k)
        if contig and not (new[0] == bt[-1] + 1 and is_run(new)):
            self._split.add(key)
            self.num_contiguous -= 1
        bt.extend(new)

    def grow_each(self, seqs: list[RequestState]) -> None:
        """One more block for each of ``seqs`` (non-empty tables); the decode fast path.
        The caller checked ``len(seqs) <= num_free``."""
        rest = []
        rooms, split, take, used = self._rooms, self._split, self.allocator.try_take, 0
        for s in seqs:
            bt, key = s.block_table, id(s)
            r = rooms.get(key)
            if r is not None:
                p = bt[-1] + 1
                bt.append(p)
                used += 1
                if p + 1 == r[1]:
                    del rooms[key]
            elif key not in split and take(bt[-1] + 1):
                bt.append(bt[-1] + 1)
            else:
                rest.append(s)
        self.num_room_blocks -= used
        if rest:
            self.ensure_free(len(rest))
            for s, p in zip(rest, self.allocator.alloc(len(rest))):  # one allocator call
                bt, key = s.block_table, id(s)
                if key not in split and p != bt[-1] + 1:
                    split.add(key)
                    self.num_contiguous -= 1
                bt.append(p)

    def truncate(self, seq: RequestState, keep: int) -> list[int]:
        """Cut ``seq``'s table to its first ``keep`` blocks (``keep >= 1``).  Blocks that
        continue a contiguous table go back to its room; the others are returned for the
        caller to free."""
        bt = seq.block_table
        extra = bt[keep:]
        if not extra:
            return []
        del bt[keep:]
        key = id(seq)
        if key not in self._split:
            if key not in self._rooms:
                self._rooms[key] = (seq, extra[-1] + 1)
            self.num_room_blocks += len(extra)
            return []
        if is_run(bt):
            self._split.discard(key)
            self.num_contiguous += 1
        return extra
