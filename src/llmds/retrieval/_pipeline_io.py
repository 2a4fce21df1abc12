"""One saved file for a :class:`~llmds.retrieval.pipeline.RetrievalPipeline` (its
:class:`~llmds.retrieval.hybrid.HybridIndex` and the embedder's name).

Written by :func:`llmds.retrieval._binfmt.write_atomic` (atomic, checksummed, no pickle),
magic ``LLMDSRAG``, format version ``VERSION``.  Arrays:

* ``lex/*``      the inverted index (:mod:`llmds.retrieval._index_io`), keyed by slot
* ``hnsw/*``     the HNSW graph (``HNSW.to_arrays``), labels = slots
* ``slots``      int64 [n] live slots, ascending; ``doc_ids`` int64 [n] their doc ids
* ``text_bytes`` / ``text_off``  UTF-8 texts of the live slots (``store_texts``)
* ``meta_bytes`` / ``meta_off``  JSON metadata of the live slots ("" = none)

Meta: the pipeline config, the tokenizer, the embedder name, ``n_slots``, the
index metas.  A file of another format version is refused by the container
(``CorruptFileError`` naming both versions); an embedder whose name differs
from the recorded one is refused with ``ValidationError``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import numpy as np

from llmds.errors import CorruptFileError, ValidationError
from llmds.retrieval._binfmt import read_checked, write_atomic
from llmds.retrieval.hnsw import HNSW
from llmds.retrieval.hybrid import HybridIndex
from llmds.retrieval.inverted_index import InvertedIndex

__all__ = ["MAGIC", "VERSION", "hybrid_from_arrays", "read_pipeline", "save_pipeline"]

log = logging.getLogger(__name__)

MAGIC = b"LLMDSRAG"
VERSION = 1


def _pack(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    enc = [s.encode("utf-8") for s in strings]
    off = np.zeros(len(enc) + 1, np.int64)
    np.cumsum([len(e) for e in enc], out=off[1:])
    return np.frombuffer(b"".join(enc), np.uint8).copy(), off


def _unpack(data: np.ndarray, off: np.ndarray, n: int, where: str) -> list[str]:
    if off.shape != (n + 1,) or off[0] != 0 or off[-1] != data.size or np.any(np.diff(off) < 0):
        raise CorruptFileError(f"{where}: inconsistent text offsets")
    raw = data.tobytes()
    o = off.tolist()
    try:
        return [raw[o[i]:o[i + 1]].decode("utf-8") for i in range(n)]
    except UnicodeDecodeError as exc:
        raise CorruptFileError(f"{where}: bad UTF-8 text: {exc}") from None


def save_pipeline(docs: HybridIndex, embedder_name: str | None, path: str | os.PathLike) -> None:
    """Write ``docs`` and the embedder's name (the caller holds the pipeline's lock)."""
    lex_arrays, lex_meta = docs.lexical.to_arrays()
    hnsw_arrays, hnsw_meta = docs.dense.to_arrays()
    slots = np.array(sorted(docs.doc_slot.values()), np.int64)
    arrays: dict[str, np.ndarray] = {f"lex/{k}": v for k, v in lex_arrays.items()}
    arrays.update({f"hnsw/{k}": v for k, v in hnsw_arrays.items()})
    arrays["slots"] = slots
    arrays["doc_ids"] = docs.slot_doc[slots]
    s = slots.tolist()
    arrays["text_bytes"], arrays["text_off"] = _pack([docs.texts.get(i, "") for i in s])
    arrays["meta_bytes"], arrays["meta_off"] = _pack(
        ["" if i not in docs.meta else json.dumps(docs.meta[i]) for i in s])
    meta = {
        "config": dataclasses.asdict(docs.config),
        "tokenizer": docs.lexical.tokenizer.config(),
        "embedder": embedder_name,
        "n_slots": docs.n_slots,
        "lex": lex_meta,
        "hnsw": hnsw_meta,
    }
    write_atomic(path, MAGIC, VERSION, arrays, meta)


def read_pipeline(path: str | os.PathLike,
                  embedder_name: str | None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(meta, arrays)`` of a saved pipeline; ``ValidationError`` when the embedder given
    (its name, None for none) is not the one the vectors came from."""
    where = os.fspath(path)
    _, arrays, meta = read_checked(path, MAGIC, (VERSION,))
    saved_name = meta.get("embedder")
    if embedder_name is not None and saved_name is not None and embedder_name != saved_name:
        raise ValidationError(
            f"{where} holds vectors from {saved_name!r}, but the embedder given is "
            f"{embedder_name!r}; load it with that model or rebuild the index")
    if embedder_name is None and saved_name is not None:
        log.warning("%s was built with %r; without an embedder, queries need explicit "
                    "embeddings or are answered lexically only", where, saved_name)
    return meta, arrays


def hybrid_from_arrays(docs: HybridIndex, arrays: dict[str, np.ndarray], meta: dict[str, Any],
                       where: str) -> HybridIndex:
    """Fill the fresh ``docs`` (made with the saved config and tokenizer) from a saved file's
    arrays, checking that the ids agree (``CorruptFileError``)."""
    try:
        lex = {k[4:]: v for k, v in arrays.items() if k.startswith("lex/")}
        graph = {k[5:]: v for k, v in arrays.items() if k.startswith("hnsw/")}
        lexical = InvertedIndex.from_arrays(lex, meta["lex"], where)
        dense = HNSW.from_arrays(graph, meta["hnsw"], where)
        slots, doc_ids = arrays["slots"].astype(np.int64), arrays["doc_ids"].astype(np.int64)
        n_slots = int(meta["n_slots"])
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CorruptFileError):
            raise
        raise CorruptFileError(f"{where}: inconsistent pipeline file: {exc}") from None
    n = slots.size
    s = slots.tolist()
    ok = (doc_ids.shape == (n,) and (n == 0 or (slots[0] >= 0 and slots[-1] < n_slots))
          and bool(np.all(np.diff(slots) > 0)) and np.unique(doc_ids).size == n
          and len(lexical) == n and all(i in lexical for i in s)  # the same slots
          and sum(i in dense for i in s) == len(dense))  # dense slots among them
    if not ok:
        raise CorruptFileError(f"{where}: ids of the pipeline and of its indexes disagree")
    texts = _unpack(arrays["text_bytes"], arrays["text_off"], n, where)
    metas = _unpack(arrays["meta_bytes"], arrays["meta_off"], n, where)
    docs.lexical, docs.dense = lexical, dense
    docs.slot_doc = np.zeros(max(1024, n_slots), np.int64)
    docs.slot_doc[slots] = doc_ids
    docs.n_slots = n_slots
    docs.doc_slot = dict(zip(doc_ids.tolist(), s))
    docs.recount_directions()
    if docs.config.store_texts:
        docs.texts = dict(zip(s, texts))
        try:
            docs.meta = {i: json.loads(m) for i, m in zip(s, metas) if m}
        except ValueError as exc:
            raise CorruptFileError(f"{where}: bad metadata JSON: {exc}") from None
    return docs
