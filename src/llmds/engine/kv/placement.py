"""Which blocks a request's table gets: the block manager's placement.

:class:`~llmds.engine.kv.block_manager.BlockManager` decides *how many* blocks
each request holds and owns the tables; its placement decides *which* ones.
Two placements exist:

* :class:`FreeListPlacement`, the engine's: new blocks come in the allocator's
  free-list order, as in nano-vllm and vLLM;
* :class:`~llmds.kv_arena.runs.RunPlacement`, the CortexStream arena's: each
  table is one run of consecutive blocks where the pool allows, with a growth
  room held behind it, so the arena's K/V views are zero-copy slices.

The engine reads K/V through block tables (the paged decode kernel, and a
gather for a prefill chunk whose table is not one run), so runs gain it nothing
measurable.  ``bench_engine --engines llmds`` (32 chat requests at once, 3
rounds, medians; 2-core AMD EPYC, no AMX): with runs 218 and 197 tok/s bf16
(rounds 183-225), 141 and 140 fp32, in two runs; with the free list 214 bf16
(rounds 203-215), 139 fp32: within the run-to-run noise (``docs/benchmarks.md``).

Every placement keeps the manager's invariants: a table's blocks are
referenced once by it; blocks a placement holds back for growth (rooms) count
as free (``num_free``) and are given back before anything is refused or a
cached prefix block is evicted (``ensure_free``).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from llmds.engine.request import RequestState
from llmds.memory.paged_allocator import PagedAllocator

__all__ = ["FreeListPlacement", "Placement", "is_run"]


def is_run(blocks: list[int]) -> bool:
    """True when ``blocks`` are consecutive ascending ids (an empty table is a run)."""
    return all(b - a == 1 for a, b in zip(blocks, blocks[1:]))


class Placement(Protocol):
    """What a block manager asks of its placement (the caller checks ``num_free`` first)."""

    @property
    def num_free(self) -> int:
        """Free blocks, reclaimable ones (cached, rooms) included."""

    def ensure_free(self, n: int) -> None:
        """Make ``n`` free blocks hold no cached content, if rooms can be given back."""

    def place(self, seq: RequestState, n: int, peak: int) -> None:
        """Give an empty ``seq`` a table of ``n`` new blocks (``peak``: its longest table)."""

    def adopt(self, seq: RequestState, blocks: list[int]) -> None:
        """Make ``blocks`` (already referenced) the table of an empty ``seq``."""

    def grow(self, seq: RequestState, k: int) -> None:
        """Append ``k`` blocks to ``seq``'s non-empty table."""

    def grow_each(self, seqs: list[RequestState]) -> None:
        """Append one block to each non-empty table of ``seqs`` (the decode fast path)."""

    def fork(self, parent: RequestState, child: RequestState, num_shared: int) -> list[tuple[int, int]]:
        """Give an empty ``child`` the first ``num_shared`` blocks of ``parent``'s table (already
        referenced) and a new block for each later one; the copies ``(src, dst)`` to make.
        (The engine's placement; the arena's ``RunPlacement`` never forks.)"""

    def release(self, seq: RequestState) -> tuple[list[int], list[int]]:
        """Empty ``seq``'s table; ``(table, held-back blocks)`` for the caller to free."""

    def truncate(self, seq: RequestState, keep: int) -> list[int]:
        """Cut ``seq``'s table to ``keep >= 1`` blocks; the blocks for the caller to free."""

    def free_mask(self) -> np.ndarray:
        """Boolean ``[num_blocks]``: True for free blocks (rooms included)."""

    def is_contiguous(self, seq: RequestState) -> bool:
        """True when ``seq``'s table is one ascending run of block ids."""

    def stats(self) -> dict[str, int]:
        """Placement counters, merged into ``BlockManager.stats()``."""


class FreeListPlacement:
    """Blocks in the allocator's free-list order; no runs, no rooms (the engine's placement).

    The free list is FIFO over freed blocks (cached prefix blocks are reclaimed
    least recently freed first), so a fresh pool hands out ascending ids.
    """

    __slots__ = ("allocator", "num_tables")

    def __init__(self, allocator: PagedAllocator) -> None:
        self.allocator = allocator
        self.num_tables = 0  # non-empty tables

    @property
    def num_free(self) -> int:
        return self.allocator.num_free

    def ensure_free(self, n: int) -> None:
        pass  # nothing held back

    def place(self, seq: RequestState, n: int, peak: int) -> None:
        self.adopt(seq, self.allocator.alloc(n))

    def adopt(self, seq: RequestState, blocks: list[int]) -> None:
        seq.block_table = blocks
        if blocks:
            self.num_tables += 1

    def grow(self, seq: RequestState, k: int) -> None:
        seq.block_table.extend(self.allocator.alloc(k))

    def grow_each(self, seqs: list[RequestState]) -> None:
        for s, p in zip(seqs, self.allocator.alloc(len(seqs))):  # one allocator call
            s.block_table.append(p)

    def fork(self, parent: RequestState, child: RequestState, num_shared: int) -> list[tuple[int, int]]:
        bt = parent.block_table
        copies = list(zip(bt[num_shared:], self.allocator.alloc(len(bt) - num_shared)))
        self.adopt(child, bt[:num_shared] + [dst for _, dst in copies])
        return copies

    def release(self, seq: RequestState) -> tuple[list[int], list[int]]:
        bt = seq.block_table
        if bt:
            self.num_tables -= 1
            seq.block_table = []
        return bt, []

    def truncate(self, seq: RequestState, keep: int) -> list[int]:
        bt = seq.block_table
        extra = bt[keep:]
        del bt[keep:]
        return extra

    def free_mask(self) -> np.ndarray:
        return self.allocator.free_mask()

    def is_contiguous(self, seq: RequestState) -> bool:
        return is_run(seq.block_table)

    def stats(self) -> dict[str, int]:
        return {"block_tables": self.num_tables}
