"""Seed import path of :mod:`llmds.retrieval.pipeline`, where the module lives."""

from llmds.retrieval.pipeline import (  # noqa: F401
    DEFAULT_FUSION, DEFAULT_FUSION_WEIGHT, FUSIONS, Hit, PipelineConfig, RetrievalPipeline,
    rrf_fusion, tmm_fusion, weighted_fusion,
)
