"""What the KV arena reports: :class:`KVArenaStats`, and text dumps in the CortexStream
guide's formats (``dumpCacheStats`` and ``dumpBlockMap``).

Kept apart from the arena so the formats are easy to find and test; no torch here.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["KVArenaStats", "block_runs", "block_map_text", "stats_text"]

_MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class KVArenaStats:
    """A snapshot of the arena (pool-level counts include other users of the block manager)."""

    num_sequences: int
    used_tokens: int  # sum over this arena's requests
    allocated_blocks: int  # pool-wide, growth rooms included
    free_blocks: int  # pool-wide, growth rooms included (they are reclaimable)
    reserved_blocks: int  # promised to requests' growth, not yet in their tables
    total_allocated_bytes: int
    total_free_bytes: int
    fragmentation: float
    contiguous_sequences: int  # requests whose views are zero-copy


def block_runs(blocks: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive runs of a block table as ``(first_block, count)``, table order."""
    runs: list[tuple[int, int]] = []
    for b in blocks:
        if runs and b == runs[-1][0] + runs[-1][1]:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((b, 1))
    return runs


def stats_text(cache, seqs: Sequence[tuple[Hashable, int, int, Sequence[int]]]) -> str:
    """The guide's ``dumpCacheStats`` text.

    ``seqs``: ``(request_id, used_tokens, max_tokens, block_table)`` per request.
    A request's blocks print as ``[first, +count]``, one bracket per
    consecutive run (a single bracket when its views are zero-copy).
    """
    lines = [
        "=== KVCache Statistics ===",
        "Configuration:",
        f"  Layers: {cache.num_layers}, Heads: {cache.num_kv_heads}, HeadDim: {cache.head_dim}",
        f"  BlockSize: {cache.block_size}, TotalBlocks: {cache.num_blocks}",
        "Allocation State:",
        f"  Allocated sequences: {len(seqs)}",
        f"  Total allocated: {cache.total_allocated_bytes / _MB:.2f} MB",
        f"  Total free: {cache.total_free_bytes / _MB:.2f} MB",
        f"  Fragmentation: {cache.fragmentation():.2f}",
        "Sequences:",
    ]
    for rid, used, cap, blocks in seqs:
        runs = " ".join(f"[{s}, +{n}]" for s, n in block_runs(blocks))
        lines.append(f"  {rid}: {used}/{cap} tokens, blocks {runs}")
    return "\n".join(lines) + "\n"


def block_map_text(used: np.ndarray, fragmentation: float, width: int = 64) -> str:
    """The guide's ``dumpBlockMap`` text: ``X`` per used block, ``.`` per free one."""
    n_used = int(used.sum())
    chars = np.where(used, "X", ".")
    lines = [
        "KVBlockAllocator State:",
        f"  Total blocks: {used.size}",
        f"  Used: {n_used} Free: {used.size - n_used}",
        f"  Fragmentation: {fragmentation:.2f}",
        "  Block map (. = free, X = used):",
    ]
    lines += ["    " + "".join(chars[i : i + width]) for i in range(0, used.size, width)]
    return "\n".join(lines) + "\n"
