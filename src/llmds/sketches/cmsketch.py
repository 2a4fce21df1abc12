"""Count-Min Sketch (Cormode & Muthukrishnan) with optional conservative update.

Layout: one ``int64`` table of shape ``(depth, width)``. An item is hashed once
to a stable 64-bit key (no salted ``hash()``), then mixed with the seed into
``h1, h2``; row ``i`` uses the column derived from ``h1 + i*h2`` (double
hashing). Estimates never under-count: every counter an item touches is >=
the item's true count, with or without conservative update.

Item keys (stable across processes and machines):
  * ``str`` -> its UTF-8 bytes (so ``"a"`` and ``b"a"`` are the same item);
  * ``bytes``/``bytearray``/``memoryview`` -> FNV-1a 64 over the bytes, mixed
    with the length and finalised with splitmix64;
  * ``int`` (``bool`` as 0/1, numpy integers) -> splitmix64 of its 64-bit two's
    complement pattern (so ``-1`` and ``2**64 - 1`` are the same item); ints
    outside ``[-2**63, 2**64)`` are rejected.

Mixed batches: each item is keyed by its own type, so ``add_many([1, "1", "a"])``
counts the int ``1`` and the string ``"1"`` as two different items, exactly as
``add(1); add("1"); add("a")`` would; a batch of one type takes the fast path,
a mixed one is split by type (one hashing call per type). Anything else (floats, None,
nested lists) raises ``ValidationError`` and counts nothing. A numpy array is
keyed by its dtype: ``np.array([1, "a"])`` is a string array (numpy turned
``1`` into ``"1"``); pass a list, or ``dtype=object``, to keep the int.

The hashing and counting loops are numba kernels (``llmds.sketches._cms_kernels``),
imported on first use and cached on disk, so importing this module does not
import numba. Columns: ``(h1 + i*h2) mod 2**64``, top 32 bits reduced to
``[0, width)`` by multiply-shift (no division).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from llmds._checks import check_bool, check_float, check_int
from llmds.errors import ValidationError

__all__ = ["CountMinSketch"]

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _splitmix64_py(x: int) -> int:
    z = (x + _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


@lru_cache(maxsize=1)
def _kernels() -> Any:
    """The numba kernels module, imported (and compiled or loaded from cache) on first use."""
    from llmds.sketches import _cms_kernels

    return _cms_kernels


def _int_key(item: int) -> int:
    if not (-(1 << 63) <= item <= _MASK64):
        raise ValidationError(f"int items must fit in 64 bits ([-2**63, 2**64)), got {item}")
    return item & _MASK64


def _hash_encoded(encoded: list[bytes]) -> np.ndarray:
    """Keys of byte strings; one join + one kernel pass when no item contains NUL."""
    n = len(encoded)
    keys, ok = _kernels().hash_joined(np.frombuffer(b"\0".join(encoded), dtype=np.uint8), n)
    if ok:
        return keys
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=n), out=offsets[1:])
    buf = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    return _kernels().hash_bytes(buf, offsets)


def _hash_int_array(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind == "u":
        bits = arr.astype(np.uint64, copy=False)
    else:  # signed or bool: two's complement pattern
        bits = arr.astype(np.int64, copy=False).view(np.uint64)
    return _kernels().hash_ints(np.ascontiguousarray(bits))


def _keys_general(items: Sequence[Any]) -> np.ndarray:
    """Per-item path for mixed or unusual inputs; same keys as the fast paths."""
    n = len(items)
    byte_pos: list[int] = []
    byte_vals: list[bytes] = []
    int_pos: list[int] = []
    int_vals: list[int] = []
    for j, item in enumerate(items):
        if isinstance(item, str):
            byte_pos.append(j)
            byte_vals.append(item.encode("utf-8", "surrogatepass"))
        elif isinstance(item, (bytes, bytearray, memoryview)):
            byte_pos.append(j)
            byte_vals.append(bytes(item))
        elif isinstance(item, (int, np.integer)):
            int_pos.append(j)
            int_vals.append(_int_key(int(item)))
        else:
            raise ValidationError(
                f"items must be str, bytes or int, got {type(item).__name__} at position {j}"
            )
    keys = np.empty(n, dtype=np.uint64)
    if byte_pos:
        keys[np.asarray(byte_pos, dtype=np.intp)] = _hash_encoded(byte_vals)
    if int_pos:
        ints = np.asarray(int_vals, dtype=np.uint64)
        keys[np.asarray(int_pos, dtype=np.intp)] = _kernels().hash_ints(ints)
    return keys


def _keys(items: Any) -> np.ndarray:
    """Stable 64-bit keys (uint64[n]) for a batch of items."""
    if isinstance(items, np.ndarray):
        if items.ndim != 1:
            raise ValidationError(f"items array must be 1-D, got shape {items.shape}")
        if items.dtype.kind in "iub":
            return _hash_int_array(items)
        if items.dtype.kind in "USO":
            items = items.tolist()
        else:
            raise ValidationError(f"items array must hold ints or strings, got dtype {items.dtype}")
    elif isinstance(items, (str, bytes, bytearray, memoryview)) or not isinstance(items, Iterable):
        raise ValidationError(
            f"items must be a list of str/bytes/int or a 1-D int array, got {type(items).__name__}"
        )
    elif not isinstance(items, (list, tuple)):
        items = list(items)
    if not items:
        return np.empty(0, dtype=np.uint64)
    first = type(items[0])
    if first is str:
        try:  # UTF-8 never makes a NUL byte except for NUL itself, so NUL can separate items
            joined = "\0".join(items).encode()
        except (TypeError, UnicodeEncodeError):
            joined = None  # mixed types or lone surrogates: per-item path below
        if joined is not None:
            keys, ok = _kernels().hash_joined(np.frombuffer(joined, dtype=np.uint8), len(items))
            if ok:
                return keys
    elif first is bytes:
        try:
            return _hash_encoded(items)  # type: ignore[arg-type]
        except TypeError:
            pass  # mixed types
    elif first is int:
        try:
            arr = np.array(items)
        except (ValueError, TypeError, OverflowError):
            arr = None  # e.g. ints mixed with non-UTF-8 bytes
        if arr is not None and arr.ndim == 1 and arr.dtype.kind in "iub":
            return _hash_int_array(arr)
    return _keys_general(items)


class CountMinSketch:
    """Approximate item counts in ``depth * width`` counters.

    Parameters
    ----------
    width : int
        Counters per row (> 0). The additive error is at most
        ``e / width * total`` with probability ``1 - exp(-depth)``.
    depth : int
        Number of rows / hash functions (> 0).
    seed : int
        Selects the hash functions; sketches merge only with equal seeds.
    conservative : bool
        Conservative update: raise each of an item's counters to
        ``max(counter, min_over_rows + count)`` instead of adding. Estimates
        get tighter and still never under-count.

    Notes
    -----
    ``add_many`` applies items in order, exactly as repeated ``add`` calls
    would (this matters for conservative update). Complexity: O(depth) per
    item; ``add_many`` on int arrays runs tens of millions of items per second.
    """

    __slots__ = ("width", "depth", "seed", "conservative", "_table", "_total", "_seed_mix")

    def __init__(
        self, width: int = 2048, depth: int = 4, seed: int = 0, conservative: bool = False
    ) -> None:
        self.width = check_int("width", width, 1, (1 << 32) - 1)  # columns fit the 32-bit reduction
        self.depth = check_int("depth", depth, 1)
        self.seed = check_int("seed", seed)
        self.conservative = check_bool("conservative", conservative)
        self._table = np.zeros((depth, width), dtype=np.int64)
        self._total = 0
        self._seed_mix = np.uint64(_splitmix64_py(self.seed & _MASK64))

    # ------------------------------------------------------------- updates

    def add(self, item: str | bytes | int, count: int = 1) -> None:
        """Count ``item`` ``count`` more times (``count`` >= 0)."""
        count = check_int("count", count, 0)
        keys = _keys([item])
        _kernels().add(
            self._table, keys, np.array([count], dtype=np.int64), self._seed_mix, self.conservative
        )
        self._total += count

    def add_many(self, items: Any, counts: Any = None) -> None:
        """Count a batch: ``items`` is a list of str/bytes/int or a 1-D int array.

        Same result as ``add`` on each item in order; in a mixed batch each
        item is keyed by its own type (``1`` and ``"1"`` are different items).

        ``counts`` (same length, non-negative ints) defaults to 1 each. Input is
        fully validated before any counter changes.
        """
        keys = _keys(items)
        n = keys.shape[0]
        if counts is None:
            cnt = np.ones(n, dtype=np.int64)
        else:
            cnt = np.asarray(counts)
            if cnt.ndim != 1 or cnt.shape[0] != n:
                raise ValidationError(f"counts must be 1-D with {n} entries, got shape {cnt.shape}")
            if n and cnt.dtype.kind not in "iu":
                raise ValidationError(f"counts must be non-negative ints, got dtype {cnt.dtype}")
            cnt = cnt.astype(np.int64, copy=False)
            if n and cnt.min() < 0:
                raise ValidationError("counts must be non-negative")
        if n == 0:
            return
        _kernels().add(
            self._table, keys, np.ascontiguousarray(cnt), self._seed_mix, self.conservative
        )
        self._total += int(cnt.sum())

    def merge(self, other: CountMinSketch) -> None:
        """Add ``other``'s counts into this sketch (same width, depth and seed)."""
        if not isinstance(other, CountMinSketch):
            raise ValidationError(f"can only merge a CountMinSketch, got {type(other).__name__}")
        if (other.width, other.depth, other.seed) != (self.width, self.depth, self.seed):
            raise ValidationError(
                f"cannot merge: width/depth/seed {other.width}/{other.depth}/{other.seed} != "
                f"{self.width}/{self.depth}/{self.seed}; "
                "build both sketches with the same parameters"
            )
        self._table += other._table
        self._total += other._total

    def reset(self) -> None:
        """Zero every counter and the total."""
        self._table.fill(0)
        self._total = 0

    # ------------------------------------------------------------- queries

    def estimate(self, item: str | bytes | int) -> int:
        """Estimated count of ``item`` (never below its true count)."""
        return int(_kernels().estimate(self._table, _keys([item]), self._seed_mix)[0])

    def estimate_many(self, items: Any) -> np.ndarray:
        """Estimated counts (``int64[n]``) of a batch of items."""
        return _kernels().estimate(self._table, _keys(items), self._seed_mix)

    def is_hot(self, item: str | bytes | int, threshold: float) -> bool:
        """True if the estimated count of ``item`` is >= ``threshold``."""
        threshold = check_float("threshold", threshold)
        return bool(self.estimate(item) >= threshold)

    def get_error_bound(self) -> float:
        """Additive error bound ``e / width * total`` (holds w.p. ``1 - exp(-depth)``)."""
        return math.e / self.width * self._total

    def get_total_count(self) -> int:
        """Sum of all counts added (including merged sketches)."""
        return self._total

    @property
    def table(self) -> np.ndarray:
        """Read-only view of the counters, shape ``(depth, width)``."""
        view = self._table.view()
        view.flags.writeable = False
        return view

    def __repr__(self) -> str:
        return (
            f"CountMinSketch(width={self.width}, depth={self.depth}, seed={self.seed}, "
            f"conservative={self.conservative}, total={self._total})"
        )
