"""PrefixCache: hash-chained index semantics, checked against a content-keyed model."""

from __future__ import annotations

from collections import Counter

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from llmds.errors import StateError, ValidationError
from llmds.memory.paged_allocator import PagedAllocator
from llmds.memory.prefix_cache import ROOT_KEY, PrefixCache

PS = 2


def make(max_pages=8, retain=True, page_size=PS):
    a = PagedAllocator(page_size=page_size, max_pages=max_pages)
    return a, PrefixCache(a, retain_freed=retain)


def insert(pc: PrefixCache, tokens):
    """Match, acquire, allocate and register the full pages of ``tokens``."""
    matched, key = pc.match(tokens)
    pc.acquire(matched)
    full = len(tokens) // pc.page_size
    fresh = pc.allocator.alloc(full - len(matched))
    for i, p in enumerate(fresh, start=len(matched)):
        key, _ = pc.register(p, key, tuple(tokens[i * PS : (i + 1) * PS]))
    return matched + fresh


# ------------------------------------------------------------------ examples
def test_one_index_per_pool_and_type_checks():
    a, pc = make()
    with pytest.raises(ValidationError):
        PrefixCache(a)
    with pytest.raises(ValidationError):
        PrefixCache(object())


def test_chain_keys_name_the_whole_prefix():
    a, pc = make()
    pages = insert(pc, [1, 2, 3, 4, 5])  # two full pages; the 5 is not indexed
    assert pages == [0, 1] and len(pc) == 2
    k0 = PrefixCache.chain_key(ROOT_KEY, (1, 2))
    k1 = PrefixCache.chain_key(k0, (3, 4))
    assert pc.chain_keys([1, 2, 3, 4, 5], 2) == [k0, k1]
    assert (pc.key_of(0), pc.key_of(1)) == (k0, k1)
    assert pc.match([1, 2, 3, 4, 9, 9]) == ([0, 1], k1)
    assert pc.match([1, 2, 3, 4], max_pages=1) == ([0], k0)
    # the same page content after a different parent is a different page
    assert pc.match([9, 9, 3, 4]) == ([], ROOT_KEY)
    assert pc.lookup(k0, (3, 4)) == (1, k1)
    assert pc.lookup(ROOT_KEY, (3, 4))[0] is None
    # a partial page is keyed by its shorter tuple: never equal to a full one
    assert pc.lookup(k0, (3,))[0] is None


def test_lookup_rejects_hash_hit_with_different_tokens():
    a, pc = make()
    insert(pc, [1, 2])
    key = pc.key_of(0)
    pc._tokens_of[0] = (7, 7)  # a colliding entry: same key, other tokens
    assert pc.lookup(ROOT_KEY, (1, 2)) == (None, key)
    assert pc.match([1, 2, 3, 4]) == ([], ROOT_KEY)
    # register of a page whose key is taken by another page leaves it unindexed
    (p,) = a.alloc(1)
    assert pc.register(p, ROOT_KEY, (1, 2)) == (key, False)
    assert not pc.is_indexed(p)


def test_register_rules():
    a, pc = make()
    (p, q) = a.alloc(2)
    assert pc.register(p, ROOT_KEY, (1, 2))[1] is True
    assert pc.register(p, ROOT_KEY, (1, 2))[1] is True  # idempotent
    assert pc.register(q, ROOT_KEY, (1, 2))[1] is False  # first page stays canonical
    with pytest.raises(StateError):
        pc.register(p, ROOT_KEY, (5, 6))  # already indexed under another prefix
    with pytest.raises(StateError):
        pc.register(5, ROOT_KEY, (5, 6))  # free page
    assert len(pc) == 1 and a.is_cached(p) and not a.is_cached(q)
    # a key from lookup may be passed along to skip re-hashing
    (r,) = a.alloc(1)
    _, key = pc.lookup(pc.key_of(p), (3, 4))
    assert pc.register(r, pc.key_of(p), (3, 4), key=key) == (key, True)
    assert pc.match([1, 2, 3, 4])[0] == [p, r]


def test_retain_freed_false_unindexes_with_the_last_reference():
    a, pc = make(retain=False)
    pages = insert(pc, [1, 2, 3, 4])
    again = insert(pc, [1, 2, 3, 4])
    assert again == pages and [a.refcount(p) for p in pages] == [2, 2]
    assert not any(a.is_cached(p) for p in pages)
    pc.free(pages)
    assert len(pc) == 2
    pc.free(pages)
    assert len(pc) == 0 and a.num_free == 8
    assert pc.match([1, 2, 3, 4]) == ([], ROOT_KEY)


def test_retain_freed_true_keeps_pages_until_reclaimed_lru():
    a, pc = make(max_pages=4, retain=True)
    x = insert(pc, [1, 2, 3, 4])
    y = insert(pc, [5, 6])
    pc.free(x)  # freed first: evicted first
    pc.free(y)
    assert len(pc) == 3 and a.stats().cached_free_pages == 3
    # a hit takes the free cached page back without reclaiming it
    assert insert(pc, [5, 6, 7, 8]) == y + [3]  # page 3 was never cached: used first
    assert a.refcount(y[0]) == 1 and pc.evictions == 0
    # then the cached ones, least recently freed first
    assert a.free_pages() == x
    assert a.alloc(1) == [x[0]] and pc.evictions == 1
    assert not pc.is_indexed(x[0]) and pc.is_indexed(x[1])
    # the orphaned child stays indexed but is unreachable through match
    assert pc.match([1, 2, 3, 4]) == ([], ROOT_KEY)
    pc.clear()
    assert not pc.is_indexed(x[1]) and pc.evictions == 2


def test_acquire_validates_before_taking_anything():
    a, pc = make(retain=True)
    x = insert(pc, [1, 2])
    pc.free(x)
    before = (a.free_pages(), a.refcount(x[0]))
    with pytest.raises(StateError):
        pc.acquire([x[0], 6])  # 6 is not indexed
    assert (a.free_pages(), a.refcount(x[0])) == before


def test_pin_unpin():
    a, pc = make(max_pages=3, retain=True)
    x = insert(pc, [1, 2])
    pc.pin(x)
    pc.pin(x)
    pc.free(x)
    assert a.refcount(x[0]) == 2 and pc.num_pinned == 1
    a.alloc(2)
    with pytest.raises(Exception):
        a.alloc(1)  # the pinned page is never evicted
    with pytest.raises(StateError):
        pc.unpin(x * 3)  # pinned twice only: nothing changes
    assert a.refcount(x[0]) == 2
    pc.unpin(x * 2)
    assert pc.num_pinned == 0 and a.is_free(x[0]) and pc.is_indexed(x[0])
    with pytest.raises(StateError):
        pc.unpin(x)


def test_unregister_and_remap():
    a, pc = make(max_pages=6, retain=True)
    a.alloc(2)  # pages 0, 1 held by someone else
    x = insert(pc, [1, 2, 3, 4])  # pages 2, 3
    pc.pin(x[:1])
    a.free([0, 1])
    plan = a.defragment()
    assert plan == {2: 0, 3: 1}
    pc.remap(plan)
    assert pc.match([1, 2, 3, 4])[0] == [0, 1]
    assert pc.tokens_of(0) == (1, 2) and pc.tokens_of(2) is None
    pc.unpin([0])
    pc.unregister(1)
    assert not pc.is_indexed(1) and not a.is_cached(1)
    pc.free([0, 1])
    assert len(pc) == 1 and a.stats().cached_free_pages == 1


# ------------------------------------------------------------ reference model
class PrefixMachine(RuleBasedStateMachine):
    """Model the index by content: {whole-prefix tuple: page}, no hashing."""

    retain = True

    @initialize(total=st.integers(2, 8))
    def setup(self, total):
        self.total = total
        self.a, self.pc = make(max_pages=total, retain=self.retain)
        self.index: dict[tuple, int] = {}  # whole prefix (full pages) -> page
        self.seqs: list[list[int]] = []  # held references per sequence
        self.pins: Counter = Counter()
        self.evictions = 0

    def _evict(self, pages):
        for key, p in list(self.index.items()):
            if p in pages:
                del self.index[key]
                self.evictions += 1

    @rule(tokens=st.lists(st.integers(0, 1), max_size=7))
    def insert(self, tokens):
        full = len(tokens) // PS
        want = []
        for i in range(full):
            p = self.index.get(tuple(tokens[: (i + 1) * PS]))
            if p is None:
                break
            want.append(p)
        matched, _ = self.pc.match(tokens)
        assert matched == want
        taken = sum(self.a.is_free(p) for p in matched)
        if full - len(matched) + taken > self.a.num_free:
            return  # would not fit; nothing acquired
        self.pc.acquire(matched)
        cached_free = {p for p in self.a.free_pages() if self.a.is_cached(p)}
        head = self.a.free_pages()[: full - len(matched)]
        got = insert_rest = self.a.alloc(full - len(matched))
        assert got == head
        self._evict(set(got) & cached_free)
        key = self.pc.chain_keys(tokens, len(matched))[-1] if matched else ROOT_KEY
        for i, p in enumerate(insert_rest, start=len(matched)):
            prefix = tuple(tokens[: (i + 1) * PS])
            key, ok = self.pc.register(p, key, prefix[-PS:])
            assert ok == (prefix not in self.index)
            if ok:
                self.index[prefix] = p
        self.seqs.append(matched + got)

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def release(self, data):
        pages = self.seqs.pop(data.draw(st.integers(0, len(self.seqs) - 1)))
        self.pc.free(pages)
        if not self.retain:
            for key, p in list(self.index.items()):
                if self.a.is_free(p):
                    del self.index[key]

    @precondition(lambda self: self.index)
    @rule(data=st.data())
    def pin(self, data):
        p = data.draw(st.sampled_from(sorted(self.index.values())))
        self.pc.pin([p])
        self.pins[p] += 1

    @precondition(lambda self: self.pins)
    @rule(data=st.data())
    def unpin(self, data):
        p = data.draw(st.sampled_from(sorted(self.pins)))
        self.pc.unpin([p])
        self.pins[p] -= 1
        if not self.pins[p]:
            del self.pins[p]
        if not self.retain and self.a.is_free(p):
            self.index = {k: q for k, q in self.index.items() if q != p}

    @rule()
    def clear(self):
        self._evict({p for p in self.a.free_pages() if self.a.is_cached(p)})
        self.pc.clear()

    @rule()
    def defragment(self):
        self._evict({p for p in self.a.free_pages() if self.a.is_cached(p)})
        plan = self.a.defragment()
        self.pc.remap(plan)
        self.index = {k: plan.get(p, p) for k, p in self.index.items()}
        self.seqs = [[plan.get(p, p) for p in s] for s in self.seqs]
        self.pins = Counter({plan.get(p, p): c for p, c in self.pins.items()})

    @invariant()
    def matches_model(self):
        a, pc = self.a, self.pc
        assert len(pc) == len(self.index)
        assert pc.evictions == self.evictions
        assert pc.num_pinned == len(self.pins)
        for prefix, p in self.index.items():
            n = len(prefix) // PS
            assert pc.key_of(p) == pc.chain_keys(prefix, n)[-1]
            assert pc.tokens_of(p) == prefix[-PS:]
            if self.retain:
                assert a.is_cached(p)
            else:
                assert not a.is_free(p)  # dropped with its last reference
        refs = Counter(p for s in self.seqs for p in s) + self.pins
        assert [a.refcount(p) for p in range(self.total)] == [refs[p] for p in range(self.total)]

    def teardown(self):
        if not hasattr(self, "pc"):
            return
        for s in self.seqs:
            self.pc.free(s)
        for p, c in self.pins.items():
            self.pc.unpin([p] * c)
        if self.retain:
            self.pc.clear()
        assert len(self.pc) == 0 and self.pc.num_pinned == 0
        assert self.a.num_free == self.total and self.a.stats().cached_free_pages == 0


class PrefixMachineNoRetain(PrefixMachine):
    retain = False


_S = settings(max_examples=120, stateful_step_count=30, deadline=None)
TestPrefixMachineRetain = PrefixMachine.TestCase
TestPrefixMachineRetain.settings = _S
TestPrefixMachineNoRetain = PrefixMachineNoRetain.TestCase
TestPrefixMachineNoRetain.settings = _S
