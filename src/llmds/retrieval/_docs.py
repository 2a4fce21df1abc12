"""Document ids and ``(doc_id, text)`` pairs: the one validator of InvertedIndex and RetrievalPipeline."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from llmds._checks import check_int
from llmds.errors import ValidationError

__all__ = ["check_doc_id", "split_doc_pairs"]

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


def check_doc_id(doc_id: Any) -> int:
    """``doc_id`` as a Python int in the int64 range; ``ValidationError`` otherwise."""
    return check_int("doc_id", doc_id, _I64_MIN, _I64_MAX)


def split_doc_pairs(
    documents: Iterable[tuple[int, str]], check_id: Callable[[Any], int] = check_doc_id
) -> tuple[list[int], list[str]]:
    """Validate ``(doc_id, text)`` pairs into ``(ids, texts)``; raises ``ValidationError``."""
    ids: list[int] = []
    texts: list[str] = []
    try:
        for doc_id, text in documents:
            ids.append(check_id(doc_id))
            if not isinstance(text, str):
                raise ValidationError(
                    f"text of doc {doc_id} must be str, got {type(text).__name__}"
                )
            texts.append(text)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ValidationError):
            raise
        raise ValidationError("documents must be an iterable of (doc_id, text) pairs") from exc
    return ids, texts
