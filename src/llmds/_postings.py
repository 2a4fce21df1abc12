"""Numba kernels of the inverted index: varint codec, CSC build, BM25 weights.

Layout shared by every kernel (CSC-like, one column per term):

* ``ptr``    int64 [V + 1]   postings of term ``t`` are ``ptr[t]:ptr[t + 1]``
* ``slots``  int32 [nnz]     document slot of each posting, strictly increasing per term
* ``tfs``    int32 [nnz]     term frequency (>= 1)
* ``w``      float32 [nnz]   BM25 weight ``idf(t) * tf / (tf + k1 * (1 - b + b * dl / avgdl))``
* ``ub``     float32 [V]     max of ``w`` over the term's postings (MaxScore upper bound)

Compressed form (``encode_postings``): per term, pairs ``(slot - prev_slot, tf)``
with ``prev_slot = -1`` at the start of every term, each number an unsigned
LEB128 varint (7 bits a byte, high bit = "more bytes follow").  Gaps and tfs
are therefore >= 1, which the decoder checks.
"""

from __future__ import annotations

import numpy as np
from llmds._jit import njit

__all__ = [
    "bm25_weights",
    "csc_from_tokens",
    "decode_postings",
    "encode_postings",
    "merge_csc",
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


# ---------------------------------------------------------------- building
@njit(cache=True)
def csc_from_tokens(tokens, lengths, slot_base, remap, vocab_size):
    """CSC postings of a batch of documents given as token-id streams.

    tokens    int32 [T]  term ids, documents back to back; negative ids (stop words) skipped
    lengths   int64 [D]  tokens per document; document d has slot ``slot_base + d``
    remap     int32 [n_slots]  final slot of every slot, -1 if the document is dead
    Returns ptr int64 [vocab_size + 1], slots int32 [nnz], tfs int32 [nnz].

    Two passes over the tokens with a per-term "last document" stamp: the first
    counts documents per term, the second writes (slot, tf) straight into place.
    Documents are visited in slot order, so each term's slots come out ascending.
    """
    stamp = np.full(vocab_size, -1, np.int64)  # last document that saw the term
    cnt = np.zeros(vocab_size + 1, np.int64)
    i = 0
    for d in range(lengths.size):
        e = i + lengths[d]
        if remap[slot_base + d] >= 0:
            for j in range(i, e):
                t = tokens[j]
                if t >= 0 and stamp[t] != d:
                    stamp[t] = d
                    cnt[t + 1] += 1
        i = e
    ptr = np.cumsum(cnt)
    nnz = ptr[vocab_size]
    slots = np.empty(nnz, np.int32)
    tfs = np.empty(nnz, np.int32)
    cur = ptr[:vocab_size].copy()  # next free position of each term
    where = np.empty(vocab_size, np.int64)  # position of the term's pair in the current doc
    stamp[:] = -1
    i = 0
    for d in range(lengths.size):
        e = i + lengths[d]
        s = remap[slot_base + d]
        if s >= 0:
            for j in range(i, e):
                t = tokens[j]
                if t < 0:
                    continue
                if stamp[t] != d:
                    stamp[t] = d
                    q = cur[t]
                    cur[t] = q + 1
                    where[t] = q
                    slots[q] = s
                    tfs[q] = 1
                else:
                    tfs[where[t]] += 1
        i = e
    return ptr, slots, tfs


@njit(cache=True)
def merge_csc(a_ptr, a_slots, a_tfs, remap, b_ptr, b_slots, b_tfs):
    """Concatenate, term by term, built postings ``a`` (old slots, renumbered through
    ``remap``, dead ones dropped) and new postings ``b`` (final slots, all larger).

    ``b_ptr`` may have more terms than ``a_ptr`` (new vocabulary).
    Returns ptr int64 [len(b_ptr)], slots int32, tfs int32.
    """
    nterms = b_ptr.size - 1
    na = a_ptr.size - 1
    ptr = np.zeros(nterms + 1, np.int64)
    for t in range(nterms):
        c = b_ptr[t + 1] - b_ptr[t]
        if t < na:
            for p in range(a_ptr[t], a_ptr[t + 1]):
                if remap[a_slots[p]] >= 0:
                    c += 1
        ptr[t + 1] = ptr[t] + c
    slots = np.empty(ptr[nterms], np.int32)
    tfs = np.empty(ptr[nterms], np.int32)
    for t in range(nterms):
        q = ptr[t]
        if t < na:
            for p in range(a_ptr[t], a_ptr[t + 1]):
                s = remap[a_slots[p]]
                if s >= 0:
                    slots[q] = s
                    tfs[q] = a_tfs[p]
                    q += 1
        for p in range(b_ptr[t], b_ptr[t + 1]):
            slots[q] = b_slots[p]
            tfs[q] = b_tfs[p]
            q += 1
    return ptr, slots, tfs


@njit(cache=True)
def bm25_weights(ptr, slots, tfs, slot_len, n_docs, avgdl, k1, b):
    """Per-posting Lucene BM25 weights (float32) and per-term upper bounds."""
    nterms = ptr.size - 1
    w = np.empty(slots.size, np.float32)
    ub = np.zeros(nterms, np.float32)
    inv_avg = 1.0 / avgdl if avgdl > 0 else 0.0
    for t in range(nterms):
        df = ptr[t + 1] - ptr[t]
        if df == 0:
            continue
        idf = np.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))
        m = np.float32(0.0)
        for p in range(ptr[t], ptr[t + 1]):
            tf = np.float64(tfs[p])
            norm = k1 * (1.0 - b + b * slot_len[slots[p]] * inv_avg)
            x = np.float32(idf * tf / (tf + norm))
            w[p] = x
            m = max(m, x)
        ub[t] = m
    return w, ub
