"""The search half of :class:`~llmds.retrieval_pipeline.RetrievalPipeline` (caller holds its lock).

Both sides retrieve ``config.candidates(top_k)`` candidates in one batched call
each (BM25 ``search_many``, HNSW ``search_batch``); each query's two lists are
then fused (:mod:`llmds.fusion`).  For ``"tmm"`` the union of both lists is
scored exactly on both sides first: the BM25 of documents only the dense side
found (``InvertedIndex.score_documents``, the same floats a search returns)
and the similarity of documents only BM25 found (stored HNSW vectors), NaN for
documents indexed without a vector.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from llmds.fusion import rrf_fusion, tmm_fusion, weighted_fusion

if TYPE_CHECKING:
    from llmds.retrieval_pipeline import RetrievalPipeline

__all__ = ["search_uncached"]


def search_uncached(p: RetrievalPipeline, queries: list[str], vecs: np.ndarray | None, top_k: int,
                     w: float, fusion: str) -> list[list[tuple[int, float]]]:
    cfg = p.config
    cand = cfg.candidates(top_k)
    lex = p._index.search_many(queries, cand) if len(p._index) else [[] for _ in queries]
    if vecs is not None and len(p._hnsw):
        d_ids, d_dist = p._hnsw.search_batch(vecs, cand)
    else:
        d_ids = d_dist = None
    results = []
    slot_doc = p._slot_doc
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
            ids, scores = _tmm(p, query, vecs[i] if d_ids is not None else None,
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



def _tmm(p: RetrievalPipeline, query: str, q: np.ndarray | None, di: np.ndarray, ds: np.ndarray,
         li: np.ndarray, ls: np.ndarray, w: float) -> tuple[np.ndarray, np.ndarray]:
    """Union of both candidate lists, every score filled in exactly, fused by TMM."""
    ids = np.union1d(di, li)
    lex = np.zeros(ids.shape[0], np.float64)
    if li.size:
        lex[np.searchsorted(ids, li)] = ls
        rest = np.setdiff1d(ids, li, assume_unique=True)
        if rest.size:
            lex[np.searchsorted(ids, rest)] = p._index.score_documents(query, rest.tolist())
    dense = np.full(ids.shape[0], np.nan)
    if di.size:
        dense[np.searchsorted(ids, di)] = ds
        rest = np.setdiff1d(ids, di, assume_unique=True)
        if rest.size:
            dense[np.searchsorted(ids, rest)] = _similarities(p, q, rest)
    low = -1.0 if p.config.metric == "cosine" else None
    scores = tmm_fusion(ids, dense, lex, float(ds.max()) if di.size else None,
                        float(ls.max()) if li.size else None, low, w)
    return ids, scores



def _similarities(p: RetrievalPipeline, q: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """Similarity (as the dense side ranks) of query ``q`` to documents at ``slots``;
    NaN for a document without a vector."""
    out = np.full(slots.shape[0], np.nan)
    has = np.fromiter((s in p._hnsw for s in slots.tolist()), np.bool_, slots.shape[0])
    if has.any():
        V = p._hnsw.get_vectors(slots[has].tolist()).astype(np.float64)
        qq = q.astype(np.float64)
        metric = p.config.metric
        if metric == "cosine":
            out[has] = V @ (qq / np.linalg.norm(qq))
        elif metric == "ip":
            out[has] = V @ qq
        else:
            out[has] = -np.sqrt(((V - qq) ** 2).sum(1))
    return out
