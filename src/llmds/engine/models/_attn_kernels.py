"""numba kernel: decode attention over paged K/V (one query token per request).

``k_cache`` / ``v_cache`` are one layer's block tensors ``[num_blocks, block_size, num_kv_heads,
head_dim]``, float32 or bfloat16 bits (uint16: a bfloat16 is the high half of a float32).
Request ``b`` reads tokens ``0 .. context_lens[b] - 1`` block by block through its row of
``block_tables``.  Grouped-query attention: query head ``i`` reads KV head ``i // group``.

One work item per request (``prange``): a pass over its keys computing every head's scores,
a softmax per head, a pass over its values.  Each pass reads a token's row of all KV heads at
once, so memory is read in address order (a work item per (request, head) would read every
row with a stride and runs ~1.5x slower).

Everything in the inner loops vectorizes (numba has no SVML here, so ``np.exp`` would be a
scalar libm call per score): bfloat16 is widened in registers by a shift and a bit cast, and
the softmax's exponential is :func:`~llmds.engine.models._simd.exp_f32` (about one ulp).
Measured against the previous kernel and per-request ``scaled_dot_product_attention`` in
``bench_engine``.
"""

from __future__ import annotations

import numpy as np
from numba import prange, set_parallel_chunksize

from llmds._jit import njit
from llmds.engine.models._simd import exp_f32, load, store

__all__ = ["paged_decode_attention", "paged_prefill_attention", "softmax_inplace", "QUERY_TILE"]


@njit(fastmath=True, cache=True, inline="always")
def _softmax_row(row, n):
    mx = row[0]
    for t in range(1, n):
        mx = max(mx, row[t])
    z = np.float32(0.0)
    for t in range(n):
        e = exp_f32(row[t] - mx)
        row[t] = e
        z += e
    inv = np.float32(1.0) / z
    for t in range(n):
        row[t] *= inv


@njit(fastmath=True, cache=True)
def softmax_inplace(row):
    """Softmax of a float32 vector in place with the kernel's exponential (for tests)."""
    _softmax_row(row, row.shape[0])


QUERY_TILE = 16  # query tokens per prefill work item (x group query heads share its K/V reads)


@njit(fastmath=True, cache=True, error_model="numpy")
def _scores(qs, kf, S, R, m):
    """S[:R, :m] = qs[:R] @ kf[:m].T, register-blocked 3 rows x 4 keys (R % 3 == 0, m % 4 == 0).

    Twelve accumulators share each loaded q and k element, so the loop runs at about twice the
    FLOP rate of one dot product at a time.
    """
    hd = qs.shape[1]
    for r in range(0, R, 3):
        for t in range(0, m, 4):
            s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = s20 = s21 = s22 = s23 = np.float32(0.0)
            for d in range(hd):
                a0, a1, a2 = qs[r, d], qs[r + 1, d], qs[r + 2, d]
                b0, b1, b2, b3 = kf[t, d], kf[t + 1, d], kf[t + 2, d], kf[t + 3, d]
                s00 += a0 * b0
                s01 += a0 * b1
                s02 += a0 * b2
                s03 += a0 * b3
                s10 += a1 * b0
                s11 += a1 * b1
                s12 += a1 * b2
                s13 += a1 * b3
                s20 += a2 * b0
                s21 += a2 * b1
                s22 += a2 * b2
                s23 += a2 * b3
            S[r, t], S[r, t + 1], S[r, t + 2], S[r, t + 3] = s00, s01, s02, s03
            S[r + 1, t], S[r + 1, t + 1], S[r + 1, t + 2], S[r + 1, t + 3] = s10, s11, s12, s13
            S[r + 2, t], S[r + 2, t + 1], S[r + 2, t + 2], S[r + 2, t + 3] = s20, s21, s22, s23


@njit(fastmath=True, cache=True, error_model="numpy")
def _weighted_sum(P, vf, acc, R, m):
    """acc[:R] = P[:R, :m] @ vf[:m], blocked 3 rows x 4 keys (R % 3 == 0, m % 4 == 0)."""
    hd = vf.shape[1]
    for r in range(0, R, 3):
        a0, a1, a2 = acc[r], acc[r + 1], acc[r + 2]
        for d in range(hd):
            a0[d] = a1[d] = a2[d] = np.float32(0.0)
        for t in range(0, m, 4):
            v0, v1, v2, v3 = vf[t], vf[t + 1], vf[t + 2], vf[t + 3]
            p00, p01, p02, p03 = P[r, t], P[r, t + 1], P[r, t + 2], P[r, t + 3]
            p10, p11, p12, p13 = P[r + 1, t], P[r + 1, t + 1], P[r + 1, t + 2], P[r + 1, t + 3]
            p20, p21, p22, p23 = P[r + 2, t], P[r + 2, t + 1], P[r + 2, t + 2], P[r + 2, t + 3]
            for d in range(hd):
                x0, x1, x2, x3 = v0[d], v1[d], v2[d], v3[d]
                a0[d] += p00 * x0 + p01 * x1 + p02 * x2 + p03 * x3
                a1[d] += p10 * x0 + p11 * x1 + p12 * x2 + p13 * x3
                a2[d] += p20 * x0 + p21 * x1 + p22 * x2 + p23 * x3


@njit(parallel=True, fastmath=True, cache=True, nogil=True, error_model="numpy")
def _paged_prefill_attention(q, k_cache, v_cache, block_tables, starts, lens, offsets, scale, out):
    """Causal attention of query chunks over paged K/V: decodes (chunks of one token) and prefill chunks.

    Chunk ``c`` is query tokens ``offsets[c] .. offsets[c] + lens[c] - 1`` of the flat batch, at
    positions ``starts[c] ..`` of a request whose K/V (already written for these tokens) sit in the
    blocks of ``block_tables[c]``; token ``i`` attends positions ``0 .. starts[c] + i``.
    q: float32 [num_tokens, num_heads, head_dim]; out: the same shape, float32 or bfloat16 bits.

    Work items (``prange``) are (chunk, KV head, tile of ``QUERY_TILE`` query tokens): the tile's
    ``group`` query heads share every K/V row it reads.  Per item, the head's K and V rows of the
    context are widened to float32 once (padded with zeros to a multiple of 4 keys), then two
    register-blocked passes as in a GEMM: all scores, a softmax per row over its causal length
    (zero beyond), the weighted sum of V.
    """
    nh, hd = q.shape[1], q.shape[2]
    bs, nkv = k_cache.shape[1], k_cache.shape[2]
    group = nh // nkv
    TQ = QUERY_TILE
    nchunks = lens.shape[0]
    first = np.zeros(nchunks + 1, np.int64)
    for c in range(nchunks):
        first[c + 1] = first[c] + (lens[c] + TQ - 1) // TQ * nkv
    for w in prange(first[nchunks]):
        _attention_item(w, first, q, k_cache, v_cache, block_tables, starts, lens, offsets, scale, out)


@njit(fastmath=True, cache=True, error_model="numpy")
def _attention_item(w, first, q, k_cache, v_cache, block_tables, starts, lens, offsets, scale, out):
    """One work item of :func:`paged_prefill_attention`."""
    nh, hd = q.shape[1], q.shape[2]
    bs, nkv = k_cache.shape[1], k_cache.shape[2]
    group = nh // nkv
    TQ = QUERY_TILE
    c = 0
    while first[c + 1] <= w:
        c += 1
    h = (w - first[c]) % nkv
    t0 = (w - first[c]) // nkv * TQ
    nq = min(TQ, lens[c] - t0)
    start, off = starts[c], offsets[c]
    ctx = start + t0 + nq  # keys the tile's last query sees
    m = (ctx + 3) // 4 * 4
    R = nq * group  # score rows: query token r // group, head h * group + r % group
    Rp = (R + 2) // 3 * 3
    qs = np.zeros((Rp, hd), np.float32)
    for r in range(R):
        qr = q[off + t0 + r // group, h * group + r % group]
        for d in range(hd):
            qs[r, d] = qr[d] * scale
    kf = np.zeros((m, hd), np.float32)
    vf = np.zeros((m, hd), np.float32)
    for j in range((ctx + bs - 1) // bs):
        blk = block_tables[c, j]
        for t in range(min(bs, ctx - j * bs)):
            kr, vr = k_cache[blk, t, h], v_cache[blk, t, h]
            kd, vd = kf[j * bs + t], vf[j * bs + t]
            for d in range(hd):
                kd[d] = load(kr, d)
            for d in range(hd):
                vd[d] = load(vr, d)
    S = np.empty((Rp, m), np.float32)
    _scores(qs, kf, S, Rp, m)
    for r in range(R):
        n = start + t0 + r // group + 1
        _softmax_row(S[r], n)
        for k in range(n, m):
            S[r, k] = np.float32(0.0)
    acc = np.empty((Rp, hd), np.float32)
    _weighted_sum(S, vf, acc, Rp, m)
    for r in range(R):
        o = out[off + t0 + r // group, h * group + r % group]
        for d in range(hd):
            store(o, d, acc[r, d])


def paged_prefill_attention(q, k_cache, v_cache, block_tables, starts, lens, offsets, scale, out) -> None:
    """See :func:`_paged_prefill_attention`; its work items differ in cost (context length), so they are
    handed to the threads one at a time instead of in equal contiguous ranges."""
    old = set_parallel_chunksize(1)
    try:
        _paged_prefill_attention(q, k_cache, v_cache, block_tables, starts, lens, offsets, scale, out)
    finally:
        set_parallel_chunksize(old)


paged_prefill_attention.__doc__ = _paged_prefill_attention.__doc__


@njit(parallel=True, fastmath=True, cache=True, nogil=True, error_model="numpy")
def paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale, out):
    """out[b, i] = softmax(scale * q[b, i] . K_b^T) V_b for every request b and query head i.

    q: float32 [num_reqs, num_heads, head_dim]; out: the same shape, float32 or bfloat16 bits; block_tables: int32 [num_reqs, max_blocks];
    context_lens: int32 [num_reqs] (>= 1).
    """
    nreq, nh, hd = q.shape
    bs, nkv = k_cache.shape[1], k_cache.shape[2]
    group = nh // nkv
    Gp = (group + 2) // 3 * 3  # query rows per KV head, padded to blocks of 3
    for b in prange(nreq):
        n = context_lens[b]
        nblk = (n + bs - 1) // bs
        qs = np.zeros((nkv, Gp, hd), np.float32)
        for i in range(nh):
            for d in range(hd):
                qs[i // group, i % group, d] = q[b, i, d] * scale
        sc = np.zeros((nkv, Gp, n), np.float32)
        for j in range(nblk):  # token by token in address order; each K row is loaded once for 3 queries
            blk = block_tables[b, j]
            for t in range(min(bs, n - j * bs)):
                pos = j * bs + t
                for h in range(nkv):
                    row = k_cache[blk, t, h]
                    qh = qs[h]
                    for r in range(0, Gp, 3):
                        s0 = s1 = s2 = np.float32(0.0)
                        for d in range(hd):
                            x = load(row, d)
                            s0 += qh[r, d] * x
                            s1 += qh[r + 1, d] * x
                            s2 += qh[r + 2, d] * x
                        sc[h, r, pos], sc[h, r + 1, pos], sc[h, r + 2, pos] = s0, s1, s2
        for h in range(nkv):
            for g in range(group):
                _softmax_row(sc[h, g], n)
        acc = np.zeros((nkv, Gp, hd), np.float32)
        for j in range(nblk):
            blk = block_tables[b, j]
            for t in range(min(bs, n - j * bs)):
                pos = j * bs + t
                for h in range(nkv):
                    row = v_cache[blk, t, h]
                    for r in range(0, Gp, 3):
                        p0, p1, p2 = sc[h, r, pos], sc[h, r + 1, pos], sc[h, r + 2, pos]
                        a0, a1, a2 = acc[h, r], acc[h, r + 1], acc[h, r + 2]
                        for d in range(hd):
                            x = load(row, d)
                            a0[d] += p0 * x
                            a1[d] += p1 * x
                            a2[d] += p2 * x
        for i in range(nh):
            o = out[b, i]
            a = acc[i // group, i % group]
            for d in range(hd):
                store(o, d, a[d])


@njit(fastmath=True, cache=True, error_model="numpy", inline="always")
def _scores_3x4(qs, k0, k1, k2, k3, sc, p, R):
    """sc[r, p:p+4] = qs[r] . (k0, k1, k2, k3) for r < R (R % 3 == 0), 3 rows x 4 keys in registers."""
    hd = qs.shape[1]
    for r in range(0, R, 3):
        s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = s20 = s21 = s22 = s23 = np.float32(0.0)
        for d in range(hd):
            a0, a1, a2 = qs[r, d], qs[r + 1, d], qs[r + 2, d]
            b0, b1, b2, b3 = load(k0, d), load(k1, d), load(k2, d), load(k3, d)
            s00 += a0 * b0
            s01 += a0 * b1
            s02 += a0 * b2
            s03 += a0 * b3
            s10 += a1 * b0
            s11 += a1 * b1
            s12 += a1 * b2
            s13 += a1 * b3
            s20 += a2 * b0
            s21 += a2 * b1
            s22 += a2 * b2
            s23 += a2 * b3
        sc[r, p], sc[r, p + 1], sc[r, p + 2], sc[r, p + 3] = s00, s01, s02, s03
        sc[r + 1, p], sc[r + 1, p + 1], sc[r + 1, p + 2], sc[r + 1, p + 3] = s10, s11, s12, s13
        sc[r + 2, p], sc[r + 2, p + 1], sc[r + 2, p + 2], sc[r + 2, p + 3] = s20, s21, s22, s23


@njit(fastmath=True, cache=True, error_model="numpy", inline="always")
def _accumulate_3x4(sc, v0, v1, v2, v3, acc, p, R):
    """acc[r] += sc[r, p:p+4] @ (v0, v1, v2, v3) for r < R (R % 3 == 0)."""
    hd = acc.shape[1]
    for r in range(0, R, 3):
        a0, a1, a2 = acc[r], acc[r + 1], acc[r + 2]
        p00, p01, p02, p03 = sc[r, p], sc[r, p + 1], sc[r, p + 2], sc[r, p + 3]
        p10, p11, p12, p13 = sc[r + 1, p], sc[r + 1, p + 1], sc[r + 1, p + 2], sc[r + 1, p + 3]
        p20, p21, p22, p23 = sc[r + 2, p], sc[r + 2, p + 1], sc[r + 2, p + 2], sc[r + 2, p + 3]
        for d in range(hd):
            x0, x1, x2, x3 = load(v0, d), load(v1, d), load(v2, d), load(v3, d)
            a0[d] += p00 * x0 + p01 * x1 + p02 * x2 + p03 * x3
            a1[d] += p10 * x0 + p11 * x1 + p12 * x2 + p13 * x3
            a2[d] += p20 * x0 + p21 * x1 + p22 * x2 + p23 * x3
