"""Runs of True in a boolean mask, vectorized: free runs of a pool, fragmentation, run placement."""

from __future__ import annotations

import numpy as np

__all__ = ["first_run", "longest_run", "true_runs"]


def true_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of the runs of True in a boolean mask."""
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    d = np.diff(padded)
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)
    return starts, ends - starts


def longest_run(mask: np.ndarray) -> int:
    """Length of the longest run (0 when there is none)."""
    _, lengths = true_runs(mask)
    return int(lengths.max()) if lengths.size else 0


def first_run(mask: np.ndarray, n: int) -> int:
    """Start of the first run of at least ``n`` (-1 when there is none)."""
    starts, lengths = true_runs(mask)
    ok = np.flatnonzero(lengths >= n)
    return int(starts[ok[0]]) if ok.size else -1
