"""Score fusion of a dense and a lexical candidate list (used by ``RetrievalPipeline``).

Inputs are per-side arrays already ranked best first: unique int64 ids and
larger-is-better float64 scores (the caller turns HNSW distances into
similarities).  ``weight`` is the **dense** share; ``1 - weight`` goes to the
lexical side.  Outputs are ``(ids ascending, scores)`` over the union of both
lists; a document found by one side only gets 0 from the other.

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

from numbers import Real
from typing import Any

import numpy as np

from llmds.errors import ValidationError

__all__ = ["FUSIONS", "weighted_fusion", "rrf_fusion", "check_weight", "check_fusion"]

FUSIONS = ("weighted", "rrf")


def check_weight(w: Any) -> float:
    """``w`` as a float in [0, 1] (bool, NaN and non-numbers rejected)."""
    if isinstance(w, bool) or not isinstance(w, Real) or not (0.0 <= float(w) <= 1.0):
        raise ValidationError(
            f"fusion_weight must be a number in [0, 1] (the dense share), got {w!r}"
        )
    return float(w)


def check_fusion(f: Any) -> str:
    if f not in FUSIONS:
        raise ValidationError(f"fusion must be one of {FUSIONS}, got {f!r}")
    return f


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
