"""numba kernels for GGUF weights: dequantizing torch's int4 pack, and Q8_0 embedding rows.

``dequant_int4pack`` reads the pack of ``_convert_weight_to_int4pack_for_cpu``: ``[N / 64, K, 32]``
bytes where byte ``(b, k, i)`` holds row ``64 b + i`` in its low nibble and row ``64 b + 32 + i``
in its high nibble, and writes ``w[n, k] = (q - 8) * scale + zero`` row by row (contiguous
writes; one work item per 64-row block).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from llmds._jit import njit
from llmds.engine.models._simd import load, store

__all__ = ["dequant_int4pack", "q8_0_rows"]


@njit(parallel=True, fastmath=True, cache=True, nogil=True, error_model="numpy")
def dequant_int4pack(packed, sz, group, out):
    """out [N, K] (float32 or bfloat16 bits) from packed uint8 [N, K / 2] and sz [K / group, N, 2]."""
    N, K = out.shape
    pk = packed.reshape(N // 64, K, 32)
    for nb in prange(N // 64):
        blk = pk[nb]
        for i in range(64):
            n = nb * 64 + i
            row = out[n]
            shift = np.uint8(0) if i < 32 else np.uint8(4)
            col = i % 32
            for k in range(K):
                q = np.float32((blk[k, col] >> shift) & np.uint8(15)) - np.float32(8.0)
                g = k // group
                store(row, k, q * load(sz[g, n], 0) + load(sz[g, n], 1))


@njit(fastmath=True, cache=True, nogil=True, error_model="numpy")
def q8_0_rows(values, scales, ids, out):
    """out[i] = row ``ids[i]`` of a Q8_0 tensor: ``scales[r, b] * values[r, b, j]`` (float32 or bfloat16 bits).

    values: the int8 values of the blocks [rows, K / 32, 32] (a view of the file's bytes);
    scales: float32 [rows, K / 32] (the blocks' float16 scales).
    """
    nb = values.shape[1]
    for i in range(ids.shape[0]):
        r = ids[i]
        o = out[i]
        for b in range(nb):
            d = scales[r, b]
            for j in range(32):
                store(o, b * 32 + j, d * np.float32(values[r, b, j]))
