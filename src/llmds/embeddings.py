"""Seed import path of :mod:`llmds.retrieval.embeddings`, where the module lives."""

from llmds.retrieval.embeddings import (  # noqa: F401
    EMBED_EXTRA_HINT, EmbedderAdapter, MINILM_DIM, MiniLMEmbedder, is_available,
)
