"""Numba kernels of the inverted index: varint codec, segment build and merge, tf parts.

A *segment* holds the postings of a contiguous range of document slots, CSC-like
over the terms that occur in it (sparse: a one-document segment does not pay for
the whole vocabulary):

* ``terms``  int32 [nt]       term ids present, ascending
* ``ptr``    int64 [nt + 1]   postings of ``terms[i]`` are ``ptr[i]:ptr[i + 1]``
* ``slots``  int32 [nnz]      document slot of each posting, strictly increasing per term
* ``tfs``    int32 [nnz]      term frequency (>= 1)
* ``f``      float32 [nnz]    the BM25 tf part ``tf / (tf + k1 (1 - b) + k1 b dl / avgdl)``
                              for the ``avgdl`` the term was last materialised with

The tf part is the only piece of a BM25 weight that depends on a document; the
idf (global ``N`` and ``df``) is applied per query term, so segments never need
rewriting when another segment changes the statistics.  :func:`tf_part` is the
one place the formula is computed, so a value read from ``f`` and one computed
on the fly are the same float.

Compressed form (``encode_postings``, the saved file): per term, pairs
``(slot - prev_slot, tf)`` with ``prev_slot = -1`` at the start of every term, each
number an unsigned LEB128 varint (7 bits a byte, high bit = "more bytes
follow").  Gaps and tfs are therefore >= 1, which the decoder checks.  The
forward index (each document's sorted distinct term ids, needed to keep ``df``
exact when a document is removed) uses the same gap + varint coding.
"""

from __future__ import annotations

import numpy as np
from llmds._jit import njit

__all__ = [
    "build_segment",
    "compact_forward",
    "decode_postings",
    "encode_postings",
    "encoded_size",
    "forward_from_csc",
    "forward_terms",
    "materialize",
    "materialize_all",
    "merge_segments",
    "tf_part",
    "varint_decode",
    "varint_encode",
]


# ---------------------------------------------------------------- varint codec
@njit(cache=True)
def _varint_size(v: int) -> int:
    n = 1
    while v >= 128:
        v >>= 7
        n += 1
    return n


@njit(cache=True)
def _put(out, pos, v):
    while v >= 128:
        out[pos] = (v & 127) | 128
        v >>= 7
        pos += 1
    out[pos] = v
    return pos + 1


@njit(cache=True)
def varint_encode(values):
    """int64 [n] (each >= 0) -> uint8 [bytes].  Returns an empty array if a value is negative."""
    total = 0
    for i in range(values.size):
        v = values[i]
        if v < 0:
            return np.empty(0, np.uint8), False
        total += _varint_size(v)
    out = np.empty(total, np.uint8)
    pos = 0
    for i in range(values.size):
        pos = _put(out, pos, values[i])
    return out, True


@njit(cache=True)
def _get(buf, pos):
    """Decode one varint at ``pos`` -> (value, next_pos); next_pos = -1 if truncated/overlong."""
    v = np.int64(0)
    shift = 0
    n = buf.size
    while True:
        if pos >= n or shift > 56:
            return v, -1
        byte = np.int64(buf[pos])
        pos += 1
        v |= (byte & 127) << shift
        if byte < 128:
            return v, pos
        shift += 7


@njit(cache=True)
def varint_decode(buf, count):
    """uint8 buffer -> (int64 [count], ok).  ``ok`` is False if the buffer is truncated,
    holds an over-long varint, or has bytes left over."""
    out = np.empty(count, np.int64)
    pos = 0
    for i in range(count):
        v, pos = _get(buf, pos)
        if pos < 0:
            return out, False
        out[i] = v
    return out, pos == buf.size


@njit(cache=True)
def encode_postings(ptr, slots, tfs):
    """CSC postings -> delta + varint byte stream (layout in the module docstring)."""
    nterms = ptr.size - 1
    total = 0
    for t in range(nterms):
        prev = -1
        for p in range(ptr[t], ptr[t + 1]):
            s = np.int64(slots[p])
            total += _varint_size(s - prev) + _varint_size(np.int64(tfs[p]))
            prev = s
    out = np.empty(total, np.uint8)
    pos = 0
    for t in range(nterms):
        prev = -1
        for p in range(ptr[t], ptr[t + 1]):
            s = np.int64(slots[p])
            pos = _put(out, pos, s - prev)
            pos = _put(out, pos, np.int64(tfs[p]))
            prev = s
    return out


@njit(cache=True)
def decode_postings(buf, ptr, n_slots):
    """Inverse of ``encode_postings``.  Returns (slots, tfs, ok); ``ok`` is False on any
    inconsistency (truncation, zero gap or tf, slot >= n_slots, trailing bytes)."""
    nnz = ptr[ptr.size - 1]
    slots = np.empty(nnz, np.int32)
    tfs = np.empty(nnz, np.int32)
    pos = 0
    for t in range(ptr.size - 1):
        prev = np.int64(-1)
        for p in range(ptr[t], ptr[t + 1]):
            gap, pos = _get(buf, pos)
            if pos < 0 or gap < 1:
                return slots, tfs, False
            tf, pos = _get(buf, pos)
            if pos < 0 or tf < 1 or tf > 2147483647:
                return slots, tfs, False
            prev += gap
            if prev >= n_slots:
                return slots, tfs, False
            slots[p] = prev
            tfs[p] = tf
    return slots, tfs, pos == buf.size


# ---------------------------------------------------------------- BM25 tf part
@njit(cache=True, inline="always", error_model="numpy")
def tf_part(tf, dl, ka, kc):
    """``tf / (tf + ka + kc * dl)`` in float32 (``ka = k1 (1 - b)``, ``kc = k1 b / avgdl``)."""
    t = np.float32(tf)
    return t / (t + (ka + kc * dl))


@njit(cache=True, error_model="numpy")  # no zero-division check: the loop vectorises
def materialize(slots, tfs, dl, ka, kc, f, lo, hi):
    """Write the tf parts of postings ``lo:hi`` into ``f``; returns their maximum."""
    m = np.float32(0.0)
    for p in range(lo, hi):
        x = tf_part(tfs[p], dl[slots[p]], ka, kc)
        f[p] = x
        if x > m:
            m = x
    return m


# ---------------------------------------------------------------- building
@njit(cache=True)
def _encode_runs(values, bounds):
    """Gap + varint code of the ascending runs ``values[bounds[i]:bounds[i + 1]]`` (gaps from
    -1, so every gap is >= 1).  Returns (offsets int64 [runs + 1], bytes uint8)."""
    runs = bounds.size - 1
    size = 0
    for r in range(runs):
        prev = -1
        for q in range(bounds[r], bounds[r + 1]):
            size += _varint_size(np.int64(values[q]) - prev)
            prev = values[q]
    out = np.empty(size, np.uint8)
    off = np.zeros(runs + 1, np.int64)
    pos = 0
    for r in range(runs):
        prev = -1
        for q in range(bounds[r], bounds[r + 1]):
            pos = _put(out, pos, np.int64(values[q]) - prev)
            prev = values[q]
        off[r + 1] = pos
    return off, out


@njit(cache=True)
def build_segment(tokens, lengths, alive, slot_lo, vocab_size):
    """Postings and forward index of a batch of documents given as token-id streams.

    tokens   int32 [T]  term ids, documents back to back; negative ids (stop words) skipped
    lengths  int64 [D]  tokens per document; document d gets slot ``slot_lo + d``
    alive    bool  [D]  documents to index (a replaced or removed one is skipped)
    Returns terms int32 [nt], ptr int64 [nt + 1], slots int32, tfs int32 (the segment,
    ``ptr`` from 0), fwd_off int64 [D + 1] and fwd bytes uint8 (the forward index).

    Each document's tokens are sorted once (distinct terms and tfs, doc-major),
    then turned term-major by a counting pass over the vocabulary when the
    batch is large (the segment is then *dense*: ``terms`` is every id
    ``0..vocab_size-1``, so a query finds a term's postings without a search),
    or by a stable sort when it is small (a one-document segment must not cost
    O(vocabulary)).  Either way each term's slots come out ascending.
    """
    D = lengths.size
    T = tokens.size
    ft = np.empty(T, np.int32)  # distinct terms per doc, doc-major
    ftf = np.empty(T, np.int32)
    fdoc = np.empty(T, np.int32)
    fptr = np.zeros(D + 1, np.int64)
    buf = np.empty(0, np.int32)
    n = 0
    i = 0
    for d in range(D):
        e = i + lengths[d]
        if alive[d] and e > i:
            if buf.size < e - i:
                buf = np.empty(2 * (e - i), np.int32)
            m = 0
            for j in range(i, e):
                if tokens[j] >= 0:
                    buf[m] = tokens[j]
                    m += 1
            b = np.sort(buf[:m])
            j = 0
            while j < m:
                t = b[j]
                c = j
                while c < m and b[c] == t:
                    c += 1
                ft[n] = t
                ftf[n] = c - j
                fdoc[n] = d
                n += 1
                j = c
        fptr[d + 1] = n
        i = e
    fwd_off, fwd = _encode_runs(ft, fptr)  # the forward index
    # term-major
    slots = np.empty(n, np.int32)
    tfs = np.empty(n, np.int32)
    if vocab_size <= 4 * n:  # large batch: a dense segment (every term id, most non-empty)
        ptr = np.zeros(vocab_size + 1, np.int64)
        for q in range(n):
            ptr[ft[q] + 1] += 1
        for t in range(vocab_size):
            ptr[t + 1] += ptr[t]
        cur = ptr[:vocab_size].copy()
        for q in range(n):
            t = ft[q]
            o = cur[t]
            cur[t] = o + 1
            slots[o] = slot_lo + fdoc[q]
            tfs[o] = ftf[q]
        return np.arange(vocab_size).astype(np.int32), ptr, slots, tfs, fwd_off, fwd
    order = np.argsort(ft[:n], kind="mergesort")  # stable: slots stay ascending per term
    nt = 0
    for j in range(n):
        if j == 0 or ft[order[j]] != ft[order[j - 1]]:
            nt += 1
    terms = np.empty(nt, np.int32)
    ptr = np.zeros(nt + 1, np.int64)
    r = -1
    for j in range(n):
        q = order[j]
        if j == 0 or ft[q] != ft[order[j - 1]]:
            r += 1
            terms[r] = ft[q]
        ptr[r + 1] = j + 1
        slots[j] = slot_lo + fdoc[q]
        tfs[j] = ftf[q]
    return terms, ptr, slots, tfs, fwd_off, fwd


@njit(cache=True)
def forward_terms(fwd, lo, hi):
    """The sorted term ids of one document, decoded from ``fwd[lo:hi]``."""
    out = np.empty(hi - lo, np.int32)
    n = 0
    prev = np.int64(-1)
    pos = lo
    while pos < hi:
        gap, nxt = _get(fwd[:hi], pos)
        prev += gap
        out[n] = prev
        n += 1
        pos = nxt
    return out[:n]


@njit(cache=True)
def merge_segments(term_pool, ptr_pool, seg_toff, seg_pofs, seg_nt, slots, tfs, alive, new_slot,
                   dense_vocab):
    """Merge the segments given by offsets (oldest first) into one, dropping dead postings.

    seg_toff / seg_pofs / seg_nt  int64 [k]  each segment's offset in the term pool,
        offset in the ptr pool (its ptr values index ``slots``/``tfs``) and term count
    alive     bool [n_slots]   postings of dead slots are dropped
    new_slot  int32 [n_slots]  renumbering of the slots (compaction), or empty: keep them
    dense_vocab  int  > 0: emit every term id below it (a dense segment, empty runs kept);
               0: only terms with live postings
    Returns terms, ptr (from 0), slots, tfs of the merged segment.  Segments hold
    ascending disjoint slot ranges, so concatenating a term's runs in segment order
    keeps slots ascending.
    """
    k = seg_toff.size
    total = 0
    nt_max = 0
    for j in range(k):
        total += ptr_pool[seg_pofs[j] + seg_nt[j]] - ptr_pool[seg_pofs[j]]
        nt_max += seg_nt[j]
    out_s = np.empty(total, np.int32)
    out_t = np.empty(total, np.int32)
    nt_max = max(nt_max, dense_vocab)
    terms = np.empty(nt_max, np.int32)
    ptr = np.zeros(nt_max + 1, np.int64)
    cur = np.zeros(k, np.int64)
    renumber = new_slot.size > 0
    big = np.int64(1) << 40
    q = 0
    r = 0
    while True:
        t = big  # smallest term not yet merged
        for j in range(k):
            if cur[j] < seg_nt[j]:
                x = np.int64(term_pool[seg_toff[j] + cur[j]])
                if x < t:
                    t = x
        if t == big:
            break
        while r < dense_vocab and r < t:  # dense: empty runs for absent term ids
            terms[r] = r
            r += 1
            ptr[r] = q
        start = q
        for j in range(k):
            c = cur[j]
            if c < seg_nt[j] and term_pool[seg_toff[j] + c] == t:
                for p in range(ptr_pool[seg_pofs[j] + c], ptr_pool[seg_pofs[j] + c + 1]):
                    s = slots[p]
                    if alive[s]:
                        out_s[q] = new_slot[s] if renumber else s
                        out_t[q] = tfs[p]
                        q += 1
                cur[j] = c + 1
        if q > start or t < dense_vocab:
            terms[r] = t
            r += 1
            ptr[r] = q
    while r < dense_vocab:
        terms[r] = r
        r += 1
        ptr[r] = q
    return terms[:r].copy(), ptr[: r + 1].copy(), out_s[:q].copy(), out_t[:q].copy()


@njit(cache=True)
def encoded_size(term_pool, ptr_pool, seg_toff, seg_pofs, seg_nt, slots, tfs, alive, vocab_size):
    """Bytes of ``encode_postings`` over the live postings of all segments, slots
    renumbered densely (what ``save`` writes after compacting)."""
    n_slots = alive.size
    new_slot = np.empty(n_slots, np.int64)
    c = 0
    for s in range(n_slots):
        new_slot[s] = c
        c += alive[s]
    prev = np.full(vocab_size, -1, np.int64)
    total = 0
    for j in range(seg_toff.size):
        for i in range(seg_nt[j]):
            t = term_pool[seg_toff[j] + i]
            for p in range(ptr_pool[seg_pofs[j] + i], ptr_pool[seg_pofs[j] + i + 1]):
                s = slots[p]
                if alive[s]:
                    ns = new_slot[s]
                    total += _varint_size(ns - prev[t]) + _varint_size(np.int64(tfs[p]))
                    prev[t] = ns
    return total


@njit(cache=True)
def materialize_all(ptr, slots, tfs, dl, ka, kc, f, ub):
    """:func:`materialize` every term of a segment (``ptr`` absolute) into ``f`` and ``ub``."""
    for i in range(ptr.size - 1):
        ub[i] = materialize(slots, tfs, dl, ka, kc, f, ptr[i], ptr[i + 1])


@njit(cache=True)
def forward_from_csc(terms, ptr, slots, n_slots):
    """Forward index (``fwd_off`` int64 [n_slots + 1], bytes) of a segment given term-major."""
    cnt = np.zeros(n_slots + 1, np.int64)
    for p in range(slots.size):
        cnt[slots[p] + 1] += 1
    start = np.cumsum(cnt)
    cur = start[:n_slots].copy()
    ft = np.empty(slots.size, np.int32)
    for i in range(terms.size):  # terms ascending: each slot's list comes out ascending
        for p in range(ptr[i], ptr[i + 1]):
            s = slots[p]
            ft[cur[s]] = terms[i]
            cur[s] += 1
    return _encode_runs(ft, start)


@njit(cache=True)
def compact_forward(off, fwd, alive):
    """Forward index of the live slots only, renumbered densely (as a compaction does)."""
    n = alive.size
    m = 0
    size = 0
    for s in range(n):
        if alive[s]:
            m += 1
            size += off[s + 1] - off[s]
    new_off = np.zeros(m + 1, np.int64)
    out = np.empty(size, np.uint8)
    r = 0
    pos = 0
    for s in range(n):
        if alive[s]:
            for q in range(off[s], off[s + 1]):
                out[pos] = fwd[q]
                pos += 1
            r += 1
            new_off[r] = pos
    return new_off, out
