"""Score fusion of a dense and a lexical candidate list (used by ``RetrievalPipeline``).

Inputs are per-side arrays already ranked best first: unique int64 ids and
larger-is-better float64 scores (the caller turns HNSW distances into
similarities).  ``weight`` is the **dense** share; ``1 - weight`` goes to the
lexical side.  Outputs are ``(ids ascending, scores)`` over the union of both
lists.

* :func:`tmm_fusion` (the default): convex combination with *theoretical*
  min-max normalisation (Bruch, Gai & Ingber, "An Analysis of Fusion Functions
  for Hybrid Retrieval", TOIS 2023): each side is scaled by ``(s - lo) / (max -
  lo)`` where ``max`` is the side's best retrieved score and ``lo`` the score
  function's lower bound (0 for BM25, -1 for cosine), not the lowest retrieved
  score, so the scale does not depend on how deep each side retrieved.  The
  caller fills in the exact score of every union document on both sides (a
  document one side did not retrieve still has a BM25 score and a cosine), so
  a document's fused score is a function of the query and the document only.
* :func:`weighted_fusion`: per-query min-max normalisation of each side to
  [0, 1] (all-equal or single scores map to 1.0: they are that side's best),
  then ``weight * dense + (1 - weight) * lexical``.
* :func:`rrf_fusion`: reciprocal-rank fusion ``2w / (k + rank_dense) +
  2(1 - w) / (k + rank_lexical)``, ranks from 1; ``w = 0.5`` is plain RRF
  (``sum 1 / (k + rank)``).

A side without candidates takes no part: the other side gets weight 1 (its own
normalised score, or ``1 / (k + rank)``), so a lexical-only query ranks exactly
as BM25 does whatever the weight.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llmds._checks import check_choice, check_float

__all__ = [
    "DEFAULT_WEIGHTS", "FUSIONS", "check_fusion", "check_weight", "rrf_fusion", "tmm_fusion",
    "weighted_fusion",
]

FUSIONS = ("tmm", "weighted", "rrf")
# Dense share used when none is given, per fusion (measured: benchmarks/retrieval/fusion.py).
DEFAULT_WEIGHTS = {"tmm": 0.9, "weighted": 0.7, "rrf": 0.5}


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
