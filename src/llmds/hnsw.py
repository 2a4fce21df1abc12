"""Seed import path of :mod:`llmds.retrieval.hnsw`, where the module lives."""

from llmds.retrieval.hnsw import HNSW, HNSWConfig  # noqa: F401
