"""Inverted index with Lucene-style BM25 over flat numpy arrays.

Scoring
-------
``score(q, d) = sum over query tokens t of idf(t) * tf / (tf + k1 * (1 - b + b * dl / avgdl))``
with ``idf(t) = log(1 + (N - df + 0.5) / (df + 0.5))`` (never negative), ``tf``
the count of ``t`` in ``d``, ``dl`` the document's token count (after stop
words), ``avgdl`` the mean over live documents and ``N`` their number.  This is
Lucene's (and ``bm25s`` ``method="lucene"``'s) formula; a query token repeated
counts again.  Only documents with a positive score are returned, best first,
ties broken by ascending doc id.

Storage and updates
-------------------
Postings live as CSC arrays (see :mod:`llmds._postings`): per term a run of
document slots (ascending) with tf and a precomputed float32 BM25 weight, so a
query is a gather-and-add into a dense accumulator plus a top-k heap, all in one
numba call (with exact MaxScore pruning of low-impact terms).  ``save`` writes
the postings delta + varint encoded; ``stats()["index_bytes"]`` is the size of
that encoding.

Updates use *rebuild on next search*: ``add_document(s)`` tokenizes at once and
queues the (term id) stream; ``remove_document`` only marks the slot dead.  The
next query (or stats/lookup) merges the queue into the CSC arrays and recomputes
every weight — two O(total postings) numba passes — because any add or remove
changes ``N``, ``avgdl`` and hence every weight.  Bulk add then search costs one
rebuild; interleaving single adds with searches costs a rebuild per search.
Dead slots are compacted away once they exceed a quarter of all slots.

Not thread-safe for concurrent mutation; searches share one scratch
accumulator and hold the GIL.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from llmds import _postings as K
from llmds._binfmt import read_checked, write_atomic
from llmds._bm25_search import search_batch
from llmds._wordtable import WordTable
from llmds.errors import CorruptFileError, NotFoundError, ValidationError
from llmds.tokenizer import Tokenizer

__all__ = ["InvertedIndex"]

logger = logging.getLogger(__name__)

_MAGIC = b"LLMDSINV"
_VERSION = 1
_EMPTY_I32 = np.zeros(0, np.int32)


def _check_doc_id(doc_id: Any) -> int:
    if isinstance(doc_id, bool) or not isinstance(doc_id, (int, np.integer)) or doc_id < 0:
        raise ValidationError(f"doc_id must be a non-negative int, got {doc_id!r}")
    if doc_id >= 2**63:
        raise ValidationError(f"doc_id must be < 2**63, got {doc_id!r}")
    return int(doc_id)


def split_doc_pairs(
    documents: Iterable[tuple[int, str]], check_id: Callable[[Any], int] = _check_doc_id
) -> tuple[list[int], list[str]]:
    """Validate ``(doc_id, text)`` pairs into ``(ids, texts)``; raises ``ValidationError``."""
    ids: list[int] = []
    texts: list[str] = []
    try:
        for doc_id, text in documents:
            ids.append(check_id(doc_id))
            if not isinstance(text, str):
                raise ValidationError(
                    f"text of doc {doc_id} must be str, got {type(text).__name__}"
                )
            texts.append(text)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ValidationError):
            raise
        raise ValidationError("documents must be an iterable of (doc_id, text) pairs") from exc
    return ids, texts


def _check_top_k(top_k: Any) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValidationError(f"top_k must be a positive int, got {top_k!r}")
    return int(top_k)


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
    >>> idx.add_documents([(1, "the quick brown fox"), (2, "the lazy dog")])
    >>> [d for d, _ in idx.search("quick dog")]
    [1, 2]
    """

    prune_min_postings = 4096

    def __init__(
        self, tokenizer: Tokenizer | None = None, k1: float = 1.5, b: float = 0.75
    ) -> None:
        if tokenizer is None:
            tokenizer = Tokenizer()
        if not isinstance(tokenizer, Tokenizer):
            raise ValidationError("tokenizer must be an llmds.tokenizer.Tokenizer (or None)")
        for name, v in (("k1", k1), ("b", b)):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
                raise ValidationError(f"{name} must be a real number, got {v!r}")
        if not (np.isfinite(k1) and k1 >= 0):
            raise ValidationError(f"k1 must be finite and >= 0, got {k1!r}")
        if not (0 <= b <= 1):
            raise ValidationError(f"b must be in [0, 1], got {b!r}")
        self.tokenizer = tokenizer
        self.k1 = float(k1)
        self.b = float(b)
        self._terms: list[str] = []  # term id -> term
        self._term2id: dict[str, int] = {}
        self._words = WordTable()  # lowercased word -> word id (bulk tokenizing in numba)
        self._word_term = np.zeros(0, np.int32)  # word id -> term id, -1 for stop words
        # Slot table: one slot per added document, in insertion order.
        self._slot_doc = np.zeros(16, np.int64)  # slot -> doc id
        self._slot_len = np.zeros(16, np.int32)  # slot -> dl (indexed tokens)
        self._alive = np.zeros(16, np.bool_)
        self._n_slots = 0
        self._slot_of: dict[int, int] = {}  # doc id -> live slot
        self._total_len = 0  # sum of dl over live docs
        # Built CSC (covers slots < _built_slots) and the queue of later documents.
        self._ptr = np.zeros(1, np.int64)
        self._post_slot = _EMPTY_I32
        self._post_tf = _EMPTY_I32
        self._w = np.zeros(0, np.float32)
        self._ub = np.zeros(0, np.float32)
        self._built_slots = 0
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # (token ids int32, lengths int64)
        self._dirty = False
        self._acc = np.zeros(0, np.float32)
        self._touched = np.zeros(1, np.int32)
        self._scratch = _EMPTY_I32
        self._encoded: np.ndarray | None = None  # cached varint postings, None when stale

    # ------------------------------------------------------------ adding / removing
    def add_document(self, doc_id: int, text: str) -> None:
        """Index ``text`` under ``doc_id``, replacing an existing document with that id.

        Raises
        ------
        ValidationError
            ``doc_id`` is not a non-negative int or ``text`` is not a str.
        """
        self.add_documents(((doc_id, text),))

    def add_documents(self, docs: Iterable[tuple[int, str]]) -> None:
        """Index many ``(doc_id, text)`` pairs; later pairs replace earlier ones with the same id.

        All pairs are validated before anything changes.  Tokenizing is one
        regex pass per text; the postings are merged on the next search.
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
        self._slot_len[first : first + n] = dl
        self._alive[first : first + n] = True
        for i, doc_id in enumerate(ids):
            old = self._slot_of.get(doc_id)
            if old is not None:
                self._kill(old)
            self._slot_of[doc_id] = first + i
        self._n_slots = first + n
        self._total_len += int(dl.sum())
        self._pending.append((tokens, lengths))
        self._touch()

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

    def remove_document(self, doc_id: int) -> None:
        """Remove a document.

        Raises
        ------
        NotFoundError
            No document has this id.
        """
        doc_id = _check_doc_id(doc_id)
        slot = self._slot_of.pop(doc_id, None)
        if slot is None:
            raise NotFoundError(f"doc_id {doc_id} is not in the index; nothing was removed")
        self._kill(slot)
        self._touch()

    def _kill(self, slot: int) -> None:
        self._alive[slot] = False
        self._total_len -= int(self._slot_len[slot])

    def _touch(self) -> None:
        self._dirty = True
        self._encoded = None

    def _grow(self, need: int) -> None:
        cap = self._slot_doc.size
        if need <= cap:
            return
        cap = max(need, 2 * cap)
        for name in ("_slot_doc", "_slot_len", "_alive"):
            old = getattr(self, name)
            new = np.zeros(cap, old.dtype)
            new[: self._n_slots] = old[: self._n_slots]
            setattr(self, name, new)

    # ------------------------------------------------------------ building
    def _rebuild(self, compact: bool = False) -> None:
        """Merge queued documents, drop dead postings, recompute all BM25 weights."""
        t0 = time.perf_counter()
        n = self._n_slots
        alive = self._alive[:n]
        n_alive = len(self._slot_of)
        compact = compact or (n - n_alive) * 4 > n
        if compact:
            remap = np.where(alive, np.cumsum(alive, dtype=np.int32) - 1, -1).astype(np.int32)
        else:
            remap = np.where(alive, np.arange(n, dtype=np.int32), -1).astype(np.int32)
        V = len(self._terms)
        if self._pending:
            tokens = np.concatenate([p[0] for p in self._pending])
            lengths = np.concatenate([p[1] for p in self._pending])
            new = K.csc_from_tokens(tokens, lengths, self._built_slots, remap, V)
            del tokens
        else:
            new = (np.zeros(V + 1, np.int64), _EMPTY_I32, _EMPTY_I32)
        if self._post_slot.size == 0:  # nothing built yet: the new postings are the index
            ptr, slots, tfs = new
        elif not self._pending and n_alive == n:  # weights only (e.g. after load)
            ptr, slots, tfs = self._ptr, self._post_slot, self._post_tf
        else:
            ptr, slots, tfs = K.merge_csc(self._ptr, self._post_slot, self._post_tf, remap, *new)
        del new
        if compact:
            keep = alive.copy()
            m = n_alive
            self._slot_doc[:m] = self._slot_doc[:n][keep]
            self._slot_len[:m] = self._slot_len[:n][keep]
            self._alive[:m] = True
            self._alive[m:n] = False
            self._n_slots = n = m
            self._slot_of = dict(zip(self._slot_doc[:m].tolist(), range(m)))
        self._ptr, self._post_slot, self._post_tf = ptr, slots, tfs
        avgdl = self._total_len / n_alive if n_alive else 0.0
        self._w, self._ub = K.bm25_weights(
            ptr, slots, tfs, self._slot_len, float(n_alive), avgdl, self.k1, self.b
        )
        self._built_slots = n
        self._pending = []
        if self._acc.size < n:
            cap = self._slot_doc.size
            self._acc = np.zeros(cap, np.float32)
            self._touched = np.zeros(cap + 1, np.int32)
            self._scratch = np.zeros(cap, np.int32)
        self._dirty = False
        logger.debug(
            "rebuilt: %d docs, %d postings, compacted=%s, %.1f ms",
            n_alive,
            slots.size,
            compact,
            1e3 * (time.perf_counter() - t0),
        )

    def _ensure_built(self) -> None:
        if self._dirty:
            self._rebuild()

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
        k = min(_check_top_k(top_k), max(1, len(self._slot_of)))  # bounds the kernel's buffers
        if self._dirty:
            self._rebuild()
        terms: list[int] = []
        self._query_terms(query, terms)
        if not terms:
            return []
        d, v, n = self._search_batch([0, len(terms)], terms, k)
        m = int(n[0])
        return list(zip(d[0, :m].tolist(), v[0, :m].tolist()))

    def _search_batch(self, bounds: list[int], terms: list[int], k: int):
        """One numba call over queries ``terms[bounds[i]:bounds[i+1]]``: (docs, scores, counts)."""
        return search_batch(
            np.array(bounds, np.int64),
            np.array(terms, np.int32),
            self._ptr,
            self._post_slot,
            self._w,
            self._ub,
            self._slot_doc,
            self._acc,
            self._touched,
            self._scratch,
            k,
            self.prune_min_postings,
        )

    def search_many(self, queries: Iterable[str], top_k: int = 10) -> list[list[tuple[int, float]]]:
        """:meth:`search` for many queries in one numba call (faster per query)."""
        if isinstance(queries, str):
            raise ValidationError("search_many takes an iterable of query strings, not one str")
        k = min(_check_top_k(top_k), max(1, len(self._slot_of)))
        qs = list(queries)
        for q in qs:
            if not isinstance(q, str):
                raise ValidationError(f"every query must be str, got {type(q).__name__}")
        if not qs:
            return []
        if self._dirty:
            self._rebuild()
        terms: list[int] = []
        bounds = [0]
        for q in qs:
            self._query_terms(q, terms)
            bounds.append(len(terms))
        d, v, n = self._search_batch(bounds, terms, k)
        docs = d.tolist()
        scores = v.tolist()
        return [list(zip(docs[i][: n[i]], scores[i][: n[i]])) for i in range(len(qs))]

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
        doc_id = _check_doc_id(doc_id)
        if doc_id not in self._slot_of:
            raise NotFoundError(f"doc_id {doc_id} is not in the index")
        tid = self._term_id(term)
        self._ensure_built()
        if tid is None or tid >= self._ptr.size - 1:
            return 0
        slot = self._slot_of[doc_id]
        lo, hi = int(self._ptr[tid]), int(self._ptr[tid + 1])
        pos = lo + int(np.searchsorted(self._post_slot[lo:hi], slot))
        return int(self._post_tf[pos]) if pos < hi and self._post_slot[pos] == slot else 0

    def get_document_frequency(self, term: str) -> int:
        """Number of live documents containing ``term`` (normalised like a query token)."""
        tid = self._term_id(term)
        self._ensure_built()
        if tid is None or tid >= self._ptr.size - 1:
            return 0
        return int(self._ptr[tid + 1] - self._ptr[tid])

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, doc_id: object) -> bool:
        return (
            not isinstance(doc_id, bool)
            and isinstance(doc_id, (int, np.integer))
            and int(doc_id) in self._slot_of
        )

    def _encode(self) -> np.ndarray:
        if self._encoded is None:
            self._ensure_built()
            self._encoded = K.encode_postings(self._ptr, self._post_slot, self._post_tf)
        return self._encoded

    def stats(self) -> dict[str, Any]:
        """Index statistics.

        Returns
        -------
        dict
            ``total_documents`` (live docs), ``total_terms`` (terms with df > 0),
            ``total_postings``, ``avg_doc_length``, ``index_bytes`` (delta + varint
            encoded postings, as saved), ``memory_bytes`` (flat search arrays),
            ``vocabulary_size`` (all terms ever seen).
        """
        self._ensure_built()
        n = len(self._slot_of)
        arrays = (self._ptr, self._post_slot, self._post_tf, self._w, self._ub)
        return {
            "total_documents": n,
            "total_terms": int(np.count_nonzero(np.diff(self._ptr))),
            "total_postings": int(self._post_slot.size),
            "avg_doc_length": self._total_len / n if n else 0.0,
            "index_bytes": int(self._encode().nbytes),
            "memory_bytes": int(sum(a.nbytes for a in arrays)),
            "vocabulary_size": len(self._terms),
        }

    # ------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the index to ``path`` atomically (versioned, checksummed, no pickle).

        Saves live documents, postings (delta + varint), vocabulary, k1, b and the
        tokenizer configuration.
        """
        self._rebuild(compact=True)
        n = self._n_slots
        encoded = [t.encode("utf-8") for t in self._terms]
        term_off = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(e) for e in encoded], out=term_off[1:])
        arrays = {
            "ptr": self._ptr,
            "postings": self._encode(),
            "slot_doc": self._slot_doc[:n],
            "slot_len": self._slot_len[:n],
            "term_bytes": np.frombuffer(b"".join(encoded), np.uint8),
            "term_offsets": term_off,
        }
        meta = {
            "k1": self.k1,
            "b": self.b,
            "tokenizer": self.tokenizer.config(),
            "num_docs": n,
            "num_terms": len(self._terms),
        }
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
        try:
            tok = Tokenizer.from_config(meta["tokenizer"])
            idx = cls(tok, k1=meta["k1"], b=meta["b"])
            ptr = arrays["ptr"].astype(np.int64, copy=False)
            slot_doc = arrays["slot_doc"].astype(np.int64, copy=False)
            slot_len = arrays["slot_len"].astype(np.int32, copy=False)
            term_bytes = arrays["term_bytes"].tobytes()
            off = arrays["term_offsets"].tolist()
            postings = arrays["postings"].astype(np.uint8, copy=False)
        except (KeyError, TypeError, ValidationError) as exc:
            raise CorruptFileError(f"{path}: inconsistent index file: {exc}") from exc
        n, nterms = slot_doc.size, len(off) - 1
        if ptr.ndim != 1 or ptr.size < 1 or ptr[-1] > postings.size // 2:
            raise CorruptFileError(f"{path}: inconsistent index file (posting count)")
        if (
            ptr.ndim != 1
            or ptr.size != nterms + 1
            or slot_len.size != n
            or ptr[0] != 0
            or np.any(np.diff(ptr) < 0)
            or off[0] != 0
            or off[-1] != len(term_bytes)
            or np.any(slot_doc < 0)
            or np.any(slot_len < 0)
        ):
            raise CorruptFileError(f"{path}: inconsistent index file (array shapes or ranges)")
        try:
            terms = [term_bytes[off[i] : off[i + 1]].decode("utf-8") for i in range(nterms)]
        except (UnicodeDecodeError, ValueError) as exc:
            raise CorruptFileError(f"{path}: bad vocabulary: {exc}") from exc
        slots, tfs, ok = K.decode_postings(postings, ptr, n)
        if not ok:
            raise CorruptFileError(f"{path}: postings do not decode; the file is corrupt")
        doc_list = slot_doc.tolist()
        if len(set(doc_list)) != n or len(set(terms)) != nterms:
            raise CorruptFileError(f"{path}: duplicate doc ids or terms")
        if not np.array_equal(
            np.bincount(slots, weights=tfs, minlength=n).astype(np.int64), slot_len
        ):
            raise CorruptFileError(f"{path}: postings disagree with document lengths")
        idx._terms.extend(terms)
        idx._term2id.update(zip(terms, range(nterms)))
        idx._grow(n)
        idx._slot_doc[:n] = slot_doc
        idx._slot_len[:n] = slot_len
        idx._alive[:n] = True
        idx._n_slots = n
        idx._slot_of = dict(zip(doc_list, range(n)))
        idx._total_len = int(slot_len.sum())
        idx._ptr, idx._post_slot, idx._post_tf = ptr.copy(), slots, tfs
        idx._built_slots = n
        idx._rebuild()  # nothing queued: computes the BM25 weights
        idx._encoded = postings.copy()
        return idx

    def __repr__(self) -> str:
        return (
            f"InvertedIndex(docs={len(self)}, terms={len(self._terms)}, k1={self.k1}, b={self.b}, "
            f"tokenizer={self.tokenizer!r})"
        )
