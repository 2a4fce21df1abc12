"""The arrays of an :class:`~llmds.retrieval.inverted_index.InvertedIndex`, at the level of
term ids and document slots (the index maps text to term ids and owns the API).

Documents get *slots* in insertion order; any int64 doc id maps to one.  An add
is queued as token ids; :meth:`IndexStore.flush` turns the queue into a segment
(:mod:`llmds.retrieval._segments`), merged geometrically with the youngest ones.
A remove (or replacing add) tombstones the slot and lowers the ``df`` of its
terms through a delta + varint forward index (each slot's sorted term ids);
slots are compacted once a quarter are dead.  ``df``, ``N`` and ``avgdl`` are
exact for the live documents at every moment.

Arrays (grown with slack, so single adds after a bulk add do not copy):

* per term id: ``df`` int64 (live documents containing it), ``term_key`` int64
  (stable key of its text, the kernels' tie-break)
* per slot: ``slot_doc`` int64 doc id, ``dl`` float32 indexed tokens, ``alive`` bool
* forward index: slot ``s``'s term ids are ``fwd[fwd_off[s]:fwd_off[s + 1]]`` (varint gaps)
* search scratch: ``acc`` float32, ``touched`` / ``scratch`` int32, sized to the slots
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np

from llmds.retrieval import _postings as K
from llmds.retrieval._bm25_kernels import IndexState, score_slots, search_batch
from llmds.retrieval._segments import Segments

__all__ = ["IndexStore"]

logger = logging.getLogger(__name__)


class IndexStore:
    """Slots, ``df``, the forward index and the segments of one BM25 index (``k1``, ``b``).

    Not thread-safe; the owner validates every argument.
    """

    def __init__(self, k1: float, b: float) -> None:
        self.k1, self.b = k1, b
        self.df = np.zeros(1024, np.int64)
        self.term_key = np.zeros(1024, np.int64)
        self.num_terms = 0
        self.slot_doc = np.zeros(16, np.int64)
        self.dl = np.zeros(16, np.float32)
        self.alive = np.zeros(16, np.bool_)
        self.n_slots = 0
        self.slot_of: dict[int, int] = {}  # doc id -> live slot
        self.total_len = 0  # sum of dl over live docs
        # Slots < flushed are in segments (and in the forward index); later ones queued.
        self.flushed = 0
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []  # (token ids int32, lengths int64)
        self.fwd_off = np.zeros(17, np.int64)
        self.fwd = np.zeros(1024, np.uint8)
        self.seg = Segments()
        self._acc = np.zeros(16, np.float32)
        self._touched = np.zeros(17, np.int32)
        self._scratch = np.zeros(16, np.int32)
        self._index_bytes: int | None = None  # cached stats()["index_bytes"]
        self._kk: tuple[np.float32, np.float32] | None = None  # cached norms()
        self._kstate: IndexState | None = None  # cached state(); None after arrays change

    def __len__(self) -> int:
        return len(self.slot_of)

    def __contains__(self, doc_id: int) -> bool:
        return doc_id in self.slot_of

    # ------------------------------------------------------------ changes
    def add_terms(self, keys: Sequence[int]) -> None:
        """Append term ids ``num_terms ..`` with their stable ``keys``."""
        old, V = self.num_terms, self.num_terms + len(keys)
        if V > self.df.size:
            self._kstate = None
            cap = max(V, 2 * self.df.size)
            for name in ("df", "term_key"):
                arr = np.zeros(cap, np.int64)
                arr[:old] = getattr(self, name)[:old]
                setattr(self, name, arr)
        self.term_key[old:V] = keys
        self.num_terms = V

    def add(self, ids: list[int], tokens: np.ndarray, lengths: np.ndarray, dl: np.ndarray) -> None:
        """Queue documents ``ids`` (distinct) with their token ids (-1 = stop word), per-document
        token counts and indexed lengths; a document with the same id is replaced."""
        n = len(ids)
        first = self.n_slots
        self._grow(first + n)
        self.slot_doc[first : first + n] = ids
        self.dl[first : first + n] = dl
        self.alive[first : first + n] = True
        for i, doc_id in enumerate(ids):
            old = self.slot_of.get(doc_id)
            if old is not None:
                self._kill(old)
            self.slot_of[doc_id] = first + i
        self.n_slots = first + n
        self.total_len += int(dl.sum())
        self.pending.append((tokens, lengths))
        self._index_bytes = self._kk = None

    def remove(self, doc_id: int) -> bool:
        """Remove a document; False if no document has this id."""
        slot = self.slot_of.pop(doc_id, None)
        if slot is None:
            return False
        self._kill(slot)
        self._index_bytes = self._kk = None
        return True

    def _kill(self, slot: int) -> None:
        """Tombstone ``slot``: not counted in N, avgdl or any df from now on."""
        self.alive[slot] = False
        self.total_len -= int(self.dl[slot])
        if slot < self.flushed:  # queued documents never reached df
            terms = K.forward_terms(self.fwd, self.fwd_off[slot], self.fwd_off[slot + 1])
            self.df[terms] -= 1
            self.seg.mark_dead(slot)

    def _grow(self, need: int) -> None:
        cap = self.slot_doc.size
        if need <= cap:
            return
        self._kstate = None
        cap = max(need + need // 8, 2 * cap)  # slack: single adds after a bulk add do not copy
        for name in ("slot_doc", "dl", "alive"):
            old = getattr(self, name)
            new = np.zeros(cap, old.dtype)
            new[: self.n_slots] = old[: self.n_slots]
            setattr(self, name, new)
        off = np.zeros(cap + 1, np.int64)
        off[: self.flushed + 1] = self.fwd_off[: self.flushed + 1]
        self.fwd_off = off

    # ------------------------------------------------------------ segments
    def norms(self) -> tuple[np.float32, np.float32]:
        """``(k1 (1 - b), k1 b / avgdl)`` as float32, the constants of every tf part."""
        if self._kk is None:
            n = len(self.slot_of)
            avgdl = self.total_len / n if n else 0.0
            kc = self.k1 * self.b / avgdl if avgdl > 0 else 0.0
            self._kk = (np.float32(self.k1 * (1.0 - self.b)), np.float32(kc))
        return self._kk

    def flush(self) -> None:
        """Turn queued documents into a segment (merging per policy); compact when due."""
        if self.pending:
            self._kstate = None  # segments and pools change
            t0 = time.perf_counter()
            lo, hi = self.flushed, self.n_slots
            if len(self.pending) == 1:
                tokens, lengths = self.pending[0]
            else:
                tokens = np.concatenate([p[0] for p in self.pending])
                lengths = np.concatenate([p[1] for p in self.pending])
            terms, ptr, slots, tfs, fwd_off, fwd = K.build_segment(
                tokens, lengths, self.alive[lo:hi], lo, self.num_terms
            )
            self.df[terms] += np.diff(ptr)
            end = int(self.fwd_off[lo])
            if end + fwd.size > self.fwd.size:
                need = end + fwd.size
                grown = np.zeros(max(need + need // 8, 2 * self.fwd.size), np.uint8)
                grown[:end] = self.fwd[:end]
                self.fwd = grown
            self.fwd[end : end + fwd.size] = fwd
            self.fwd_off[lo + 1 : hi + 1] = end + fwd_off[1:]
            self.pending = []
            self.flushed = hi
            if slots.size:
                ka, kc = self.norms()
                self.seg.append(terms, ptr, slots, tfs, lo, hi, self.dl, ka, kc)
                self.seg.merge_tail(self.alive, self.dl, ka, kc, self.num_terms)
            logger.debug("flushed %d docs (%d postings) in %.2f ms; %d segments",
                         hi - lo, slots.size, 1e3 * (time.perf_counter() - t0), len(self.seg))
        n = self.n_slots
        if (n - len(self.slot_of)) * 4 > n:
            self._compact()
        if self._acc.size < n:
            self._kstate = None
            cap = self.slot_doc.size
            self._acc = np.zeros(cap, np.float32)
            self._touched = np.zeros(cap + 1, np.int32)
            self._scratch = np.zeros(cap, np.int32)

    def _compact(self) -> None:
        """Renumber the live slots densely and merge every segment into one (no queue)."""
        self._kstate = None
        n, m = self.n_slots, len(self.slot_of)
        alive = self.alive[:n].copy()
        new_slot = np.where(alive, np.cumsum(alive, dtype=np.int32) - 1, -1).astype(np.int32)
        fwd_off, fwd = K.compact_forward(self.fwd_off[: n + 1], self.fwd, alive)
        self.slot_doc[:m] = self.slot_doc[:n][alive]
        self.dl[:m] = self.dl[:n][alive]
        self.dl[m:n] = 0
        self.alive[:m] = True
        self.alive[m:n] = False
        if len(self.seg):
            ka, kc = self.norms()  # N and avgdl do not change
            self.seg.merge(0, alive, self.dl, ka, kc, self.num_terms, new_slot)
        self.n_slots = self.flushed = m
        self.slot_of = dict(zip(self.slot_doc[:m].tolist(), range(m)))
        self.fwd_off[: m + 1] = fwd_off
        self.fwd_off[m + 1 :] = 0
        self.fwd = fwd if fwd.size else np.zeros(1024, np.uint8)
        logger.debug("compacted %d slots to %d", n, m)

    # ------------------------------------------------------------ searching (queue flushed)
    def search(self, bounds: list[int], terms: list[int], k: int, prune_min: int):
        """One numba call over queries ``terms[bounds[i]:bounds[i+1]]``: (docs, scores, counts)."""
        ka, kc = self.norms()
        return search_batch(np.array(bounds, np.int64), np.array(terms, np.int32),
                            float(len(self.slot_of)), ka, kc, k, prune_min, self._state())

    def score(self, terms: list[int], doc_ids: list[int]) -> np.ndarray:
        """BM25 (float32) of ``doc_ids`` for the query ``terms``; 0 for an unknown id."""
        get = self.slot_of.get
        targets = np.array([get(d, -1) for d in doc_ids], np.int64)
        ka, kc = self.norms()
        return score_slots(np.array(terms, np.int32), float(len(self.slot_of)), ka, kc, targets,
                           self._state())

    def _state(self) -> IndexState:
        """The kernels' view of every array (rebuilt after a change replaced one)."""
        if self._kstate is None:
            self._kstate = IndexState(self.df, self.term_key, *self.seg.args, self.dl, self.alive,
                                      self.slot_doc, self._acc, self._touched, self._scratch)
        return self._kstate

    def term_frequency(self, tid: int, doc_id: int) -> int:
        return self.seg.term_frequency(tid, self.slot_of[doc_id])

    def stats(self) -> dict:
        """The live-document statistics of ``InvertedIndex.stats`` (queue flushed)."""
        n, V = len(self.slot_of), self.num_terms
        if self._index_bytes is None:
            self._index_bytes = self.seg.encoded_size(self.alive[: self.n_slots], V)
        distinct = int(np.count_nonzero(self.df[:V]))
        arrays = (self.df, self.slot_doc, self.dl, self.alive, self.fwd_off, self.fwd,
                  self._acc, self._touched, self._scratch)
        return {
            "total_documents": n,
            "total_terms": distinct,
            "total_tokens": self.total_len,
            "total_postings": int(self.df[:V].sum()),
            "avg_doc_length": self.total_len / n if n else 0.0,
            "index_bytes": self._index_bytes,
            "vocabulary_size": distinct,
            "memory_bytes": int(sum(a.nbytes for a in arrays)) + self.seg.nbytes(),
            "num_segments": len(self.seg),
            "deleted_documents": self.seg.num_dead(),
        }

    # ------------------------------------------------------------ saved form
    def saved_arrays(self) -> dict[str, np.ndarray]:
        """``ptr`` (dense over the term ids), ``postings`` (delta + varint), ``slot_doc``,
        ``slot_len`` of the live documents (see :mod:`llmds.retrieval._index_io`).
        Compacts first, so the slots are 0..n-1 and there is one segment."""
        self.flush()
        if len(self.seg) > 1 or self.n_slots != len(self.slot_of):
            self._compact()
        n, V = self.n_slots, self.num_terms
        terms, sptr, slots, tfs = self.seg.single()
        ptr = np.zeros(V + 1, np.int64)
        ptr[terms.astype(np.int64) + 1] = np.diff(sptr)
        np.cumsum(ptr, out=ptr)
        return {"ptr": ptr, "postings": K.encode_postings(ptr, slots, tfs),  # already term-major
                "slot_doc": self.slot_doc[:n], "slot_len": self.dl[:n].astype(np.int32)}

    def restore(self, ptr: np.ndarray, slot_doc: np.ndarray, slot_len: np.ndarray,
                slots: np.ndarray, tfs: np.ndarray) -> None:
        """Fill this empty store (its terms already added) from checked saved arrays."""
        n, nterms = slot_doc.size, ptr.size - 1
        df = np.diff(ptr)
        self.df[:nterms] = df
        self._grow(n)
        self.slot_doc[:n] = slot_doc
        self.dl[:n] = slot_len
        self.alive[:n] = True
        self.n_slots = self.flushed = n
        self.slot_of = dict(zip(slot_doc.tolist(), range(n)))
        self.total_len = int(slot_len.sum())
        if 4 * slots.size >= nterms:  # dense segment, as build_segment makes for a large batch
            present, sptr = np.arange(nterms, dtype=np.int32), ptr.copy()
        else:
            present = np.flatnonzero(df).astype(np.int32)
            sptr = np.append(ptr[present], ptr[-1])
        fwd_off, fwd = K.forward_from_csc(present, sptr, slots, n)
        self.fwd_off[: n + 1] = fwd_off
        self.fwd = fwd if fwd.size else self.fwd
        if slots.size:
            ka, kc = self.norms()
            self.seg.append(present, sptr, slots, tfs, 0, n, self.dl, ka, kc)
        self.flush()  # sizes the scratch arrays
