"""Hybrid retrieval: BM25 (``InvertedIndex``) + dense vectors (``HNSW``), fused.

Each side retrieves ``candidate_k`` candidates (default ``max(5 * top_k, 50)``),
the two lists are fused and the best ``top_k`` returned as ``[(doc_id, score)]``
(Python ``int``/``float``), best first, ties by ascending ``doc_id``.
:meth:`RetrievalPipeline.retrieve` returns the same hits with each document's
stored text and metadata (for RAG prompts).

Fusion (:mod:`llmds.fusion`; ``fusion_weight`` = w is the **dense** share):

* ``"tmm"`` (default, w = 0.9): convex combination with theoretical min-max
  normalisation (BM25 / its best retrieved score; cosine scaled from its lower
  bound -1 to its best retrieved score), every document of the union scored
  exactly on both sides (the BM25 of a document only the dense side found, the
  cosine of one only BM25 found).  Chosen on MS MARCO and checked on the
  business-reports collection (``benchmarks/retrieval_fusion.py``): within
  0.005 nDCG@10 of the better single retriever on both, with each of three BM25
  tokenizers, where the previous default (min-max, w = 0.7) lost 0.006 on
  business-reports with stemming.
* ``"weighted"``: per-query min-max normalisation of each candidate list (w = 0.7).
* ``"rrf"``: ``2w / (rrf_k + rank_dense) + 2(1 - w) / (rrf_k + rank_lexical)`` (w = 0.5).

A side with no candidates (no query vector, empty dense index, no known query
term) takes no part.  ``fusion_weight=None`` (config and ``search``) means the
fusion's own default weight above.

Documents live under internal *slots* (0, 1, 2, ... never reused); both indexes
are keyed by slot, and ``_slot_doc`` maps back to the user's ``doc_id`` (any
int64), so a removed id can be added again without either index seeing a
reused key.

Thread safety: one re-entrant lock guards every index read and write; embedder
calls run outside it.  The numba kernels hold the GIL, so a readers-writer lock
would not let two searches run at once; ``benchmarks/retrieval_updates.py``
measures what the lock costs.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmds._checks import check_bool, check_choice, check_int, is_int
from llmds.embeddings import EmbedderAdapter
from llmds.errors import NotFoundError, ValidationError
from llmds.fusion import (
    DEFAULT_WEIGHTS, FUSIONS, check_fusion, check_weight, rrf_fusion, tmm_fusion, weighted_fusion,
)
from llmds.heavy_hitters import HeavyHitters
from llmds.hnsw import HNSW
from llmds.inverted_index import InvertedIndex, check_doc_id, split_doc_pairs
from llmds.token_lru import TokenLRU
from llmds.tokenizer import Tokenizer

__all__ = ["FUSIONS", "Hit", "PipelineConfig", "RetrievalPipeline", "rrf_fusion", "tmm_fusion",
           "weighted_fusion"]

log = logging.getLogger(__name__)

DEFAULT_FUSION = "tmm"
DEFAULT_FUSION_WEIGHT = DEFAULT_WEIGHTS[DEFAULT_FUSION]  # dense share; see the module docstring


# ---------------------------------------------------------------- config
@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """Pipeline knobs, validated once.

    HNSW: ``M``, ``ef_construction``, ``ef_search``, ``seed``, ``metric``
    (``"cosine"`` | ``"ip"`` | ``"l2"``). BM25: ``k1``, ``b``. Fusion:
    ``fusion``, ``fusion_weight`` (dense share; ``None`` = the fusion's default),
    ``rrf_k`` (>= 1), ``candidate_k`` (per side; ``None`` means
    ``max(5 * top_k, 50)``; never below ``top_k``). Result cache:
    ``cache_token_budget`` (0 disables; an entry costs ``1 + len(results)``).
    Hit counting: ``sketch_width`` x ``sketch_depth`` Count-Min counters and
    ``hot_capacity`` tracked heavy-hitter documents (0 disables hit counting).
    ``store_texts``: keep each document's text and metadata for :meth:`retrieve`.
    """

    embedding_dim: int = 384
    M: int = 16
    ef_construction: int = 200
    ef_search: int = 50
    seed: int | None = None
    metric: str = "cosine"
    k1: float = 1.5
    b: float = 0.75
    fusion: str = DEFAULT_FUSION
    fusion_weight: float | None = None
    rrf_k: int = 60
    candidate_k: int | None = None
    cache_token_budget: int = 100_000
    sketch_width: int = 4096
    sketch_depth: int = 4
    hot_capacity: int = 1024
    store_texts: bool = True

    def __post_init__(self) -> None:
        check_int("embedding_dim", self.embedding_dim, 1)
        check_fusion(self.fusion)
        if self.fusion_weight is not None:
            check_weight(self.fusion_weight)
        check_int("rrf_k", self.rrf_k, 1)
        if self.candidate_k is not None:
            check_int("candidate_k", self.candidate_k, 1)
        check_int("cache_token_budget", self.cache_token_budget, 0)
        check_int("sketch_width", self.sketch_width, 1)
        check_int("sketch_depth", self.sketch_depth, 1)
        check_int("hot_capacity", self.hot_capacity, 0)
        check_choice("metric", self.metric, ("cosine", "ip", "l2"))
        check_bool("store_texts", self.store_texts)

    def weight(self, fusion: str) -> float:
        """The dense share used for ``fusion`` when a search passes none."""
        if self.fusion_weight is not None and fusion == self.fusion:
            return self.fusion_weight
        return DEFAULT_WEIGHTS[fusion]

    def candidates(self, top_k: int) -> int:
        """How many candidates each side retrieves for a ``top_k`` query."""
        if self.candidate_k is None:
            return max(5 * top_k, 50)
        return max(self.candidate_k, top_k)


@dataclass(frozen=True, slots=True)
class Hit:
    """One retrieved document: id, fused score, stored text and metadata (None if not kept)."""

    doc_id: int
    score: float
    text: str | None
    metadata: dict[str, Any] | None


# ---------------------------------------------------------------- pipeline
class RetrievalPipeline:
    """Hybrid BM25 + HNSW retrieval with fusion, stored texts, a result cache and hit counting.

    Parameters
    ----------
    embedding_dim : int, default 384
        Vector dimension of documents and queries.
    embedder : optional
        Used when no embedding is given: a callable ``text -> vector``, or an
        object with ``embed_batch(list[str])`` / ``encode(list[str])`` returning
        ``[n, dim]`` (e.g. :class:`llmds.embeddings.MiniLMEmbedder`). Without an
        embedder and without an embedding a document is indexed lexically only
        (never with a made-up vector) and a query is answered lexically only.
    tokenizer : Tokenizer, optional
        For the BM25 side (default: lowercase words, no stop words/stemming).
    embedder_name : str, optional
        Name of the model that made the vectors, recorded by :meth:`save` and
        checked by :meth:`load`; default the embedder's ``name`` (or type name).
        Pass it when you add precomputed embeddings without an embedder.
    **options
        Any :class:`PipelineConfig` field.
    """

    def __init__(self, embedding_dim: int = 384, *, embedder: Any = None,
                 tokenizer: Tokenizer | None = None, embedder_name: str | None = None,
                 **options: Any) -> None:
        try:
            cfg = PipelineConfig(embedding_dim=embedding_dim, **options)
        except TypeError as exc:
            raise ValidationError(f"unknown RetrievalPipeline option: {exc}") from None
        self.config = cfg
        self._embedder = EmbedderAdapter(embedder) if embedder is not None else None
        if embedder_name is not None and not isinstance(embedder_name, str):
            raise ValidationError(f"embedder_name must be a str, got {embedder_name!r}")
        self.embedder_name = embedder_name or (self._embedder.name if self._embedder else None)
        self._index = InvertedIndex(tokenizer=tokenizer, k1=cfg.k1, b=cfg.b)
        self._hnsw = HNSW(cfg.embedding_dim, M=cfg.M, ef_construction=cfg.ef_construction,
                          ef_search=cfg.ef_search, seed=cfg.seed, metric=cfg.metric)
        self._slot_doc = np.zeros(1024, np.int64)  # slot -> doc_id (dead slots keep stale ids)
        self._n_slots = 0
        self._doc_slot: dict[int, int] = {}  # live doc_id -> slot
        self._texts: dict[int, str] = {}  # slot -> text (store_texts)
        self._meta: dict[int, dict[str, Any]] = {}  # slot -> metadata, when given
        self._generation = 0
        self._cache: TokenLRU | None = (
            TokenLRU(cfg.cache_token_budget, _result_tokens) if cfg.cache_token_budget else None
        )
        self._cache_hits = 0
        self._cache_misses = 0
        if cfg.hot_capacity:  # hits = appearances in returned results / searches
            self._doc_hits: HeavyHitters | None = HeavyHitters(
                cfg.hot_capacity, cfg.sketch_width, cfg.sketch_depth, seed=1)
            self._query_hits: HeavyHitters | None = HeavyHitters(
                cfg.hot_capacity, cfg.sketch_width, cfg.sketch_depth, seed=2)
        else:
            self._doc_hits = self._query_hits = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------ validation helpers
    def _check_vectors(self, vecs: Any, n: int, what: str) -> np.ndarray:
        """float32 C-contiguous [n, dim], finite, non-zero rows for cosine; else ValidationError."""
        try:
            x = np.ascontiguousarray(vecs, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"{what} must be numeric: {exc}") from None
        dim = self.config.embedding_dim
        if x.shape != (n, dim):
            raise ValidationError(f"{what} must have shape ({n}, {dim}), got {x.shape}")
        # one float64 reduction: NaN/inf propagate, finite float32 rows cannot overflow it
        sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
        if not np.isfinite(sq.sum()):
            raise ValidationError(f"{what} contains NaN or inf")
        if self.config.metric == "cosine" and n and not sq.all():
            raise ValidationError(f"{what} contains an all-zero vector; cosine needs a direction")
        return x

    def _check_vector(self, vec: Any, what: str) -> np.ndarray:
        """One vector as a validated float32 [1, dim] matrix."""
        x = vec if isinstance(vec, np.ndarray) else np.asarray(vec)
        if x.ndim != 1:
            raise ValidationError(
                f"{what} must be a 1-D vector of length {self.config.embedding_dim}, got {x.shape}")
        return self._check_vectors(x[None, :], 1, what)

    @staticmethod
    def _check_metadata(metadatas: Any, n: int) -> list[dict[str, Any] | None]:
        """``n`` JSON-serialisable dicts (or None) — they are saved with the pipeline."""
        if metadatas is None:
            return [None] * n
        out = list(metadatas)
        if len(out) != n:
            raise ValidationError(f"got {n} documents but {len(out)} metadata entries")
        for m in out:
            if m is None:
                continue
            if not isinstance(m, dict):
                raise ValidationError(f"metadata must be a dict or None, got {type(m).__name__}")
            try:
                json.dumps(m, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise ValidationError(f"metadata must be JSON-serialisable: {exc}") from None
        return out

    # ------------------------------------------------------------ mutation
    def add_document(self, doc_id: int, text: str, embedding: Any = None,
                     metadata: dict[str, Any] | None = None) -> None:
        """Index one document (any int64 ``doc_id``).

        ``embedding`` (``[embedding_dim]``) is used if given, else the embedder's
        vector, else the document is indexed lexically only.  ``metadata`` (a
        JSON-serialisable dict, e.g. source path and character offsets) comes
        back with :meth:`retrieve` hits.

        Raises
        ------
        ValidationError
            Bad or already-present ``doc_id`` (remove it first), non-str text,
            wrong dimension, NaN/inf or (cosine) zero vector. Nothing changes.
        """
        self.add_documents(
            [(doc_id, text)],
            None if embedding is None else self._check_vector(embedding, "embedding"),
            None if metadata is None else [metadata],
        )

    def add_documents(self, documents: Iterable[tuple[int, str]], embeddings: Any = None,
                      metadatas: Sequence[dict[str, Any] | None] | None = None) -> None:
        """Index many ``(doc_id, text)`` pairs; ``embeddings`` is ``[n, embedding_dim]`` or None.

        Without ``embeddings`` the embedder (if any) embeds all texts in one
        batch call, outside the lock. Everything is validated before any index
        changes.

        Raises
        ------
        ValidationError
            As :meth:`add_document`, or duplicate ids within the batch.
        """
        ids, texts = split_doc_pairs(documents, check_doc_id)
        n = len(ids)
        if len(set(ids)) != n:
            raise ValidationError("documents contain a repeated doc_id")
        metas = self._check_metadata(metadatas, n)
        self._check_new_ids(ids)  # early, so a duplicate costs no embedding; re-checked below
        if embeddings is not None:
            vecs = self._check_vectors(embeddings, n, "embeddings")
        elif self._embedder is not None and n:
            vecs = self._embed(texts)  # outside the lock: searches go on meanwhile
        else:
            vecs = None
        if not n:
            return
        with self._lock:
            self._check_new_ids(ids)
            # Valid: from here on only the sub-indexes' own (already checked) work runs.
            first = self._n_slots
            slots = np.arange(first, first + n, dtype=np.int64)
            self._index.add_documents(zip(slots.tolist(), texts))
            if vecs is not None:
                try:
                    self._hnsw.add_items(vecs, slots)
                except BaseException:
                    for s in slots.tolist():
                        self._index.remove_document(s)
                    raise
            if first + n > self._slot_doc.size:
                grown = np.zeros(max(first + n, 2 * self._slot_doc.size), np.int64)
                grown[:first] = self._slot_doc[:first]
                self._slot_doc = grown
            self._slot_doc[first:first + n] = ids
            self._n_slots = first + n
            self._doc_slot.update(zip(ids, slots.tolist()))
            if self.config.store_texts:
                self._texts.update(zip(slots.tolist(), texts))
                self._meta.update((s, m) for s, m in zip(slots.tolist(), metas) if m is not None)
            self._invalidate()

    def add_chunks(self, chunks: Sequence[Any], embeddings: Any = None) -> list[int]:
        """Index :class:`llmds.chunking.Chunk` objects under new ids (one past the largest
        id in use, or 0); their source and offsets become the metadata. Returns the ids."""
        chunks = list(chunks)
        with self._lock:
            start = max(self._doc_slot, default=-1) + 1
        ids = list(range(start, start + len(chunks)))
        docs, metas = [], []
        for i, c in zip(ids, chunks):
            text = getattr(c, "text", None)
            if not isinstance(text, str):
                raise ValidationError(f"add_chunks takes Chunk objects, got {type(c).__name__}")
            docs.append((i, text))
            metas.append(c.metadata())
        self.add_documents(docs, embeddings, metas)
        return ids

    def _check_new_ids(self, ids: list[int]) -> None:
        for d in ids:
            if d in self._doc_slot:
                raise ValidationError(f"doc_id {d} is already indexed; remove_document it first")

    def remove_document(self, doc_id: int) -> None:
        """Remove a document from both sides (its text and metadata too).

        Raises
        ------
        NotFoundError
            ``doc_id`` is not indexed.
        """
        doc_id = check_doc_id(doc_id)
        with self._lock:
            slot = self._doc_slot.pop(doc_id, None)
            if slot is None:
                raise NotFoundError(f"doc_id {doc_id} is not indexed; nothing was removed")
            self._index.remove_document(slot)
            if slot in self._hnsw:
                self._hnsw.mark_deleted(slot)
            self._texts.pop(slot, None)
            self._meta.pop(slot, None)
            if self._doc_hits is not None:
                self._doc_hits.discard(doc_id)
            self._invalidate()

    def _invalidate(self) -> None:
        self._generation += 1
        if self._cache is not None and len(self._cache):
            self._cache.clear()

    # ------------------------------------------------------------ search
    def search(self, query: str, query_embedding: Any = None, top_k: int = 10,
               fusion_weight: float | None = None, *,
               fusion: str | None = None) -> list[tuple[int, float]]:
        """Top ``top_k`` documents for ``query``, best first.

        Parameters
        ----------
        query : str
            Text for the BM25 side (and for the embedder when no embedding is given).
        query_embedding : array [embedding_dim], optional
            Dense query vector; else the embedder's; else lexical only.
        top_k : int
            Number of results (>= 1).
        fusion_weight : float in [0, 1], optional
            Share of the dense side (``1 - w`` goes to BM25); ``None`` uses the
            configured weight (the fusion's default unless set, see the module docstring).
        fusion : {"tmm", "weighted", "rrf"}, optional
            Overrides ``config.fusion`` for this call.

        Returns
        -------
        list of (doc_id, score)
            ``int`` ids and ``float`` scores, best first, ties by ascending id.
        """
        if not isinstance(query, str):
            raise ValidationError(f"query must be str, got {type(query).__name__}")
        vecs = (None if query_embedding is None
                else self._check_vector(query_embedding, "query_embedding"))
        return self._search_many([query], vecs, top_k, fusion_weight, fusion)[0]

    def search_many(self, queries: Sequence[str], query_embeddings: Any = None, top_k: int = 10,
                    fusion_weight: float | None = None, *,
                    fusion: str | None = None) -> list[list[tuple[int, float]]]:
        """:meth:`search` for a batch (``query_embeddings`` ``[n, dim]`` or None).

        Cache misses are answered with one batched HNSW search, one batched
        BM25 search and, when embeddings are missing, one embedder batch call.
        """
        if isinstance(queries, str):
            raise ValidationError("search_many takes a list of query strings; use search for one")
        queries = list(queries)
        for q in queries:
            if not isinstance(q, str):
                raise ValidationError(f"query must be str, got {type(q).__name__}")
        vecs = (None if query_embeddings is None
                else self._check_vectors(query_embeddings, len(queries), "query_embeddings"))
        return self._search_many(queries, vecs, top_k, fusion_weight, fusion)

    def retrieve(self, query: str, query_embedding: Any = None, top_k: int = 10,
                 fusion_weight: float | None = None, *, fusion: str | None = None) -> list[Hit]:
        """:meth:`search` with each hit's stored text and metadata (for RAG prompts)."""
        with self._lock:  # results and texts from the same state of the index
            res = self.search(query, query_embedding, top_k, fusion_weight, fusion=fusion)
            return [self._hit(d, s) for d, s in res]

    def _hit(self, doc_id: int, score: float) -> Hit:
        slot = self._doc_slot[doc_id]
        return Hit(doc_id, score, self._texts.get(slot), self._meta.get(slot))

    def get_text(self, doc_id: int) -> str | None:
        """Stored text of ``doc_id`` (None when ``store_texts=False``); ``NotFoundError`` if unknown."""
        with self._lock:
            return self._hit(self._known(doc_id), 0.0).text

    def get_metadata(self, doc_id: int) -> dict[str, Any] | None:
        """Metadata given with ``doc_id`` (None if none); ``NotFoundError`` if unknown."""
        with self._lock:
            return self._hit(self._known(doc_id), 0.0).metadata

    def _known(self, doc_id: Any) -> int:
        doc_id = check_doc_id(doc_id)
        if doc_id not in self._doc_slot:
            raise NotFoundError(f"doc_id {doc_id} is not indexed")
        return doc_id

    def _search_many(self, queries: list[str], vecs: np.ndarray | None, top_k: Any,
                     fusion_weight: Any, fusion: Any) -> list[list[tuple[int, float]]]:
        """Queries/vectors already validated: check knobs, then cache -> search -> cache."""
        if type(top_k) is not int or top_k < 1:
            top_k = check_int("top_k", top_k, 1)
        fusion = self.config.fusion if fusion is None else check_fusion(fusion)
        w = self.config.weight(fusion) if fusion_weight is None else check_weight(fusion_weight)
        n = len(queries)
        with self._lock:
            gen = self._generation
            keys = [(q, None if vecs is None else vecs[i].tobytes(), top_k, w, fusion, gen)
                    for i, q in enumerate(queries)]
            out: list[list[tuple[int, float]] | None] = [None] * n
            if self._cache is not None:
                get = self._cache.get
                for i, key in enumerate(keys):
                    hit = get(key)
                    if hit is not None:
                        out[i] = list(hit)
            miss = [i for i in range(n) if out[i] is None]
            self._cache_hits += n - len(miss)
            self._cache_misses += len(miss)
        if miss:
            mq = [queries[i] for i in miss]
            mv = None if vecs is None else vecs[miss]
            if mv is None and self._embedder is not None and len(self._hnsw):
                mv = self._embed(mq)  # outside the lock: slow, and torch releases the GIL
            with self._lock:
                if mv is None and self._embedder is not None and len(self._hnsw):
                    mv = self._embed(mq)  # vectors were added meanwhile
                gen = self._generation  # results below reflect the index as it is now
                fresh = self._search_uncached(mq, mv, top_k, w, fusion)
                for i, res in zip(miss, fresh):
                    out[i] = res
                    if self._cache is not None:
                        self._cache.put(keys[i][:-1] + (gen,), tuple(res))
        if self._doc_hits is not None:
            with self._lock:
                self._query_hits.record(queries)
                self._doc_hits.record([d for res in out for d, _ in res])  # type: ignore[union-attr]
        return out  # type: ignore[return-value]

    def _embed(self, texts: list[str]) -> np.ndarray:
        return self._check_vectors(self._embedder.many(texts), len(texts), "embedder output")

    def _similarities(self, q: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Similarity (as the dense side ranks) of query ``q`` to documents at ``slots``;
        NaN for a document without a vector."""
        out = np.full(slots.shape[0], np.nan)
        has = np.fromiter((s in self._hnsw for s in slots.tolist()), np.bool_, slots.shape[0])
        if has.any():
            V = self._hnsw.get_vectors(slots[has].tolist()).astype(np.float64)
            qq = q.astype(np.float64)
            metric = self.config.metric
            if metric == "cosine":
                out[has] = V @ (qq / np.linalg.norm(qq))
            elif metric == "ip":
                out[has] = V @ qq
            else:
                out[has] = -np.sqrt(((V - qq) ** 2).sum(1))
        return out

    def _search_uncached(self, queries: list[str], vecs: np.ndarray | None, top_k: int,
                         w: float, fusion: str) -> list[list[tuple[int, float]]]:
        cfg = self.config
        cand = cfg.candidates(top_k)
        lex = self._index.search_many(queries, cand) if len(self._index) else [[] for _ in queries]
        if vecs is not None and len(self._hnsw):
            d_ids, d_dist = self._hnsw.search_batch(vecs, cand)
        else:
            d_ids = d_dist = None
        results = []
        slot_doc = self._slot_doc
        for i, query in enumerate(queries):
            if d_ids is not None:
                keep = d_ids[i] >= 0
                di = d_ids[i][keep]
                dd = d_dist[i][keep].astype(np.float64)
                ds = -dd if cfg.metric == "l2" else 1.0 - dd
            else:
                di = np.zeros(0, np.int64)
                ds = np.zeros(0, np.float64)
            li = np.fromiter((s for s, _ in lex[i]), np.int64, len(lex[i]))
            ls = np.fromiter((v for _, v in lex[i]), np.float64, len(lex[i]))
            if fusion == "tmm":
                ids, scores = self._tmm(query, vecs[i] if d_ids is not None else None,
                                        di, ds, li, ls, w)
            else:
                # each side ranked by (score desc, doc_id asc): ties never depend on slots
                od = np.lexsort((slot_doc[di], -ds))
                ol = np.lexsort((slot_doc[li], -ls))
                di, ds, li, ls = di[od], ds[od], li[ol], ls[ol]
                if fusion == "weighted":
                    ids, scores = weighted_fusion(di, ds, li, ls, w)
                else:
                    ids, scores = rrf_fusion(di, li, w, cfg.rrf_k)
            doc = slot_doc[ids]
            order = np.lexsort((doc, -scores))[:top_k]
            results.append(list(zip(doc[order].tolist(), scores[order].tolist())))
        return results

    def _tmm(self, query: str, q: np.ndarray | None, di: np.ndarray, ds: np.ndarray,
             li: np.ndarray, ls: np.ndarray, w: float) -> tuple[np.ndarray, np.ndarray]:
        """Union of both candidate lists, every score filled in exactly, fused by TMM."""
        ids = np.union1d(di, li)
        lex = np.zeros(ids.shape[0], np.float64)
        if li.size:
            lex[np.searchsorted(ids, li)] = ls
            rest = np.setdiff1d(ids, li, assume_unique=True)
            if rest.size:
                lex[np.searchsorted(ids, rest)] = self._index.score_documents(query, rest.tolist())
        dense = np.full(ids.shape[0], np.nan)
        if di.size:
            dense[np.searchsorted(ids, di)] = ds
            rest = np.setdiff1d(ids, di, assume_unique=True)
            if rest.size:
                dense[np.searchsorted(ids, rest)] = self._similarities(q, rest)
        low = -1.0 if self.config.metric == "cosine" else None
        scores = tmm_fusion(ids, dense, lex, float(ds.max()) if di.size else None,
                            float(ls.max()) if li.size else None, low, w)
        return ids, scores

    # ------------------------------------------------------------ hit counting
    def hot_documents(self, threshold: float) -> list[int]:
        """Doc ids whose estimated hit count is >= ``threshold``, hottest first (ties by id).

        A hit is one appearance in a returned result list (cache hits
        included). Counts are Count-Min estimates (never below the true count);
        only the ``hot_capacity`` most-hit live documents are tracked.
        """
        with self._lock:
            return [] if self._doc_hits is None else self._doc_hits.hot(threshold)

    def hot_queries(self, threshold: float) -> list[str]:
        """Query strings searched at least ``threshold`` times (estimated), hottest first."""
        with self._lock:
            return [] if self._query_hits is None else self._query_hits.hot(threshold)

    def document_hits(self, doc_id: int) -> int:
        """Estimated number of times ``doc_id`` was returned (0 when hit counting is off)."""
        doc_id = check_doc_id(doc_id)
        with self._lock:
            return 0 if self._doc_hits is None else self._doc_hits.estimate(doc_id)

    def query_hits(self, query: str) -> int:
        """Estimated number of times ``query`` was searched (0 when hit counting is off)."""
        if not isinstance(query, str):
            raise ValidationError(f"query must be str, got {type(query).__name__}")
        with self._lock:
            return 0 if self._query_hits is None else self._query_hits.estimate(query)

    # ------------------------------------------------------------ inspection
    def __len__(self) -> int:
        return len(self._doc_slot)

    def __contains__(self, doc_id: object) -> bool:
        return is_int(doc_id) and int(doc_id) in self._doc_slot

    @property
    def generation(self) -> int:
        """Bumped by every add/remove; part of every cache key."""
        return self._generation

    def clear_cache(self) -> None:
        """Drop all cached results (counters are kept)."""
        with self._lock:
            if self._cache is not None:
                self._cache.clear()

    def stats(self) -> dict[str, Any]:
        """Pipeline statistics with nested ``hnsw`` and ``inverted_index`` dicts."""
        cfg = self.config
        with self._lock:
            cache = self._cache
            dh, qh = self._doc_hits, self._query_hits
            return {
                "num_documents": len(self._doc_slot),
                "num_dense": len(self._hnsw),
                "num_lexical_only": len(self._doc_slot) - len(self._hnsw),
                "embedding_dim": cfg.embedding_dim,
                "embedder_name": self.embedder_name,
                "metric": cfg.metric,
                "fusion": cfg.fusion,
                "fusion_weight": cfg.weight(cfg.fusion),
                "rrf_k": cfg.rrf_k,
                "candidate_k": cfg.candidate_k,
                "has_embedder": self._embedder is not None,
                "stored_texts": len(self._texts),
                "generation": self._generation,
                "cache": {
                    "enabled": cache is not None,
                    "entries": len(cache) if cache is not None else 0,
                    "tokens": cache.total_tokens() if cache is not None else 0,
                    "token_budget": cfg.cache_token_budget,
                    "hits": self._cache_hits,
                    "misses": self._cache_misses,
                },
                "hits": {
                    "queries": 0 if qh is None else qh.total(),
                    "documents": 0 if dh is None else dh.total(),
                    "tracked_documents": 0 if dh is None else len(dh),
                },
                "hnsw": self._hnsw.stats(),
                "inverted_index": self._index.stats(),
            }

    # ------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the whole pipeline to one file, atomically (versioned, checksummed, no
        pickle): both indexes, ids, texts, metadata, settings and the embedder name.
        Hit counters and the result cache are not saved."""
        from llmds._pipeline_io import save_pipeline

        with self._lock:
            save_pipeline(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, embedder: Any = None) -> RetrievalPipeline:
        """Read a pipeline written by :meth:`save`; searches return exactly what they did.

        Raises
        ------
        CorruptFileError
            Truncated, corrupted or foreign file, or one written by an llmds with
            another pipeline format version.
        ValidationError
            ``embedder`` is not the model the saved vectors came from.
        """
        from llmds._pipeline_io import load_pipeline

        return load_pipeline(cls, path, embedder)

    def __repr__(self) -> str:
        cfg = self.config
        return (f"RetrievalPipeline(documents={len(self._doc_slot)}, dense={len(self._hnsw)}, "
                f"fusion={cfg.fusion!r}, fusion_weight={cfg.weight(cfg.fusion)})")


def _result_tokens(results: tuple) -> int:
    """Cache cost of one result list: one unit per hit plus one for the entry."""
    return 1 + len(results)
