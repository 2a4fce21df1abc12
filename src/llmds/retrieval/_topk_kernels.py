"""Numba top-k selection for the BM25 kernels of :mod:`llmds.retrieval._bm25_kernels`.

A size-k min-heap of (score, slot) pairs kept as two parallel arrays (``hv`` scores, ``hs``
slots), ranked by score then by document id (read through ``slot_doc`` only on a tie);
``best_partial`` keeps the m largest scores without the tie rule, for pruning bounds.
The arrays are the caller's scratch, so a query allocates nothing here.
"""

from __future__ import annotations

import numpy as np

from llmds._jit import njit

__all__ = ["best_partial", "heap_drain", "heap_offer", "heap_top_k", "kth_largest"]


@njit(cache=True)
def _worse(va, sa, vb, sb, slot_doc):
    """True if (score va, slot sa) ranks below (vb, sb): lower score, then larger doc id.
    Doc ids are only read on an exact score tie (a random read avoided per candidate)."""
    return va < vb or (va == vb and slot_doc[sa] > slot_doc[sb])


@njit(cache=True)
def _swap(hv, hs, a, b):
    hv[a], hv[b] = hv[b], hv[a]
    hs[a], hs[b] = hs[b], hs[a]


@njit(cache=True)
def _sift_top(hv, hs, i, n, slot_doc):
    while True:
        l = 2 * i + 1
        if l >= n:
            return
        c = l
        if l + 1 < n and _worse(hv[l + 1], hs[l + 1], hv[l], hs[l], slot_doc):
            c = l + 1
        if _worse(hv[c], hs[c], hv[i], hs[i], slot_doc):
            _swap(hv, hs, c, i)
            i = c
        else:
            return


@njit(cache=True)
def heap_offer(hv, hs, m, k, v, s, slot_doc):
    """Offer (score v, slot s) to the size-k heap of the best so far (root = worst
    kept); returns the new heap size."""
    if m < k:
        j = m
        hv[j] = v
        hs[j] = s
        while j > 0:
            par = (j - 1) >> 1
            if _worse(hv[j], hs[j], hv[par], hs[par], slot_doc):
                _swap(hv, hs, j, par)
                j = par
            else:
                break
        return m + 1
    if v >= hv[0] and _worse(hv[0], hs[0], v, s, slot_doc):
        hv[0] = v
        hs[0] = s
        _sift_top(hv, hs, 0, m, slot_doc)
    return m


@njit(cache=True)
def heap_drain(hv, hs, m, slot_doc, out_d, out_v):
    """Empty the heap into out_d (doc ids) / out_v (scores) best first; returns m."""
    for j in range(m - 1, -1, -1):
        out_d[j] = slot_doc[hs[0]]
        out_v[j] = hv[0]
        hv[0] = hv[j]
        hs[0] = hs[j]
        _sift_top(hv, hs, 0, j, slot_doc)
    return m


@njit(cache=True)
def heap_top_k(acc, ids, n, alive, slot_doc, hv, hs, k, out_d, out_v):
    """Best k of acc[ids[:n]] with acc > 0 and a live slot, best first, ties by doc id."""
    m = 0
    for i in range(n):
        s = ids[i]
        v = acc[s]
        if v > 0 and (m < k or v >= hv[0]) and alive[s]:  # cheap rejection before the call
            m = heap_offer(hv, hs, m, k, v, s, slot_doc)
    return heap_drain(hv, hs, m, slot_doc, out_d, out_v)


@njit(cache=True)
def best_partial(acc, ids, n, alive, m, hv, hs):
    """Live slots of the m largest acc[ids[:n]] (any order) into hs; returns how many."""
    c = 0
    for i in range(n):
        s = ids[i]
        v = acc[s]
        if not alive[s]:
            continue
        if c < m:
            j = c
            hv[j] = v
            hs[j] = s
            c += 1
            while j > 0 and hv[(j - 1) >> 1] > hv[j]:
                par = (j - 1) >> 1
                hv[j], hv[par] = hv[par], hv[j]
                hs[j], hs[par] = hs[par], hs[j]
                j = par
        elif v > hv[0]:
            hv[0] = v
            hs[0] = s
            j = 0
            while True:
                l = 2 * j + 1
                if l >= c:
                    break
                ch = l
                if l + 1 < c and hv[l + 1] < hv[l]:
                    ch = l + 1
                if hv[ch] < hv[j]:
                    hv[ch], hv[j] = hv[j], hv[ch]
                    hs[ch], hs[j] = hs[j], hs[ch]
                    j = ch
                else:
                    break
    return c


@njit(cache=True)
def kth_largest(vals, n, k, tmp):
    """k-th largest of vals[:n] (n >= k), by sorting a copy (n is 2k at most)."""
    for i in range(n):
        tmp[i] = vals[i]
    t = np.sort(tmp[:n])
    return t[n - k]
