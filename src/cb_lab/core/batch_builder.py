"""Ragged batch builder of cb_lab (defined in :mod:`llmds.engine.batch`)."""

from llmds.engine.batch import (
    RaggedBatch,
    TokenMeta,
    build_ragged_batch,
    pack_chunks,
    ragged_causal_mask,
)

__all__ = ["build_ragged_batch", "TokenMeta", "RaggedBatch", "pack_chunks", "ragged_causal_mask"]
