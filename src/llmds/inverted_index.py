"""Inverted index with Lucene-style BM25 over segmented flat numpy arrays.

Scoring
-------
``score(q, d) = sum over query tokens t of idf(t) * tf / (tf + k1 * (1 - b + b * dl / avgdl))``
with ``idf(t) = log(1 + (N - df + 0.5) / (df + 0.5))`` (never negative), ``tf``
the count of ``t`` in ``d``, ``dl`` the document's token count (after stop
words), ``avgdl`` the mean over live documents and ``N`` their number.  This is
Lucene's (and ``bm25s`` ``method="lucene"``'s) formula; a query token repeated
counts again.  Only documents with a positive score are returned, best first,
ties broken by ascending doc id.  ``N``, ``avgdl`` and every ``df`` are exact for
the live documents at every moment: results equal those of an index rebuilt
from the live documents, float for float.

Storage and updates
-------------------
Documents get internal *slots* in insertion order; any int64 ``doc_id`` maps to
one.  Postings live in log-structured segments (:mod:`llmds._segments`, which
explains the merge policy and the tf parts): an add is tokenized at once and
queued; the next search turns the queue into a small segment, merged
geometrically with the youngest ones, so an add never rebuilds the index.  A
remove (or replacing add) tombstones the slot and lowers the ``df`` of its
terms through a delta + varint forward index; slots are compacted once a
quarter are dead.  A query is one numba call over all segments with exact
MaxScore pruning.  ``save`` writes the postings delta + varint encoded;
``stats()["index_bytes"]`` is the size of that encoding.

Not thread-safe: searches share one scratch accumulator (and may materialise
tf parts); guard a shared index with a lock (``RetrievalPipeline`` does).
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np

from llmds import _postings as K
from llmds._binfmt import read_checked, write_atomic
from llmds._bm25_search import IndexState, score_slots, search_batch
from llmds._checks import check_float, check_int, is_int
from llmds._docs import check_doc_id, split_doc_pairs
from llmds._index_io import index_from_arrays, index_to_arrays
from llmds._segments import Segments
from llmds._wordtable import WordTable
from llmds.errors import CorruptFileError, NotFoundError, ValidationError
from llmds.tokenizer import Tokenizer

__all__ = ["InvertedIndex"]

logger = logging.getLogger(__name__)

_MAGIC = b"LLMDSINV"
_VERSION = 1


def _term_key(term: str) -> int:
    """Stable across processes (unlike ``hash``): byte length << 32 | CRC-32 of the UTF-8 text."""
    b = term.encode("utf-8")
    return (len(b) << 32) | zlib.crc32(b)


class InvertedIndex:
    """Compressed inverted index with BM25 ranking.

    ``prune_min_postings`` (class attribute, default 4096) is the posting count
    below which a query is scored exhaustively instead of trying MaxScore
    pruning; results are identical either way (tests set it to 0).

    Parameters
    ----------
    tokenizer : Tokenizer, optional
        Shared by documents and queries; default ``Tokenizer()`` (lowercase
        ``\\w+`` words, no stop words, no stemming).
    k1 : float
        Term-frequency saturation, ``k1 >= 0`` (default 1.5).
    b : float
        Length normalisation, ``0 <= b <= 1`` (default 0.75).

    Examples
    --------
    >>> idx = InvertedIndex()
    >>> idx.add_documents([(1, "the quick brown fox"), (-2, "the lazy dog")])
    >>> [d for d, _ in idx.search("quick dog")]
    [1, -2]
    """

    prune_min_postings = 4096

    def __init__(
        self, tokenizer: Tokenizer | None = None, k1: float = 1.5, b: float = 0.75
    ) -> None:
        if tokenizer is None:
            tokenizer = Tokenizer()
        if not isinstance(tokenizer, Tokenizer):
            raise ValidationError("tokenizer must be an llmds.tokenizer.Tokenizer (or None)")
        self.tokenizer = tokenizer
        self.k1 = check_float("k1", k1, 0.0)
        self.b = check_float("b", b, 0.0, 1.0)
        self._terms: list[str] = []  # term id -> term
        self._term2id: dict[str, int] = {}
        self._words = WordTable()  # lowercased word -> word id (bulk tokenizing in numba)
        self._word_term = np.zeros(0, np.int32)  # word id -> term id, -1 for stop words
        self._df = np.zeros(1024, np.int64)  # term id -> live documents containing it
        self._term_key = np.zeros(1024, np.int64)  # term id -> _term_key(term)
        self._nkeys = 0  # terms keyed so far
        # Slot table: one slot per added document, in insertion order.
        self._slot_doc = np.zeros(16, np.int64)  # slot -> doc id
        self._dl = np.zeros(16, np.float32)  # slot -> dl (indexed tokens)
        self._alive = np.zeros(16, np.bool_)
        self._n_slots = 0
        self._slot_of: dict[int, int] = {}  # doc id -> live slot
        self._total_len = 0  # sum of dl over live docs
        # Slots < _flushed are in segments (and in the forward index); later ones queued.
        self._flushed = 0
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # (token ids int32, lengths int64)
        self._fwd_off = np.zeros(17, np.int64)  # slot s's sorted term ids: _fwd[off[s]:off[s+1]]
        self._fwd = np.zeros(1024, np.uint8)
        self._seg = Segments()
        self._acc = np.zeros(16, np.float32)
        self._touched = np.zeros(17, np.int32)
        self._scratch = np.zeros(16, np.int32)
        self._index_bytes: int | None = None  # cached stats()["index_bytes"]
        self._kk: tuple[np.float32, np.float32] | None = None  # cached _norms()
        self._kstate: IndexState | None = None  # cached _state(); None after arrays change

    # ------------------------------------------------------------ adding / removing
    def add_document(self, doc_id: int, text: str) -> None:
        """Index ``text`` under ``doc_id`` (any int64), replacing a document with that id.

        Raises
        ------
        ValidationError
            ``doc_id`` is not an int in the int64 range or ``text`` is not a str.
        """
        self.add_documents(((doc_id, text),))

    def add_documents(self, docs: Iterable[tuple[int, str]]) -> None:
        """Index many ``(doc_id, text)`` pairs; later pairs replace earlier ones with the same id.

        All pairs are validated before anything changes.  Tokenizing is one
        numba pass over the texts; the postings become a segment on the next search.
        """
        ids, texts = split_doc_pairs(docs)
        if not ids:
            return
        if len(set(ids)) != len(ids):  # keep the last text of a repeated id
            last = {d: i for i, d in enumerate(ids)}
            keep = sorted(last.values())
            ids = [ids[i] for i in keep]
            texts = [texts[i] for i in keep]
        words, lengths = self._words.add_texts(texts)
        self._map_new_words()
        tokens = self._word_term[words]
        if self.tokenizer._stop:
            keep_tok = tokens >= 0
            dl = np.bincount(np.repeat(np.arange(len(ids)), lengths)[keep_tok], minlength=len(ids))
        else:
            dl = lengths
        n = len(ids)
        first = self._n_slots
        self._grow(first + n)
        self._slot_doc[first : first + n] = ids
        self._dl[first : first + n] = dl
        self._alive[first : first + n] = True
        for i, doc_id in enumerate(ids):
            old = self._slot_of.get(doc_id)
            if old is not None:
                self._kill(old)
            self._slot_of[doc_id] = first + i
        self._n_slots = first + n
        self._total_len += int(dl.sum())
        self._pending.append((tokens, lengths))
        self._index_bytes = self._kk = None

    def _map_new_words(self) -> None:
        """Give the words the table learned since the last call their term ids."""
        start, stop = self._word_term.size, len(self._words)
        if start == stop:
            return
        norm, term2id, terms = self.tokenizer.normalize, self._term2id, self._terms
        new = np.empty(stop - start, np.int32)
        for i, word in enumerate(self._words.words(start, stop)):
            term = norm(word)
            if term is None:
                new[i] = -1
                continue
            tid = term2id.get(term)
            if tid is None:
                tid = term2id[term] = len(terms)
                terms.append(term)
            new[i] = tid
        self._word_term = np.concatenate([self._word_term, new])
        self._add_term_keys()

    def _add_term_keys(self) -> None:
        """Grow ``_df`` / ``_term_key`` to the vocabulary; key the terms that have none yet."""
        old, V = self._nkeys, len(self._terms)
        if V > self._df.size:
            self._kstate = None
            cap = max(V, 2 * self._df.size)
            for name in ("_df", "_term_key"):
                arr = np.zeros(cap, np.int64)
                arr[: old] = getattr(self, name)[: old]
                setattr(self, name, arr)
        self._term_key[old:V] = [_term_key(t) for t in self._terms[old:V]]
        self._nkeys = V

    def remove_document(self, doc_id: int) -> None:
        """Remove a document.

        Raises
        ------
        ValidationError
            ``doc_id`` is not an int in the int64 range.
        NotFoundError
            No document has this id.
        """
        doc_id = check_doc_id(doc_id)
        slot = self._slot_of.pop(doc_id, None)
        if slot is None:
            raise NotFoundError(f"doc_id {doc_id} is not in the index; nothing was removed")
        self._kill(slot)
        self._index_bytes = self._kk = None

    def _kill(self, slot: int) -> None:
        """Tombstone ``slot``: not counted in N, avgdl or any df from now on."""
        self._alive[slot] = False
        self._total_len -= int(self._dl[slot])
        if slot < self._flushed:  # queued documents never reached df
            terms = K.forward_terms(self._fwd, self._fwd_off[slot], self._fwd_off[slot + 1])
            self._df[terms] -= 1
            self._seg.mark_dead(slot)

    def _grow(self, need: int) -> None:
        cap = self._slot_doc.size
        if need <= cap:
            return
        self._kstate = None
        cap = max(need + need // 8, 2 * cap)  # slack: single adds after a bulk add do not copy
        for name in ("_slot_doc", "_dl", "_alive"):
            old = getattr(self, name)
            new = np.zeros(cap, old.dtype)
            new[: self._n_slots] = old[: self._n_slots]
            setattr(self, name, new)
        off = np.zeros(cap + 1, np.int64)
        off[: self._flushed + 1] = self._fwd_off[: self._flushed + 1]
        self._fwd_off = off

    # ------------------------------------------------------------ segments
    def _norms(self) -> tuple[np.float32, np.float32]:
        """``(k1 (1 - b), k1 b / avgdl)`` as float32, the constants of every tf part."""
        if self._kk is None:
            n = len(self._slot_of)
            avgdl = self._total_len / n if n else 0.0
            kc = self.k1 * self.b / avgdl if avgdl > 0 else 0.0
            self._kk = (np.float32(self.k1 * (1.0 - self.b)), np.float32(kc))
        return self._kk

    def _flush(self) -> None:
        """Turn queued documents into a segment (merging per policy); compact when due."""
        if self._pending:
            self._kstate = None  # segments and pools change
            t0 = time.perf_counter()
            lo, hi = self._flushed, self._n_slots
            if len(self._pending) == 1:
                tokens, lengths = self._pending[0]
            else:
                tokens = np.concatenate([p[0] for p in self._pending])
                lengths = np.concatenate([p[1] for p in self._pending])
            terms, ptr, slots, tfs, fwd_off, fwd = K.build_segment(
                tokens, lengths, self._alive[lo:hi], lo, len(self._terms)
            )
            self._df[terms] += np.diff(ptr)
            end = int(self._fwd_off[lo])
            if end + fwd.size > self._fwd.size:
                need = end + fwd.size
                grown = np.zeros(max(need + need // 8, 2 * self._fwd.size), np.uint8)
                grown[:end] = self._fwd[:end]
                self._fwd = grown
            self._fwd[end : end + fwd.size] = fwd
            self._fwd_off[lo + 1 : hi + 1] = end + fwd_off[1:]
            self._pending = []
            self._flushed = hi
            if slots.size:
                ka, kc = self._norms()
                self._seg.append(terms, ptr, slots, tfs, lo, hi, self._dl, ka, kc)
                self._seg.merge_tail(self._alive, self._dl, ka, kc, len(self._terms))
            logger.debug("flushed %d docs (%d postings) in %.2f ms; %d segments",
                         hi - lo, slots.size, 1e3 * (time.perf_counter() - t0), len(self._seg))
        n = self._n_slots
        if (n - len(self._slot_of)) * 4 > n:
            self._compact()
        if self._acc.size < n:
            self._kstate = None
            cap = self._slot_doc.size
            self._acc = np.zeros(cap, np.float32)
            self._touched = np.zeros(cap + 1, np.int32)
            self._scratch = np.zeros(cap, np.int32)

    def _compact(self) -> None:
        """Renumber the live slots densely and merge every segment into one (no queue)."""
        self._kstate = None
        n, m = self._n_slots, len(self._slot_of)
        alive = self._alive[:n].copy()
        new_slot = np.where(alive, np.cumsum(alive, dtype=np.int32) - 1, -1).astype(np.int32)
        fwd_off, fwd = K.compact_forward(self._fwd_off[: n + 1], self._fwd, alive)
        self._slot_doc[:m] = self._slot_doc[:n][alive]
        self._dl[:m] = self._dl[:n][alive]
        self._dl[m:n] = 0
        self._alive[:m] = True
        self._alive[m:n] = False
        if len(self._seg):
            ka, kc = self._norms()  # N and avgdl do not change
            self._seg.merge(0, alive, self._dl, ka, kc, len(self._terms), new_slot)
        self._n_slots = self._flushed = m
        self._slot_of = dict(zip(self._slot_doc[:m].tolist(), range(m)))
        self._fwd_off[: m + 1] = fwd_off
        self._fwd_off[m + 1 :] = 0
        self._fwd = fwd if fwd.size else np.zeros(1024, np.uint8)
        logger.debug("compacted %d slots to %d", n, m)

    # ------------------------------------------------------------ searching
    def _query_terms(self, query: str, out: list[int]) -> None:
        """Append the term ids of ``query``'s tokens (unknown terms skipped) to ``out``."""
        term2id = self._term2id
        if self.tokenizer._plain:  # words are terms
            for w in self.tokenizer.words(query):
                tid = term2id.get(w)
                if tid is not None:
                    out.append(tid)
            return
        norm = self.tokenizer.normalize
        for w in self.tokenizer.words(query):
            term = norm(w)
            if term is not None:
                tid = term2id.get(term)
                if tid is not None:
                    out.append(tid)

    def search(self, query: str, top_k: int = 10) -> list[tuple[int, float]]:
        """Top ``top_k`` documents for ``query`` by BM25.

        Returns
        -------
        list of (doc_id, score)
            Python ``int`` / ``float``, best first, ties by ascending doc id; only
            documents with a positive score (at least one query term).
        """
        if not isinstance(query, str):
            raise ValidationError(f"query must be str, got {type(query).__name__}")
        if type(top_k) is not int or top_k < 1:
            top_k = check_int("top_k", top_k, 1)
        k = min(top_k, max(1, len(self._slot_of)))  # bounds the kernel's buffers
        self._flush()
        terms: list[int] = []
        self._query_terms(query, terms)
        if not terms:
            return []
        d, v, n = self._search_batch([0, len(terms)], terms, k)
        m = int(n[0])
        return list(zip(d[0, :m].tolist(), v[0, :m].tolist()))

    def _search_batch(self, bounds: list[int], terms: list[int], k: int):
        """One numba call over queries ``terms[bounds[i]:bounds[i+1]]``: (docs, scores, counts)."""
        ka, kc = self._norms()
        return search_batch(np.array(bounds, np.int64), np.array(terms, np.int32),
                            float(len(self._slot_of)), ka, kc, k, self.prune_min_postings,
                            self._state())

    def _state(self) -> IndexState:
        """The kernels' view of every array (rebuilt after ``_flush`` replaced one)."""
        if self._kstate is None:
            self._kstate = IndexState(self._df, self._term_key, *self._seg.args, self._dl,
                                      self._alive, self._slot_doc, self._acc, self._touched,
                                      self._scratch)
        return self._kstate

    def search_many(self, queries: Iterable[str], top_k: int = 10) -> list[list[tuple[int, float]]]:
        """:meth:`search` for many queries in one numba call (faster per query)."""
        if isinstance(queries, str):
            raise ValidationError("search_many takes an iterable of query strings, not one str")
        k = min(check_int("top_k", top_k, 1), max(1, len(self._slot_of)))
        qs = list(queries)
        for q in qs:
            if not isinstance(q, str):
                raise ValidationError(f"every query must be str, got {type(q).__name__}")
        if not qs:
            return []
        self._flush()
        terms: list[int] = []
        bounds = [0]
        for q in qs:
            self._query_terms(q, terms)
            bounds.append(len(terms))
        d, v, n = self._search_batch(bounds, terms, k)
        docs = d.tolist()
        scores = v.tolist()
        return [list(zip(docs[i][: n[i]], scores[i][: n[i]])) for i in range(len(qs))]

    def score_documents(self, query: str, doc_ids: Iterable[int]) -> np.ndarray:
        """BM25 scores (float32) of ``doc_ids`` for ``query``: the score each would have in
        :meth:`search` results, 0 for an unknown document or one without a query term."""
        if not isinstance(query, str):
            raise ValidationError(f"query must be str, got {type(query).__name__}")
        ids = [check_doc_id(d) for d in doc_ids]
        self._flush()
        terms: list[int] = []
        self._query_terms(query, terms)
        get = self._slot_of.get
        targets = np.array([get(d, -1) for d in ids], np.int64)
        return self._score_slots(terms, targets)

    def _score_slots(self, terms: list[int], targets: np.ndarray) -> np.ndarray:
        """:meth:`score_documents` on term ids and slots (-1 = none); queue already flushed."""
        ka, kc = self._norms()
        return score_slots(np.array(terms, np.int32), float(len(self._slot_of)), ka, kc, targets,
                           self._state())

    # ------------------------------------------------------------ lookups
    def _term_id(self, term: str) -> int | None:
        if not isinstance(term, str):
            raise ValidationError(f"term must be str, got {type(term).__name__}")
        words = self.tokenizer.words(term)
        if len(words) != 1:
            raise ValidationError(f"term must be exactly one token, {term!r} has {len(words)}")
        norm = self.tokenizer.normalize(words[0])
        return None if norm is None else self._term2id.get(norm)

    def get_term_frequency(self, term: str, doc_id: int) -> int:
        """Occurrences of ``term`` (normalised like a query token) in document ``doc_id``.

        Raises
        ------
        NotFoundError
            Unknown ``doc_id``.
        ValidationError
            ``term`` is not exactly one token.
        """
        doc_id = check_doc_id(doc_id)
        if doc_id not in self._slot_of:
            raise NotFoundError(f"doc_id {doc_id} is not in the index")
        tid = self._term_id(term)
        if tid is None:
            return 0
        self._flush()
        return self._seg.term_frequency(tid, self._slot_of[doc_id])

    def get_document_frequency(self, term: str) -> int:
        """Number of live documents containing ``term`` (normalised like a query token)."""
        tid = self._term_id(term)
        if tid is None:
            return 0
        self._flush()
        return int(self._df[tid])

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, doc_id: object) -> bool:
        return is_int(doc_id) and int(doc_id) in self._slot_of

    def stats(self) -> dict[str, Any]:
        """Index statistics.

        Every statistic but the last three describes the live documents only, so
        it equals that of an index rebuilt from them, whatever was replaced or
        removed before: ``total_documents``; ``total_terms`` (distinct terms
        with a live posting; ``vocabulary_size`` is the same number, kept under
        the seed's name: a term whose last document went is not counted);
        ``total_tokens`` (indexed tokens, stop words excluded); ``total_postings``
        (live (term, document) pairs); ``avg_doc_length``; ``index_bytes`` (the
        delta + varint encoded postings ``save`` writes).  Physical layout:
        ``memory_bytes`` (arrays held), ``num_segments``, ``deleted_documents``
        (tombstones whose postings still wait for a merge).
        """
        self._flush()
        n = len(self._slot_of)
        V = len(self._terms)
        if self._index_bytes is None:
            self._index_bytes = self._seg.encoded_size(self._alive[: self._n_slots], V)
        distinct = int(np.count_nonzero(self._df[:V]))
        arrays = (self._df, self._slot_doc, self._dl, self._alive, self._fwd_off, self._fwd,
                  self._acc, self._touched, self._scratch)
        return {
            "total_documents": n,
            "total_terms": distinct,
            "total_tokens": self._total_len,
            "total_postings": int(self._df[:V].sum()),
            "avg_doc_length": self._total_len / n if n else 0.0,
            "index_bytes": self._index_bytes,
            "vocabulary_size": distinct,
            "memory_bytes": int(sum(a.nbytes for a in arrays)) + self._seg.nbytes(),
            "num_segments": len(self._seg),
            "deleted_documents": self._seg.num_dead(),
        }

    # ------------------------------------------------------------ persistence
    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The saved form ``(arrays, meta)`` (see :mod:`llmds._index_io`); compacts first."""
        return index_to_arrays(self)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any],
                    where: str = "index") -> InvertedIndex:
        """Inverse of :meth:`to_arrays`; ``CorruptFileError`` on any inconsistency."""
        return index_from_arrays(cls, arrays, meta, where)

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to ``path`` atomically (versioned, checksummed, no pickle)."""
        arrays, meta = self.to_arrays()
        write_atomic(path, _MAGIC, _VERSION, arrays, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> InvertedIndex:
        """Read an index written by :meth:`save`.

        Raises
        ------
        FileNotFoundError
            ``path`` does not exist.
        CorruptFileError
            Truncated, corrupted, foreign or unsupported-version file.
        """
        _, arrays, meta = read_checked(path, _MAGIC, (_VERSION,))
        return cls.from_arrays(arrays, meta, os.fspath(path))

    def __repr__(self) -> str:
        return (
            f"InvertedIndex(docs={len(self)}, terms={len(self._terms)}, k1={self.k1}, b={self.b}, "
            f"tokenizer={self.tokenizer!r})"
        )
