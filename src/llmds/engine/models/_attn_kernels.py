"""numba kernel: decode attention over paged K/V (one query token per request).

``k_cache`` / ``v_cache`` are one layer's flat slot views ``[num_slots, num_kv_heads, head_dim]``
(slot = block_id * block_size + offset), either float32 or bfloat16 bits (uint16: a bfloat16 is
the high half of a float32).  Request ``b`` reads tokens ``0 .. context_lens[b] - 1`` through its
row of ``block_tables``.  Grouped-query attention: query head ``h`` reads KV head
``h // (num_heads // num_kv_heads)``; each KV row is loaded once for its whole group.

Work is split over (request, KV head) pairs with ``prange``; every pair makes one pass over its
keys (scores), a softmax, and one pass over its values.  Memory-bound: a step reads each running
request's K and V once per layer, the same traffic as vLLM's CPU paged-attention kernel.
"""

from __future__ import annotations

import numpy as np
from numba import prange, types
from numba.extending import overload

from llmds._jit import njit

__all__ = ["paged_decode_attention"]


def _row(cache, slot, h, buf):
    """KV row as float32: a view of a float32 cache, or bfloat16 bits (uint16) widened into ``buf``."""


@overload(_row, inline="always")
def _row_impl(cache, slot, h, buf):
    if cache.dtype == types.uint16:
        def widen(cache, slot, h, buf):
            bits = buf.view(np.uint32)
            for d in range(buf.shape[0]):
                bits[d] = np.uint32(cache[slot, h, d]) << np.uint32(16)
            return buf
        return widen

    def view(cache, slot, h, buf):
        return cache[slot, h]
    return view


@njit(parallel=True, fastmath=True, cache=True)
def paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, block_size, scale, out):
    """out[b, h] = softmax(scale * q[b, h] . K_b^T) V_b for every request b and query head h.

    q, out: float32 [num_reqs, num_heads, head_dim]; block_tables: int32 [num_reqs, max_blocks];
    context_lens: int32 [num_reqs] (>= 1).
    """
    nreq, nh, hd = q.shape
    nkv = k_cache.shape[1]
    group = nh // nkv
    for w in prange(nreq * nkv):
        b = w // nkv
        h = w - b * nkv
        n = context_lens[b]
        scores = np.empty((group, n), np.float32)
        buf = np.empty(hd, np.float32)
        acc = np.zeros((group, hd), np.float32)
        qh = q[b, h * group:(h + 1) * group]
        for t in range(n):
            slot = block_tables[b, t // block_size] * block_size + t % block_size
            k = _row(k_cache, slot, h, buf)
            for g in range(group):
                s = np.float32(0.0)
                for d in range(hd):
                    s += qh[g, d] * k[d]
                scores[g, t] = s * scale
        for g in range(group):
            m = scores[g, 0]
            for t in range(1, n):
                if scores[g, t] > m:
                    m = scores[g, t]
            z = np.float32(0.0)
            for t in range(n):
                e = np.exp(scores[g, t] - m)
                scores[g, t] = e
                z += e
            inv = np.float32(1.0) / z
            for t in range(n):
                scores[g, t] *= inv
        for t in range(n):
            slot = block_tables[b, t // block_size] * block_size + t % block_size
            v = _row(v_cache, slot, h, buf)
            for g in range(group):
                p = scores[g, t]
                for d in range(hd):
                    acc[g, d] += p * v[d]
        for g in range(group):
            for d in range(hd):
                out[b, h * group + g, d] = acc[g, d]
