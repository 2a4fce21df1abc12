"""Where a request's blocks go on the pool: one ascending run per request when possible.

The placement policy of :class:`~llmds.engine.kv.block_manager.BlockManager` (the
owner of block tables; nothing else calls this module).  A request whose block
table is one run of consecutive ids has zero-copy K/V views in the arena
(``KVStorage.view``), so the manager keeps runs where it can:

* **Placement.**  A new table without prefix hits takes ``n`` blocks from the
  head of the free list when the head holds a run of consecutive uncached ids
  long enough for the request's *peak* (the blocks it holds at its longest);
  else the first uncached free run by address that holds the peak, else one
  that holds ``n`` (a vectorized scan, O(num_blocks)); else any ``n`` blocks.
  The rest of the chosen run, up to the peak, becomes the request's **room**.
* **Rooms** are blocks taken from the allocator (refcount 1) and held for one
  request's growth: ``[block_table[-1] + 1, seq._room_end)``.  Growth takes
  them first (no allocator call), then the next block if it is free and
  uncached, then any blocks.  Rooms are reclaimable: they count as free
  (``num_free``), and when the allocator runs short of blocks without cached
  content, rooms are released, the most recently placed first, before any
  cached prefix block is evicted or anything is refused.
* Tables that start with prefix hits are not runs in general; their new
  blocks come from the free list in its order and they get no room.

Invariants (checked by the tests): every room block has refcount 1 and is in
no table; ``num_room_blocks`` is the sum of the rooms; a request with a room
has a contiguous table; ``num_tables`` / ``num_contiguous`` count the
non-empty tables of this manager and those that are one ascending run.
"""

from __future__ import annotations

import numpy as np

from llmds.engine.request import RequestState
from llmds.paged_allocator import PagedAllocator, true_runs

__all__ = ["BlockRuns", "is_run"]


def is_run(blocks: list[int]) -> bool:
    """True when ``blocks`` are consecutive ascending ids (an empty table is a run)."""
    return all(b - a == 1 for a, b in zip(blocks, blocks[1:]))


class BlockRuns:
    """Run placement, rooms and contiguity counts for one block manager's tables."""

    __slots__ = ("allocator", "num_blocks", "num_room_blocks", "num_tables", "num_contiguous", "_rooms")

    def __init__(self, allocator: PagedAllocator) -> None:
        self.allocator = allocator
        self.num_blocks = allocator.max_pages
        self.num_room_blocks = 0
        self.num_tables = 0  # non-empty tables
        self.num_contiguous = 0  # ... that are one ascending run
        self._rooms: dict[int, RequestState] = {}  # {id(seq): seq} holding a room, placement order

    @property
    def num_free(self) -> int:
        """Free blocks, counting rooms (reclaimable) and cached free blocks."""
        return self.allocator.num_free + self.num_room_blocks

    def ensure_free(self, n: int) -> None:
        """Release rooms, newest first, until ``n`` free blocks hold no cached content:
        a room is given up before any cached prefix block is evicted."""
        a, rooms = self.allocator, self._rooms
        while rooms and a.num_free - a.num_cached_free < n:
            self._free_room(rooms.popitem()[1])

    def drop_room(self, seq: RequestState) -> None:
        """Give ``seq``'s room back to the allocator (its blocks return ascending)."""
        if seq._room_end:
            del self._rooms[id(seq)]
            self._free_room(seq)

    def _free_room(self, seq: RequestState) -> None:
        self.allocator.free(self._take_room(seq))

    def _take_room(self, seq: RequestState) -> list[int]:
        """Forget ``seq``'s room; returns its blocks (still referenced) for the caller to free."""
        start, end = seq.block_table[-1] + 1, seq._room_end
        self.num_room_blocks -= end - start
        seq._room_end = 0
        return list(range(start, end))

    def free_mask(self) -> np.ndarray:
        """Boolean ``[num_blocks]``: True for free blocks and room blocks."""
        mask = self.allocator.free_mask()
        for seq in self._rooms.values():
            mask[seq.block_table[-1] + 1 : seq._room_end] = True
        return mask

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
            seq._room_end = blocks[-1] + 1 + room
            self._rooms[id(seq)] = seq
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
            contig = is_run(blocks)
            seq._contig = contig
            self.num_tables += 1
            self.num_contiguous += contig

    def release(self, seq: RequestState) -> tuple[list[int], list[int]]:
        """Stop counting ``seq``'s table and room; returns ``(table, room blocks)`` for the caller
        to free in one call (and leaves ``seq.block_table`` empty)."""
        bt = seq.block_table
        room: list[int] = []
        if bt:
            if seq._room_end:
                del self._rooms[id(seq)]
                room = self._take_room(seq)
            self.num_tables -= 1
            self.num_contiguous -= seq._contig
            seq._contig = True
            seq.block_table = []
        return bt, room

    # ----------------------------------------------------------------- growth
    def grow(self, seq: RequestState, k: int) -> None:
        """Append ``k`` blocks to ``seq``'s non-empty table: room, next free block, then any.
        The caller checked ``k <= num_free``."""
        bt = seq.block_table
        end = seq._room_end
        if end:
            last = bt[-1]
            r = min(k, end - last - 1)
            bt.extend(range(last + 1, last + 1 + r))
            self.num_room_blocks -= r
            k -= r
            if last + 1 + r == end:
                seq._room_end = 0
                del self._rooms[id(seq)]
        if not k:
            return
        a = self.allocator
        if seq._contig:
            while k and a.try_take(bt[-1] + 1):
                bt.append(bt[-1] + 1)
                k -= 1
            if not k:
                return
        self.ensure_free(k)
        new = a.alloc(k)
        if seq._contig and not (new[0] == bt[-1] + 1 and is_run(new)):
            seq._contig = False
            self.num_contiguous -= 1
        bt.extend(new)

    def grow_each(self, seqs: list[RequestState]) -> None:
        """One more block for each of ``seqs`` (non-empty tables); the decode fast path.
        The caller checked ``len(seqs) <= num_free``."""
        rest = []
        rooms, used = self._rooms, 0
        for s in seqs:
            end = s._room_end
            if end:
                bt = s.block_table
                p = bt[-1] + 1
                bt.append(p)
                used += 1
                if p + 1 == end:
                    s._room_end = 0
                    del rooms[id(s)]
            elif s._contig and self.allocator.try_take(s.block_table[-1] + 1):
                s.block_table.append(s.block_table[-1] + 1)
            else:
                rest.append(s)
        self.num_room_blocks -= used
        if rest:
            self.ensure_free(len(rest))
            for s, p in zip(rest, self.allocator.alloc(len(rest))):  # one allocator call
                bt = s.block_table
                if s._contig and p != bt[-1] + 1:
                    s._contig = False
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
        if seq._contig:
            if not seq._room_end:
                seq._room_end = extra[-1] + 1
                self._rooms[id(seq)] = seq
            self.num_room_blocks += len(extra)
            return []
        if is_run(bt):
            seq._contig = True
            self.num_contiguous += 1
        return extra
