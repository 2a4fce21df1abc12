"""Seed import path of :mod:`llmds.retrieval.tokenizer`, where the module lives."""

from llmds.retrieval.tokenizer import ENGLISH_STOP_WORDS, Tokenizer  # noqa: F401
