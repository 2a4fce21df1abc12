"""numba kernels of ``llmds.sketches.cmsketch`` (hashing and counting loops).

Imported lazily by ``cmsketch`` on first use; compiled once and cached on disk.
All hashing is explicit 64-bit arithmetic, so keys are identical across
processes and machines.
"""

from __future__ import annotations

import numpy as np
from llmds._jit import njit

_u = np.uint64
_GOLDEN = _u(0x9E3779B97F4A7C15)
_M1 = _u(0xBF58476D1CE4E5B9)
_M2 = _u(0x94D049BB133111EB)
_FNV_BASIS = _u(0xCBF29CE484222325)
_FNV_PRIME = _u(0x100000001B3)
_ROW_SALT = _u(0xD6E8FEB86659FD93)
_S27, _S30, _S31, _S32, _S33 = _u(27), _u(30), _u(31), _u(32), _u(33)
_ONE = _u(1)


@njit(cache=True, inline="always")
def _mix(x):
    """splitmix64 finaliser: uint64 -> uint64, a bijection with full avalanche."""
    z = x + _GOLDEN
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=True, inline="always")
def _finish_bytes(h, length):
    return _mix(h ^ (_u(length) << _S33))


@njit(cache=True)
def hash_ints(x):
    """uint64[n] (two's complement bits of the ints) -> uint64[n] keys."""
    out = np.empty(x.shape[0], dtype=np.uint64)
    for j in range(x.shape[0]):
        out[j] = _mix(x[j])
    return out


@njit(cache=True)
def hash_bytes(buf, offsets):
    """Item j is ``buf[offsets[j]:offsets[j+1]]``: FNV-1a 64, length mixed in, splitmix64."""
    n = offsets.shape[0] - 1
    out = np.empty(n, dtype=np.uint64)
    for j in range(n):
        h = _FNV_BASIS
        for k in range(offsets[j], offsets[j + 1]):
            h = (h ^ _u(buf[k])) * _FNV_PRIME
        out[j] = _finish_bytes(h, offsets[j + 1] - offsets[j])
    return out


@njit(cache=True)
def hash_joined(buf, n):
    """Keys of ``n`` items joined by NUL bytes (same keys as ``hash_bytes``).

    Returns ``(keys, ok)``; ``ok`` is False when ``buf`` does not hold exactly
    ``n - 1`` NUL bytes (an item contained NUL): the caller must fall back.
    """
    out = np.empty(n, dtype=np.uint64)
    j = 0
    h = _FNV_BASIS
    length = 0
    for k in range(buf.shape[0]):
        b = buf[k]
        if b == 0:
            if j >= n - 1:
                return out, False
            out[j] = _finish_bytes(h, length)
            j += 1
            h = _FNV_BASIS
            length = 0
        else:
            h = (h ^ _u(b)) * _FNV_PRIME
            length += 1
    if j != n - 1:
        return out, False
    out[j] = _finish_bytes(h, length)
    return out, True


@njit(cache=True, inline="always")
def _column(h1, h2, i, w):
    # double hashing, then Lemire's multiply-shift reduction of the top 32 bits to [0, w)
    x = (h1 + _u(i) * h2) >> _S32
    return np.intp((x * w) >> _S32)


@njit(cache=True)
def add(table, keys, counts, seed_mix, conservative):
    """Apply ``counts[j]`` of ``keys[j]`` in order; table is int64[depth, width], width < 2**32."""
    depth, width = table.shape
    w = _u(width)
    cols = np.empty(depth, dtype=np.intp)
    for j in range(keys.shape[0]):
        c = counts[j]
        h1 = _mix(keys[j] ^ seed_mix)
        h2 = _mix(h1 ^ _ROW_SALT) | _ONE
        if conservative:
            low = table[0, _column(h1, h2, 0, w)]
            for i in range(depth):
                col = _column(h1, h2, i, w)
                cols[i] = col
                if table[i, col] < low:
                    low = table[i, col]
            target = low + c  # each counter -> max(counter, min + c): never below any item's count
            for i in range(depth):
                if table[i, cols[i]] < target:
                    table[i, cols[i]] = target
        else:
            for i in range(depth):
                table[i, _column(h1, h2, i, w)] += c


@njit(cache=True)
def estimate(table, keys, seed_mix):
    """int64[n]: minimum over rows of each key's counters."""
    depth, width = table.shape
    w = _u(width)
    out = np.empty(keys.shape[0], dtype=np.int64)
    for j in range(keys.shape[0]):
        h1 = _mix(keys[j] ^ seed_mix)
        h2 = _mix(h1 ^ _ROW_SALT) | _ONE
        low = table[0, _column(h1, h2, 0, w)]
        for i in range(1, depth):
            v = table[i, _column(h1, h2, i, w)]
            if v < low:
                low = v
        out[j] = low
    return out
