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
one.  The arrays live in an :class:`~llmds.retrieval._index_store.IndexStore`
(slots, ``df``, a forward index, log-structured segments, explained in
:mod:`llmds.retrieval._segments`): an add is tokenized at once and queued; the
next search turns the queue into a small segment, merged geometrically with the
youngest ones, so an add never rebuilds the index.  A remove (or replacing add)
tombstones the slot and lowers the ``df`` of its terms; slots are compacted once
a quarter are dead.  A query is one numba call over all segments with exact
MaxScore pruning.  ``save`` writes the postings delta + varint encoded
(:mod:`llmds.retrieval._index_io`); ``stats()["index_bytes"]`` is the size of
that encoding.

Not thread-safe: searches share one scratch accumulator (and may materialise
tf parts); guard a shared index with a lock (``RetrievalPipeline`` does).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np

from llmds._checks import check_float, check_int, is_int
from llmds.errors import CorruptFileError, NotFoundError, ValidationError
from llmds.retrieval._binfmt import read_checked, write_atomic
from llmds.retrieval._docs import check_doc_id, split_doc_pairs
from llmds.retrieval._index_io import encode_terms, read_arrays
from llmds.retrieval._index_store import IndexStore
from llmds.retrieval._wordtable import WordTable
from llmds.retrieval.tokenizer import Tokenizer

__all__ = ["InvertedIndex"]

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
            raise ValidationError("tokenizer must be an llmds.retrieval.tokenizer.Tokenizer (or None)")
        self.tokenizer = tokenizer
        self.k1 = check_float("k1", k1, 0.0)
        self.b = check_float("b", b, 0.0, 1.0)
        self._terms: list[str] = []  # term id -> term
        self._term2id: dict[str, int] = {}
        self._words = WordTable()  # lowercased word -> word id (bulk tokenizing in numba)
        self._word_term = np.zeros(0, np.int32)  # word id -> term id, -1 for stop words
        self._store = IndexStore(self.k1, self.b)

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
        if self.tokenizer.stop_words:
            keep_tok = tokens >= 0
            dl = np.bincount(np.repeat(np.arange(len(ids)), lengths)[keep_tok], minlength=len(ids))
        else:
            dl = lengths
        self._store.add(ids, tokens, lengths, dl)

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
        self._store.add_terms([_term_key(t) for t in terms[self._store.num_terms:]])

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
        if not self._store.remove(doc_id):
            raise NotFoundError(f"doc_id {doc_id} is not in the index; nothing was removed")

    # ------------------------------------------------------------ searching
    def _query_terms(self, query: str, out: list[int]) -> None:
        """Append the term ids of ``query``'s tokens (unknown terms skipped) to ``out``."""
        term2id = self._term2id
        if self.tokenizer.plain:  # words are terms
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
        k = min(top_k, max(1, len(self._store)))  # bounds the kernel's buffers
        self._store.flush()
        terms: list[int] = []
        self._query_terms(query, terms)
        if not terms:
            return []
        d, v, n = self._store.search([0, len(terms)], terms, k, self.prune_min_postings)
        m = int(n[0])
        return list(zip(d[0, :m].tolist(), v[0, :m].tolist()))

    def search_many(self, queries: Iterable[str], top_k: int = 10) -> list[list[tuple[int, float]]]:
        """:meth:`search` for many queries in one numba call (faster per query)."""
        if isinstance(queries, str):
            raise ValidationError("search_many takes an iterable of query strings, not one str")
        k = min(check_int("top_k", top_k, 1), max(1, len(self._store)))
        qs = list(queries)
        for q in qs:
            if not isinstance(q, str):
                raise ValidationError(f"every query must be str, got {type(q).__name__}")
        if not qs:
            return []
        self._store.flush()
        terms: list[int] = []
        bounds = [0]
        for q in qs:
            self._query_terms(q, terms)
            bounds.append(len(terms))
        d, v, n = self._store.search(bounds, terms, k, self.prune_min_postings)
        docs = d.tolist()
        scores = v.tolist()
        return [list(zip(docs[i][: n[i]], scores[i][: n[i]])) for i in range(len(qs))]

    def score_documents(self, query: str, doc_ids: Iterable[int]) -> np.ndarray:
        """BM25 scores (float32) of ``doc_ids`` for ``query``: the score each would have in
        :meth:`search` results, 0 for an unknown document or one without a query term."""
        if not isinstance(query, str):
            raise ValidationError(f"query must be str, got {type(query).__name__}")
        ids = [check_doc_id(d) for d in doc_ids]
        self._store.flush()
        terms: list[int] = []
        self._query_terms(query, terms)
        return self._store.score(terms, ids)

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
        if doc_id not in self._store:
            raise NotFoundError(f"doc_id {doc_id} is not in the index")
        tid = self._term_id(term)
        if tid is None:
            return 0
        self._store.flush()
        return self._store.term_frequency(tid, doc_id)

    def get_document_frequency(self, term: str) -> int:
        """Number of live documents containing ``term`` (normalised like a query token)."""
        tid = self._term_id(term)
        if tid is None:
            return 0
        self._store.flush()
        return int(self._store.df[tid])

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, doc_id: object) -> bool:
        return is_int(doc_id) and int(doc_id) in self._store

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
        self._store.flush()
        return self._store.stats()

    # ------------------------------------------------------------ persistence
    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The saved form ``(arrays, meta)`` (see :mod:`llmds.retrieval._index_io`); compacts
        first."""
        arrays = self._store.saved_arrays()
        arrays.update(encode_terms(self._terms))
        meta = {"k1": self.k1, "b": self.b, "tokenizer": self.tokenizer.config(),
                "num_docs": int(arrays["slot_doc"].size), "num_terms": len(self._terms)}
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any],
                    where: str = "index") -> InvertedIndex:
        """Inverse of :meth:`to_arrays`; ``CorruptFileError`` on any inconsistency."""
        try:
            idx = cls(Tokenizer.from_config(meta["tokenizer"]), k1=meta["k1"], b=meta["b"])
        except (KeyError, TypeError, ValidationError) as exc:
            raise CorruptFileError(f"{where}: inconsistent index file: {exc}") from exc
        saved = read_arrays(arrays, where)
        idx._terms.extend(saved.terms)
        idx._term2id.update(zip(saved.terms, range(len(saved.terms))))
        idx._store.add_terms([_term_key(t) for t in saved.terms])
        idx._store.restore(saved.ptr, saved.slot_doc, saved.slot_len, saved.slots, saved.tfs)
        return idx

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
