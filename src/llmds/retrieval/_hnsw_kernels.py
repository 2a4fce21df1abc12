"""Numba kernels of :mod:`llmds.retrieval.hnsw` (Malkov & Yashunin, 2018).

Every function works on the flat arrays the ``HNSW`` class owns; none allocates
per visited node.  Shapes (``cap`` = node capacity, ``P`` = upper-link pool rows,
``W`` = row width, a multiple of 16 so rows start on 64-byte lines)::

    fdata     float32 [cap, W]        row i = node i: its vector in columns 0 .. dim-1,
                                      then (as int32 bits) its layer-0 links
    links0    int32   [cap, 2M + 1]   view of the same rows from column dim:
                                      [count, n_1 .. n_count, unused ..]
    upper     int32   [P, M + 1]      layers >= 1: [count, n_1 .. n_count, unused ..]
    nodes     int64   [cap, 4]        [upper_off, label, deleted, level] per node; node
                                      i's layer l >= 1 row is upper[upper_off + l - 1]
    visited   uint32  [cap]           node v visited iff visited[v] == state[EPOCH]
    state     int64   [8]             see the S_* indices below

A node's links sit next to its vector (as in hnswlib), so the node whose
distance was just computed has its neighbour list in cache when it is expanded.
The vector starts each row so distance loops index ``fdata[a, j]`` with ``j``
from a range: provably non-negative, no wraparound checks, vectorised.

Distances inside the kernels are "smaller is closer": squared L2 for ``l2``
(sqrt is taken only on output) and ``1 - dot`` for ``ip`` and ``cosine``
(cosine vectors are unit-normalised before they get here).

Heaps are binary min-heaps on two parallel preallocated arrays (key, id).  The
result set is a max-heap stored as a min-heap of negated distances, so one
sift-up/sift-down pair serves both.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from llvmlite import ir
from llvmlite.binding import llvm_version_info
from numba import types
from llmds._jit import njit
from numba.core import cgutils
from numba.experimental import structref
from numba.extending import intrinsic

METRIC_L2 = 0
METRIC_IP = 1
METRIC_COSINE = 2

# state[] slots
S_ENTRY = 0  # entry node, -1 when empty
S_MAXLEVEL = 1  # level of the entry node, -1 when empty
S_EPOCH = 2  # current visited stamp (uint32 range)
S_METRIC = 3  # METRIC_*
S_NDEL = 5  # number of deleted nodes
S_M = 6  # M
STATE_SIZE = 8

# nodes[] columns
N_OFF = 0
N_LABEL = 1
N_DELETED = 2
N_LEVEL = 3

# Reassociation lets LLVM vectorise the dot-product reductions.  No nnan/ninf:
# inputs are checked finite, and +inf is used as a sentinel in comparisons.
_FM = {"reassoc", "contract", "arcp", "nsz"}


# ------------------------------------------------------------------ prefetch
# The intrinsic's name mangles the pointer type: opaque pointers from LLVM 15.
_PREFETCH_NAME = "llvm.prefetch.p0" if llvm_version_info >= (15,) else "llvm.prefetch.p0i8"


@intrinsic
def _prefetch(typingctx, arr, i, j):
    """Hint the CPU to load ``arr[i, j]`` into cache (no-op semantics)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 2):
        return None
    sig = types.void(arr, i, j)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        idx = [context.cast(builder, v, t, types.intp) for v, t in zip(args[1:], signature.args[1:])]
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, idx, wraparound=False)
        i8p = builder.bitcast(ptr, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, _PREFETCH_NAME)
        # read, high temporal locality, data cache
        builder.call(fn, [i8p, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


PF_FLOATS = 16 * 8  # prefetch at most the first 8 cache lines (128 floats) of a vector


# ----------------------------------------------------------------- distances
@njit(cache=True, fastmath=_FM, boundscheck=False, inline="always")
def _dist(metric, fdata, a, q):
    """Distance between node ``a`` and the vector ``q`` (float32 [dim])."""
    s = np.float32(0.0)
    if metric == METRIC_L2:
        for j in range(q.shape[0]):
            t = fdata[a, j] - q[j]
            s += t * t
        return s
    for j in range(q.shape[0]):
        s += fdata[a, j] * q[j]
    return np.float32(1.0) - s


@njit(cache=True, fastmath=_FM, boundscheck=False, inline="always")
def _dist_nodes(metric, fdata, dim, a, b):
    """Distance between nodes ``a`` and ``b``."""
    s = np.float32(0.0)
    if metric == METRIC_L2:
        for j in range(dim):
            t = fdata[a, j] - fdata[b, j]
            s += t * t
        return s
    for j in range(dim):
        s += fdata[a, j] * fdata[b, j]
    return np.float32(1.0) - s


# --------------------------------------------------------------------- heaps
@njit(cache=True, boundscheck=False, inline="always")
def _heap_push(hk, hi, n, key, idx):
    """Push (key, idx) on the min-heap of size ``n``; returns the new size."""
    k = n
    while k > 0:
        p = (k - 1) >> 1
        if hk[p] <= key:
            break
        hk[k] = hk[p]
        hi[k] = hi[p]
        k = p
    hk[k] = key
    hi[k] = idx
    return n + 1


@njit(cache=True, boundscheck=False, inline="always")
def _heap_sift_down(hk, hi, n, key, idx):
    """Place (key, idx) at the root of a heap of size ``n`` and sift it down."""
    k = 0
    while True:
        c = 2 * k + 1
        if c >= n:
            break
        if c + 1 < n and hk[c + 1] < hk[c]:
            c += 1
        if hk[c] >= key:
            break
        hk[k] = hk[c]
        hi[k] = hi[c]
        k = c
    hk[k] = key
    hi[k] = idx


@njit(cache=True, boundscheck=False, inline="always")
def _heap_pop(hk, hi, n):
    """Remove the root of a heap of size ``n`` (read it first); returns n - 1."""
    n -= 1
    if n > 0:
        _heap_sift_down(hk, hi, n, hk[n], hi[n])
    return n


# -------------------------------------------------------------------- epochs
@njit(cache=True, boundscheck=False)
def _next_epoch(visited, state):
    """Bump the visited stamp; on uint32 wrap clear the stamps (once per 4e9 searches)."""
    e = state[S_EPOCH] + 1
    if e > 0xFFFFFFFF:
        visited[:] = 0
        e = 1
    state[S_EPOCH] = e
    return np.uint32(e)


# ------------------------------------------------------------ layer searches
@njit(cache=True, fastmath=_FM, boundscheck=False)
def _greedy(q, cur, cur_d, level, metric, fdata, upper, nodes):
    """Greedy walk (ef = 1) on layer ``level`` >= 1; returns the local minimum."""
    changed = True
    while changed:
        changed = False
        r = nodes[cur, N_OFF] + level - 1
        for j in range(1, upper[r, 0] + 1):
            nb = upper[r, j]
            d = _dist(metric, fdata, nb, q)
            if d < cur_d:
                cur_d = d
                cur = nb
                changed = True
    return cur, cur_d


@njit(cache=True, fastmath=_FM, boundscheck=False)
def _search_layer(q, ep, ep_d, ef, level, skip_deleted, fdata, links0, upper, nodes,
                  visited, state):
    """Best-first search of one layer (Algorithm 2) from entry ``ep``.

    Returns ``(res_key, res_id, n)``: a heap of the ``n <= ef`` closest nodes
    found, keyed by *negated* distance.  Stops when the closest unexpanded
    candidate is farther than the farthest of ``ef`` results.  With
    ``skip_deleted`` deleted nodes are expanded but kept out of the results.
    """
    metric = state[S_METRIC]
    stamp = _next_epoch(visited, state)
    ccap = max(64, 2 * ef)
    ck = np.empty(ccap, np.float32)  # candidates: min-heap on distance
    ci = np.empty(ccap, np.int32)
    rk = np.empty(ef, np.float32)  # results: min-heap on -distance (max-heap)
    ri = np.empty(ef, np.int32)
    nc = _heap_push(ck, ci, 0, ep_d, ep)
    nr = 0
    lower = np.float32(np.inf)  # distance of the farthest result
    if not (skip_deleted and nodes[ep, N_DELETED]):
        nr = _heap_push(rk, ri, 0, -ep_d, ep)
        lower = ep_d
    visited[ep] = stamp
    if level == 0:
        links = links0
    else:
        links = upper
    nbuf = np.empty(links.shape[1], np.int32)  # unvisited neighbours of one node
    pf_end = min(q.shape[0], PF_FLOATS)
    while nc > 0:
        c_d = ck[0]
        c = ci[0]
        if c_d > lower and nr == ef:
            break
        nc = _heap_pop(ck, ci, nc)
        r = c if level == 0 else nodes[c, N_OFF] + level - 1
        # Pass 1: mark unvisited neighbours and start their loads in parallel.
        nn = 0
        for j in range(1, links[r, 0] + 1):
            nb = links[r, j]
            if visited[nb] != stamp:
                visited[nb] = stamp
                nbuf[nn] = nb
                nn += 1
                for f in range(0, pf_end, 16):
                    _prefetch(fdata, nb, f)
        # Pass 2: distances.
        for t in range(nn):
            nb = nbuf[t]
            d = _dist(metric, fdata, nb, q)
            if nr < ef or d < lower:
                if nc == ck.shape[0]:  # rare: many candidates (deleted nodes)
                    ck2 = np.empty(2 * nc, np.float32)
                    ci2 = np.empty(2 * nc, np.int32)
                    ck2[:nc] = ck
                    ci2[:nc] = ci
                    ck = ck2
                    ci = ci2
                nc = _heap_push(ck, ci, nc, d, nb)
                if not (skip_deleted and nodes[nb, N_DELETED]):
                    if nr < ef:
                        nr = _heap_push(rk, ri, nr, -d, nb)
                    else:
                        _heap_sift_down(rk, ri, nr, -d, nb)
                    lower = -rk[0]
        if nc > 0 and level == 0:
            _prefetch(links0, ci[0], 0)  # links of the next node to expand
    return rk, ri, nr


@njit(cache=True, boundscheck=False)
def _sort_results(rk, ri, n):
    """Heap-sort the result heap in place: afterwards ``rk[:n]`` holds the
    distances ascending (no longer negated) and ``ri[:n]`` their nodes."""
    m = n
    while m > 1:
        tk = rk[0]
        ti = ri[0]
        m = _heap_pop(rk, ri, m)  # the heap now occupies [0, m); slot m is free
        rk[m] = tk
        ri[m] = ti
    for j in range(n):
        rk[j] = -rk[j]


# -------------------------------------------------------- neighbour selection
@njit(cache=True, fastmath=_FM, boundscheck=False)
def _select_heuristic(cand_d, cand_i, n, m, metric, fdata, dim, out):
    """Algorithm 4 (no extension, no pruned fill): diversity selection.

    ``cand_*`` hold ``n`` candidates sorted by distance to the base point.  A
    candidate is kept only if it is closer to the base than to every neighbour
    already kept; at most ``m`` are written to ``out``.  Returns the count.
    """
    cnt = 0
    for a in range(n):
        if cnt >= m:
            break
        e = cand_i[a]
        de = cand_d[a]
        good = True
        for b in range(cnt):
            if _dist_nodes(metric, fdata, dim, e, out[b]) <= de:
                good = False
                break
        if good:
            out[cnt] = e
            cnt += 1
    return cnt


@njit(cache=True, boundscheck=False, inline="always")
def _layer_row(lc, node, links0, upper, nodes, M):
    """(link table, row of ``node`` in it, max links) on layer ``lc``."""
    if lc == 0:
        return links0, np.int64(node), 2 * M
    return upper, nodes[node, N_OFF] + lc - 1, M


@njit(cache=True, boundscheck=False, inline="always")
def _sort_by_distance(cd, ci, n):
    """Stable insertion sort of the first ``n`` (distance, node) pairs (n <= 4M + 1;
    ties keep list order)."""
    for a in range(1, n):
        kd = cd[a]
        ki = ci[a]
        b = a - 1
        while b >= 0 and cd[b] > kd:
            cd[b + 1] = cd[b]
            ci[b + 1] = ci[b]
            b -= 1
        cd[b + 1] = kd
        ci[b + 1] = ki


@njit(cache=True, fastmath=_FM, boundscheck=False)
def _link_back(s, node, level, mmax, dim, fdata, links0, upper, nodes, state, sel):
    """Add ``node`` to the neighbour list of ``s``; shrink by the heuristic if full."""
    metric = state[S_METRIC]
    if level == 0:
        links = links0
        r = s
    else:
        links = upper
        r = nodes[s, N_OFF] + level - 1
    cnt = links[r, 0]
    for j in range(1, cnt + 1):  # an old link to a reused slot: already there
        if links[r, j] == node:
            return
    if cnt < mmax:
        links[r, cnt + 1] = node
        links[r, 0] = cnt + 1
        return
    cd = np.empty(cnt + 1, np.float32)
    cidx = np.empty(cnt + 1, np.int32)
    for j in range(cnt):
        cidx[j] = links[r, j + 1]
        cd[j] = _dist_nodes(metric, fdata, dim, s, cidx[j])
    cidx[cnt] = node
    cd[cnt] = _dist_nodes(metric, fdata, dim, s, node)
    _sort_by_distance(cd, cidx, cnt + 1)
    k = _select_heuristic(cd, cidx, cnt + 1, mmax, metric, fdata, dim, sel)
    for j in range(k):
        links[r, j + 1] = sel[j]
    links[r, 0] = k


# ------------------------------------------------------------------ insertion
@njit(cache=True, fastmath=_FM, boundscheck=False)
def insert_batch(start, stop, dim, ef_construction, fdata, links0, upper, nodes, visited, state):
    """Insert nodes ``start .. stop-1`` (Algorithm 1), in order, single-threaded.

    Vectors, ``nodes`` rows and upper rows of these nodes must already be
    written and their link counts zeroed.  Updates the entry point in ``state``.
    """
    M = state[S_M]
    metric = state[S_METRIC]
    sel = np.empty(2 * M + 1, np.int32)
    q = np.empty(dim, np.float32)
    for node in range(start, stop):
        lvl = nodes[node, N_LEVEL]
        ep = state[S_ENTRY]
        if ep < 0:
            state[S_ENTRY] = node
            state[S_MAXLEVEL] = lvl
            continue
        max_level = state[S_MAXLEVEL]
        for j in range(dim):
            q[j] = fdata[node, j]
        cur = np.int32(ep)
        cur_d = _dist(metric, fdata, cur, q)
        for lc in range(max_level, lvl, -1):
            cur, cur_d = _greedy(q, cur, cur_d, lc, metric, fdata, upper, nodes)
        for lc in range(min(lvl, max_level), -1, -1):
            rk, ri, nr = _search_layer(q, cur, cur_d, ef_construction, lc, False, fdata, links0,
                                       upper, nodes, visited, state)
            _sort_results(rk, ri, nr)
            # Never link to self (a reused slot can be reached through old links to it)
            # nor to deleted nodes (repair_links detached them from the graph) unless
            # nothing else was found.
            live = 0
            for j in range(nr):
                live += ri[j] != node and not nodes[ri[j], N_DELETED]
            w = 0
            for j in range(nr):
                if ri[j] != node and (live == 0 or not nodes[ri[j], N_DELETED]):
                    rk[w] = rk[j]
                    ri[w] = ri[j]
                    w += 1
            nr = w
            if nr == 0:
                continue
            sd, si = rk, ri
            k = _select_heuristic(sd, si, nr, M, metric, fdata, dim, sel)
            links, r, mmax = _layer_row(lc, node, links0, upper, nodes, M)
            for j in range(k):
                links[r, j + 1] = sel[j]
            links[r, 0] = k
            for j in range(k):
                # sel is reused as scratch by _link_back; read the row instead.
                _link_back(links[r, j + 1], node, lc, mmax, dim, fdata, links0, upper, nodes,
                           state, sel)
            cur = si[0]
            cur_d = sd[0]
        if lvl > max_level:
            state[S_ENTRY] = node
            state[S_MAXLEVEL] = lvl


@njit(cache=True, fastmath=_FM, boundscheck=False)
def keep_old_links(node, old0, old_up, dim, fdata, links0, upper, nodes, state):
    """After a reused slot ``node`` was inserted again: offer it its old out-neighbours
    (``old0`` = its old layer-0 row, ``old_up`` its old upper rows; deleted ones too, as
    they still route), so a node that was reachable only through this slot stays
    reachable; a full list keeps the heuristic's choice."""
    M = state[S_M]
    sel = np.empty(2 * M + 1, np.int32)
    for lc in range(nodes[node, N_LEVEL] + 1):
        row = old0 if lc == 0 else old_up[lc - 1]
        mmax = 2 * M if lc == 0 else M
        for j in range(1, row[0] + 1):
            nb = row[j]
            if nb != node and nodes[nb, N_LEVEL] >= lc:  # deleted ones still route
                _link_back(node, nb, lc, mmax, dim, fdata, links0, upper, nodes, state, sel)


@njit(cache=True, fastmath=_FM, boundscheck=False)
def repair_links(node, dim, fdata, links0, upper, nodes, state):
    """Reconnect the neighbourhood of ``node`` (just marked deleted), layer by layer.

    Every live out-neighbour ``n`` of ``node`` that links back to it replaces that
    link by ``node``'s live neighbours (FreshDiskANN's delete consolidation);
    only when they do not all fit does ``n`` re-select its list with the
    heuristic, so the graph stays navigable around the hole.  ``node``
    keeps its own links: links to it from nodes that are not its neighbours
    still route through it until its slot is reused.
    """
    M = state[S_M]
    metric = state[S_METRIC]
    cd = np.empty(6 * M + 2, np.float32)
    ci = np.empty(6 * M + 2, np.int32)
    sel = np.empty(2 * M + 1, np.int32)
    for lc in range(nodes[node, N_LEVEL] + 1):
        links, rn, mmax = _layer_row(lc, node, links0, upper, nodes, M)
        cnt = links[rn, 0]
        for j in range(1, cnt + 1):
            nb = links[rn, j]
            if nodes[nb, N_DELETED]:
                continue
            rb = nb if lc == 0 else nodes[nb, N_OFF] + lc - 1
            cb = links[rb, 0]
            back = False
            for x in range(1, cb + 1):
                if links[rb, x] == node:
                    back = True
            if not back:
                continue
            n = 0
            for x in range(1, cb + 1):  # nb's other neighbours, then node's live ones
                c = links[rb, x]
                if c != node:
                    ci[n] = c
                    n += 1
            for x in range(1, cnt + 1):
                c = links[rn, x]
                if c == nb or nodes[c, N_DELETED]:
                    continue
                dup = False
                for y in range(n):
                    if ci[y] == c:
                        dup = True
                        break
                if not dup:
                    ci[n] = c
                    n += 1
            if n <= mmax:  # room for all: nothing another node relies on is dropped
                for x in range(n):
                    links[rb, x + 1] = ci[x]
                links[rb, 0] = n
                continue
            for x in range(n):
                cd[x] = _dist_nodes(metric, fdata, dim, nb, ci[x])
            _sort_by_distance(cd, ci, n)
            k = _select_heuristic(cd, ci, n, mmax, metric, fdata, dim, sel)
            for x in range(k):
                links[rb, x + 1] = sel[x]
            links[rb, 0] = k


# --------------------------------------------------------------------- search
@njit(cache=True, boundscheck=False)
def _query_ok(q, metric):
    """True if ``q`` is finite (and non-zero for cosine).

    Not fast-math: the test must see NaN/inf.  A float64 sum of squares is
    NaN/inf iff some element is (float32 squares cannot overflow it), and is 0
    iff every element is.  Eight independent partial sums: one chain of
    dependent adds is latency-bound (~0.35 us for dim 384, per query).
    """
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
    n = q.shape[0]
    m = n - n % 8
    for j in range(0, m, 8):
        a0 += np.float64(q[j]) * q[j]
        a1 += np.float64(q[j + 1]) * q[j + 1]
        a2 += np.float64(q[j + 2]) * q[j + 2]
        a3 += np.float64(q[j + 3]) * q[j + 3]
        a4 += np.float64(q[j + 4]) * q[j + 4]
        a5 += np.float64(q[j + 5]) * q[j + 5]
        a6 += np.float64(q[j + 6]) * q[j + 6]
        a7 += np.float64(q[j + 7]) * q[j + 7]
    for j in range(m, n):
        a0 += np.float64(q[j]) * q[j]
    s = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))
    if not np.isfinite(s):
        return False
    return not (metric == METRIC_COSINE and s == 0.0)


@njit(cache=True, boundscheck=False)
def _normalized(q):
    """Unit-norm copy of a non-zero finite ``q``."""
    nrm = 0.0
    for j in range(q.shape[0]):
        nrm += np.float64(q[j]) * q[j]
    inv = 1.0 / np.sqrt(nrm)
    out = np.empty_like(q)
    for j in range(q.shape[0]):
        out[j] = q[j] * inv
    return out


@njit(cache=True, fastmath=_FM, boundscheck=False)
def _search_core(q, k, ef, fdata, links0, upper, nodes, visited, state, out_ids, out_d):
    """k-NN of a prepared query into ``out_ids``/``out_d``; returns the count."""
    ep = state[S_ENTRY]
    if ep < 0:
        return 0
    metric = state[S_METRIC]
    cur = np.int32(ep)
    cur_d = _dist(metric, fdata, cur, q)
    for lc in range(state[S_MAXLEVEL], 0, -1):
        cur, cur_d = _greedy(q, cur, cur_d, lc, metric, fdata, upper, nodes)
    ef = min(max(ef, k), fdata.shape[0])  # capacity bounds the useful list size
    rk, ri, nr = _search_layer(q, cur, cur_d, ef, 0, state[S_NDEL] > 0, fdata, links0, upper,
                               nodes, visited, state)
    _sort_results(rk, ri, nr)
    sd, si = rk, ri
    n = min(k, nr)
    for j in range(n):
        out_ids[j] = nodes[si[j], N_LABEL]
        d = sd[j]
        if metric == METRIC_L2:
            d = np.sqrt(max(d, np.float32(0.0)))
        out_d[j] = d
    return n


@njit(cache=True, boundscheck=False)
def search_one(q, k, ef, fdata, links0, upper, nodes, visited, state, out_ids, out_d):
    """One query; returns the number of results, or -1 for a NaN/inf/zero query."""
    metric = state[S_METRIC]
    if not _query_ok(q, metric):
        return -1
    qq = _normalized(q) if metric == METRIC_COSINE else q
    return _search_core(qq, k, ef, fdata, links0, upper, nodes, visited, state, out_ids, out_d)


@njit(cache=True, boundscheck=False)
def search_batch(Q, k, ef, fdata, links0, upper, nodes, visited, state, out_ids, out_d):
    """Queries ``Q`` [n, dim] into ``out_ids``/``out_d`` [n, k] (pre-filled with
    -1 / inf).  Returns -1 - i if query ``i`` is NaN/inf/zero (nothing
    searched), else 0."""
    metric = state[S_METRIC]
    for i in range(Q.shape[0]):
        if not _query_ok(Q[i], metric):
            return -1 - i
    for i in range(Q.shape[0]):
        qq = _normalized(Q[i]) if metric == METRIC_COSINE else Q[i]
        _search_core(qq, k, ef, fdata, links0, upper, nodes, visited, state, out_ids[i], out_d[i])
    return 0


# ------------------------------------------------------ packed search entry
# A single query spends ~25 us in the kernel at ef=10; unboxing each array
# argument costs ~60 ns (numba builds a MemInfo per array), so search() passes
# the eight index arrays as one StructRef: unboxing it is one pointer read.
@structref.register
class GraphType(types.StructRef):
    """numba type of :class:`Graph`."""

    def preprocess_fields(self, fields):
        return tuple((name, types.unliteral(t)) for name, t in fields)


class Graph(structref.StructRefProxy):
    """The arrays ``search_one_g`` reads, in one object (rebuild after any
    array is replaced: the struct holds references, not copies)."""

    def __new__(cls, fdata, links0, upper, nodes, visited, state, out_ids, out_d):
        return _new_graph(fdata, links0, upper, nodes, visited, state, out_ids, out_d)


structref.define_boxing(GraphType, Graph)

GRAPH_T = GraphType([
    ("fdata", types.Array(types.float32, 2, "C")),
    ("links0", types.Array(types.int32, 2, "A")),  # strided view into fdata's rows
    ("upper", types.Array(types.int32, 2, "C")),
    ("nodes", types.Array(types.int64, 2, "C")),
    ("visited", types.Array(types.uint32, 1, "C")),
    ("state", types.Array(types.int64, 1, "C")),
    ("out_ids", types.Array(types.int64, 1, "A")),  # strided: fields of one record array
    ("out_d", types.Array(types.float32, 1, "A")),
])


@njit(cache=True)
def _new_graph(fdata, links0, upper, nodes, visited, state, out_ids, out_d):
    g = structref.new(GRAPH_T)
    g.fdata = fdata
    g.links0 = links0
    g.upper = upper
    g.nodes = nodes
    g.visited = visited
    g.state = state
    g.out_ids = out_ids
    g.out_d = out_d
    return g


@njit(cache=True, boundscheck=False)
def search_one_g(q, k, ef, g):
    """:func:`search_one` with the index arrays packed in ``g`` (a :class:`Graph`)."""
    return search_one(q, k, ef, g.fdata, g.links0, g.upper, g.nodes, g.visited, g.state,
                      g.out_ids, g.out_d)


# search_one_g's compiled entry point for the one argument signature HNSW.search
# uses.  Calling it directly skips numba's per-call type dispatch (~0.5 us of a
# ~25 us query).  Safe because HNSW.search only ever passes these types: a 1-D
# C-contiguous float32 query (a read-only one has the same memory layout), two
# int64-range ints and the index's own Graph (its field types are fixed by
# GRAPH_T, whatever the layouts of the arrays it was built from).
SEARCH_ONE: list[Any] = [None]


def bind_search_one() -> Any:
    """``search_one_g`` compiled for HNSW.search's signature (or the dispatcher), bound once."""
    try:
        sig = (types.Array(types.float32, 1, "C"), types.int64, types.int64, GRAPH_T)
        fn = search_one_g.compile(sig)  # loads from the numba cache when present
    except Exception:  # pragma: no cover - numba internals moved: use the dispatcher
        logging.getLogger(__name__).warning(
            "HNSW: direct kernel entry unavailable, using numba dispatch", exc_info=True)
        fn = search_one_g
    SEARCH_ONE[0] = fn
    return fn
