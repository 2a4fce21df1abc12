"""Numba BM25 top-k search over the segments of :mod:`llmds.retrieval._postings`.

One kernel, :func:`search_batch`, answers a batch of queries over every
segment at once; ``search`` is a batch of one.  See its docstring for the
pruning.  Scratch arrays are owned by the index and passed in, so a query
allocates only a few small arrays.  The top-k heaps are in :mod:`llmds.retrieval._topk_kernels`.

The seventeen arrays a search reads travel as one :class:`IndexState`
(a numba StructRef): unboxing each array argument costs numba ~0.1-0.2 us per
call, unboxing the struct is one pointer read; a rare-term query takes ~10 us in
the kernel, so the packing keeps the fixed cost of a call at the old level.
The index rebuilds the struct whenever it replaces one of the arrays.
"""

from __future__ import annotations

import numpy as np
from numba.core import types
from numba.experimental import structref

from llmds._jit import njit
from llmds.retrieval._postings import materialize, tf_part
from llmds.retrieval._topk_kernels import best_partial, heap_drain, heap_offer, heap_top_k, kth_largest

__all__ = ["IndexState", "score_slots", "search_batch"]


# ---------------------------------------------------------------- packed arrays
@structref.register
class IndexStateType(types.StructRef):
    """numba type of :class:`IndexState`."""

    def preprocess_fields(self, fields):
        return tuple((name, types.unliteral(t)) for name, t in fields)


_FIELDS = (  # name, dtype, ndim (all C-contiguous)
    ("df", types.int64, 1), ("term_key", types.int64, 1), ("seg", types.int64, 2),
    ("term_pool", types.int32, 1), ("ptr_pool", types.int64, 1), ("stamp", types.float64, 1),
    ("seen", types.float64, 1), ("ub0", types.float32, 1), ("slots", types.int32, 1),
    ("tfs", types.int32, 1), ("f", types.float32, 1), ("dl", types.float32, 1),
    ("alive", types.boolean, 1), ("slot_doc", types.int64, 1), ("acc", types.float32, 1),
    ("touched", types.int32, 1), ("scratch", types.int32, 1),
)
STATE_T = IndexStateType([(n, types.Array(t, d, "C")) for n, t, d in _FIELDS])


class IndexState(structref.StructRefProxy):
    """The arrays of one index a search reads, in one object (references, not copies)."""

    def __new__(cls, df, term_key, seg, term_pool, ptr_pool, stamp, seen, ub0, slots, tfs, f,
                dl, alive, slot_doc, acc, touched, scratch):
        return _new_state(df, term_key, seg, term_pool, ptr_pool, stamp, seen, ub0, slots, tfs,
                          f, dl, alive, slot_doc, acc, touched, scratch)


structref.define_boxing(IndexStateType, IndexState)


@njit(cache=True)
def _new_state(df, term_key, seg, term_pool, ptr_pool, stamp, seen, ub0, slots, tfs, f, dl,
               alive, slot_doc, acc, touched, scratch):
    st = structref.new(STATE_T)
    st.df = df
    st.term_key = term_key
    st.seg = seg
    st.term_pool = term_pool
    st.ptr_pool = ptr_pool
    st.stamp = stamp
    st.seen = seen
    st.ub0 = ub0
    st.slots = slots
    st.tfs = tfs
    st.f = f
    st.dl = dl
    st.alive = alive
    st.slot_doc = slot_doc
    st.acc = acc
    st.touched = touched
    st.scratch = scratch
    return st


@njit(cache=True)
def search_batch(q_ptr, q_terms, n_docs, ka, kc, k, prune_min, st):
    """:func:`search_arrays` with the index arrays packed in ``st`` (an :class:`IndexState`)."""
    return search_arrays(q_ptr, q_terms, st.df, st.term_key, n_docs, ka, kc, st.seg, st.term_pool,
                         st.ptr_pool, st.stamp, st.seen, st.ub0, st.slots, st.tfs, st.f, st.dl,
                         st.alive, st.slot_doc, st.acc, st.touched, st.scratch, k, prune_min)


@njit(cache=True)
def score_slots(q_terms, n_docs, ka, kc, targets, st):
    """:func:`score_arrays` with the index arrays packed in ``st``."""
    return score_arrays(q_terms, st.df, st.term_key, n_docs, ka, kc, st.seg, st.term_pool,
                        st.ptr_pool, st.slots, st.tfs, st.dl, st.alive, targets)


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
def _find(term_pool, lo, n, t):
    """Index i in [0, n) with term_pool[lo + i] == t, or -1.  A segment's terms are
    distinct ascending ids, so term_pool[lo + i] >= i: in a dense segment (every id)
    the first probe hits."""
    if t < n and term_pool[lo + t] == t:
        return t
    a = 0
    b = n
    while a < b:
        mid = (a + b) >> 1
        if term_pool[lo + mid] < t:
            a = mid + 1
        else:
            b = mid
    if a < n and term_pool[lo + a] == t:
        return a
    return -1


@njit(cache=True)
def _ordered_terms(q, df, term_key, n_docs):
    """Distinct live terms of one query with ``coef = float32(multiplicity * idf)``, ordered
    by coef descending, ties by term key then id: the one summation order of a score.
    Returns (terms int64, coefs float32, count)."""
    qt = np.sort(q)
    uterm = np.empty(qt.size, np.int64)
    ucoef = np.empty(qt.size, np.float32)
    nu = 0
    i = 0
    while i < qt.size:
        j = i
        while j < qt.size and qt[j] == qt[i]:
            j += 1
        t = qt[i]
        if 0 <= t < df.size and df[t] > 0:
            d = np.float64(df[t])
            idf = np.log(1.0 + (n_docs - d + 0.5) / (d + 0.5))
            uterm[nu] = t
            ucoef[nu] = np.float32((j - i) * idf)
            nu += 1
        i = j
    for i in range(1, nu):  # insertion sort: queries are short
        j = i
        while j > 0 and (ucoef[j] > ucoef[j - 1] or (
                ucoef[j] == ucoef[j - 1] and (term_key[uterm[j]], uterm[j])
                < (term_key[uterm[j - 1]], uterm[j - 1]))):
            ucoef[j], ucoef[j - 1] = ucoef[j - 1], ucoef[j]
            uterm[j], uterm[j - 1] = uterm[j - 1], uterm[j]
            j -= 1
    return uterm, ucoef, nu


@njit(cache=True, error_model="numpy")
def score_arrays(q_terms, df, term_key, n_docs, ka, kc, seg, term_pool, ptr_pool, slots, tfs, dl,
                 alive, targets):
    """BM25 score (float32) of each slot in ``targets`` for one query: 0 for a dead slot
    or one without a query term.  Summed exactly as :func:`search_arrays` sums it, so
    a document's score here equals its score in a search result, float for float."""
    out = np.zeros(targets.size, np.float32)
    uterm, ucoef, nu = _ordered_terms(q_terms, df, term_key, n_docs)
    nseg = seg.shape[1]
    for i in range(targets.size):
        s = targets[i]
        if s < 0 or s >= alive.size or not alive[s]:
            continue
        g = nseg - 1
        while g >= 0 and seg[0, g] > s:
            g -= 1
        if g < 0 or s >= seg[1, g]:
            continue
        v = np.float32(0.0)
        for u in range(nu):
            r = _find(term_pool, seg[2, g], seg[4, g], uterm[u])
            if r < 0:
                continue
            lo = ptr_pool[seg[3, g] + r]
            hi = ptr_pool[seg[3, g] + r + 1]
            q = _gallop(slots, lo, hi, s)
            if q < hi and slots[q] == s:
                v += ucoef[u] * tf_part(tfs[q], dl[s], ka, kc)
        out[i] = v
    return out


@njit(cache=True, error_model="numpy")
def search_arrays(q_ptr, q_terms, df, term_key, n_docs, ka, kc, seg, term_pool, ptr_pool, stamp,
                 seen, ub0, slots, tfs, f, dl, alive, slot_doc, acc, touched, scratch, k,
                 prune_min):
    """Top-k BM25 for every query over all segments; exact, with MaxScore-style pruning.

    q_ptr    int64 [nq + 1]   query i's term ids are q_terms[q_ptr[i]:q_ptr[i + 1]]
    q_terms  int32            term ids, repeats allowed (a repeated term counts again)
    df       int64 [V]        live document frequency of every term; n_docs live documents
    term_key int64 [V]        a stable hash of each term's text (orders terms of equal coef)
    ka, kc   float32          k1 (1 - b) and k1 b / avgdl (see ``_postings.tf_part``)
    seg      int64 [5, nseg]  per segment: slot range [lo, hi), offset of its terms in the
                              term pools, offset of its ptr in the ptr pool, term count
    stamp, seen  float64 [term pool]  the kc a term's ``f`` / ``ub0`` were computed with, and
             the kc of its last on-the-fly use; a term's ``f`` is materialised on its second
             use under the same statistics (rent-or-buy: an index that keeps changing
             computes tf parts on the fly, one that is only searched reads them)
    alive    bool [n_slots]   dead (removed or replaced) slots are never returned
    acc      float32 [n_slots] all zero on entry and on exit (scratch accumulator)
    touched  int32 [n_slots + 1]  scratch (one spare: appends are branch-free)
    scratch  int32 [n_slots]      scratch
    prune_min  int  try pruning only while more than this many postings remain
    Returns out_doc_ids int64 [nq, k], out_scores float32 [nq, k], out_n int32 [nq].

    A query term t contributes ``coef_t * f`` per posting, ``coef_t = float32(m_t *
    idf_t)``, ``idf_t = ln(1 + (N - df + 0.5) / (df + 0.5))``.  Each (term, segment)
    pair is one posting list; lists go term by term in decreasing ``coef`` (ties by
    term id), segments in slot order, so every document's score is summed in the
    same term order whatever the segmentation: a segmented index and one rebuilt
    from the same live documents return the same floats.

    Term-at-a-time into the dense accumulator (MaxScore, exact): once k partial
    scores exceed the sum of the remaining lists' upper bounds, no unseen
    document can reach the top k, so the remaining lists are only probed
    (galloping) for the surviving candidates, one candidate at a time, dropping
    a candidate as soon as its bound falls below the running k-th best score.
    A list's upper bound is ``coef * max f``, and the bound of several lists is
    the sum over their terms of the largest bound of each term's lists (one
    segment per document); for a list whose ``f`` was materialised
    at another avgdl it is scaled by ``max(1, stamp / kc)`` (the tf part grows
    by at most that factor when avgdl grows), capped at 1.
    """
    nq = q_ptr.size - 1
    nseg = seg.shape[1]
    seg_lo, seg_hi, seg_toff, seg_pofs, seg_nt = seg[0], seg[1], seg[2], seg[3], seg[4]
    out_d = np.full((nq, k), -1, np.int64)
    out_v = np.zeros((nq, k), np.float32)
    out_n = np.zeros(nq, np.int32)
    heap = np.empty(2 * k, np.float32)
    hv = np.empty(k, np.float32)
    hs = np.empty(k, np.int32)
    seed_v = np.empty(2 * k, np.float32)
    seed_s = np.empty(2 * k, np.int32)
    # per-list arrays, four allocations (a single query pays them once), grown on demand
    cap = 64
    ints = np.empty((8, cap + 1), np.int64)
    flts = np.empty((2, cap + 1), np.float64)
    lcoef = np.empty(cap, np.float32)
    flags = np.empty((2, cap), np.bool_)
    for qi in range(nq):
        a = q_ptr[qi]
        e = q_ptr[qi + 1]
        uterm, ucoef, nu = _ordered_terms(q_terms[a:e], df, term_key, n_docs)
        if nu == 0:
            continue
        # posting lists: (term, segment) pairs
        if nu * nseg > cap:
            cap = 2 * nu * nseg
            ints = np.empty((8, cap + 1), np.int64)
            flts = np.empty((2, cap + 1), np.float64)
            lcoef = np.empty(cap, np.float32)
            flags = np.empty((2, cap), np.bool_)
        llo, lhi, lseg, run_end = ints[0], ints[1], ints[2], ints[3]
        run_start, run_stop, cur, rest = ints[4], ints[5], ints[6], ints[7]
        tub, suffix = flts[0], flts[1]
        lmat, lfirst = flags[0], flags[1]
        nt = 0
        for u in range(nu):
            t = uterm[u]
            new_term = True
            for g in range(nseg):
                r = _find(term_pool, seg_toff[g], seg_nt[g], t)
                if r < 0:
                    continue
                lo = ptr_pool[seg_pofs[g] + r]
                hi = ptr_pool[seg_pofs[g] + r + 1]
                if hi <= lo:
                    continue
                tp = seg_toff[g] + r
                mat = True
                if stamp[tp] != kc:
                    if seen[tp] == kc:  # second use under these statistics: materialise
                        ub0[tp] = materialize(slots, tfs, dl, ka, kc, f, lo, hi)
                        stamp[tp] = kc
                    else:
                        seen[tp] = kc
                        mat = False
                bound = np.float64(ub0[tp])
                if not mat and kc < stamp[tp]:
                    bound = min(1.0, bound * (stamp[tp] / kc)) if kc > 0 else 1.0
                llo[nt] = lo
                lhi[nt] = hi
                lseg[nt] = g
                lcoef[nt] = ucoef[u]
                lmat[nt] = mat
                lfirst[nt] = new_term
                new_term = False
                tub[nt] = np.float64(ucoef[u]) * bound
                nt += 1
        if nt == 0:
            continue
        # suffix[i]: what lists i.. can still add to one document.  A document lies
        # in one segment, so it gets at most one list per term: the largest bound
        # of the term's remaining lists, plus the later terms'.
        suffix[nt] = 0.0
        rest[nt] = 0  # rest[i]: postings left from list i on
        after = 0.0
        grp = 0.0
        for i in range(nt - 1, -1, -1):
            if i == nt - 1 or lfirst[i + 1]:  # last list of its term
                after = suffix[i + 1]
                grp = tub[i]
            else:
                grp = max(grp, tub[i])
            suffix[i] = grp + after
            rest[i] = rest[i + 1] + lhi[i] - llo[i]
        n_touch = 0
        n_seed = 0
        pruned_at = -1
        theta = 0.0
        slack = 1e-5 * suffix[0] + 1e-12  # float32 rounding margin on every bound
        for i in range(nt):
            if (
                i > 0
                and lfirst[i]  # at term boundaries only: a term's segment lists go together
                and n_touch >= k
                and suffix[0] - suffix[i] > suffix[i]  # theta <= best partial <= prefix sum
                and rest[i] > 4 * n_touch  # the check costs a pass over the touched docs
                and rest[i] > prune_min  # short lists: exhaustive is cheaper
            ):
                # Can k partial scores already beat everything the rest could add?
                # One pass keeps the 2k best live partials: their k-th is theta, and
                # they seed the exact scoring below.
                n_seed = best_partial(acc, touched, n_touch, alive, 2 * k, seed_v, seed_s)
                if n_seed >= k:
                    theta = kth_largest(seed_v, n_seed, k, heap)
                    if theta > suffix[i] + slack:
                        pruned_at = i
                        break
            run_end[i] = n_touch
            c = lcoef[i]
            if lmat[i]:
                for p in range(llo[i], lhi[i]):
                    s = slots[p]
                    a0 = acc[s]
                    touched[n_touch] = s  # branch-free append, kept only if s was untouched
                    n_touch += a0 == 0
                    acc[s] = a0 + c * f[p]
            else:
                for p in range(llo[i], lhi[i]):
                    s = slots[p]
                    a0 = acc[s]
                    touched[n_touch] = s
                    n_touch += a0 == 0
                    acc[s] = a0 + c * tf_part(tfs[p], dl[s], ka, kc)
        if pruned_at < 0:
            out_n[qi] = heap_top_k(acc, touched, n_touch, alive, slot_doc, hv, hs, k, out_d[qi],
                               out_v[qi])
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
                g = lseg[i]
                if s < seg_lo[g] or s >= seg_hi[g]:
                    continue
                q = _gallop(slots, llo[i], lhi[i], s)
                if q < lhi[i] and slots[q] == s:
                    x = f[q] if lmat[i] else tf_part(tfs[q], dl[s], ka, kc)
                    v += lcoef[i] * x
            m_top = heap_offer(hv, hs, m_top, k, v, s, slot_doc)
            acc[s] = -1.0  # done; excluded below (need > -1 because theta > suffix)
        if m_top == k and hv[0] > theta:
            theta = hv[0]
        # Candidates: touched live docs whose partial score plus the rest's bound
        # can still reach theta.  ``touched`` is one ascending run per exhaustive
        # list; filter each run in place (clearing the rejected accumulators),
        # then merge the runs into ``scratch`` in slot order.
        need = theta - suffix[pruned_at] - slack
        nc = 0
        lo = 0
        for r in range(pruned_at):
            hi = run_end[r + 1] if r + 1 < pruned_at else n_touch
            run_start[r] = nc
            for j in range(lo, hi):
                s = touched[j]
                if acc[s] >= need and alive[s]:
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
        # complete.  Scores are summed in the same list order as above.
        for i in range(pruned_at, nt):
            cur[i] = llo[i]
        for c in range(nc):
            s = scratch[c]
            v = acc[s]
            acc[s] = 0.0
            ok = True
            for i in range(pruned_at, nt):
                if v + suffix[i] + slack < theta:
                    ok = False
                    break
                g = lseg[i]
                if s < seg_lo[g] or s >= seg_hi[g]:
                    continue
                hi = lhi[i]
                q = _gallop(slots, cur[i], hi, s)
                cur[i] = q
                if q < hi and slots[q] == s:
                    x = f[q] if lmat[i] else tf_part(tfs[q], dl[s], ka, kc)
                    v += lcoef[i] * x
            if ok and (m_top < k or v >= hv[0]):
                m_top = heap_offer(hv, hs, m_top, k, v, s, slot_doc)
                if m_top == k and hv[0] > theta:
                    theta = hv[0]
        for c in range(n_seed):
            acc[seed_s[c]] = 0.0
        out_n[qi] = heap_drain(hv, hs, m_top, slot_doc, out_d[qi], out_v[qi])
    return out_d, out_v, out_n
