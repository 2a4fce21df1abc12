"""Saved form of an :class:`~llmds.retrieval.inverted_index.InvertedIndex` (arrays + JSON meta).

Arrays (numeric only, written by :mod:`llmds.retrieval._binfmt`): ``ptr`` int64 [V + 1]
(dense over all term ids), ``postings`` uint8 (delta + varint, see
:mod:`llmds.retrieval._postings`), ``slot_doc`` int64 / ``slot_len`` int32 per live
document (slots 0..n-1 after compaction), ``term_bytes`` / ``term_offsets``
(the vocabulary in term-id order, UTF-8).  Meta: ``k1``, ``b``, ``tokenizer``,
``num_docs``, ``num_terms``.  :func:`read_arrays` checks every invariant and
raises ``CorruptFileError``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from llmds.errors import CorruptFileError
from llmds.retrieval import _postings as K

__all__ = ["SavedIndex", "encode_terms", "read_arrays"]


class SavedIndex(NamedTuple):
    """The checked content of a saved index: vocabulary, postings (decoded) and documents."""

    terms: list[str]
    ptr: np.ndarray  # int64 [V + 1]
    slot_doc: np.ndarray  # int64 [n]
    slot_len: np.ndarray  # int32 [n]
    slots: np.ndarray  # int32 [nnz], term-major
    tfs: np.ndarray  # int32 [nnz]


def encode_terms(terms: list[str]) -> dict[str, np.ndarray]:
    """``term_bytes`` (UTF-8, back to back) and ``term_offsets`` int64 [V + 1]."""
    encoded = [t.encode("utf-8") for t in terms]
    off = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(e) for e in encoded], out=off[1:])
    return {"term_bytes": np.frombuffer(b"".join(encoded), np.uint8), "term_offsets": off}


def read_arrays(arrays: dict[str, np.ndarray], where: str) -> SavedIndex:
    """The saved arrays, decoded and checked; ``CorruptFileError`` on any inconsistency."""
    try:
        ptr = arrays["ptr"].astype(np.int64, copy=False)
        slot_doc = arrays["slot_doc"].astype(np.int64, copy=False)
        slot_len = arrays["slot_len"].astype(np.int32, copy=False)
        term_bytes = arrays["term_bytes"].tobytes()
        off = arrays["term_offsets"].tolist()
        postings = arrays["postings"].astype(np.uint8, copy=False)
    except (KeyError, TypeError) as exc:
        raise CorruptFileError(f"{where}: inconsistent index file: {exc}") from exc
    n, nterms = slot_doc.size, len(off) - 1
    if ptr.ndim != 1 or ptr.size < 1 or ptr[-1] > postings.size // 2:
        raise CorruptFileError(f"{where}: inconsistent index file (posting count)")
    if (
        ptr.size != nterms + 1
        or slot_len.size != n
        or ptr[0] != 0
        or np.any(np.diff(ptr) < 0)
        or off[0] != 0
        or off[-1] != len(term_bytes)
        or np.any(slot_len < 0)
    ):
        raise CorruptFileError(f"{where}: inconsistent index file (array shapes or ranges)")
    try:
        terms = [term_bytes[off[i] : off[i + 1]].decode("utf-8") for i in range(nterms)]
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptFileError(f"{where}: bad vocabulary: {exc}") from exc
    slots, tfs, ok = K.decode_postings(postings, ptr, n)
    if not ok:
        raise CorruptFileError(f"{where}: postings do not decode; the file is corrupt")
    if len(set(slot_doc.tolist())) != n or len(set(terms)) != nterms:
        raise CorruptFileError(f"{where}: duplicate doc ids or terms")
    if not np.array_equal(
        np.bincount(slots, weights=tfs, minlength=n).astype(np.int64), slot_len
    ):
        raise CorruptFileError(f"{where}: postings disagree with document lengths")
    return SavedIndex(terms, ptr, slot_doc, slot_len, slots, tfs)
