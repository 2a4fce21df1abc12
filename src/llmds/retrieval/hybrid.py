"""The two indexes of a :class:`~llmds.retrieval.pipeline.RetrievalPipeline` and their fused search.

:class:`HybridIndex` keeps BM25 (:class:`~llmds.retrieval.inverted_index.InvertedIndex`)
and HNSW (:class:`~llmds.retrieval.hnsw.HNSW`) over the same documents, keyed by
internal *slots* (0, 1, 2, ... never reused); ``slot_doc`` maps back to the user's
``doc_id`` (any int64), so a removed id can be added again without either index
seeing a reused key.  It also keeps each document's text and metadata.

Search: both sides retrieve ``config.candidates(top_k)`` candidates in one batched
call each (BM25 ``search_many``, HNSW ``search_batch``); each query's two lists are
then fused (:mod:`llmds.retrieval.fusion`).  For ``"tmm"`` and ``"adaptive"`` the union
of both lists is scored exactly on both sides first: the BM25 of documents only the
dense side found (``InvertedIndex.score_documents``, the same floats a search returns)
and the similarity of documents only BM25 found (stored HNSW vectors), NaN for
documents indexed without a vector.  ``"adaptive"`` takes the dense share from
:func:`~llmds.retrieval.fusion.adaptive_weight`, which reads the mean direction of
the document vectors: kept here as an exact sum (unit vectors in fixed point, int64),
so adds and removes in any order, and a reload, give the same mean to the last bit.

Not thread-safe: the pipeline calls it under its lock.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from llmds.retrieval.fusion import (
    adaptive_weight, collection_prior, rrf_fusion, tmm_fusion, weighted_fusion,
)
from llmds.retrieval.hnsw import HNSW
from llmds.retrieval.inverted_index import InvertedIndex
from llmds.retrieval.pipeline_config import Hit, PipelineConfig
from llmds.retrieval.tokenizer import Tokenizer

__all__ = ["HybridIndex"]


class HybridIndex:
    """BM25 + HNSW over the same documents (by slot), their texts and metadata; fused search.

    Public state, read by the pipeline and its saved form: ``config``, ``lexical``,
    ``dense``, ``slot_doc`` (int64 [capacity], slot -> doc id; dead slots keep stale
    ids), ``n_slots``, ``doc_slot`` (live doc id -> slot), ``texts`` / ``meta``
    (slot -> text / metadata, when ``store_texts``).
    """

    _FIXED = float(2 ** 32)  # fixed-point scale of the direction sum: exact for 2^31 vectors

    def __init__(self, config: PipelineConfig, tokenizer: Tokenizer | None = None) -> None:
        cfg = self.config = config
        self.lexical = InvertedIndex(tokenizer=tokenizer, k1=cfg.k1, b=cfg.b)
        self.dense = HNSW(cfg.embedding_dim, M=cfg.M, ef_construction=cfg.ef_construction,
                          ef_search=cfg.ef_search, seed=cfg.seed, metric=cfg.metric)
        self.slot_doc = np.zeros(1024, np.int64)
        self.n_slots = 0
        self.doc_slot: dict[int, int] = {}
        self.texts: dict[int, str] = {}
        self.meta: dict[int, dict[str, Any]] = {}
        self._dir_sum = np.zeros(cfg.embedding_dim, np.int64)  # sum of unit vectors * _FIXED
        self._mean_dir: np.ndarray | None = None  # cached mean unit vector; None: stale
        self._adaptive: tuple[np.ndarray, float, float] | None = None  # (m, prior, idf_1); None: stale

    def __len__(self) -> int:
        return len(self.doc_slot)

    def __contains__(self, doc_id: int) -> bool:
        return doc_id in self.doc_slot

    # ------------------------------------------------------------ changes
    def add(self, ids: list[int], texts: list[str], vecs: np.ndarray | None,
            metas: list[dict[str, Any] | None]) -> None:
        """Index new documents (ids not present, everything validated); ``vecs`` [n, dim] or None."""
        n = len(ids)
        first = self.n_slots
        slots = np.arange(first, first + n, dtype=np.int64)
        self.lexical.add_documents(zip(slots.tolist(), texts))
        if vecs is not None:
            try:
                self.dense.add_items(vecs, slots)
            except BaseException:
                for s in slots.tolist():
                    self.lexical.remove_document(s)
                raise
            self._count_directions(slots.tolist(), 1)
        if first + n > self.slot_doc.size:
            grown = np.zeros(max(first + n, 2 * self.slot_doc.size), np.int64)
            grown[:first] = self.slot_doc[:first]
            self.slot_doc = grown
        self.slot_doc[first:first + n] = ids
        self.n_slots = first + n
        self.doc_slot.update(zip(ids, slots.tolist()))
        self._adaptive = None
        if self.config.store_texts:
            self.texts.update(zip(slots.tolist(), texts))
            self.meta.update((s, m) for s, m in zip(slots.tolist(), metas) if m is not None)

    def remove(self, doc_id: int) -> bool:
        """Remove a document from both sides (text and metadata too); False if absent."""
        slot = self.doc_slot.pop(doc_id, None)
        if slot is None:
            return False
        self.lexical.remove_document(slot)
        self._adaptive = None
        if slot in self.dense:
            self._count_directions([slot], -1)
            self.dense.mark_deleted(slot)
        self.texts.pop(slot, None)
        self.meta.pop(slot, None)
        return True

    def _count_directions(self, slots: list[int], sign: int) -> None:
        """Add (``sign`` 1) or take away (-1) the unit vectors the dense index stores at ``slots``."""
        if slots:
            V = self.dense.get_vectors(slots).astype(np.float64)
            norm = np.linalg.norm(V, axis=1, keepdims=True)
            V /= np.where(norm > 0.0, norm, 1.0)  # a zero vector ("ip", "l2") has no direction
            self._dir_sum += sign * np.rint(V * self._FIXED).astype(np.int64).sum(0)
            self._mean_dir = None

    def recount_directions(self) -> None:
        """The direction sum from scratch (after the dense index was replaced, e.g. on load)."""
        self._dir_sum[:] = 0
        self._count_directions([s for s in self.doc_slot.values() if s in self.dense], 1)
        self._adaptive = None

    def mean_direction(self) -> np.ndarray:
        """Mean of the unit document vectors (float64 [dim]; zeros when there are none)."""
        if self._mean_dir is None:
            n = len(self.dense)
            self._mean_dir = self._dir_sum / (self._FIXED * n) if n else np.zeros(self._dir_sum.shape)
        return self._mean_dir

    def hit(self, doc_id: int, score: float) -> Hit:
        """``doc_id`` (present) with ``score``, its stored text and metadata."""
        slot = self.doc_slot[doc_id]
        return Hit(doc_id, score, self.texts.get(slot), self.meta.get(slot))

    # ------------------------------------------------------------ search
    def search(self, queries: list[str], vecs: np.ndarray | None, top_k: int, w: float | None,
               fusion: str) -> list[list[tuple[int, float]]]:
        """Each query's ``top_k`` ``(doc_id, score)``, best first, ties by ascending doc id;
        ``vecs`` [n, dim] (None: lexical only), ``w`` the dense share (None with
        ``"adaptive"``: estimated per query)."""
        cfg = self.config
        results = []
        slot_doc = self.slot_doc
        for query, q, di, ds, li, ls in self._candidates(queries, vecs, cfg.candidates(top_k)):
            if fusion in ("tmm", "adaptive"):
                wq = w
                if wq is None:  # "adaptive"; with one list empty the other gets weight 1 anyway
                    wq = self._adaptive_weight(q, ds, ls) if ds.size and ls.size else 0.5
                ids, scores = self._tmm(query, q, di, ds, li, ls, wq)
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

    def dense_shares(self, queries: list[str], vecs: np.ndarray | None,
                     w: float | None) -> list[float]:
        """The dense share each query's fusion applies: ``w``, or the adaptive estimate when
        ``w`` is None; 1.0 / 0.0 when only the dense / lexical side has candidates."""
        out = []
        for _, q, _, ds, _, ls in self._candidates(queries, vecs, self.config.candidates(10)):
            if not ds.size or not ls.size:
                out.append(1.0 if ds.size else 0.0)
            else:
                out.append(w if w is not None else self._adaptive_weight(q, ds, ls))
        return out

    def _candidates(self, queries: list[str], vecs: np.ndarray | None, cand: int):
        """Per query ``(query, vector | None, dense slots, similarities, lexical slots, BM25)``,
        each side best first: one batched search per side."""
        lex = self.lexical.search_many(queries, cand) if len(self.lexical) else [[] for _ in queries]
        if vecs is not None and len(self.dense):
            d_ids, d_dist = self.dense.search_batch(vecs, cand)
        else:
            d_ids = d_dist = None
        for i, query in enumerate(queries):
            if d_ids is not None:
                keep = d_ids[i] >= 0
                di = d_ids[i][keep]
                dd = d_dist[i][keep].astype(np.float64)
                ds = -dd if self.config.metric == "l2" else 1.0 - dd
            else:
                di = np.zeros(0, np.int64)
                ds = np.zeros(0, np.float64)
            li = np.fromiter((s for s, _ in lex[i]), np.int64, len(lex[i]))
            ls = np.fromiter((v for _, v in lex[i]), np.float64, len(lex[i]))
            yield query, (vecs[i] if d_ids is not None else None), di, ds, li, ls

    def _adaptive_weight(self, q: np.ndarray, ds: np.ndarray, ls: np.ndarray) -> float:
        """:func:`~llmds.retrieval.fusion.adaptive_weight` for one query whose two candidate
        lists are not empty; what depends on the index only is computed once per change."""
        if self._adaptive is None:
            m = self.mean_direction()
            n = len(self.lexical)
            self._adaptive = (m, collection_prior(m), math.log(1.0 + (n - 0.5) / 1.5))
        m, prior, unit = self._adaptive
        floor = None
        if self.config.metric == "cosine":
            qq = q.astype(np.float64)
            floor = float(qq @ m) / math.sqrt(float(qq @ qq))
        return adaptive_weight(ds, ls, prior, floor, unit)

    def _tmm(self, query: str, q: np.ndarray | None, di: np.ndarray, ds: np.ndarray,
             li: np.ndarray, ls: np.ndarray, w: float) -> tuple[np.ndarray, np.ndarray]:
        """Union of both candidate lists, every score filled in exactly, fused by TMM."""
        ids = np.union1d(di, li)
        lex = np.zeros(ids.shape[0], np.float64)
        if li.size:
            lex[np.searchsorted(ids, li)] = ls
            rest = np.setdiff1d(ids, li, assume_unique=True)
            if rest.size:
                lex[np.searchsorted(ids, rest)] = self.lexical.score_documents(query, rest.tolist())
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

    def side_scores(self, query: str, q: np.ndarray | None, doc_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """BM25 and dense similarity of each of ``doc_ids`` (present) for the query, exactly as
        the two sides score them before fusion; dense is NaN without a query vector ``q``."""
        slots = np.fromiter((self.doc_slot[d] for d in doc_ids), np.int64, len(doc_ids))
        lex = self.lexical.score_documents(query, slots.tolist()).astype(np.float64)
        dense = self._similarities(q, slots) if q is not None else np.full(slots.shape[0], np.nan)
        return lex, dense

    def _similarities(self, q: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Similarity (as the dense side ranks) of query ``q`` to documents at ``slots``;
        NaN for a document without a vector."""
        out = np.full(slots.shape[0], np.nan)
        has = np.fromiter((s in self.dense for s in slots.tolist()), np.bool_, slots.shape[0])
        if has.any():
            V = self.dense.get_vectors(slots[has].tolist()).astype(np.float64)
            qq = q.astype(np.float64)
            metric = self.config.metric
            if metric == "cosine":
                out[has] = V @ (qq / np.linalg.norm(qq))
            elif metric == "ip":
                out[has] = V @ qq
            else:
                out[has] = -np.sqrt(((V - qq) ** 2).sum(1))
        return out
