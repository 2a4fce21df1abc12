"""Seed import path of :mod:`llmds.retrieval.chunking`, where the module lives."""

from llmds.retrieval.chunking import (  # noqa: F401
    Chunk, chunk_folder, chunk_text, chunk_texts, read_folder,
)
