"""One saved file for a :class:`~llmds.retrieval_pipeline.RetrievalPipeline`.

Written by :func:`llmds._binfmt.write_atomic` (atomic, checksummed, no pickle),
magic ``LLMDSRAG``, format version ``VERSION``.  Arrays:

* ``lex/*``      the inverted index (:mod:`llmds._index_io`), keyed by slot
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
from typing import TYPE_CHECKING, Any

import numpy as np

from llmds._binfmt import read_checked, write_atomic
from llmds.embeddings import EmbedderAdapter
from llmds.errors import CorruptFileError, ValidationError
from llmds.hnsw import HNSW
from llmds.inverted_index import InvertedIndex

if TYPE_CHECKING:
    from llmds.retrieval_pipeline import RetrievalPipeline

__all__ = ["MAGIC", "VERSION", "load_pipeline", "save_pipeline"]

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


def save_pipeline(p: RetrievalPipeline, path: str | os.PathLike) -> None:
    """Write ``p`` (caller holds its lock)."""
    lex_arrays, lex_meta = p._index.to_arrays()
    hnsw_arrays, hnsw_meta = p._hnsw.to_arrays()
    slots = np.array(sorted(p._doc_slot.values()), np.int64)
    arrays: dict[str, np.ndarray] = {f"lex/{k}": v for k, v in lex_arrays.items()}
    arrays.update({f"hnsw/{k}": v for k, v in hnsw_arrays.items()})
    arrays["slots"] = slots
    arrays["doc_ids"] = p._slot_doc[slots]
    s = slots.tolist()
    arrays["text_bytes"], arrays["text_off"] = _pack([p._texts.get(i, "") for i in s])
    arrays["meta_bytes"], arrays["meta_off"] = _pack(
        ["" if i not in p._meta else json.dumps(p._meta[i]) for i in s])
    meta = {
        "config": dataclasses.asdict(p.config),
        "tokenizer": p._index.tokenizer.config(),
        "embedder": p.embedder_name,
        "n_slots": p._n_slots,
        "lex": lex_meta,
        "hnsw": hnsw_meta,
    }
    write_atomic(path, MAGIC, VERSION, arrays, meta)


def load_pipeline(cls: type[RetrievalPipeline], path: str | os.PathLike,
                  embedder: Any) -> RetrievalPipeline:
    where = os.fspath(path)
    _, arrays, meta = read_checked(path, MAGIC, (VERSION,))
    saved_name = meta.get("embedder")
    adapter = EmbedderAdapter(embedder) if embedder is not None else None
    if adapter is not None and saved_name is not None and adapter.name != saved_name:
        raise ValidationError(
            f"{where} holds vectors from {saved_name!r}, but the embedder given is "
            f"{adapter.name!r}; load it with that model or rebuild the index")
    if adapter is None and saved_name is not None:
        log.warning("%s was built with %r; without an embedder, queries need explicit "
                    "embeddings or are answered lexically only", where, saved_name)
    try:
        from llmds.tokenizer import Tokenizer

        p = cls(embedder=embedder, tokenizer=Tokenizer.from_config(meta["tokenizer"]),
                embedder_name=saved_name, **meta["config"])
        lex = {k[4:]: v for k, v in arrays.items() if k.startswith("lex/")}
        graph = {k[5:]: v for k, v in arrays.items() if k.startswith("hnsw/")}
        p._index = InvertedIndex.from_arrays(lex, meta["lex"], where)
        p._hnsw = HNSW.from_arrays(graph, meta["hnsw"], where)
        slots, doc_ids = arrays["slots"].astype(np.int64), arrays["doc_ids"].astype(np.int64)
        n_slots = int(meta["n_slots"])
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CorruptFileError):
            raise
        raise CorruptFileError(f"{where}: inconsistent pipeline file: {exc}") from None
    n = slots.size
    ok = (doc_ids.shape == (n,) and (n == 0 or (slots[0] >= 0 and slots[-1] < n_slots))
          and bool(np.all(np.diff(slots) > 0)) and np.unique(doc_ids).size == n
          and len(p._index) == n and sorted(p._index._slot_of) == slots.tolist()
          and set(p._hnsw._ids) <= set(slots.tolist()))
    if not ok:
        raise CorruptFileError(f"{where}: ids of the pipeline and of its indexes disagree")
    texts = _unpack(arrays["text_bytes"], arrays["text_off"], n, where)
    metas = _unpack(arrays["meta_bytes"], arrays["meta_off"], n, where)
    p._slot_doc = np.zeros(max(1024, n_slots), np.int64)
    p._slot_doc[slots] = doc_ids
    p._n_slots = n_slots
    s = slots.tolist()
    p._doc_slot = dict(zip(doc_ids.tolist(), s))
    if p.config.store_texts:
        p._texts = dict(zip(s, texts))
        try:
            p._meta = {i: json.loads(m) for i, m in zip(s, metas) if m}
        except ValueError as exc:
            raise CorruptFileError(f"{where}: bad metadata JSON: {exc}") from None
    return p
