"""Numba BM25 top-k search over the CSC arrays of :mod:`llmds._postings`.

One kernel, :func:`search_batch`, answers a batch of queries; ``search`` is a
batch of one.  See its docstring for the pruning.  Scratch arrays are owned by
the index and passed in, so a query allocates only a few small arrays.
"""

from __future__ import annotations

import numpy as np
from llmds._jit import njit

__all__ = ["search_batch"]


# ---------------------------------------------------------------- searching
@njit(cache=True)
def _gallop(arr, lo, hi, target):
    """First index in [lo, hi) with arr[idx] >= target (arr sorted), hi if none."""
    if lo >= hi or arr[lo] >= target:
        return lo
    prev = lo  # invariant: arr[prev] < target
    step = 1
    cur = lo + 1
    while cur < hi and arr[cur] < target:
        prev = cur
        step <<= 1
        cur = prev + step
    cur = min(cur, hi)
    lo = prev + 1
    while lo < cur:
        mid = (lo + cur) >> 1
        if arr[mid] < target:
            lo = mid + 1
        else:
            cur = mid
    return lo


@njit(cache=True)
def _worse(va, sa, vb, sb, slot_doc):
    """True if (score va, slot sa) ranks below (vb, sb): lower score, then larger doc id.
    Doc ids are only read on an exact score tie (a random read avoided per candidate)."""
    return va < vb or (va == vb and slot_doc[sa] > slot_doc[sb])


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
            hv[c], hv[i] = hv[i], hv[c]
            hs[c], hs[i] = hs[i], hs[c]
            i = c
        else:
            return


@njit(cache=True)
def _offer(hv, hs, m, k, v, s, slot_doc):
    """Offer (score v, slot s) to the size-k heap of the best so far (root = worst
    kept); returns the new heap size."""
    if m < k:
        j = m
        hv[j] = v
        hs[j] = s
        while j > 0:
            par = (j - 1) >> 1
            if _worse(hv[j], hs[j], hv[par], hs[par], slot_doc):
                hv[j], hv[par] = hv[par], hv[j]
                hs[j], hs[par] = hs[par], hs[j]
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
def _drain(hv, hs, m, slot_doc, out_d, out_v):
    """Empty the heap into out_d (doc ids) / out_v (scores) best first; returns m."""
    for j in range(m - 1, -1, -1):
        out_d[j] = slot_doc[hs[0]]
        out_v[j] = hv[0]
        hv[0] = hv[j]
        hs[0] = hs[j]
        _sift_top(hv, hs, 0, j, slot_doc)
    return m


@njit(cache=True)
def _top_k(acc, ids, n, slot_doc, hv, hs, k, out_d, out_v):
    """Best k of acc[ids[:n]] with acc > 0, best first, ties by doc id ascending."""
    m = 0
    for i in range(n):
        s = ids[i]
        v = acc[s]
        if v > 0 and (m < k or v >= hv[0]):  # cheap rejection before the call
            m = _offer(hv, hs, m, k, v, s, slot_doc)
    return _drain(hv, hs, m, slot_doc, out_d, out_v)


@njit(cache=True)
def _best_partial(acc, ids, n, m, hv, hs):
    """Slots of the m largest acc[ids[:n]] (any order) into hs; returns how many."""
    c = 0
    for i in range(n):
        s = ids[i]
        v = acc[s]
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
def _kth_of(vals, n, k, tmp):
    """k-th largest of vals[:n] (n >= k), by sorting a copy (n is 2k at most)."""
    for i in range(n):
        tmp[i] = vals[i]
    t = np.sort(tmp[:n])
    return t[n - k]


@njit(cache=True)
def search_batch(q_ptr, q_terms, ptr, slots, w, ub, slot_doc, acc, touched, scratch, k, prune_min):
    """Top-k BM25 for every query; exact, with MaxScore-style pruning.

    q_ptr    int64 [nq + 1]   query i's term ids are q_terms[q_ptr[i]:q_ptr[i + 1]]
    q_terms  int32            term ids, repeats allowed (a repeated term counts again)
    acc      float32 [n_slots] all zero on entry and on exit (scratch accumulator)
    touched  int32 [n_slots + 1]  scratch (one spare: appends are branch-free)
    scratch  int32 [n_slots]      scratch
    prune_min  int  try pruning only while more than this many postings remain
    Returns out_doc_ids int64 [nq, k], out_scores float32 [nq, k], out_n int32 [nq].

    Term-at-a-time into the dense accumulator, terms in decreasing upper-bound
    order (MaxScore, exact): once k partial scores exceed the sum of the
    remaining terms' upper bounds, no unseen document can reach the top k, so the
    remaining lists are only probed (galloping) for the surviving candidates, one
    candidate at a time, dropping a candidate as soon as its bound falls below
    the running k-th best score.  (A document-at-a-time merge for short lists
    was measured no faster and removed.)

    Every returned score is complete and summed in the same term order.
    """
    nq = q_ptr.size - 1
    out_d = np.full((nq, k), -1, np.int64)
    out_v = np.zeros((nq, k), np.float32)
    out_n = np.zeros(nq, np.int32)
    heap = np.empty(2 * k, np.float32)
    hv = np.empty(k, np.float32)
    hs = np.empty(k, np.int32)
    run_end = np.empty(64, np.int64)
    run_start = np.empty(64, np.int64)
    run_stop = np.empty(64, np.int64)
    cur = np.empty(64, np.int64)
    seed_v = np.empty(2 * k, np.float32)
    seed_s = np.empty(2 * k, np.int32)
    for qi in range(nq):
        a = q_ptr[qi]
        e = q_ptr[qi + 1]
        # unique terms with multiplicity, only terms with postings
        qt = np.sort(q_terms[a:e])
        if qt.size > run_end.size:
            run_end = np.empty(qt.size, np.int64)
            run_start = np.empty(qt.size, np.int64)
            run_stop = np.empty(qt.size, np.int64)
            cur = np.empty(qt.size, np.int64)
        terms = np.empty(qt.size, np.int64)
        tub = np.empty(qt.size, np.float64)
        mult = np.empty(qt.size, np.float32)
        nt = 0
        i = 0
        while i < qt.size:
            j = i
            while j < qt.size and qt[j] == qt[i]:
                j += 1
            t = qt[i]
            if 0 <= t < ptr.size - 1 and ptr[t + 1] > ptr[t]:
                terms[nt] = t
                mult[nt] = j - i
                tub[nt] = np.float64(ub[t]) * (j - i)
                nt += 1
            i = j
        if nt == 0:
            continue
        # order by upper bound, descending (insertion sort: queries are short)
        for i in range(1, nt):
            j = i
            while j > 0 and tub[j] > tub[j - 1]:
                tub[j], tub[j - 1] = tub[j - 1], tub[j]
                terms[j], terms[j - 1] = terms[j - 1], terms[j]
                mult[j], mult[j - 1] = mult[j - 1], mult[j]
                j -= 1
        suffix = np.zeros(nt + 1, np.float64)
        rest = np.zeros(nt + 1, np.int64)  # postings left from term i on
        for i in range(nt - 1, -1, -1):
            suffix[i] = suffix[i + 1] + tub[i]
            rest[i] = rest[i + 1] + ptr[terms[i] + 1] - ptr[terms[i]]
        n_touch = 0
        n_seed = 0
        pruned_at = -1
        theta = 0.0
        slack = 1e-5 * suffix[0] + 1e-12  # float32 rounding margin on every bound
        for i in range(nt):
            if (
                i > 0
                and n_touch >= k
                and suffix[0] - suffix[i] > suffix[i]  # theta <= best partial <= prefix sum
                and rest[i] > 4 * n_touch  # the check costs a pass over the touched docs
                and rest[i] > prune_min  # short lists: exhaustive is cheaper
            ):
                # Can k partial scores already beat everything the rest could add?
                # One pass keeps the 2k best partials: their k-th is theta, and
                # they seed the exact scoring below.
                n_seed = _best_partial(acc, touched, n_touch, 2 * k, seed_v, seed_s)
                theta = _kth_of(seed_v, n_seed, k, heap)
                if theta > suffix[i] + slack:
                    pruned_at = i
                    break
            run_end[i] = n_touch
            t = terms[i]
            m = mult[i]
            for p in range(ptr[t], ptr[t + 1]):
                s = slots[p]
                a0 = acc[s]
                touched[n_touch] = s  # branch-free append, kept only if s was untouched
                n_touch += a0 == 0
                acc[s] = a0 + m * w[p]
        if pruned_at < 0:
            out_n[qi] = _top_k(acc, touched, n_touch, slot_doc, hv, hs, k, out_d[qi], out_v[qi])
            for j in range(n_touch):
                acc[touched[j]] = 0.0
            continue
        # Seed: fully score the few candidates with the best partial scores
        # first (binary searches), which lifts theta close to its final value
        # and shrinks the candidate set before the slot-ordered pass below.
        m_top = 0
        for c in range(n_seed):
            s = seed_s[c]
            v = acc[s]
            for i in range(pruned_at, nt):
                q = _gallop(slots, ptr[terms[i]], ptr[terms[i] + 1], s)
                if q < ptr[terms[i] + 1] and slots[q] == s:
                    v += mult[i] * w[q]
            m_top = _offer(hv, hs, m_top, k, v, s, slot_doc)
            acc[s] = -1.0  # done; excluded below (need > -1 because theta > suffix)
        if m_top == k and hv[0] > theta:
            theta = hv[0]
        # Candidates: touched docs whose partial score plus the rest's bound can
        # still reach theta.  ``touched`` is one ascending run per exhaustive
        # term; filter each run in place (clearing the rejected accumulators),
        # then merge the runs into ``scratch`` in slot order.
        need = theta - suffix[pruned_at] - slack
        nc = 0
        lo = 0
        for r in range(pruned_at):
            hi = run_end[r + 1] if r + 1 < pruned_at else n_touch
            run_start[r] = nc
            for j in range(lo, hi):
                s = touched[j]
                if acc[s] >= need:
                    touched[nc] = s
                    nc += 1
                else:
                    acc[s] = 0.0
            run_stop[r] = nc
            lo = hi
        big = np.int64(1) << 40
        for c in range(nc):
            best = big
            br = 0
            for r in range(pruned_at):
                if run_start[r] < run_stop[r] and touched[run_start[r]] < best:
                    best = touched[run_start[r]]
                    br = r
            scratch[c] = best
            run_start[br] += 1
        # Candidate at a time over the remaining lists (cursors only move
        # forward): stop adding to a candidate as soon as its score plus the
        # bound of the lists left falls below theta, which rises as candidates
        # complete.  Scores are summed in the same term order as above.
        for i in range(pruned_at, nt):
            cur[i] = ptr[terms[i]]
        for c in range(nc):
            s = scratch[c]
            v = acc[s]
            acc[s] = 0.0
            alive = True
            for i in range(pruned_at, nt):
                if v + suffix[i] + slack < theta:
                    alive = False
                    break
                hi = ptr[terms[i] + 1]
                q = _gallop(slots, cur[i], hi, s)
                cur[i] = q
                if q < hi and slots[q] == s:
                    v += mult[i] * w[q]
            if alive and (m_top < k or v >= hv[0]):
                m_top = _offer(hv, hs, m_top, k, v, s, slot_doc)
                if m_top == k and hv[0] > theta:
                    theta = hv[0]
        for c in range(n_seed):
            acc[seed_s[c]] = 0.0
        out_n[qi] = _drain(hv, hs, m_top, slot_doc, out_d[qi], out_v[qi])
    return out_d, out_v, out_n
