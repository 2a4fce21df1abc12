"""The posting segments of an :class:`~llmds.retrieval.inverted_index.InvertedIndex`.

Segments hold ascending, disjoint ranges of document slots, oldest first.  All
of them live in shared pools, so one numba call searches every segment:

* term pool   ``terms`` int32, ``stamp`` / ``seen`` float64, ``ub0`` float32 (per term of a
  segment; see :func:`llmds.retrieval._bm25_kernels.search_batch`)
* ptr pool    int64, ``nt + 1`` entries per segment, absolute positions in the postings pools
* postings    ``slots`` / ``tfs`` int32, ``f`` float32 (the materialised BM25 tf parts)

Segment ``j`` owns ``terms[toff[j]:toff[j] + nt[j]]``, ``ptr[pofs[j]:pofs[j] + nt[j] + 1]``
and postings ``ptr[pofs[j]] .. ptr[pofs[j] + nt[j]]``.  Every pool is a stack in
segment order, because a merge only ever replaces the *youngest* segments
(log-structured, as Lucene's and tantivy's tiered merges): merging segments
``j0..`` truncates every pool at segment ``j0``'s offsets and appends the result.

Segments store each posting's BM25 tf part ``tf / (tf + k1 (1 - b) + k1 b dl /
avgdl)`` (float32) as materialised for some avgdl, and the idf (``N``, ``df``)
is applied per query term, so a change elsewhere never forces a segment to be
rewritten: when avgdl has moved, a posting list is scored on the fly and
re-materialised on its second use under the same statistics.

Merge policy: after a new segment is appended, the youngest run of segments is
merged while the one before it holds at most ``merge_ratio`` times the postings
of the run (default 2).  Segment sizes then fall geometrically from old to
young, a posting is copied O(log n) times over its life, and the number of
segments stays O(log n).  Dead postings (removed or replaced documents) stay
until their segment is merged; :meth:`compact` renumbers the slots densely and
merges everything into one segment.
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np

from llmds.retrieval import _postings as K

__all__ = ["Segments"]

_POOLS = {  # pool name -> dtype
    "terms": np.int32, "stamp": np.float64, "seen": np.float64, "ub0": np.float32,
    "ptr": np.int64, "slots": np.int32, "tfs": np.int32, "f": np.float32,
}


class Segments:
    """Segments and their pools; see the module docstring for the layout."""

    __slots__ = ("lo", "hi", "toff", "pofs", "nt", "dead", "args", "merge_ratio",
                 *(f"_{p}" for p in _POOLS))

    def __init__(self, merge_ratio: float = 2) -> None:
        self.merge_ratio = merge_ratio
        for name, dt in _POOLS.items():
            setattr(self, f"_{name}", np.zeros(16, dt))
        # per segment (Python lists; a handful of entries)
        self.lo: list[int] = []  # first slot
        self.hi: list[int] = []  # one past the last slot
        self.toff: list[int] = []
        self.pofs: list[int] = []
        self.nt: list[int] = []
        self.dead: list[int] = []  # dead slots whose postings are still in the segment
        self._refresh()

    # ------------------------------------------------------------ sizes
    def __len__(self) -> int:
        return len(self.lo)

    def _end(self) -> tuple[int, int, int]:
        """Used lengths of the term pool, the ptr pool and the postings pools."""
        if not self.lo:
            return 0, 0, 0
        j = len(self.lo) - 1
        return self.toff[j] + self.nt[j], self.pofs[j] + self.nt[j] + 1, self.postings_end(j)

    def postings_end(self, j: int) -> int:
        return int(self._ptr[self.pofs[j] + self.nt[j]])

    def postings_start(self, j: int) -> int:
        return int(self._ptr[self.pofs[j]])

    def num_postings(self, j: int | None = None) -> int:
        """Postings (dead ones included) of segment ``j``, or of all segments."""
        if j is None:
            return self._end()[2]
        return self.postings_end(j) - self.postings_start(j)

    def nbytes(self) -> int:
        return int(sum(getattr(self, f"_{p}").nbytes for p in _POOLS))

    def _reserve(self, name: str, need: int, keep: int) -> None:
        arr = getattr(self, f"_{name}")
        if need > arr.size:  # 1/8 slack: single adds after a bulk build do not copy the pools
            new = np.zeros(max(need + need // 8, 2 * arr.size), arr.dtype)
            new[:keep] = arr[:keep]
            setattr(self, f"_{name}", new)

    def _refresh(self) -> None:
        """The kernel arguments (after any change of segments or pools)."""
        seg = np.array([self.lo, self.hi, self.toff, self.pofs, self.nt], np.int64).reshape(5, -1)
        self.args = (seg, self._terms, self._ptr, self._stamp, self._seen, self._ub0,
                     self._slots, self._tfs, self._f)

    # ------------------------------------------------------------ changes
    def append(self, terms: np.ndarray, ptr: np.ndarray, slots: np.ndarray, tfs: np.ndarray,
               lo: int, hi: int, dl: np.ndarray, ka: np.float32, kc: np.float32) -> None:
        """Add the youngest segment (``ptr`` from 0) and materialise its tf parts at ``kc``."""
        t_end, p_end, n_end = self._end()
        nt, nnz = terms.size, slots.size
        for name, need, keep in (("terms", t_end + nt, t_end), ("stamp", t_end + nt, t_end),
                                 ("seen", t_end + nt, t_end), ("ub0", t_end + nt, t_end),
                                 ("ptr", p_end + nt + 1, p_end), ("slots", n_end + nnz, n_end),
                                 ("tfs", n_end + nnz, n_end), ("f", n_end + nnz, n_end)):
            self._reserve(name, need, keep)
        self._terms[t_end:t_end + nt] = terms
        self._ptr[p_end:p_end + nt + 1] = ptr + n_end
        self._slots[n_end:n_end + nnz] = slots
        self._tfs[n_end:n_end + nnz] = tfs
        K.materialize_all(self._ptr[p_end:p_end + nt + 1], self._slots, self._tfs, dl, ka, kc,
                          self._f, self._ub0[t_end:t_end + nt])
        self._stamp[t_end:t_end + nt] = kc
        self._seen[t_end:t_end + nt] = np.nan
        for lst, v in ((self.lo, lo), (self.hi, hi), (self.toff, t_end), (self.pofs, p_end),
                       (self.nt, nt), (self.dead, 0)):
            lst.append(v)
        self._refresh()

    def _pop_from(self, j0: int) -> None:
        for lst in (self.lo, self.hi, self.toff, self.pofs, self.nt, self.dead):
            del lst[j0:]

    def merge_tail(self, alive: np.ndarray, dl: np.ndarray, ka: np.float32,
                   kc: np.float32, vocab: int) -> None:
        """Apply the merge policy after an append (see the module docstring)."""
        j0 = len(self.lo) - 1
        if j0 < 1:
            return
        size = self.num_postings(j0)
        while j0 > 0 and self.num_postings(j0 - 1) <= self.merge_ratio * size:
            j0 -= 1
            size += self.num_postings(j0)
        if j0 < len(self.lo) - 1:
            self.merge(j0, alive, dl, ka, kc, vocab)

    def merge(self, j0: int, alive: np.ndarray, dl: np.ndarray, ka: np.float32,
              kc: np.float32, vocab: int, new_slot: np.ndarray | None = None) -> None:
        """Merge segments ``j0..`` into one (renumbering slots through ``new_slot`` if given).
        The result is dense over the ``vocab`` term ids when it holds at least vocab / 4
        postings, as ``build_segment`` decides for a batch."""
        sel = slice(j0, None)
        lo, hi = self.lo[j0], self.hi[-1]
        renum = np.zeros(0, np.int32) if new_slot is None else new_slot
        total = self.num_postings() - self.postings_start(j0)
        terms, ptr, slots, tfs = K.merge_segments(
            self._terms, self._ptr, *(np.array(x[sel], np.int64) for x in (self.toff, self.pofs, self.nt)),
            self._slots, self._tfs, alive, renum, vocab if 4 * total >= vocab else 0)
        self._pop_from(j0)
        if new_slot is not None:
            lo, hi = 0, int(alive.sum())
        if slots.size:
            self.append(terms, ptr, slots, tfs, lo, hi, dl, ka, kc)
        else:
            self._refresh()

    def mark_dead(self, slot: int) -> None:
        """Count a dead slot against its segment (a slot in no segment is ignored)."""
        j = bisect.bisect_right(self.lo, slot) - 1
        if j >= 0 and slot < self.hi[j]:
            self.dead[j] += 1

    def num_dead(self) -> int:
        return sum(self.dead)

    # ------------------------------------------------------------ lookups
    def term_frequency(self, tid: int, slot: int) -> int:
        """tf of term ``tid`` in the document at ``slot`` (0 if absent)."""
        j = bisect.bisect_right(self.lo, slot) - 1
        if j < 0 or slot >= self.hi[j]:
            return 0
        terms = self._terms[self.toff[j]:self.toff[j] + self.nt[j]]
        i = int(np.searchsorted(terms, tid))
        if i == terms.size or terms[i] != tid:
            return 0
        a, b = int(self._ptr[self.pofs[j] + i]), int(self._ptr[self.pofs[j] + i + 1])
        pos = a + int(np.searchsorted(self._slots[a:b], slot))
        return int(self._tfs[pos]) if pos < b and self._slots[pos] == slot else 0

    def encoded_size(self, alive: np.ndarray, vocab_size: int) -> int:
        """Bytes of the saved (delta + varint) postings of the live documents."""
        seg = self.args[0]
        return int(K.encoded_size(self._terms, self._ptr, seg[2], seg[3], seg[4], self._slots,
                                  self._tfs, alive, vocab_size))

    def single(self) -> tuple[Any, ...]:
        """``(terms, ptr from 0, slots, tfs)`` of the only segment (empty arrays if none)."""
        if not self.lo:
            return (np.zeros(0, np.int32), np.zeros(1, np.int64), np.zeros(0, np.int32),
                    np.zeros(0, np.int32))
        assert len(self.lo) == 1, "compact first"
        nt, n = self.nt[0], self.postings_end(0)
        return (self._terms[:nt].copy(), self._ptr[:nt + 1].copy(), self._slots[:n].copy(),
                self._tfs[:n].copy())
