"""Hybrid retrieval: BM25 (``InvertedIndex``) + dense vectors (``HNSW``), fused.

Each side retrieves ``candidate_k`` candidates (default ``max(5 * top_k, 50)``),
each list is ranked by (score desc, ``doc_id`` asc),
the two lists are fused and the best ``top_k`` returned as ``[(doc_id, score)]``
(Python ``int``/``float``), best first, ties by ascending ``doc_id``.  A document
found by only one side is kept; the other side contributes 0 for it.

Fusion (:mod:`llmds.fusion`; ``fusion_weight`` = w is the **dense** share):
``"weighted"`` min-max normalises each side per query (HNSW distances turned
into similarities first: ``1 - d`` for cosine/ip, ``-d`` for l2) and returns
``w * dense + (1 - w) * lexical``; ``"rrf"`` returns ``2w / (rrf_k + rank_dense)
+ 2(1 - w) / (rrf_k + rank_lexical)`` (``w = 0.5`` is plain RRF).  A side with
no candidates (no query vector, empty dense index, no known query term) takes
no part and the other side is used alone.

Defaults come from ``benchmarks/retrieval_hybrid.py`` on the MS MARCO subset
(nDCG@10, 43 judged queries: BM25 0.683, dense 0.798, weighted w=0.5 0.786,
w=0.7 0.800, w=0.8 0.801, w=0.9 0.795, plain RRF 0.779): ``fusion="weighted"``
with ``fusion_weight=0.7``.  0.7 holds with every BM25 tokenizer tried (0.800,
0.798, 0.801 with plain / stop-word / stop-word + stemming tokens) where 0.8
falls to 0.795 with stemming.  Plain 50/50 fusion falls below dense alone here,
so ``search`` with ``fusion_weight=None`` (its default) uses the configured
weight, not the seed's 0.5.

Documents live under internal *slots* (0, 1, 2, ... never reused); both indexes
are keyed by slot, and ``_slot_doc`` maps back to the user's ``doc_id``, so a
removed id can be added again without either index seeing a reused key.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmds.errors import NotFoundError, ValidationError
from llmds.fusion import FUSIONS, check_fusion, check_weight, rrf_fusion, weighted_fusion
from llmds.heavy_hitters import HeavyHitters
from llmds.hnsw import HNSW
from llmds.inverted_index import InvertedIndex, split_doc_pairs
from llmds.token_lru import TokenLRU
from llmds.tokenizer import Tokenizer

__all__ = ["RetrievalPipeline", "PipelineConfig", "weighted_fusion", "rrf_fusion", "FUSIONS"]

log = logging.getLogger(__name__)

DEFAULT_FUSION = "weighted"
DEFAULT_FUSION_WEIGHT = 0.7  # dense share; see the module docstring for the measurements

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


# ---------------------------------------------------------------- config
def _pos_int(name: str, v: Any, low: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValidationError(f"{name} must be an int >= {low}, got {v!r}")
    return int(v)


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """Pipeline knobs, validated once.

    HNSW: ``M``, ``ef_construction``, ``ef_search``, ``seed``, ``metric``
    (``"cosine"`` | ``"ip"`` | ``"l2"``). BM25: ``k1``, ``b``. Fusion:
    ``fusion``, ``fusion_weight`` (dense share used when ``search`` gets
    ``None``), ``rrf_k`` (>= 1), ``candidate_k`` (per side; ``None`` means
    ``max(5 * top_k, 50)``; never below ``top_k``). Result cache:
    ``cache_token_budget`` (0 disables; an entry costs ``1 + len(results)``).
    Hit counting: ``sketch_width`` x ``sketch_depth`` Count-Min counters and
    ``hot_capacity`` tracked heavy-hitter documents (0 disables hit counting).
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
    fusion_weight: float = DEFAULT_FUSION_WEIGHT
    rrf_k: int = 60
    candidate_k: int | None = None
    cache_token_budget: int = 100_000
    sketch_width: int = 4096
    sketch_depth: int = 4
    hot_capacity: int = 1024

    def __post_init__(self) -> None:
        _pos_int("embedding_dim", self.embedding_dim)
        check_fusion(self.fusion)
        check_weight(self.fusion_weight)
        _pos_int("rrf_k", self.rrf_k)
        if self.candidate_k is not None:
            _pos_int("candidate_k", self.candidate_k)
        _pos_int("cache_token_budget", self.cache_token_budget, 0)
        _pos_int("sketch_width", self.sketch_width)
        _pos_int("sketch_depth", self.sketch_depth)
        _pos_int("hot_capacity", self.hot_capacity, 0)
        if self.metric not in ("cosine", "ip", "l2"):
            raise ValidationError(f"metric must be 'cosine', 'ip' or 'l2', got {self.metric!r}")

    def candidates(self, top_k: int) -> int:
        """How many candidates each side retrieves for a ``top_k`` query."""
        if self.candidate_k is None:
            return max(5 * top_k, 50)
        return max(self.candidate_k, top_k)


# ---------------------------------------------------------------- embedder hook
class _Embedder:
    """Uniform batch view of a user embedder: ``many(texts) -> [n, dim]``.

    Detection order: ``embed_batch(list)``; ``encode(list)`` (sentence-transformers
    style; such a model is also callable, but as ``forward``, so it is never
    called directly); otherwise a plain callable ``text -> vector``, called per text.
    """

    __slots__ = ("obj", "_batch")

    def __init__(self, obj: Any) -> None:
        batch = getattr(obj, "embed_batch", None) or getattr(obj, "encode", None)
        if not callable(batch):
            batch = None
            if not callable(obj):
                raise ValidationError(
                    "embedder must be a callable text -> vector, or have embed_batch/encode(texts)"
                )
        self.obj = obj
        self._batch = batch

    def many(self, texts: list[str]) -> Any:
        if self._batch is not None:
            return self._batch(texts)
        return [self.obj(t) for t in texts]


# ---------------------------------------------------------------- pipeline
class RetrievalPipeline:
    """Hybrid BM25 + HNSW retrieval with fusion, a result cache and hit counting.

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
    **options
        Any :class:`PipelineConfig` field (``M``, ``ef_construction``,
        ``ef_search``, ``seed``, ``metric``, ``k1``, ``b``, ``fusion``,
        ``fusion_weight``, ``rrf_k``, ``candidate_k``, ``cache_token_budget``, ...).

    Notes
    -----
    Thread-safe: index reads and writes hold one re-entrant lock (HNSW and the
    inverted index share scratch buffers between searches); embedder calls run
    outside it, so a slow embedding does not stall other searches.  Cached results
    are keyed by ``(query, embedding bytes, top_k, fusion_weight, fusion,
    generation)``; the generation is bumped (and the cache cleared) by every
    add or remove, so stale results are never served.
    """

    def __init__(
        self,
        embedding_dim: int = 384,
        *,
        embedder: Any = None,
        tokenizer: Tokenizer | None = None,
        **options: Any,
    ) -> None:
        try:
            cfg = PipelineConfig(embedding_dim=embedding_dim, **options)
        except TypeError as exc:
            raise ValidationError(f"unknown RetrievalPipeline option: {exc}") from None
        self.config = cfg
        self._embedder = _Embedder(embedder) if embedder is not None else None
        self._index = InvertedIndex(tokenizer=tokenizer, k1=cfg.k1, b=cfg.b)
        self._hnsw = HNSW(
            cfg.embedding_dim,
            M=cfg.M,
            ef_construction=cfg.ef_construction,
            ef_search=cfg.ef_search,
            seed=cfg.seed,
            metric=cfg.metric,
        )
        self._slot_doc = np.zeros(1024, np.int64)  # slot -> doc_id (dead slots keep stale ids)
        self._n_slots = 0
        self._doc_slot: dict[int, int] = {}  # live doc_id -> slot
        self._generation = 0
        self._cache: TokenLRU | None = (
            TokenLRU(cfg.cache_token_budget, _result_tokens) if cfg.cache_token_budget else None
        )
        self._cache_hits = 0
        self._cache_misses = 0
        if cfg.hot_capacity:  # hits = appearances in returned results / searches
            self._doc_hits: HeavyHitters | None = HeavyHitters(
                cfg.hot_capacity, cfg.sketch_width, cfg.sketch_depth, seed=1
            )
            self._query_hits: HeavyHitters | None = HeavyHitters(
                cfg.hot_capacity, cfg.sketch_width, cfg.sketch_depth, seed=2
            )
        else:
            self._doc_hits = self._query_hits = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------ validation helpers
    def _check_doc_id(self, doc_id: Any) -> int:
        if isinstance(doc_id, bool) or not isinstance(doc_id, (int, np.integer)):
            raise ValidationError(f"doc_id must be an int, got {doc_id!r}")
        doc_id = int(doc_id)
        if not _I64_MIN <= doc_id <= _I64_MAX:
            raise ValidationError(f"doc_id must fit in int64, got {doc_id}")
        return doc_id

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
                f"{what} must be a 1-D vector of length {self.config.embedding_dim}, got {x.shape}"
            )
        return self._check_vectors(x[None, :], 1, what)

    # ------------------------------------------------------------ mutation
    def add_document(self, doc_id: int, text: str, embedding: Any = None) -> None:
        """Index one document.

        ``embedding`` (``[embedding_dim]``) is used if given, else the embedder's
        vector, else the document is indexed lexically only.

        Raises
        ------
        ValidationError
            Bad or already-present ``doc_id`` (remove it first), non-str text,
            wrong dimension, NaN/inf or (cosine) zero vector. Nothing changes.
        """
        self.add_documents(
            [(doc_id, text)],
            None if embedding is None else self._check_vector(embedding, "embedding"),
        )

    def add_documents(self, documents: Iterable[tuple[int, str]], embeddings: Any = None) -> None:
        """Index many ``(doc_id, text)`` pairs; ``embeddings`` is ``[n, embedding_dim]`` or None.

        Without ``embeddings`` the embedder (if any) embeds all texts in one
        batch call. Everything is validated before any index changes.

        Raises
        ------
        ValidationError
            As :meth:`add_document`, or duplicate ids within the batch.
        """
        ids, texts = split_doc_pairs(documents, self._check_doc_id)
        n = len(ids)
        if len(set(ids)) != n:
            raise ValidationError("documents contain a repeated doc_id")
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
            self._slot_doc[first : first + n] = ids
            self._n_slots = first + n
            self._doc_slot.update(zip(ids, slots.tolist()))
            self._invalidate()

    def _check_new_ids(self, ids: list[int]) -> None:
        for d in ids:
            if d in self._doc_slot:
                raise ValidationError(f"doc_id {d} is already indexed; remove_document it first")

    def remove_document(self, doc_id: int) -> None:
        """Remove a document from both sides.

        Raises
        ------
        NotFoundError
            ``doc_id`` is not indexed.
        """
        doc_id = self._check_doc_id(doc_id)
        with self._lock:
            slot = self._doc_slot.pop(doc_id, None)
            if slot is None:
                raise NotFoundError(f"doc_id {doc_id} is not indexed; nothing was removed")
            self._index.remove_document(slot)
            if slot in self._hnsw:
                self._hnsw.mark_deleted(slot)
            if self._doc_hits is not None:
                self._doc_hits.discard(doc_id)
            self._invalidate()

    def _invalidate(self) -> None:
        self._generation += 1
        if self._cache is not None and len(self._cache):
            self._cache.clear()

    # ------------------------------------------------------------ search
    def search(
        self,
        query: str,
        query_embedding: Any = None,
        top_k: int = 10,
        fusion_weight: float | None = None,
        *,
        fusion: str | None = None,
    ) -> list[tuple[int, float]]:
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
            Share of the dense side (``1 - w`` goes to BM25); ``None`` uses
            ``config.fusion_weight`` (0.7 by default, see the module docstring).
        fusion : {"weighted", "rrf"}, optional
            Overrides ``config.fusion`` for this call.

        Returns
        -------
        list of (doc_id, score)
            ``int`` ids and ``float`` scores, best first, ties by ascending id.
        """
        if not isinstance(query, str):
            raise ValidationError(f"query must be str, got {type(query).__name__}")
        vecs = (
            None
            if query_embedding is None
            else self._check_vector(query_embedding, "query_embedding")
        )
        return self._search_many([query], vecs, top_k, fusion_weight, fusion)[0]

    def search_many(
        self,
        queries: Sequence[str],
        query_embeddings: Any = None,
        top_k: int = 10,
        fusion_weight: float | None = None,
        *,
        fusion: str | None = None,
    ) -> list[list[tuple[int, float]]]:
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
        vecs = (
            None
            if query_embeddings is None
            else self._check_vectors(query_embeddings, len(queries), "query_embeddings")
        )
        return self._search_many(queries, vecs, top_k, fusion_weight, fusion)

    def _search_many(
        self,
        queries: list[str],
        vecs: np.ndarray | None,
        top_k: Any,
        fusion_weight: Any,
        fusion: Any,
    ) -> list[list[tuple[int, float]]]:
        """Queries/vectors already validated: check knobs, then cache -> search -> cache."""
        if type(top_k) is not int or top_k < 1:
            top_k = _pos_int("top_k", top_k)
        w = self.config.fusion_weight if fusion_weight is None else check_weight(fusion_weight)
        fusion = self.config.fusion if fusion is None else check_fusion(fusion)
        n = len(queries)
        with self._lock:
            gen = self._generation
            keys = [
                (q, None if vecs is None else vecs[i].tobytes(), top_k, w, fusion, gen)
                for i, q in enumerate(queries)
            ]
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

    def _search_uncached(
        self, queries: list[str], vecs: np.ndarray | None, top_k: int, w: float, fusion: str
    ) -> list[list[tuple[int, float]]]:
        cfg = self.config
        cand = cfg.candidates(top_k)
        n = len(queries)
        lex = self._index.search_many(queries, cand) if len(self._index) else [[] for _ in queries]
        if vecs is not None and len(self._hnsw):
            d_ids, d_dist = self._hnsw.search_batch(vecs, cand)
        else:
            d_ids = d_dist = None
        results = []
        slot_doc = self._slot_doc
        for i in range(n):
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
        doc_id = self._check_doc_id(doc_id)
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
        return doc_id in self._doc_slot

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
                "metric": cfg.metric,
                "fusion": cfg.fusion,
                "fusion_weight": cfg.fusion_weight,
                "rrf_k": cfg.rrf_k,
                "candidate_k": cfg.candidate_k,
                "has_embedder": self._embedder is not None,
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

    def __repr__(self) -> str:
        return (
            f"RetrievalPipeline(documents={len(self._doc_slot)}, dense={len(self._hnsw)}, "
            f"fusion={self.config.fusion!r}, fusion_weight={self.config.fusion_weight})"
        )


def _result_tokens(results: tuple) -> int:
    """Cache cost of one result list: one unit per hit plus one for the entry."""
    return 1 + len(results)
