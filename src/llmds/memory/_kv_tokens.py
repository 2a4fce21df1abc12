"""Token sequences as the seed ``KVCache`` takes them: a list view, and the error for
unhashable tokens (prefix sharing hashes them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llmds.errors import ValidationError

__all__ = ["as_token_list", "unhashable"]


def as_token_list(tokens: Any, name: str) -> list:
    """A list view of a token sequence; a list passes through uncopied."""
    if type(tokens) is list:
        return tokens
    if isinstance(tokens, np.ndarray):
        if tokens.ndim != 1:
            raise ValidationError(f"{name} must be one-dimensional, got shape {tokens.shape}")
        return tokens.tolist()
    if isinstance(tokens, (str, bytes, bytearray)) or not isinstance(tokens, Sequence):
        raise ValidationError(
            f"{name} must be a list (or sequence) of tokens, got {type(tokens).__name__}"
        )
    return list(tokens)


def unhashable(exc: TypeError) -> ValidationError:
    return ValidationError(
        f"tokens must be hashable (e.g. int ids) when prefix sharing is enabled: {exc}; "
        "pass enable_prefix_sharing=False to store unhashable objects"
    )
