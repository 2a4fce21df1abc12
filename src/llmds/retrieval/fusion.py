"""Score fusion of a dense and a lexical candidate list (used by ``RetrievalPipeline``).

Inputs are per-side arrays already ranked best first: unique int64 ids and
larger-is-better float64 scores (the caller turns HNSW distances into
similarities).  ``weight`` is the **dense** share; ``1 - weight`` goes to the
lexical side.  Outputs are ``(ids ascending, scores)`` over the union of both
lists.

* :func:`tmm_fusion`: convex combination with *theoretical* min-max
  normalisation (Bruch, Gai & Ingber, "An Analysis of Fusion Functions for
  Hybrid Retrieval", TOIS 2023): each side is scaled by ``(s - lo) / (max -
  lo)`` where ``max`` is the side's best retrieved score and ``lo`` the score
  function's lower bound (0 for BM25, -1 for cosine), not the lowest retrieved
  score, so the scale does not depend on how deep each side retrieved.  The
  caller fills in the exact score of every union document on both sides (a
  document one side did not retrieve still has a BM25 score and a cosine), so
  a document's fused score is a function of the query and the document only.
* ``"adaptive"`` (the pipeline's default): :func:`tmm_fusion` with a dense share
  :func:`adaptive_weight` estimates for each query from the two candidate lists
  and one statistic of the index (below).
* :func:`weighted_fusion`: per-query min-max normalisation of each side to
  [0, 1] (all-equal or single scores map to 1.0: they are that side's best),
  then ``weight * dense + (1 - weight) * lexical``.
* :func:`rrf_fusion`: reciprocal-rank fusion ``2w / (k + rank_dense) +
  2(1 - w) / (k + rank_lexical)``, ranks from 1; ``w = 0.5`` is plain RRF
  (``sum 1 / (k + rank)``).

A side without candidates takes no part: the other side gets weight 1 (its own
normalised score, or ``1 / (k + rank)``), so a lexical-only query ranks exactly
as BM25 does whatever the weight.

The adaptive weight
-------------------
A fixed dense share cannot suit every collection: TMM with ``w = 0.9`` is right
on MS MARCO, and a third of BM25's nDCG@10 on Arabic passages embedded by an
English model (the dense side is nearly blind there).  The share of each query is

``w = w_c R_d / (w_c R_d + (1 - w_c) R_l)``,   ``w_c = 0.9 (1 - |m|^2)``

* ``w_c``, the collection's prior: ``0.9`` is the TMM share on a collection the
  embedder reads (chosen on MS MARCO, ``DEFAULT_WEIGHTS["tmm"]``), scaled by the
  *isotropy* of the document vectors, ``1 - |m|^2`` with ``m`` the mean of the
  unit document vectors (``|m|^2`` is the mean cosine of two random documents).
  An embedder that cannot read a collection's language maps all its documents
  close to one direction: ``|m|^2`` is 0.82 on the Arabic ARCD passages under
  English MiniLM, 0.03 on MS MARCO, 0.25 on business reports.  Anisotropy of
  embedding spaces: Ethayarajh (EMNLP 2019); the common mean direction carries
  no ranking information: Mu & Viswanath, "All-but-the-Top" (ICLR 2018).
* ``R_d``, ``R_l``, each side's reliability for this query, from its own
  candidates (the top ``QPP_DEPTH`` = 50, so it does not depend on ``top_k``),
  as a product of two query-performance predictors:

  - *commitment*, NQC (Shtok, Kurland, Carmel, Raiber & Markovits, "Predicting
    Query Performance by Query-Drift Estimation", TOIS 2012): the standard
    deviation of the side's top scores, here in units of "best score minus what
    a random document scores" (BM25: 0; cosine: ``q . m``, the query's mean
    cosine to the collection), so both sides are on one scale.  A side whose
    50th candidate scores nearly as well as its first has not singled anything out.
  - *match strength*, a max-score predictor (cf. WIG, Zhou & Croft, SIGIR 2007):
    dense ``(cos_1 - q . m) / (1 - q . m)``, the share of the way from a random
    document to a perfect match the best document goes; BM25
    ``min(1, s_1 / idf_1)``, the best score in units of one term that only one
    document has (``idf_1 = log(1 + (N - 0.5) / 1.5)``).

  Combining the side predictors into fusion weights follows QPP-weighted linear
  fusion (Markovits, Shtok, Kurland & Carmel, CIKM 2012): each side's prior odds
  scaled by its predicted quality.

``w`` is in [0, 1], a deterministic function of the two lists and the index (no
labels, nothing learned from queries served), and costs a few vector operations
(``benchmarks/retrieval/fusion.py`` measures it and how it was chosen among
other estimators).  For the ``"ip"`` and ``"l2"`` metrics, where similarities
are not cosines, the dense floor is the lowest of its top candidates and the
dense match strength is 1.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from llmds._checks import check_choice, check_float

__all__ = [
    "DEFAULT_WEIGHTS", "FUSIONS", "QPP_DEPTH", "adaptive_weight", "check_fusion", "check_weight",
    "collection_prior", "rrf_fusion", "tmm_fusion", "weighted_fusion",
]

FUSIONS = ("adaptive", "tmm", "weighted", "rrf")
# Dense share used when none is given, per fusion (measured: benchmarks/retrieval/fusion.py);
# None: estimated per query (adaptive_weight).  A weight given to "adaptive" fixes it: plain TMM.
DEFAULT_WEIGHTS: dict[str, float | None] = {"adaptive": None, "tmm": 0.9, "weighted": 0.7, "rrf": 0.5}
QPP_DEPTH = 50  # candidates per side the adaptive weight reads (the pipeline's least depth)


def check_weight(w: Any) -> float:
    """``w`` as a float in [0, 1] (bool, NaN and non-numbers rejected)."""
    return check_float("fusion_weight (the dense share)", w, 0.0, 1.0)


def check_fusion(f: Any) -> str:
    return check_choice("fusion", f, FUSIONS)


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    if hi > lo:
        return (x - lo) / (hi - lo)
    return np.ones_like(x)


def _side_weights(n_dense: int, n_lex: int, weight: float) -> tuple[float, float]:
    """(dense, lexical) weights; a side without candidates gives its weight away."""
    if not n_dense:
        return 0.0, 1.0
    if not n_lex:
        return 1.0, 0.0
    return weight, 1.0 - weight


def weighted_fusion(
    dense_ids: np.ndarray,
    dense_sim: np.ndarray,
    lex_ids: np.ndarray,
    lex_score: np.ndarray,
    weight: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Min-max normalised weighted sum over the union of both candidate lists.

    Returns
    -------
    (ids, scores) : (int64 [u], float64 [u])
        ``ids`` ascending (the union), ``scores`` aligned with them.
    """
    ids = np.union1d(dense_ids, lex_ids)
    scores = np.zeros(ids.shape[0], np.float64)
    wd, wl = _side_weights(dense_ids.size, lex_ids.size, weight)
    if dense_ids.size:
        scores[np.searchsorted(ids, dense_ids)] += wd * _minmax(dense_sim)
    if lex_ids.size:
        scores[np.searchsorted(ids, lex_ids)] += wl * _minmax(lex_score)
    return ids, scores


def tmm_fusion(
    ids: np.ndarray,
    dense_sim: np.ndarray,
    lex_score: np.ndarray,
    dense_max: float | None,
    lex_max: float | None,
    dense_low: float | None,
    weight: float,
) -> np.ndarray:
    """Theoretical-min-max convex combination over a union of documents with filled-in scores.

    ``ids`` int64 [u]; ``dense_sim`` float64 [u] (NaN: the document has no vector),
    ``lex_score`` float64 [u] (0: no query term); ``dense_max`` / ``lex_max`` the best
    score each side *retrieved* (None: that side retrieved nothing and takes no
    part); ``dense_low`` the similarity's lower bound (-1 for cosine; None: use the
    lowest similarity in the union).  Returns the fused scores [u].
    """
    wd, wl = _side_weights(int(dense_max is not None), int(lex_max is not None), weight)
    out = np.zeros(ids.shape[0], np.float64)
    if dense_max is not None:
        has = ~np.isnan(dense_sim)
        d = dense_sim[has]
        lo = float(d.min()) if dense_low is None else dense_low
        span = dense_max - lo
        out[has] += wd * ((d - lo) / span if span > 0 else np.ones_like(d))
    if lex_max is not None:
        out += wl * (lex_score / lex_max)
    return out


def rrf_fusion(
    dense_ids: np.ndarray, lex_ids: np.ndarray, weight: float, rrf_k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted reciprocal-rank fusion of two ranked id lists (best first).

    Returns
    -------
    (ids, scores) : (int64 [u], float64 [u])
        ``ids`` ascending (the union), ``scores`` aligned with them.
    """
    ids = np.union1d(dense_ids, lex_ids)
    scores = np.zeros(ids.shape[0], np.float64)
    wd, wl = _side_weights(dense_ids.size, lex_ids.size, weight)
    scale = 2.0 if dense_ids.size and lex_ids.size else 1.0  # w = 0.5 -> plain RRF
    for side, ws in ((dense_ids, wd), (lex_ids, wl)):
        if side.size:
            ranks = np.arange(1, side.size + 1, dtype=np.float64)
            scores[np.searchsorted(ids, side)] += scale * ws / (rrf_k + ranks)
    return ids, scores


def collection_prior(mean_dir: np.ndarray) -> float:
    """``0.9 * (1 - |m|^2)``: the dense share before looking at a query (module docstring);
    ``mean_dir`` is the mean of the unit document vectors."""
    iso = 1.0 - float(mean_dir @ mean_dir)
    return DEFAULT_WEIGHTS["tmm"] * min(1.0, max(0.0, iso))


def adaptive_weight(dense_sim: np.ndarray, lex_score: np.ndarray, prior: float,
                    dense_floor: float | None, lex_unit: float) -> float:
    """The dense share for one query (module docstring), in [0, 1].

    ``dense_sim`` float64: the dense candidates' similarities, best first (cosine:
    ``dense_floor`` is the query's mean cosine to the collection; None for other
    metrics: the floor is the lowest of the top candidates and the match
    strength 1); ``lex_score`` float64: BM25 candidate scores, best first, > 0;
    ``prior``: :func:`collection_prior`; ``lex_unit``: ``idf_1``.  A side with
    fewer than two candidates gives no reading: the prior is returned.
    """
    d = dense_sim[:QPP_DEPTH]
    lx = lex_score[:QPP_DEPTH]
    if d.shape[0] < 2 or lx.shape[0] < 2:
        return prior
    top = float(d[0])
    floor = float(d[-1]) if dense_floor is None else dense_floor
    span = top - floor
    if span <= 0.0:  # the best document is no closer than a random one
        return 0.0
    r_dense = prior * _std(d) / span
    if dense_floor is not None and span < 1.0 - dense_floor:  # else a perfect match: 1
        r_dense *= span / (1.0 - dense_floor)
    best = float(lx[0])
    r_lex = (1.0 - prior) * _std(lx) / best * min(1.0, best / lex_unit) if best > 0.0 else 0.0
    total = r_dense + r_lex
    return r_dense / total if total > 0.0 else prior


def _std(x: np.ndarray) -> float:
    """Population standard deviation (two dot products: cheaper than ``np.std`` at this size)."""
    n = x.shape[0]
    mean = float(x.sum()) / n
    return math.sqrt(max(0.0, float(x @ x) / n - mean * mean))
