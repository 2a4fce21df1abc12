"""Block tables of the KV arena: placement, growth rooms and reservations on a ``PagedAllocator``.

Torch-free bookkeeping behind :class:`llmds.engine.kv_arena.TensorKVCache`
(which owns the tensors).  Invariants, checked by ``tests/test_kv_arena.py``:

* every live request owns ``ceil(used / block_size)`` blocks, refcount 1, no block in two tables;
* ``reserved == sum(cap_blocks - len(blocks))`` over requests admitted with ``reserve=True``;
* ``room[p]`` is True exactly for the pages ``[blocks[-1] + 1, room_end)`` of some live request
  (its planned growth run); rooms are disjoint.

Placement keeps a request's blocks one run, so its K/V views are zero-copy: the
prompt blocks go at the start of the first free run (skipping other rooms and
cached prefix pages) that holds the request's whole cap, else its prompt; the
rest of that run, up to the cap, becomes its room.  Growth takes the adjacent
page when it is free, uncached and not another request's room; otherwise it
takes spare pages (outside rooms, uncached; ``alloc`` as the last resort) and
the request's views become gathered copies.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable

import numpy as np

from llmds.errors import NotFoundError, StateError
from llmds.paged_allocator import PagedAllocator, true_runs

__all__ = ["ArenaBlockTables", "SeqBlocks"]


class SeqBlocks:
    """One request's blocks; ``len(blocks) == ceil(used / block_size)`` always."""

    __slots__ = (
        "blocks",
        "used",
        "cap",
        "cap_blocks",
        "reserved",
        "contiguous",
        "room_end",
        "table",
    )

    def __init__(
        self, blocks: list[int], used: int, cap: int, cap_blocks: int, reserved: bool, room_end: int
    ) -> None:
        self.blocks = blocks
        self.used = used
        self.cap = cap  # max tokens (hard cap)
        self.cap_blocks = cap_blocks
        self.reserved = reserved  # cap_blocks - len(blocks) is counted in the tables' reservations
        self.contiguous = all(b == a + 1 for a, b in zip(blocks, blocks[1:], strict=False))
        self.room_end = room_end  # pages [blocks[-1] + 1, room_end) are this request's growth room
        self.table = None  # owner's cache of the table as a tensor; reset on growth


class ArenaBlockTables:
    """Per-request block tables on ``allocator``; mutations are serialized by ``cond``'s lock."""

    __slots__ = (
        "allocator",
        "block_size",
        "num_blocks",
        "seqs",
        "reserved",
        "room",
        "cond",
        "free_generation",
    )

    def __init__(self, allocator: PagedAllocator) -> None:
        self.allocator = allocator
        self.block_size = allocator.page_size
        self.num_blocks = allocator.max_pages
        self.seqs: dict[Hashable, SeqBlocks] = {}
        self.reserved = 0
        self.room = np.zeros(self.num_blocks, dtype=bool)
        self.cond = threading.Condition(threading.RLock())
        self.free_generation = 0  # bumped by every free that released something

    def available_blocks(self) -> int:
        """Free blocks not promised to a reserved request's growth."""
        return max(0, self.allocator.num_free - self.reserved)

    def get(self, request_id) -> SeqBlocks:
        try:
            return self.seqs[request_id]
        except (KeyError, TypeError):
            raise NotFoundError(
                f"request {request_id!r} has no KV blocks; allocate_for() it first"
            ) from None

    # ------------------------------------------------------------ mutations
    def allocate(self, request_id: Hashable, prompt: int, cap: int, reserve: bool) -> bool:
        bs = self.block_size
        pb, cb = -(-prompt // bs), -(-cap // bs)
        with self.cond:
            if request_id in self.seqs:
                raise StateError(
                    f"request {request_id!r} already has KV blocks; free_for() it first"
                )
            if cb > self.num_blocks or (cb if reserve else pb) > self.available_blocks():
                return False
            blocks, room_end = self._place(pb, cb)
            self.seqs[request_id] = SeqBlocks(blocks, prompt, cap, cb, reserve, room_end)
            if reserve:
                self.reserved += cb - pb
            return True

    def append(self, request_id: Hashable, n: int) -> bool:
        with self.cond:
            seq = self.get(request_id)
            used = seq.used + n
            if used > seq.cap:
                return False
            k = -(-used // self.block_size) - len(seq.blocks)
            if k > 0:
                # a reserved request draws on its own promise; others may not touch promised blocks
                free = self.allocator.num_free if seq.reserved else self.available_blocks()
                if k > free:
                    return False
                self._grow(seq, k)
                if seq.reserved:
                    self.reserved -= k
            seq.used = used
            return True

    def free(self, request_id: Hashable) -> bool:
        with self.cond:
            seq = self.seqs.get(request_id)
            if seq is None:
                return False
            self.allocator.free(seq.blocks)  # raises (changing nothing) if someone else freed them
            del self.seqs[request_id]
            if seq.reserved:
                self.reserved -= seq.cap_blocks - len(seq.blocks)
            self._drop_room(seq)
            self.free_generation += 1
            self.cond.notify_all()
            return True

    def wait_for_free(self, generation: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.free_generation != generation, timeout=timeout)

    # ------------------------------------------------------------ placement
    def _place(self, pb: int, cb: int) -> tuple[list[int], int]:
        """Take ``pb`` blocks for a request with a ``cb``-block cap; returns (blocks, room_end).

        Caller checked ``pb <= allocator.num_free``.  O(num_blocks), vectorized.
        """
        a = self.allocator
        mask = a.free_mask()
        mask &= ~self.room
        if a.num_cached_free:  # leave reusable prefix blocks to their owner
            mask &= ~a.cached_mask()
        starts, lengths = true_runs(mask)
        ok = np.flatnonzero(lengths >= cb)
        if not ok.size:
            ok = np.flatnonzero(lengths >= pb)
        if ok.size:
            s, n = int(starts[ok[0]]), int(lengths[ok[0]])
            for p in range(s, s + pb):
                a.take(p)  # free and uncached: take() is a plain O(1) allocation
            room_end = min(s + n, s + cb)
            self.room[s + pb : room_end] = True
            return list(range(s, s + pb)), room_end
        blocks = a.alloc_contiguous(pb)
        return (blocks if blocks is not None else a.alloc(pb)), 0

    def _grow(self, seq: SeqBlocks, k: int) -> None:
        """Append ``k`` blocks to ``seq`` (caller checked ``k <= allocator.num_free``)."""
        a, blocks = self.allocator, seq.blocks
        seq.table = None
        while k and seq.contiguous:
            p = blocks[-1] + 1
            if (
                p >= self.num_blocks
                or not a.is_free(p)
                or a.is_cached(p)
                or (self.room[p] and p >= seq.room_end)
            ):
                break
            a.take(p)
            self.room[p] = False
            blocks.append(p)
            k -= 1
        if k:
            self._drop_room(seq)
            new = self._spare_pages(k)
            seq.contiguous = seq.contiguous and new == list(
                range(blocks[-1] + 1, blocks[-1] + 1 + k)
            )
            blocks.extend(new)

    def _drop_room(self, seq: SeqBlocks) -> None:
        if seq.room_end > seq.blocks[-1] + 1:
            self.room[seq.blocks[-1] + 1 : seq.room_end] = False
        seq.room_end = 0

    def _spare_pages(self, k: int) -> list[int]:
        """Take ``k`` free pages, first those outside every room and not cached (free-list order).

        The slow path of growth (the adjacent page was unavailable): O(num_free).
        Only when too few such pages exist does it fall back to ``alloc``, which
        may take another request's room or reclaim a cached page.
        """
        a, room = self.allocator, self.room
        check_cached = a.num_cached_free > 0
        out: list[int] = []
        for p in a.free_pages():
            if not room[p] and not (check_cached and a.is_cached(p)):
                out.append(p)
                if len(out) == k:
                    break
        for p in out:
            a.take(p)
        if len(out) < k:
            out += a.alloc(k - len(out))
        return out
