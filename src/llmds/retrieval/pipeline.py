"""Hybrid retrieval: BM25 (``InvertedIndex``) + dense vectors (``HNSW``), fused.

Each side retrieves ``candidate_k`` candidates (default ``max(5 * top_k, 50)``),
the two lists are fused and the best ``top_k`` returned as ``[(doc_id, score)]``
(Python ``int``/``float``), best first, ties by ascending ``doc_id``.
:meth:`RetrievalPipeline.retrieve` returns the same hits with each document's
stored text and metadata (for RAG prompts).

Fusion (:mod:`llmds.retrieval.fusion`; ``fusion_weight`` = w is the **dense** share):

* ``"adaptive"`` (default): ``"tmm"`` with a dense share estimated per query from the two
  candidate lists and the index, no labels (formula and sources: :mod:`llmds.retrieval.fusion`);
  :meth:`RetrievalPipeline.fusion_weights` shows it; a ``fusion_weight`` fixes it.
* ``"tmm"`` (w = 0.9): convex combination with theoretical min-max normalisation (BM25 / its
  best; cosine from -1 to its best), every document of the union scored on both sides.
* ``"weighted"``: per-query min-max normalisation of each candidate list (w = 0.7).
* ``"rrf"``: ``2w / (rrf_k + rank_dense) + 2(1 - w) / (rrf_k + rank_lexical)`` (w = 0.5).

A side with no candidates (no query vector, empty dense index, no known query
term) takes no part.  ``fusion_weight=None`` means the fusion's default above.

The two indexes, the texts and the fused search are a
:class:`~llmds.retrieval.hybrid.HybridIndex` (documents under internal slots, so a
removed id can be added again); the pipeline adds the embedder, the lock, the
result cache and hit counting.

Thread safety: one re-entrant lock guards every index read and write; embedder
calls run outside it.  The numba kernels hold the GIL, so a readers-writer lock
would not let two searches run at once; ``benchmarks/retrieval/updates.py``
measures what the lock costs.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from llmds._checks import check_int, is_int
from llmds.errors import CorruptFileError, NotFoundError, ValidationError
from llmds.sketches.heavy_hitters import HeavyHitters
from llmds.retrieval._docs import check_doc_id, split_doc_pairs
from llmds.retrieval._pipeline_io import hybrid_from_arrays, read_pipeline, save_pipeline
from llmds.retrieval._result_cache import ResultCache
from llmds.retrieval.embeddings import EmbedderAdapter
from llmds.retrieval.fusion import FUSIONS, rrf_fusion, tmm_fusion, weighted_fusion
from llmds.retrieval.hybrid import HybridIndex
from llmds.retrieval.pipeline_config import (
    DEFAULT_FUSION, DEFAULT_FUSION_WEIGHT, Hit, PipelineConfig, check_metadata, check_queries,
    check_vector, check_vectors,
)
from llmds.retrieval.tokenizer import Tokenizer

__all__ = ["DEFAULT_FUSION", "DEFAULT_FUSION_WEIGHT", "FUSIONS", "Hit", "PipelineConfig",
           "RetrievalPipeline", "rrf_fusion", "tmm_fusion", "weighted_fusion"]

log = logging.getLogger(__name__)


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
        ``[n, dim]`` (e.g. :class:`llmds.retrieval.embeddings.MiniLMEmbedder`). Without an
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
        self._docs = HybridIndex(cfg, tokenizer)
        self._generation = 0
        self._cache = ResultCache(cfg.cache_token_budget)
        if cfg.hot_capacity:  # hits = appearances in returned results / searches
            self._doc_hits: HeavyHitters | None = HeavyHitters(
                cfg.hot_capacity, cfg.sketch_width, cfg.sketch_depth, seed=1)
            self._query_hits: HeavyHitters | None = HeavyHitters(
                cfg.hot_capacity, cfg.sketch_width, cfg.sketch_depth, seed=2)
        else:
            self._doc_hits = self._query_hits = None
        self._lock = threading.RLock()

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
            None if embedding is None else check_vector(self.config, embedding, "embedding"),
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
        metas = check_metadata(metadatas, n)
        self._check_new_ids(ids)  # early, so a duplicate costs no embedding; re-checked below
        if embeddings is not None:
            vecs = check_vectors(self.config, embeddings, n, "embeddings")
        elif self._embedder is not None and n:
            vecs = self._embed(texts)  # outside the lock: searches go on meanwhile
        else:
            vecs = None
        if not n:
            return
        with self._lock:
            self._check_new_ids(ids)
            # Valid: from here on only the sub-indexes' own (already checked) work runs.
            self._docs.add(ids, texts, vecs, metas)
            self._invalidate()

    def add_chunks(self, chunks: Sequence[Any], embeddings: Any = None) -> list[int]:
        """Index :class:`llmds.retrieval.chunking.Chunk` objects under new ids (one past the largest
        id in use, or 0); their source and offsets become the metadata. Returns the ids."""
        chunks = list(chunks)
        with self._lock:
            start = max(self._docs.doc_slot, default=-1) + 1
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
            if d in self._docs:
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
            if not self._docs.remove(doc_id):
                raise NotFoundError(f"doc_id {doc_id} is not indexed; nothing was removed")
            if self._doc_hits is not None:
                self._doc_hits.discard(doc_id)
            self._invalidate()

    def _invalidate(self) -> None:
        self._generation += 1
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
            configured weight (the fusion's default unless set: for ``"adaptive"``
            estimated per query; see the module docstring).
        fusion : {"adaptive", "tmm", "weighted", "rrf"}, optional
            Overrides ``config.fusion`` for this call.

        Returns
        -------
        list of (doc_id, score)
            ``int`` ids and ``float`` scores, best first, ties by ascending id.
        """
        if not isinstance(query, str):
            raise ValidationError(f"query must be str, got {type(query).__name__}")
        vecs = (None if query_embedding is None
                else check_vector(self.config, query_embedding, "query_embedding"))
        return self._search_many([query], vecs, top_k, fusion_weight, fusion)[0]

    def search_many(self, queries: Sequence[str], query_embeddings: Any = None, top_k: int = 10,
                    fusion_weight: float | None = None, *,
                    fusion: str | None = None) -> list[list[tuple[int, float]]]:
        """:meth:`search` for a batch (``query_embeddings`` ``[n, dim]`` or None).

        Cache misses are answered with one batched HNSW search, one batched
        BM25 search and, when embeddings are missing, one embedder batch call.
        """
        queries, vecs = check_queries(self.config, queries, query_embeddings, "search_many")
        return self._search_many(queries, vecs, top_k, fusion_weight, fusion)

    def fusion_weights(self, queries: Sequence[str], query_embeddings: Any = None,
                       fusion_weight: float | None = None, *,
                       fusion: str | None = None) -> list[float]:
        """The dense share (0: BM25 only, 1: dense only) :meth:`search_many` with these
        arguments gives each query: the fixed weight or ``"adaptive"``'s estimate; 1.0 / 0.0
        when one side has no candidates.  For inspection: searches again, caches nothing."""
        queries, vecs = check_queries(self.config, queries, query_embeddings, "fusion_weights")
        fusion, w = self.config.choose(fusion, fusion_weight)
        if vecs is None and self._embedder is not None and len(self._docs.dense) and queries:
            vecs = self._embed(queries)
        with self._lock:
            return self._docs.dense_shares(queries, vecs, w)

    def retrieve(self, query: str, query_embedding: Any = None, top_k: int = 10,
                 fusion_weight: float | None = None, *, fusion: str | None = None) -> list[Hit]:
        """:meth:`search` with each hit's stored text and metadata (for RAG prompts).

        The query is embedded outside the lock, like :meth:`search`; a hit whose
        document another thread removed between the search and the text lookup
        is dropped, so every returned text belongs to its id."""
        res = self.search(query, query_embedding, top_k, fusion_weight, fusion=fusion)
        with self._lock:
            return [self._docs.hit(d, s) for d, s in res if d in self._docs]

    def side_scores(self, query: str, doc_ids: Sequence[int], query_embedding: Any = None):
        """``(bm25, dense)`` float64 arrays for ``doc_ids``: the two scores fusion combines (dense
        NaN without vectors; the query embedded if not given); ``NotFoundError`` for an unknown id."""
        vec = None if query_embedding is None else check_vector(self.config, query_embedding, "query_embedding")
        if vec is None and self._embedder is not None and len(self._docs.dense) and isinstance(query, str):
            vec = self._embed([query])[0]
        with self._lock:
            return self._docs.side_scores(query, vec, [self._known(d) for d in doc_ids])

    def get_text(self, doc_id: int) -> str | None:
        """Stored text of ``doc_id`` (None when ``store_texts=False``); ``NotFoundError`` if unknown."""
        with self._lock:
            return self._docs.hit(self._known(doc_id), 0.0).text

    def get_metadata(self, doc_id: int) -> dict[str, Any] | None:
        """Metadata given with ``doc_id`` (None if none); ``NotFoundError`` if unknown."""
        with self._lock:
            return self._docs.hit(self._known(doc_id), 0.0).metadata

    def _known(self, doc_id: Any) -> int:
        doc_id = check_doc_id(doc_id)
        if doc_id not in self._docs:
            raise NotFoundError(f"doc_id {doc_id} is not indexed")
        return doc_id

    def _search_many(self, queries: list[str], vecs: np.ndarray | None, top_k: Any,
                     fusion_weight: Any, fusion: Any) -> list[list[tuple[int, float]]]:
        """Queries/vectors already validated: check knobs, then cache -> search -> cache."""
        if type(top_k) is not int or top_k < 1:
            top_k = check_int("top_k", top_k, 1)
        fusion, w = self.config.choose(fusion, fusion_weight)
        n = len(queries)
        with self._lock:
            gen = self._generation
            keys = [(q, None if vecs is None else vecs[i].tobytes(), top_k, w, fusion, gen)
                    for i, q in enumerate(queries)]
            out = self._cache.lookup(keys)
            miss = [i for i in range(n) if out[i] is None]
        if miss:
            mq = [queries[i] for i in miss]
            mv = None if vecs is None else vecs[miss]
            if mv is None and self._embedder is not None and len(self._docs.dense):
                mv = self._embed(mq)  # outside the lock: slow, and torch releases the GIL
            with self._lock:
                if mv is None and self._embedder is not None and len(self._docs.dense):
                    mv = self._embed(mq)  # vectors were added meanwhile
                gen = self._generation  # results below reflect the index as it is now
                fresh = self._docs.search(mq, mv, top_k, w, fusion)
                for i, res in zip(miss, fresh):
                    out[i] = res
                    self._cache.put(keys[i][:-1] + (gen,), res)
        if self._doc_hits is not None:
            with self._lock:
                self._query_hits.record(queries)
                self._doc_hits.record([d for res in out for d, _ in res])  # type: ignore[union-attr]
        return out  # type: ignore[return-value]

    def _embed(self, texts: list[str]) -> np.ndarray:
        return check_vectors(self.config, self._embedder.many(texts), len(texts), "embedder output")

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
        return len(self._docs)

    def __contains__(self, doc_id: object) -> bool:
        return is_int(doc_id) and int(doc_id) in self._docs

    @property
    def generation(self) -> int:
        """Bumped by every add/remove; part of every cache key."""
        return self._generation

    def clear_cache(self) -> None:
        """Drop all cached results (counters are kept)."""
        with self._lock:
            self._cache.clear()

    def stats(self) -> dict[str, Any]:
        """Pipeline statistics with nested ``hnsw`` and ``inverted_index`` dicts."""
        cfg = self.config
        with self._lock:
            docs = self._docs
            dh, qh = self._doc_hits, self._query_hits
            return {
                "num_documents": len(docs),
                "num_dense": len(docs.dense),
                "num_lexical_only": len(docs) - len(docs.dense),
                "embedding_dim": cfg.embedding_dim,
                "embedder_name": self.embedder_name,
                "metric": cfg.metric,
                "fusion": cfg.fusion,
                "fusion_weight": cfg.weight(cfg.fusion),
                "rrf_k": cfg.rrf_k,
                "candidate_k": cfg.candidate_k,
                "has_embedder": self._embedder is not None,
                "stored_texts": len(docs.texts),
                "generation": self._generation,
                "cache": self._cache.stats(),
                "hits": {
                    "queries": 0 if qh is None else qh.total(),
                    "documents": 0 if dh is None else dh.total(),
                    "tracked_documents": 0 if dh is None else len(dh),
                },
                "hnsw": docs.dense.stats(),
                "inverted_index": docs.lexical.stats(),
            }

    # ------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the whole pipeline to one file, atomically (versioned, checksummed, no
        pickle): both indexes, ids, texts, metadata, settings and the embedder name.
        Hit counters and the result cache are not saved."""
        with self._lock:
            save_pipeline(self._docs, self.embedder_name, path)

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
        where = os.fspath(path)
        adapter = EmbedderAdapter(embedder) if embedder is not None else None
        meta, arrays = read_pipeline(path, None if adapter is None else adapter.name)
        try:
            p = cls(embedder=embedder, tokenizer=Tokenizer.from_config(meta["tokenizer"]),
                    embedder_name=meta.get("embedder"), **meta["config"])
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, CorruptFileError):
                raise
            raise CorruptFileError(f"{where}: inconsistent pipeline file: {exc}") from None
        p._docs = hybrid_from_arrays(p._docs, arrays, meta, where)
        return p

    def __repr__(self) -> str:
        cfg = self.config
        return (f"RetrievalPipeline(documents={len(self._docs)}, dense={len(self._docs.dense)}, "
                f"fusion={cfg.fusion!r}, fusion_weight={cfg.weight(cfg.fusion)})")

