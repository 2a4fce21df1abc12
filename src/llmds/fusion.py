"""Seed import path of :mod:`llmds.retrieval.fusion`, where the module lives."""

from llmds.retrieval.fusion import (  # noqa: F401
    DEFAULT_WEIGHTS, FUSIONS, QPP_DEPTH, adaptive_weight, check_fusion, check_weight,
    collection_prior, rrf_fusion, tmm_fusion, weighted_fusion,
)
