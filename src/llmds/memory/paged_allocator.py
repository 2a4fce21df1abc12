"""Paged block allocator: the one block pool every KV structure allocates from.

Pages are integers ``0 .. max_pages-1``; a page is free when its reference
count is 0.  Free pages sit on an intrusive doubly linked list kept in two
Python lists (``_next``/``_prev``), so ``alloc``, ``free`` and taking a page
out of the middle of the list are all O(1) per page.

Free-list order is the eviction order of cached pages:

* ``alloc`` pops from the head;
* a freed page that some owner marked *cached* (its content can be reused,
  e.g. a full prefix block) goes to the tail, so cached pages are reclaimed
  least-recently-freed first (LRU);
* a freed page nobody cares about goes to the head, so it is reused before any
  cached page is evicted.  Pages freed together are pushed so that they come
  back in ascending order, which keeps fresh allocations contiguous.

When ``alloc`` reclaims a cached page it clears the mark and calls
``on_reclaim(page_id)`` so the owner can drop the page from its index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from llmds._checks import check_int
from llmds.errors import CapacityError, StateError
from llmds.memory._runs import first_run, longest_run

__all__ = ["PageStats", "PagedAllocator"]

_NIL = -1


@dataclass(frozen=True, slots=True)
class PageStats:
    """Allocation statistics (a snapshot)."""

    total_pages: int
    allocated_pages: int
    free_pages: int
    fragmentation_ratio: float  # 1 - largest free run / free pages; 0 when nothing is free
    allocation_count: int  # pages handed out by alloc/alloc_contiguous/take, cumulative
    free_count: int  # pages returned to the free list, cumulative
    largest_free_run: int
    shared_pages: int  # pages with refcount > 1
    total_refs: int  # sum of refcounts
    cached_free_pages: int  # free pages still holding reusable (cached) content


class PagedAllocator:
    """Fixed pool of ``max_pages`` pages of ``page_size`` tokens each.

    Parameters
    ----------
    page_size : int
        Tokens per page (> 0).  The allocator only records it for its owners.
    max_pages : int
        Number of pages in the pool (> 0).
    on_reclaim : callable, optional
        Called with a page id when ``alloc`` reuses a free page that was
        marked cached (see :meth:`mark_cached`).
    """

    __slots__ = ("page_size", "max_pages", "on_reclaim", "_ref", "_next", "_prev", "_cached", "_head",
                 "_tail", "_num_free", "_num_cached_free", "_total_refs", "_num_shared", "_alloc_count",
                 "_free_count")

    def __init__(
        self,
        page_size: int,
        max_pages: int,
        on_reclaim: Callable[[int], None] | None = None,
    ) -> None:
        page_size = check_int("page_size", page_size, 1)
        max_pages = check_int("max_pages", max_pages, 1)
        self.page_size = page_size
        self.max_pages = max_pages
        self.on_reclaim = on_reclaim
        self._ref = [0] * max_pages
        self._cached = bytearray(max_pages)
        self._num_shared = 0
        self._total_refs = 0
        self._alloc_count = 0
        self._free_count = 0
        self._reset_free_list(range(max_pages))

    # ------------------------------------------------------------------ queries
    @property
    def num_free(self) -> int:
        """Pages on the free list (cached ones included: they are reclaimable)."""
        return self._num_free

    @property
    def num_allocated(self) -> int:
        return self.max_pages - self._num_free

    def refcount(self, page_id: int) -> int:
        self._check_id(page_id)
        return self._ref[page_id]

    def is_free(self, page_id: int) -> bool:
        self._check_id(page_id)
        return self._ref[page_id] == 0

    def is_cached(self, page_id: int) -> bool:
        self._check_id(page_id)
        return bool(self._cached[page_id])

    @property
    def num_cached_free(self) -> int:
        """Free pages that still hold reusable (cached) content."""
        return self._num_cached_free

    def free_mask(self) -> np.ndarray:
        """Boolean ``[max_pages]`` array, True where the page is free.  O(max_pages), vectorized."""
        return np.asarray(self._ref, dtype=np.int64) == 0

    def refcounts(self) -> np.ndarray:
        """Int32 ``[max_pages]`` array of every page's reference count (a copy).  O(max_pages)."""
        return np.asarray(self._ref, dtype=np.int32)

    def cached_mask(self) -> np.ndarray:
        """Boolean ``[max_pages]`` array, True where the page is marked cached."""
        return np.frombuffer(bytes(self._cached), dtype=np.uint8).astype(bool)

    def free_pages(self) -> list[int]:
        """Free page ids in free-list order (head first: the next to be allocated)."""
        out, p, nxt = [], self._head, self._next
        while p != _NIL:
            out.append(p)
            p = nxt[p]
        return out

    # --------------------------------------------------------------- allocation
    def can_alloc(self, num_pages: int) -> bool:
        return 0 <= num_pages <= self._num_free

    def alloc(self, num_pages: int) -> list[int]:
        """Allocate ``num_pages`` pages with refcount 1.

        Raises ``CapacityError`` (allocating nothing) when fewer are free.
        """
        n = check_int("num_pages", num_pages, 0)
        if n > self._num_free:
            raise CapacityError(
                f"cannot allocate {n} pages: only {self._num_free} of {self.max_pages} are free"
            )
        out = []
        ref, nxt, cached = self._ref, self._next, self._cached
        p = self._head
        for _ in range(n):
            out.append(p)
            ref[p] = 1
            p = nxt[p]
        # detach the popped run [head .. last] in one go
        self._head = p
        if p == _NIL:
            self._tail = _NIL
        else:
            self._prev[p] = _NIL
        self._num_free -= n
        self._total_refs += n
        self._alloc_count += n
        if self._num_cached_free:
            for q in out:
                if cached[q]:
                    self._reclaim(q)
        return out

    def alloc_contiguous(self, num_pages: int) -> list[int] | None:
        """Allocate a run of consecutive page ids (first fit, lowest address).

        Returns ``None`` when no free run is long enough (nothing allocated);
        raises ``CapacityError`` when fewer than ``num_pages`` are free at all.
        O(max_pages) (a vectorized scan).
        """
        n = check_int("num_pages", num_pages, 0)
        if n == 0:
            return []
        if n > self._num_free:
            raise CapacityError(
                f"cannot allocate {n} pages: only {self._num_free} of {self.max_pages} are free"
            )
        start = first_run(np.asarray(self._ref, dtype=np.int64) == 0, n)
        if start < 0:
            return None
        out = list(range(start, start + n))
        for p in out:
            self._unlink(p)
            self._ref[p] = 1
            if self._cached[p]:
                self._reclaim(p)
        self._total_refs += n
        self._alloc_count += n
        return out

    def take(self, page_id: int) -> None:
        """Take one specific free page (refcount 0 → 1) without reclaiming it.

        Used by an owner that finds reusable content in a free cached page
        (a prefix-cache hit): the page leaves the free list, its cached mark
        and content stay.
        """
        self._check_id(page_id)
        if self._ref[page_id] != 0:
            raise StateError(f"page {page_id} is not free (refcount {self._ref[page_id]})")
        self._unlink(page_id)
        self._ref[page_id] = 1
        if self._cached[page_id]:
            self._num_cached_free -= 1
        self._total_refs += 1
        self._alloc_count += 1

    def try_take(self, page_id: int) -> bool:
        """Take ``page_id`` (refcount 0 → 1) if it is in the pool, free and not cached; O(1).

        For owners that grow a run of pages in place: False (nothing changed)
        for an allocated, cached or out-of-range page.
        """
        if not 0 <= page_id < self.max_pages or self._ref[page_id] or self._cached[page_id]:
            return False
        self._unlink(page_id)
        self._ref[page_id] = 1
        self._total_refs += 1
        self._alloc_count += 1
        return True

    def head_run(self, limit: int) -> int:
        """Length (at most ``limit``) of the run of consecutive, uncached page ids at the
        head of the free list: ``alloc(k)`` for ``k`` up to it returns one ascending run.
        O(limit)."""
        p, nxt, cached = self._head, self._next, self._cached
        n = 0
        while p != _NIL and n < limit and not cached[p]:
            n += 1
            q = nxt[p]
            if q != p + 1:
                break
            p = q
        return n

    # ------------------------------------------------------------ ref counting
    def incref(self, page_ids: Iterable[int]) -> None:
        """Add one reference to each allocated page (a page may repeat)."""
        ids = list(page_ids)
        for p in ids:
            self._check_id(p)
            if self._ref[p] == 0:
                raise StateError(f"page {p} is free; allocate or take() it before sharing")
        ref = self._ref
        for p in ids:
            ref[p] += 1
            if ref[p] == 2:
                self._num_shared += 1
        self._total_refs += len(ids)

    def free(self, page_ids: Iterable[int]) -> None:
        """Drop one reference to each page; a page reaching 0 returns to the free list.

        Validates every id first and changes nothing on error: a foreign id
        raises ``ValidationError``, freeing a page more times than it is
        referenced raises ``StateError`` (double free).
        """
        ids = page_ids if type(page_ids) is list else list(page_ids)
        if not ids:
            return
        ref = self._ref
        # common case checked with C-level built-ins: distinct plain ints in range, all live
        if not (
            all(type(p) is int for p in ids)
            and min(ids) >= 0
            and max(ids) < self.max_pages
            and len(set(ids)) == len(ids)
            and min(map(ref.__getitem__, ids)) > 0
        ):
            self._validate_free(ids)
        released = []
        for p in ids:
            r = ref[p] - 1
            ref[p] = r
            if r == 1:
                self._num_shared -= 1
            elif r == 0:
                released.append(p)
        self._total_refs -= len(ids)
        if released:
            self._release(released)

    def _validate_free(self, ids: list) -> None:
        ref = self._ref
        seen: dict[int, int] = {}
        for p in ids:
            self._check_id(p)
            c = seen.get(p, 0) + 1
            if c > ref[p]:
                raise StateError(
                    f"double free of page {p}: refcount is {ref[p]}, freed {c} time(s)"
                )
            seen[p] = c

    decref = free

    # ----------------------------------------------------------------- caching
    def mark_cached(self, page_id: int) -> None:
        """Mark a page as holding reusable content: when freed it stays reclaimable (LRU)."""
        self._check_id(page_id)
        if not self._cached[page_id]:
            self._cached[page_id] = 1
            if self._ref[page_id] == 0:
                self._num_cached_free += 1

    def unmark_cached(self, page_id: int) -> None:
        self._check_id(page_id)
        if self._cached[page_id]:
            self._cached[page_id] = 0
            if self._ref[page_id] == 0:
                self._num_cached_free -= 1

    def evict_cached(self) -> int:
        """Reclaim every free cached page (calls ``on_reclaim`` for each); returns how many."""
        n = 0
        for p in self.free_pages():
            if self._cached[p]:
                self._reclaim(p)
                n += 1
        return n

    # ------------------------------------------------------------------- stats
    def largest_free_run(self) -> int:
        free = np.asarray(self._ref, dtype=np.int64) == 0
        return longest_run(free)

    def fragmentation(self) -> float:
        if self._num_free == 0:
            return 0.0
        return 1.0 - self.largest_free_run() / self._num_free

    def stats(self) -> PageStats:
        run = self.largest_free_run()
        return PageStats(
            total_pages=self.max_pages,
            allocated_pages=self.max_pages - self._num_free,
            free_pages=self._num_free,
            fragmentation_ratio=0.0 if self._num_free == 0 else 1.0 - run / self._num_free,
            allocation_count=self._alloc_count,
            free_count=self._free_count,
            largest_free_run=run,
            shared_pages=self._num_shared,
            total_refs=self._total_refs,
            cached_free_pages=self._num_cached_free,
        )

    def defragment(self) -> dict[int, int]:
        """Compact allocated pages to the front of the pool.

        Returns the move plan ``{old_id: new_id}`` for every page that moves
        (allocated pages keep their relative order).  The allocator only moves
        its bookkeeping: **the caller must apply the plan** to its own data
        (copy page contents and rewrite its page tables); ``KVCache`` does so
        itself.  Free cached pages are reclaimed first (their content would be
        overwritten).  O(max_pages).
        """
        self.evict_cached()
        ref = np.asarray(self._ref, dtype=np.int64)
        live = np.flatnonzero(ref > 0)
        plan = {int(old): int(new) for new, old in enumerate(live) if old != new}
        if not plan:
            return plan
        new_ref = [0] * self.max_pages
        new_cached = bytearray(self.max_pages)
        for new, old in enumerate(live.tolist()):
            new_ref[new] = self._ref[old]
            new_cached[new] = self._cached[old]
        self._ref = new_ref
        self._cached = new_cached
        self._reset_free_list(range(len(live), self.max_pages))
        return plan

    # ---------------------------------------------------------------- internals
    def _check_id(self, page_id) -> None:
        check_int("page id", page_id, 0, self.max_pages - 1)

    def _reset_free_list(self, pages: range) -> None:
        """Make ``pages`` (ascending) the whole free list, in order."""
        ids = list(pages)
        nxt, prv = [_NIL] * self.max_pages, [_NIL] * self.max_pages
        for a, b in zip(ids, ids[1:]):
            nxt[a], prv[b] = b, a
        self._next, self._prev = nxt, prv
        self._head, self._tail = (ids[0], ids[-1]) if ids else (_NIL, _NIL)
        self._num_free = len(ids)
        self._num_cached_free = sum(1 for p in ids if self._cached[p])

    def _unlink(self, p: int) -> None:
        prv, nxt = self._prev[p], self._next[p]
        if prv == _NIL:
            self._head = nxt
        else:
            self._next[prv] = nxt
        if nxt == _NIL:
            self._tail = prv
        else:
            self._prev[nxt] = prv
        self._next[p] = self._prev[p] = _NIL
        self._num_free -= 1

    def _release(self, pages: list[int]) -> None:
        cached, nxt, prv = self._cached, self._next, self._prev
        self._free_count += len(pages)
        self._num_free += len(pages)
        # uncached pages go to the head, pushed in descending order so they come
        # back ascending (whatever order the caller freed them in)
        uncached = sorted([p for p in pages if not cached[p]], reverse=True)
        h = self._head
        for p in uncached:
            nxt[p] = h
            prv[p] = _NIL
            if h == _NIL:
                self._tail = p
            else:
                prv[h] = p
            h = p
        self._head = h
        num_cached = len(pages) - len(uncached)
        if num_cached:  # cached pages go to the tail in the caller's order (LRU)
            t = self._tail
            for p in pages:
                if cached[p]:
                    prv[p] = t
                    nxt[p] = _NIL
                    if t == _NIL:
                        self._head = p
                    else:
                        nxt[t] = p
                    t = p
            self._tail = t
            self._num_cached_free += num_cached

    def _reclaim(self, p: int) -> None:
        # p is free (evict_cached) or was just popped by alloc: either way it
        # no longer counts as a cached free page
        self._cached[p] = 0
        self._num_cached_free -= 1
        if self.on_reclaim is not None:
            self.on_reclaim(p)
