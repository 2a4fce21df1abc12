"""PagedAllocator: exact free-list order, refcounts and move plans against a reference model."""

from __future__ import annotations

from collections import Counter

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from llmds.errors import CapacityError, StateError, ValidationError
from llmds.memory.paged_allocator import PagedAllocator, PageStats


def snapshot(a: PagedAllocator):
    return (
        a.free_pages(),
        [a.refcount(p) for p in range(a.max_pages)],
        [a.is_cached(p) for p in range(a.max_pages)],
        a.stats(),
    )


# ------------------------------------------------------------------ examples
def test_constructor_validation():
    for bad in (0, -1, True, 1.5, "4", None):
        with pytest.raises(ValidationError):
            PagedAllocator(page_size=bad, max_pages=4)
        with pytest.raises(ValidationError):
            PagedAllocator(page_size=4, max_pages=bad)


def test_fresh_pool_allocates_ascending_and_free_returns_first_ascending():
    a = PagedAllocator(page_size=16, max_pages=8)
    assert a.alloc(3) == [0, 1, 2]
    assert a.alloc(2) == [3, 4]
    a.free([4, 0, 2])  # any order: they come back ascending, before untouched pages
    assert a.free_pages() == [0, 2, 4, 5, 6, 7]
    assert a.alloc(4) == [0, 2, 4, 5]
    assert a.alloc(0) == []
    assert a.num_free == 2 and a.num_allocated == 6


def test_alloc_more_than_free_raises_and_allocates_nothing():
    a = PagedAllocator(page_size=16, max_pages=4)
    a.alloc(3)
    before = snapshot(a)
    with pytest.raises(CapacityError, match="only 1 of 4"):
        a.alloc(2)
    assert snapshot(a) == before
    with pytest.raises(ValidationError):
        a.alloc(-1)
    with pytest.raises(ValidationError):
        a.alloc(True)
    assert snapshot(a) == before


def test_double_free_and_foreign_ids_change_nothing():
    a = PagedAllocator(page_size=16, max_pages=4)
    a.alloc(2)
    a.incref([1])
    before = snapshot(a)
    with pytest.raises(StateError, match="double free"):
        a.free([0, 0])
    with pytest.raises(StateError):
        a.free([1, 2])  # 2 is free
    with pytest.raises(StateError):
        a.free([1, 1, 1])  # refcount 2
    for bad in (-1, 4, True, "0", 1.0):
        with pytest.raises(ValidationError):
            a.free([0, bad])
    assert snapshot(a) == before
    with pytest.raises(StateError):
        a.incref([3])  # free page
    with pytest.raises(StateError):
        a.take(0)  # allocated
    assert snapshot(a) == before


def test_refcounts_and_shared_stats():
    a = PagedAllocator(page_size=16, max_pages=4)
    p = a.alloc(2)
    a.incref([p[0], p[0], p[1]])
    st_ = a.stats()
    assert (st_.shared_pages, st_.total_refs) == (2, 5)
    a.free([p[0], p[1]])
    assert (a.refcount(p[0]), a.refcount(p[1])) == (2, 1)
    assert a.stats().shared_pages == 1
    a.free([p[0], p[0], p[1]])
    assert a.stats() == PageStats(4, 0, 4, 0.0, 2, 2, 4, 0, 0, 0)


def test_cached_pages_are_reclaimed_lru_after_uncached_ones():
    reclaimed = []
    a = PagedAllocator(page_size=16, max_pages=6, on_reclaim=reclaimed.append)
    pages = a.alloc(6)
    for p in (1, 3, 5):
        a.mark_cached(p)
    a.free([5, 0, 3])  # cached 5 then 3 go to the tail in that order; 0 to the head
    a.free([1, 2])  # 2 to the head; cached 1 to the tail
    assert a.free_pages() == [2, 0, 5, 3, 1]
    assert a.stats().cached_free_pages == 3
    assert a.alloc(3) == [2, 0, 5]
    assert reclaimed == [5] and not a.is_cached(5)
    assert a.alloc(2) == [3, 1]
    assert reclaimed == [5, 3, 1]
    assert pages == list(range(6))


def test_take_keeps_cached_mark_and_evict_cached():
    reclaimed = []
    a = PagedAllocator(page_size=16, max_pages=4, on_reclaim=reclaimed.append)
    a.alloc(4)
    a.mark_cached(2)
    a.mark_cached(3)
    a.free([2, 3])
    a.take(3)
    assert a.is_cached(3) and a.refcount(3) == 1 and reclaimed == []
    assert a.stats().cached_free_pages == 1
    assert a.evict_cached() == 1
    assert reclaimed == [2] and a.free_pages() == [2]


def test_alloc_contiguous_first_fit_or_none():
    a = PagedAllocator(page_size=16, max_pages=8)
    a.alloc(8)
    a.free([1, 3, 4, 6, 7])
    assert a.largest_free_run() == 2
    assert a.fragmentation() == pytest.approx(1 - 2 / 5)
    before = snapshot(a)
    assert a.alloc_contiguous(3) is None
    assert snapshot(a) == before
    with pytest.raises(CapacityError):
        a.alloc_contiguous(6)
    assert a.alloc_contiguous(2) == [3, 4]
    assert a.free_pages() == [1, 6, 7]
    assert a.alloc_contiguous(0) == []


def test_defragment_plan_is_exact():
    a = PagedAllocator(page_size=16, max_pages=8)
    a.alloc(8)
    a.incref([5])
    a.free([0, 2, 3, 6])
    plan = a.defragment()
    assert plan == {1: 0, 4: 1, 5: 2, 7: 3}
    assert [a.refcount(p) for p in range(8)] == [1, 1, 2, 1, 0, 0, 0, 0]
    assert a.free_pages() == [4, 5, 6, 7]
    assert a.defragment() == {}
    st_ = a.stats()
    assert (st_.largest_free_run, st_.fragmentation_ratio, st_.shared_pages) == (4, 0.0, 1)


# ------------------------------------------------------------ reference model
class AllocatorMachine(RuleBasedStateMachine):
    """Model: free list as a Python list (exact order), live references as a list."""

    @initialize(total=st.integers(1, 10))
    def setup(self, total):
        self.total = total
        self.reclaimed: list[int] = []
        self.a = PagedAllocator(page_size=4, max_pages=total, on_reclaim=self.reclaimed.append)
        self.free_list = list(range(total))
        self.held: list[int] = []  # one entry per live reference
        self.cached: set[int] = set()
        self.model_reclaimed: list[int] = []
        self.alloc_count = 0
        self.free_count = 0

    # ---- model helpers
    def refs(self) -> Counter:
        return Counter(self.held)

    def _reclaim(self, p):
        if p in self.cached:
            self.cached.discard(p)
            self.model_reclaimed.append(p)

    # ---- rules
    @rule(n=st.integers(0, 12))
    def alloc(self, n):
        if n > len(self.free_list):
            with pytest.raises(CapacityError):
                self.a.alloc(n)
            return
        got = self.a.alloc(n)
        want = self.free_list[:n]
        assert got == want
        del self.free_list[:n]
        for p in want:
            self._reclaim(p)
        self.held += want
        self.alloc_count += n

    @rule(n=st.integers(1, 6))
    def alloc_contiguous(self, n):
        if n > len(self.free_list):
            with pytest.raises(CapacityError):
                self.a.alloc_contiguous(n)
            return
        free = set(self.free_list)
        start = next(
            (s for s in range(self.total - n + 1) if all(q in free for q in range(s, s + n))), None
        )
        got = self.a.alloc_contiguous(n)
        if start is None:
            assert got is None
            return
        want = list(range(start, start + n))
        assert got == want
        for p in want:
            self.free_list.remove(p)
            self._reclaim(p)
        self.held += want
        self.alloc_count += n

    @precondition(lambda self: self.free_list)
    @rule(data=st.data())
    def take(self, data):
        p = data.draw(st.sampled_from(self.free_list))
        self.a.take(p)
        self.free_list.remove(p)
        self.held.append(p)
        self.alloc_count += 1

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def incref(self, data):
        ids = data.draw(st.lists(st.sampled_from(sorted(set(self.held))), max_size=4))
        self.a.incref(ids)
        self.held += ids

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def free(self, data):
        pool = list(self.held)
        idx = data.draw(st.lists(st.integers(0, len(pool) - 1), unique=True, max_size=len(pool)))
        ids = [pool[i] for i in data.draw(st.permutations(idx))]
        self.a.free(ids)
        refs = self.refs()
        released = []
        for p in ids:
            self.held.remove(p)
            refs[p] -= 1
            if refs[p] == 0:
                released.append(p)
        self.free_count += len(released)
        self.free_list[:0] = sorted(p for p in released if p not in self.cached)
        self.free_list += [p for p in released if p in self.cached]

    @rule(data=st.data())
    def bad_free(self, data):
        refs = self.refs()
        kind = data.draw(st.sampled_from(["double", "foreign", "type"]))
        if kind == "double":
            p = data.draw(st.integers(0, self.total - 1))
            with pytest.raises(StateError):
                self.a.free([p] * (refs[p] + 1))
        elif kind == "foreign":
            with pytest.raises(ValidationError):
                self.a.free(self.held[:1] + [data.draw(st.sampled_from([-1, self.total]))])
        else:
            with pytest.raises(ValidationError):
                self.a.free(self.held[:1] + [data.draw(st.sampled_from([True, "1", 0.0]))])

    @rule(data=st.data())
    def bad_share(self, data):
        if self.free_list:
            with pytest.raises(StateError):
                self.a.incref([data.draw(st.sampled_from(self.free_list))])
        if self.held:
            with pytest.raises(StateError):
                self.a.take(data.draw(st.sampled_from(self.held)))

    @rule(data=st.data(), mark=st.booleans())
    def mark(self, data, mark):
        p = data.draw(st.integers(0, self.total - 1))
        if mark:
            self.a.mark_cached(p)
            self.cached.add(p)
        else:
            self.a.unmark_cached(p)
            self.cached.discard(p)

    @rule()
    def evict_cached(self):
        want = [p for p in self.free_list if p in self.cached]
        assert self.a.evict_cached() == len(want)
        for p in want:
            self._reclaim(p)

    @rule()
    def defragment(self):
        for p in list(self.free_list):
            self._reclaim(p)
        live = sorted(set(self.held))
        want = {old: new for new, old in enumerate(live) if old != new}
        assert self.a.defragment() == want
        if want:
            self.held = [want.get(p, p) for p in self.held]
            self.cached = {want.get(p, p) for p in self.cached}
            self.free_list = list(range(len(live), self.total))

    # ---- invariants
    @invariant()
    def matches_model(self):
        a, refs = self.a, self.refs()
        assert a.free_pages() == self.free_list
        assert [a.refcount(p) for p in range(self.total)] == [refs[p] for p in range(self.total)]
        free = set(self.free_list)
        assert len(free) == len(self.free_list)  # no page twice on the free list
        assert free == {p for p in range(self.total) if refs[p] == 0}  # free xor allocated
        assert a.num_free + a.num_allocated == self.total
        assert all(a.is_cached(p) == (p in self.cached) for p in range(self.total))
        assert self.reclaimed == self.model_reclaimed
        mask = [p in free for p in range(self.total)]
        run = best = 0
        for m in mask:
            run = run + 1 if m else 0
            best = max(best, run)
        assert a.stats() == PageStats(
            total_pages=self.total,
            allocated_pages=self.total - len(free),
            free_pages=len(free),
            fragmentation_ratio=0.0 if not free else 1.0 - best / len(free),
            allocation_count=self.alloc_count,
            free_count=self.free_count,
            largest_free_run=best,
            shared_pages=sum(1 for c in refs.values() if c > 1),
            total_refs=len(self.held),
            cached_free_pages=len(free & self.cached),
        )

    def teardown(self):
        if not hasattr(self, "a"):
            return
        self.a.free(self.held)
        st_ = self.a.stats()
        assert (st_.allocated_pages, st_.total_refs, st_.shared_pages) == (0, 0, 0)
        assert sorted(self.a.free_pages()) == list(range(self.total))


TestAllocatorMachine = AllocatorMachine.TestCase
TestAllocatorMachine.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)


def test_free_and_cached_masks_match_the_pool():
    import numpy as np

    from llmds.memory.paged_allocator import PagedAllocator

    a = PagedAllocator(4, 6)
    pages = a.alloc(4)
    a.mark_cached(pages[1])
    a.free([pages[1], pages[3]])
    assert a.free_mask().tolist() == [False, True, False, True, True, True]
    assert np.flatnonzero(a.cached_mask()).tolist() == [pages[1]]
    assert a.num_cached_free == 1 == a.stats().cached_free_pages
