"""Bulk word -> dense id mapping for corpus tokenization, without per-token Python objects.

``WordTable.add_texts(texts)`` returns the id of every token of every text
(tokens exactly as :meth:`llmds.retrieval.tokenizer.Tokenizer.words`: lowercased ``\\w+``
runs) plus per-text token counts.  The per-token work — splitting, hashing,
looking up, assigning new ids — runs in one numba kernel over the UTF-8 bytes
of a chunk of texts:

* an ASCII text is lowercased with ``str.lower`` and scanned directly; its word
  bytes are exactly ``[a-z0-9_]`` (``str.isalnum`` on ASCII), identical to the
  regex;
* any other text is split with the regex first (one ``findall``) and re-joined
  with spaces, so every byte of a word is either an ASCII word byte or part of a
  multi-byte UTF-8 character (``>= 0x80``) and the same byte rule applies.

The table is an open-addressing hash (FNV-1a 64, linear probing, load <= 1/2)
whose keys live back to back in a byte arena; each slot also holds the word's
first 8 bytes so that short words (most of them) cost one cache line:

* ``table``  int64 [2^m, 2]    (first 8 bytes packed, word id << 32 | byte length); -1 = empty
* ``woff``   int64 [cap + 1]   word i is ``arena[woff[i]:woff[i + 1]]``
"""

from __future__ import annotations

import numpy as np
from llmds._jit import njit

from llmds.errors import ValidationError
from llmds.retrieval.tokenizer import WORD_RE

__all__ = ["WordTable"]

_WORD_BYTE = np.zeros(256, np.bool_)
for _c in b"abcdefghijklmnopqrstuvwxyz0123456789_":
    _WORD_BYTE[_c] = True
_WORD_BYTE[128:] = True

_FNV_OFFSET = np.uint64(14695981039346656037)
_FNV_PRIME = np.uint64(1099511628211)
_CHUNK_BYTES = 1 << 23  # ~8 MB of text per kernel call bounds the scratch memory
_EMPTY = -1


@njit(cache=True)
def _hash(buf, a, e):
    """FNV-1a 64 of buf[a:e] and the first <= 8 bytes packed little-endian (the inline key)."""
    h = _FNV_OFFSET
    key = np.int64(0)
    for i in range(a, e):
        c = buf[i]
        h = (h ^ np.uint64(c)) * _FNV_PRIME
        if i - a < 8:
            key |= np.int64(c) << (8 * (i - a))
    return h, key


@njit(cache=True)
def _rehash(arena, woff, n_words, size):
    """A fresh table of ``size`` slots holding words 0 .. n_words - 1."""
    table = np.full((size, 2), _EMPTY, np.int64)
    mask = np.uint64(size - 1)
    for r in range(n_words):
        h, key = _hash(arena, woff[r], woff[r + 1])
        j = h & mask
        while table[j, 1] != _EMPTY:
            j = (j + np.uint64(1)) & mask
        table[j, 0] = key
        table[j, 1] = (np.int64(r) << 32) | (woff[r + 1] - woff[r])
    return table


@njit(cache=True)
def _probe(table, mask, h, key, wl, buf, a, arena, woff):
    """Slot of the word buf[a:a+wl] (word id in it) or of the empty slot where it belongs."""
    j = h & mask
    while True:
        meta = table[j, 1]
        if meta == _EMPTY:
            return j
        if table[j, 0] == key and (meta & 0xFFFFFFFF) == wl:
            if wl <= 8:
                return j
            o = woff[meta >> 32]
            same = True
            for x in range(8, wl):
                if arena[o + x] != buf[a + x]:
                    same = False
                    break
            if same:
                return j
        j = (j + np.uint64(1)) & mask


@njit(cache=True)
def _lookup(buf, doc_len, table, arena, woff, word_byte):
    """Phase 1, read-only: split ``buf`` (documents of ``doc_len`` bytes, back to back)
    into words and look each up.

    Returns ids int32 [tokens] and lengths int64 [D].  A word not in the table gets
    ``-(byte offset of the word + 1)`` (``buf`` is < 2 GiB) for :func:`_insert`.
    Kept free of any allocation or growth so the loop compiles tight.
    """
    D = doc_len.size
    ids = np.empty(buf.size // 2 + 1, np.int32)  # a token is >= 1 byte plus >= 1 separator
    lengths = np.zeros(D, np.int64)
    n_tok = 0
    pos = 0
    mask = np.uint64(table.shape[0] - 1)
    for d in range(D):
        end = pos + doc_len[d]
        i = pos
        while i < end:
            if not word_byte[buf[i]]:
                i += 1
                continue
            a = i
            h = _FNV_OFFSET
            key = np.int64(0)
            while i < end and word_byte[buf[i]]:
                c = buf[i]
                h = (h ^ np.uint64(c)) * _FNV_PRIME
                if i - a < 8:
                    key |= np.int64(c) << (8 * (i - a))
                i += 1
            meta = table[_probe(table, mask, h, key, i - a, buf, a, arena, woff), 1]
            ids[n_tok] = -(a + 1) if meta == _EMPTY else meta >> 32
            n_tok += 1
        lengths[d] = n_tok
        pos = end
    for d in range(D - 1, 0, -1):
        lengths[d] -= lengths[d - 1]
    return ids[:n_tok].copy(), lengths


@njit(cache=True)
def _grown(a):
    b = np.empty(2 * a.size, a.dtype)
    b[: a.size] = a
    return b


@njit(cache=True)
def _insert(buf, ids, table, arena, woff, n_words, word_byte):
    """Phase 2: resolve every ``-(offset + 1)`` id, adding new words in first-seen order.

    Returns (table, arena, woff, n_words), reallocated when they had to grow.
    """
    mask = np.uint64(table.shape[0] - 1)
    for m in range(ids.size):
        if ids[m] >= 0:
            continue
        a = -np.int64(ids[m]) - 1
        e = a
        while e < buf.size and word_byte[buf[e]]:
            e += 1
        wl = e - a
        h, key = _hash(buf, a, e)
        j = _probe(table, mask, h, key, wl, buf, a, arena, woff)
        meta = table[j, 1]
        if meta != _EMPTY:  # an earlier miss of this chunk added it
            ids[m] = meta >> 32
            continue
        r = n_words
        if r + 1 >= woff.size:
            woff = _grown(woff)
        used = woff[r]
        while used + wl > arena.size:
            arena = _grown(arena)
        arena[used : e - a + used] = buf[a:e]
        woff[r + 1] = used + wl
        table[j, 0] = key
        table[j, 1] = (np.int64(r) << 32) | wl
        n_words += 1
        ids[m] = r
        if 2 * n_words > table.shape[0]:
            table = _rehash(arena, woff, n_words, 2 * table.shape[0])
            mask = np.uint64(table.shape[0] - 1)
    return table, arena, woff, n_words


class WordTable:
    """Grow-only map from lowercased words to dense ids 0, 1, 2, ... (first-seen order)."""

    __slots__ = ("_arena", "_n", "_table", "_woff")

    def __init__(self) -> None:
        self._table = np.full((1024, 2), _EMPTY, np.int64)
        self._arena = np.zeros(4096, np.uint8)
        self._woff = np.zeros(513, np.int64)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def words(self, start: int, stop: int) -> list[str]:
        """The words with ids ``start .. stop - 1``."""
        arena = self._arena[: self._woff[stop]].tobytes()
        off = self._woff[start : stop + 1].tolist()
        return [arena[off[i] : off[i + 1]].decode("utf-8") for i in range(stop - start)]

    def add_texts(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Word ids of every token of ``texts``.

        Returns
        -------
        ids : int32 [total tokens]
            Tokens of all texts back to back.
        lengths : int64 [len(texts)]
            Tokens per text.
        """
        id_parts: list[np.ndarray] = []
        len_parts: list[np.ndarray] = []
        start = 0
        n = len(texts)
        while start < n:
            stop, size = start, 0
            while stop < n and (size < _CHUNK_BYTES or stop == start):
                size += len(texts[stop])
                stop += 1
            enc = [
                (t.lower() if t.isascii() else " ".join(WORD_RE.findall(t.lower()))).encode("utf-8")
                for t in texts[start:stop]
            ]
            doc_len = np.fromiter(map(len, enc), np.int64, stop - start) + 1  # + separator
            joined = b" ".join(enc) + b" "
            if len(joined) >= 1 << 31:  # byte offsets must fit the int32 miss marker
                raise ValidationError("a text of 2 GiB or more (UTF-8) cannot be indexed")
            buf = np.frombuffer(joined, np.uint8)
            ids, lengths = _lookup(buf, doc_len, self._table, self._arena, self._woff, _WORD_BYTE)
            if ids.size and ids.min() < 0:
                self._table, self._arena, self._woff, self._n = _insert(
                    buf, ids, self._table, self._arena, self._woff, self._n, _WORD_BYTE
                )
            id_parts.append(ids)
            len_parts.append(lengths)
            start = stop
        if not id_parts:
            return np.zeros(0, np.int32), np.zeros(0, np.int64)
        if len(id_parts) == 1:
            return id_parts[0], len_parts[0]
        return np.concatenate(id_parts), np.concatenate(len_parts)
