"""Seed import path of :mod:`llmds.retrieval.inverted_index`, where the module lives."""

from llmds.retrieval.inverted_index import InvertedIndex  # noqa: F401
