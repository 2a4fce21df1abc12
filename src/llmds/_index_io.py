"""Saved form of an :class:`~llmds.inverted_index.InvertedIndex` (arrays + JSON meta).

Arrays (numeric only, written by :mod:`llmds._binfmt`): ``ptr`` int64 [V + 1]
(dense over all term ids), ``postings`` uint8 (delta + varint, see
:mod:`llmds._postings`), ``slot_doc`` int64 / ``slot_len`` int32 per live
document (slots 0..n-1 after compaction), ``term_bytes`` / ``term_offsets``
(the vocabulary in term-id order, UTF-8).  Meta: ``k1``, ``b``, ``tokenizer``.
Loading checks every invariant and raises ``CorruptFileError``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from llmds import _postings as K
from llmds.errors import CorruptFileError, ValidationError
from llmds.tokenizer import Tokenizer

if TYPE_CHECKING:
    from llmds.inverted_index import InvertedIndex

__all__ = ["index_from_arrays", "index_to_arrays"]


def index_to_arrays(self: InvertedIndex) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The saved form ``(arrays, meta)``: live documents, postings (delta + varint),
    vocabulary, k1, b and the tokenizer.  Compacts the index first (one segment)."""
    self._flush()
    if len(self._seg) > 1 or self._n_slots != len(self._slot_of):
        self._compact()
    n, V = self._n_slots, len(self._terms)
    terms, sptr, slots, tfs = self._seg.single()
    ptr = np.zeros(V + 1, np.int64)
    ptr[terms.astype(np.int64) + 1] = np.diff(sptr)
    np.cumsum(ptr, out=ptr)
    encoded = [t.encode("utf-8") for t in self._terms]
    term_off = np.zeros(V + 1, np.int64)
    np.cumsum([len(e) for e in encoded], out=term_off[1:])
    arrays = {
        "ptr": ptr,
        "postings": K.encode_postings(ptr, slots, tfs),  # one segment: already term-major
        "slot_doc": self._slot_doc[:n],
        "slot_len": self._dl[:n].astype(np.int32),
        "term_bytes": np.frombuffer(b"".join(encoded), np.uint8),
        "term_offsets": term_off,
    }
    meta = {"k1": self.k1, "b": self.b, "tokenizer": self.tokenizer.config(),
            "num_docs": n, "num_terms": V}
    return arrays, meta


def index_from_arrays(cls: type[InvertedIndex], arrays: dict[str, np.ndarray],
                      meta: dict[str, Any], where: str = "index") -> InvertedIndex:
    """Inverse of :meth:`to_arrays`, checking every invariant (``CorruptFileError``)."""
    try:
        tok = Tokenizer.from_config(meta["tokenizer"])
        idx = cls(tok, k1=meta["k1"], b=meta["b"])
        ptr = arrays["ptr"].astype(np.int64, copy=False)
        slot_doc = arrays["slot_doc"].astype(np.int64, copy=False)
        slot_len = arrays["slot_len"].astype(np.int32, copy=False)
        term_bytes = arrays["term_bytes"].tobytes()
        off = arrays["term_offsets"].tolist()
        postings = arrays["postings"].astype(np.uint8, copy=False)
    except (KeyError, TypeError, ValidationError) as exc:
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
    doc_list = slot_doc.tolist()
    if len(set(doc_list)) != n or len(set(terms)) != nterms:
        raise CorruptFileError(f"{where}: duplicate doc ids or terms")
    if not np.array_equal(
        np.bincount(slots, weights=tfs, minlength=n).astype(np.int64), slot_len
    ):
        raise CorruptFileError(f"{where}: postings disagree with document lengths")
    idx._terms.extend(terms)
    idx._term2id.update(zip(terms, range(nterms)))
    idx._add_term_keys()
    df = np.diff(ptr)
    idx._df[:nterms] = df
    idx._grow(n)
    idx._slot_doc[:n] = slot_doc
    idx._dl[:n] = slot_len
    idx._alive[:n] = True
    idx._n_slots = idx._flushed = n
    idx._slot_of = dict(zip(doc_list, range(n)))
    idx._total_len = int(slot_len.sum())
    if 4 * slots.size >= nterms:  # dense segment, as build_segment makes for a large batch
        present, sptr = np.arange(nterms, dtype=np.int32), ptr.copy()
    else:
        present = np.flatnonzero(df).astype(np.int32)
        sptr = np.append(ptr[present], ptr[-1])
    fwd_off, fwd = K.forward_from_csc(present, sptr, slots, n)
    idx._fwd_off[: n + 1] = fwd_off
    idx._fwd = fwd if fwd.size else idx._fwd
    if slots.size:
        ka, kc = idx._norms()
        idx._seg.append(present, sptr, slots, tfs, 0, n, idx._dl, ka, kc)
    idx._flush()  # sizes the scratch arrays
    return idx
