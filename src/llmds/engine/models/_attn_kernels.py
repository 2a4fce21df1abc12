"""numba kernel: decode attention over paged K/V (one query token per request).

``k_cache`` / ``v_cache`` are one layer's block tensors ``[num_blocks, block_size, num_kv_heads,
head_dim]``, float32 or bfloat16 bits (uint16: a bfloat16 is the high half of a float32).
Request ``b`` reads tokens ``0 .. context_lens[b] - 1`` block by block through its row of
``block_tables``.  Grouped-query attention: query head ``i`` reads KV head ``i // group``.

One work item per request (``prange``): a pass over its keys computing every head's scores,
a softmax per head, a pass over its values.  Each pass reads a token's row of all KV heads at
once, so memory is read in address order (a work item per (request, head) would read every
row with a stride and runs ~1.5x slower).  bfloat16 rows are widened to float32 on the fly.
Memory-bound in principle (the K/V of every running request, once per layer, as vLLM's CPU
kernel); measured against per-request ``scaled_dot_product_attention`` in ``bench_engine``.
"""

from __future__ import annotations

import numpy as np
from numba import prange, types
from numba.extending import overload

from llmds._jit import njit

__all__ = ["paged_decode_attention"]


def _row(cache, blk, t, buf):
    """Token ``t`` of block ``blk`` as float32 ``[num_kv_heads, head_dim]``."""


@overload(_row, inline="always")
def _row_impl(cache, blk, t, buf):
    if cache.dtype == types.uint16:
        def widen(cache, blk, t, buf):
            src = cache[blk, t]
            bits = buf.view(np.uint32)
            for h in range(src.shape[0]):
                for d in range(src.shape[1]):
                    bits[h, d] = np.uint32(src[h, d]) << np.uint32(16)
            return buf
        return widen

    def view(cache, blk, t, buf):
        return cache[blk, t]
    return view


@njit(parallel=True, fastmath=True, cache=True)
def paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale, out):
    """out[b, i] = softmax(scale * q[b, i] . K_b^T) V_b for every request b and query head i.

    q, out: float32 [num_reqs, num_heads, head_dim]; block_tables: int32 [num_reqs, max_blocks];
    context_lens: int32 [num_reqs] (>= 1).
    """
    nreq, nh, hd = q.shape
    bs = k_cache.shape[1]
    nkv = k_cache.shape[2]
    group = nh // nkv
    for b in prange(nreq):
        n = context_lens[b]
        nblk = (n + bs - 1) // bs
        qs = np.empty((nh, hd), np.float32)
        for i in range(nh):
            for d in range(hd):
                qs[i, d] = q[b, i, d] * scale
        sc = np.empty((nh, n), np.float32)
        buf = np.empty((nkv, hd), np.float32)
        for j in range(nblk):
            blk = block_tables[b, j]
            for t in range(min(bs, n - j * bs)):
                kr = _row(k_cache, blk, t, buf)
                pos = j * bs + t
                for h in range(nkv):
                    krh = kr[h]
                    for g in range(group):
                        qi = qs[h * group + g]
                        s = np.float32(0.0)
                        for d in range(hd):
                            s += qi[d] * krh[d]
                        sc[h * group + g, pos] = s
        for i in range(nh):
            row = sc[i]
            mx = row.max()
            z = np.float32(0.0)
            for t in range(n):
                e = np.exp(row[t] - mx)
                row[t] = e
                z += e
            inv = np.float32(1.0) / z
            for t in range(n):
                row[t] *= inv
        acc = np.zeros((nh, hd), np.float32)
        for j in range(nblk):
            blk = block_tables[b, j]
            for t in range(min(bs, n - j * bs)):
                vr = _row(v_cache, blk, t, buf)
                pos = j * bs + t
                for h in range(nkv):
                    vrh = vr[h]
                    for g in range(group):
                        qi = h * group + g
                        p = sc[qi, pos]
                        a = acc[qi]
                        for d in range(hd):
                            a[d] += p * vrh[d]
        for i in range(nh):
            for d in range(hd):
                out[b, i, d] = acc[i, d]
