"""Settings and input checks of :class:`~llmds.retrieval.pipeline.RetrievalPipeline`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmds._checks import check_bool, check_choice, check_int
from llmds.errors import ValidationError
from llmds.retrieval.fusion import DEFAULT_WEIGHTS, check_fusion, check_weight

__all__ = ["DEFAULT_FUSION", "DEFAULT_FUSION_WEIGHT", "Hit", "PipelineConfig", "check_metadata",
           "check_queries", "check_vector", "check_vectors"]

DEFAULT_FUSION = "adaptive"
DEFAULT_FUSION_WEIGHT = DEFAULT_WEIGHTS[DEFAULT_FUSION]  # None: estimated per query (fusion docstring)


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """Pipeline knobs, validated once.

    HNSW: ``M``, ``ef_construction``, ``ef_search``, ``seed``, ``metric``
    (``"cosine"`` | ``"ip"`` | ``"l2"``). BM25: ``k1``, ``b``. Fusion:
    ``fusion``, ``fusion_weight`` (dense share; ``None`` = the fusion's default, which
    for ``"adaptive"`` is estimated per query; a number fixes it),
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

    def weight(self, fusion: str) -> float | None:
        """The dense share used for ``fusion`` when a search passes none (None: per query)."""
        if self.fusion_weight is not None and fusion == self.fusion:
            return self.fusion_weight
        return DEFAULT_WEIGHTS[fusion]

    def choose(self, fusion: Any, fusion_weight: Any) -> tuple[str, float | None]:
        """A search's ``(fusion, dense share)`` from its arguments (None: the configured ones)."""
        fusion = self.fusion if fusion is None else check_fusion(fusion)
        return fusion, self.weight(fusion) if fusion_weight is None else check_weight(fusion_weight)

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


# ---------------------------------------------------------------- input checks
def check_vectors(cfg: PipelineConfig, vecs: Any, n: int, what: str) -> np.ndarray:
    """float32 C-contiguous [n, dim], finite, non-zero rows for cosine; else ValidationError."""
    try:
        x = np.ascontiguousarray(vecs, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{what} must be numeric: {exc}") from None
    dim = cfg.embedding_dim
    if x.shape != (n, dim):
        raise ValidationError(f"{what} must have shape ({n}, {dim}), got {x.shape}")
    # one float64 reduction: NaN/inf propagate, finite float32 rows cannot overflow it
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    if not np.isfinite(sq.sum()):
        raise ValidationError(f"{what} contains NaN or inf")
    if cfg.metric == "cosine" and n and not sq.all():
        raise ValidationError(f"{what} contains an all-zero vector; cosine needs a direction")
    return x

def check_queries(cfg: PipelineConfig, queries: Any, embeddings: Any,
                  what: str) -> tuple[list[str], np.ndarray | None]:
    """A list of query strings and their validated ``[n, dim]`` vectors (or None)."""
    if isinstance(queries, str):
        raise ValidationError(f"{what} takes a list of query strings; use search for one")
    queries = list(queries)
    for q in queries:
        if not isinstance(q, str):
            raise ValidationError(f"query must be str, got {type(q).__name__}")
    return queries, (None if embeddings is None
                     else check_vectors(cfg, embeddings, len(queries), "query_embeddings"))

def check_vector(cfg: PipelineConfig, vec: Any, what: str) -> np.ndarray:
    """One vector as a validated float32 [1, dim] matrix."""
    x = vec if isinstance(vec, np.ndarray) else np.asarray(vec)
    if x.ndim != 1:
        raise ValidationError(
            f"{what} must be a 1-D vector of length {cfg.embedding_dim}, got {x.shape}")
    return check_vectors(cfg, x[None, :], 1, what)

def check_metadata(metadatas: Any, n: int) -> list[dict[str, Any] | None]:
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
