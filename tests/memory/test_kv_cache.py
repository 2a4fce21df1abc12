"""KVCache: contents against a dict-of-lists model, exact page counts, COW, errors, no leaks."""

from __future__ import annotations

from collections import Counter

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from llmds.errors import CapacityError, NotFoundError, ValidationError
from llmds.memory.kv_cache import KVCache


def snapshot(c: KVCache):
    """Everything observable about the cache, for 'nothing changed' checks."""
    a, pc = c.allocator, c.prefix_cache
    return (
        c.stats(),
        {sid: (c.page_ids(sid), c.get(sid)) for sid in c._seqs},
        a.free_pages(),
        [a.refcount(p) for p in range(a.max_pages)],
        dict(pc._page_of),
        dict(pc._tokens_of),
        list(c._data),
    )


def check_invariants(c: KVCache):
    a, pc = c.allocator, c.prefix_cache
    refs = Counter(p for s in c._seqs.values() for p in s.pages)
    assert [a.refcount(p) for p in range(a.max_pages)] == [refs[p] for p in range(a.max_pages)]
    free = set(a.free_pages())
    assert len(free) == a.num_free and free == {p for p in range(a.max_pages) if not refs[p]}
    assert all((c._data[p] is None) == (p in free) for p in range(a.max_pages))
    for s in c._seqs.values():
        assert s.num_tokens == sum(len(c._data[p]) for p in s.pages)
        if s.pages:
            assert len(c._data[s.pages[-1]]) == s.last_len
        if c.enable_prefix_sharing:  # every page but the last is sealed and immutable
            assert all(type(c._data[p]) is tuple for p in s.pages[:-1])
    for p, key in pc._key_of.items():  # indexed pages are live and verified by content
        assert refs[p] > 0 and pc._page_of[key] == p
        assert tuple(c._data[p]) == pc._tokens_of[p]
    st_ = c.stats()
    assert st_["total_sequences"] == len(c._seqs) == len(c)
    assert st_["allocated_pages"] == len(refs) == a.max_pages - st_["free_pages"]
    assert st_["total_page_refs"] == sum(refs.values())
    assert st_["shared_pages_count"] == sum(1 for v in refs.values() if v > 1)
    assert st_["indexed_pages"] == len(pc)
    assert st_["prefix_hits"] <= st_["prefix_queries"]


# ------------------------------------------------------------------ examples
def test_seed_usage_example():
    cache = KVCache(page_size=512, max_pages=10000)
    kv = [1, 2, 3, 4, 5] * 100
    cache.attach(seq_id=1, kv_tokens=kv, prefix_tokens=[1, 2, 3])
    assert cache.get(seq_id=1) == kv and 1 in cache and len(cache) == 1
    cache.detach(seq_id=1)
    assert cache.get(1) is None and 1 not in cache
    assert cache.stats()["allocated_pages"] == 0


def test_three_sequences_share_a_700_token_prefix():
    c = KVCache(page_size=512, max_pages=100)
    prefix = list(range(10_000, 10_700))
    for i in range(3):
        own = list(range(i * 1000, i * 1000 + 600))  # 600 own tokens: 2 own pages
        c.attach(i, prefix + own, prefix_tokens=prefix)
        assert c.get(i) == prefix + own
    tables = [c.page_ids(i) for i in range(3)]
    assert tables[0][:2] == tables[1][:2] == tables[2][:2]  # 512 + 188 tokens, shared
    assert len({p for t in tables for p in t[2:]}) == 6
    st_ = c.stats()
    assert st_["allocated_pages"] == 2 + 3 * 2
    assert st_["shared_pages_count"] == 2 and st_["total_page_refs"] == 12
    assert (st_["prefix_queries"], st_["prefix_hits"], st_["prefix_shares"]) == (3, 2, 4)
    # the partial prefix page is keyed by its 188 tokens only
    assert len(c.prefix_cache.tokens_of(tables[0][1])) == 188
    for i in range(3):
        c.detach(i)
    st_ = c.stats()
    assert (st_["allocated_pages"], st_["shared_pages_count"], st_["indexed_pages"]) == (0, 0, 0)


def test_full_pages_shared_without_prefix_tokens_and_disabled_sharing():
    toks = list(range(1300))  # 2 full pages + 276
    on = KVCache(page_size=512, max_pages=20)
    off = KVCache(page_size=512, max_pages=20, enable_prefix_sharing=False)
    for c in (on, off):
        c.attach(0, toks)
        c.attach(1, toks[:1024] + [7] * 10)
        c.attach(2, [9] + toks)  # same tokens, shifted: nothing in common
    assert on.stats()["allocated_pages"] == 3 + 1 + 3
    assert on.page_ids(1)[:2] == on.page_ids(0)[:2]
    assert off.stats()["allocated_pages"] == 3 + 3 + 3
    assert off.stats()["prefix_queries"] == 0 and off.stats()["indexed_pages"] == 0
    for c in (on, off):
        assert c.get(1) == toks[:1024] + [7] * 10 and c.get(2) == [9] + toks


def test_prefix_layout_without_sharing_is_compact():
    pre = list(range(700))
    off = KVCache(page_size=512, max_pages=20, enable_prefix_sharing=False)
    off.attach(0, pre + [1] * 300, prefix_tokens=pre)
    assert len(off.page_ids(0)) == 2
    on = KVCache(page_size=512, max_pages=20)
    on.attach(0, pre + [1] * 300, prefix_tokens=pre)
    assert len(on.page_ids(0)) == 3  # 512 | 188 | 300


def test_append_copies_a_shared_page_before_writing():
    c = KVCache(page_size=4, max_pages=20)
    pre = [1, 2, 3, 4, 5, 6]  # pages [1 2 3 4] [5 6]
    c.attach(0, pre, prefix_tokens=pre)
    c.attach(1, pre, prefix_tokens=pre)
    shared = c.page_ids(0)
    assert c.page_ids(1) == shared and c.stats()["allocated_pages"] == 2
    c.append(0, [7])  # lands in the shared partial page: copy first
    assert c.get(0) == pre + [7] and c.get(1) == pre
    assert c.stats()["cow_copies"] == 1
    assert c.page_ids(0)[0] == shared[0] and c.page_ids(0)[1] != shared[1]
    # the sole holder of an indexed partial page writes in place after unindexing it
    c.append(1, [8])
    assert c.page_ids(1) == shared and c.stats()["cow_copies"] == 1
    assert c.get(1) == pre + [8] and c.get(0) == pre + [7]
    # filling the page seals it; a third sequence then shares it
    c.append(1, [9, 10, 11])
    c.attach(2, pre + [8, 9, 10, 11])
    assert c.page_ids(2)[:2] == c.page_ids(1)[:2]
    check_invariants(c)


def test_append_dedups_a_filled_page_and_grows_across_pages():
    c = KVCache(page_size=4, max_pages=20)
    c.attach(0, list(range(8)))
    c.attach(1, [0, 1])
    c.append(1, [2, 3, 4, 5, 6, 7, 8, 9])  # fills page 0 -> identical to seq 0's
    assert c.page_ids(1)[:2] == c.page_ids(0)
    assert c.get(1) == list(range(10)) and c.stats()["allocated_pages"] == 3
    assert c.stats()["prefix_shares"] == 2
    c.append(1, [])
    with pytest.raises(NotFoundError):
        c.append(5, [1])
    c.attach(3, [])
    c.append(3, list(range(5)))
    assert c.get(3) == list(range(5)) and c.page_ids(3)[0] == c.page_ids(0)[0]
    check_invariants(c)


def test_returned_and_input_lists_are_not_aliased():
    c = KVCache(page_size=4, max_pages=10)
    kv, pre = [1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5]
    c.attach(0, kv, prefix_tokens=pre)
    c.attach(1, kv, prefix_tokens=pre)
    kv.append(99)
    kv[0] = -1
    pre[0] = -1
    out = c.get(0)
    out[0] = -5
    out.append(42)
    assert c.get(0) == c.get(1) == [1, 2, 3, 4, 5, 6]
    assert c.get(0) is not c.get(0)


def test_input_types():
    c = KVCache(page_size=4, max_pages=10)
    c.attach(0, (1, 2, 3))
    c.attach(np.int64(1), np.arange(5), prefix_tokens=np.arange(2))
    c.attach(2, range(3))
    assert c.get(0) == [1, 2, 3] and c.get(1) == [0, 1, 2, 3, 4] and c.get(2) == [0, 1, 2]
    assert np.int64(1) in c and "x" not in c and True not in c


def test_bad_inputs_raise_and_change_nothing():
    c = KVCache(page_size=4, max_pages=10)
    c.attach(0, [1, 2, 3])
    before = snapshot(c)
    bad_calls = [
        lambda: c.attach(True, [1]),
        lambda: c.attach("1", [1]),
        lambda: c.attach(1.0, [1]),
        lambda: c.attach(0, [1]),  # already attached
        lambda: c.attach(1, "abc"),
        lambda: c.attach(1, 5),
        lambda: c.attach(1, None),
        lambda: c.attach(1, np.zeros((2, 2))),
        lambda: c.attach(1, [1, 2, 3], prefix_tokens=[2]),
        lambda: c.attach(1, [1, 2], prefix_tokens=[1, 2, 3]),
        lambda: c.attach(1, [1, 2], prefix_tokens=7),
        lambda: c.append(0, 3),
        lambda: c.append(False, [1]),
        lambda: c.get(True),
        lambda: c.detach("0"),
    ]
    for call in bad_calls:
        with pytest.raises(ValidationError):
            call()
        assert snapshot(c) == before
    with pytest.raises(ValidationError, match="hashable"):
        c.attach(1, [[1], [2], [3], [4]])  # a full page of unhashable tokens
    assert snapshot(c) == before
    d = KVCache(page_size=4, max_pages=4)
    d.attach(1, [1, 2])
    d_before = snapshot(d)
    with pytest.raises(ValidationError, match="hashable"):
        d.append(1, [[3], [4]])  # fills the page, which must then be sealed
    assert snapshot(d) == d_before
    c.detach(123)  # unknown id: no-op
    assert snapshot(c) == before and c.get(123) is None
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValidationError):
            KVCache(page_size=bad)
        with pytest.raises(ValidationError):
            KVCache(max_pages=bad)


def test_capacity_error_leaves_state_identical():
    c = KVCache(page_size=4, max_pages=6)
    pre = [1, 2, 3, 4, 5]
    c.attach(0, pre + [6], prefix_tokens=pre)  # 3 pages
    c.attach(1, pre + [7, 8, 9, 10, 11], prefix_tokens=pre)  # shares 2, +2 own
    assert c.stats()["free_pages"] == 1
    before = snapshot(c)
    with pytest.raises(CapacityError, match="needs 2 new pages but only 1"):
        c.attach(2, pre + [1] * 5, prefix_tokens=pre)
    assert snapshot(c) == before
    with pytest.raises(CapacityError):
        c.append(1, [0] * 8)  # 3 fill the last page, 5 need 2 new ones
    assert snapshot(c) == before
    with pytest.raises(CapacityError):
        c.attach(2, list(range(100)))
    assert snapshot(c) == before
    c.attach(2, pre + [1], prefix_tokens=pre)  # fits: 2 shared + 1 own
    assert c.stats()["free_pages"] == 0
    before = snapshot(c)
    with pytest.raises(CapacityError):
        c.append(2, [1, 2, 3, 4])  # page full after 3, needs a new one
    assert snapshot(c) == before
    c.append(2, [1, 2, 3])
    assert c.get(2) == pre + [1, 1, 2, 3]


def test_defragment_moves_contents_tables_and_index():
    c = KVCache(page_size=4, max_pages=12)
    pre = [9, 9, 9, 9, 8, 8]
    for i in range(4):
        c.attach(i, pre + [i] * (3 + 2 * i), prefix_tokens=pre)
    c.detach(0)
    c.detach(2)
    want = {i: c.get(i) for i in (1, 3)}
    live = sorted({p for i in (1, 3) for p in c.page_ids(i)})
    plan = c.defragment()
    assert plan == {old: new for new, old in enumerate(live) if old != new}
    assert sorted({p for i in (1, 3) for p in c.page_ids(i)}) == list(range(len(live)))
    assert {i: c.get(i) for i in (1, 3)} == want
    assert c.stats()["fragmentation_ratio"] == 0.0
    check_invariants(c)
    c.attach(5, pre + [5])  # the moved prefix pages are still found
    assert c.page_ids(5)[0] == c.page_ids(1)[0]
    assert c.defragment() == {}


# ------------------------------------------------------------ reference model
PREFIXES = [[], [1, 2, 3], [1, 2, 3, 4, 5, 6], [7] * 4, [1, 2, 3, 4, 5, 6, 0, 0, 1]]
TOKENS = st.lists(st.integers(0, 2), max_size=9)


class KVMachine(RuleBasedStateMachine):
    sharing = True

    @initialize(max_pages=st.integers(4, 24), page_size=st.sampled_from([3, 4]))
    def setup(self, max_pages, page_size):
        self.c = KVCache(page_size=page_size, max_pages=max_pages,
                         enable_prefix_sharing=self.sharing)
        self.model: dict[int, list] = {}

    @rule(sid=st.integers(0, 7), pi=st.integers(0, len(PREFIXES) - 1), own=TOKENS,
          use_prefix=st.booleans())
    def attach(self, sid, pi, own, use_prefix):
        pre = list(PREFIXES[pi])
        kv = pre + own
        before = snapshot(self.c)
        try:
            self.c.attach(sid, kv, prefix_tokens=pre if use_prefix else None)
        except ValidationError:
            assert sid in self.model
            assert snapshot(self.c) == before
            return
        except CapacityError:
            assert snapshot(self.c) == before
            return
        assert sid not in self.model
        self.model[sid] = list(kv)
        kv.append(-1)  # the caller's list is not aliased

    @rule(sid=st.integers(0, 7), pi=st.integers(1, len(PREFIXES) - 1))
    def attach_bare_prefix(self, sid, pi):
        # a sequence that is only a shared prefix: its next append must copy-on-write
        self.attach(sid, pi, [], True)

    @rule(sid=st.integers(0, 7), toks=TOKENS)
    def append(self, sid, toks):
        before = snapshot(self.c)
        try:
            self.c.append(sid, toks)
        except NotFoundError:
            assert sid not in self.model and snapshot(self.c) == before
            return
        except CapacityError:
            assert snapshot(self.c) == before
            return
        self.model[sid] += toks

    @rule(sid=st.integers(0, 7))
    def detach(self, sid):
        self.c.detach(sid)
        self.model.pop(sid, None)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def mutate_returned(self, data):
        sid = data.draw(st.sampled_from(sorted(self.model)))
        out = self.c.get(sid)
        if out:
            out[0] = -7
        out.append(-8)

    @rule()
    def defragment(self):
        live = sorted({p for s in self.c._seqs.values() for p in s.pages})
        plan = self.c.defragment()
        assert plan == {old: new for new, old in enumerate(live) if old != new}

    @invariant()
    def matches_model(self):
        c = self.c
        assert set(c._seqs) == set(self.model)
        for sid, toks in self.model.items():
            assert c.get(sid) == toks
        check_invariants(c)
        if not self.sharing:
            assert len(c.prefix_cache) == 0 and c.stats()["shared_pages_count"] == 0
            assert c.stats()["allocated_pages"] == sum(
                -(-len(t) // c.page_size) for t in self.model.values())

    def teardown(self):
        if not hasattr(self, "c"):
            return
        for sid in list(self.model):
            self.c.detach(sid)
        st_ = self.c.stats()
        assert (st_["allocated_pages"], st_["shared_pages_count"], st_["indexed_pages"]) == (0, 0, 0)
        assert st_["total_page_refs"] == 0 and len(self.c) == 0


class KVMachineNoSharing(KVMachine):
    sharing = False


TestKVMachine = KVMachine.TestCase
TestKVMachine.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
TestKVMachineNoSharing = KVMachineNoSharing.TestCase
TestKVMachineNoSharing.settings = settings(max_examples=50, stateful_step_count=25, deadline=None)
