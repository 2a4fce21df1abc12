"""BlockManager: exact prefix hits, same-step sharing, LRU eviction order, pinning, and
block accounting + KV correctness under random add/step/abort/pin sequences.

KV correctness is checked with a fake KV arena: running a plan writes, for each
computed position, the whole token prefix up to it into that position's block
slot (what a real model's K/V depends on), and every read (each position
before ``num_computed_tokens``) must find the right value.  A prefix hit on an
uncomputed or recycled block therefore fails the test, and so does an indexed
block whose slots do not hold the prefix its chain key names.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from llmds.engine.kv.block_manager import BlockManager
from llmds.engine.kv.placement import FreeListPlacement
from llmds.engine.sched.planner import Planner, PlannerConfig
from llmds.engine.request import RequestState, RequestStatus
from llmds.errors import CapacityError, StateError, ValidationError

GARBAGE = ("garbage",)


class FakeKV:
    """Block contents as {block_id: [token prefix per slot]}; executes plans."""

    def __init__(self, bm: BlockManager):
        self.bm, self.bs = bm, bm.block_size
        self.mem = {b: [None] * self.bs for b in range(bm.num_blocks)}

    def _check_read(self, s):
        toks = s.all_token_ids
        for pos in range(s.num_computed_tokens):
            got = self.mem[s.block_table[pos // self.bs]][pos % self.bs]
            assert got == tuple(toks[: pos + 1]), f"{s.request_id}: bad KV at {pos}"

    def _write(self, s, n, garbage=False):
        toks = s.all_token_ids
        for pos in range(s.num_computed_tokens, s.num_computed_tokens + n):
            b = s.block_table[pos // self.bs]
            slot = self.mem[b]
            slot[pos % self.bs] = GARBAGE if garbage else tuple(toks[: pos + 1])

    def run(self, plan, stop_at=None):
        """Run the plan's items in order (decodes, then prefills in plan order: a later
        item may read an earlier one's blocks).  ``stop_at=k`` simulates a model that
        fails on item ``k``: items before it are written, item ``k`` writes garbage."""
        items = [(s, 1) for s in plan.decode] + list(plan.prefill)
        for k, (s, n) in enumerate(items):
            self._check_read(s)
            if k == stop_at:
                self._write(s, n, garbage=True)
                return
            self._write(s, n)

    def check_all(self, planner):
        """No write clobbered KV that a running request relies on."""
        for s in planner.running:
            self._check_read(s)

    def check_index(self):
        """Every indexed block (live or cached-free) holds the computed KV of the prefix
        its chain key names: slot j holds that prefix up to its j-th token."""
        pc, bs = self.bm.prefix_cache, self.bs
        for b in range(self.bm.num_blocks):
            if not pc.is_indexed(b):
                continue
            full = self.mem[b][bs - 1]
            assert full is not None and full != GARBAGE, f"indexed block {b} holds uncomputed KV"
            assert full[-bs:] == pc.tokens_of(b) and len(full) % bs == 0, f"indexed block {b}: wrong tokens"
            assert pc.chain_keys(full, len(full) // bs)[-1] == pc.key_of(b), f"indexed block {b}: wrong prefix"
            assert self.mem[b] == [full[: len(full) - bs + j + 1] for j in range(bs)], f"block {b}: stale slots"


def room_blocks(bm, seqs):
    """Blocks the manager's placement holds as growth rooms: ``[block_table[-1] + 1, room end)``
    of each request with a room (a ``RunPlacement``; the free list holds none)."""
    room_end = getattr(bm.placement, "room_end", None)
    out = []
    for s in seqs if room_end is not None else ():
        if room_end(s):
            assert s.block_table and bm.is_contiguous(s), "only a contiguous table has a room"
            out += range(s.block_table[-1] + 1, room_end(s))
    return out


def check_placement_stats(bm, seqs):
    """The manager's placement counters equal a recount over the live requests."""
    tables = [s.block_table for s in seqs if s.block_table]
    runs = [t for t in tables if all(b - a == 1 for a, b in zip(t, t[1:]))]
    for s in seqs:
        assert bm.is_contiguous(s) == (s.block_table in runs or not s.block_table)
    st_ = bm.stats()
    assert st_["block_tables"] == len(tables)
    if "contiguous_tables" in st_:
        assert st_["contiguous_tables"] == len(runs)
    assert st_.get("room_blocks", 0) == len(room_blocks(bm, seqs))
    assert bm.num_free_blocks == bm.allocator.num_free + st_.get("room_blocks", 0) == st_["num_free_blocks"]


def tok_fn(s):
    return (hash(s.request_id) + s.num_output_tokens) % 3  # tiny vocab: decodes collide too


def drive(p, fake=None, steps=10_000):
    fin_all = []
    for _ in range(steps):
        if not p.has_unfinished():
            return fin_all
        plan = p.schedule()
        if fake is not None:
            fake.run(plan)
        fin_all += p.update(plan, [tok_fn(s) for s in plan.sampling])
        if fake is not None:
            fake.check_all(p)
            fake.check_index()
    raise AssertionError("did not finish")


def R(rid, toks, max_new=2, **kw):
    return RequestState(rid, list(toks), max_new_tokens=max_new, **kw)


# --------------------------------------------------------------------- exact hits
def test_exact_hit_tokens():
    bm = BlockManager(32, 4)
    a = R("a", range(10, 30))  # 20 tokens = 5 full blocks
    assert bm.match_prefix(a) == 0 and bm.allocate(a, 20)
    assert a.block_table == [0, 1, 2, 3, 4] and a.num_cached_tokens == 0
    cases = [
        (list(range(10, 31)), 20),  # + 1 token: all 5 blocks
        (list(range(10, 30)), 16),  # identical prompt: keep >= 1 token to compute
        (list(range(10, 20)) + [99] * 10, 8),  # diverges inside block 2
        (list(range(10, 22)) + [99] * 10, 12),  # diverges right after block 2
        ([10, 11, 12, 99] + list(range(14, 30)), 0),  # block 0 differs: the chain breaks for all
        (list(range(10, 14)), 0),  # one full block but it is the whole prompt
    ]
    for i, (toks, hit) in enumerate(cases):
        s = R(i, toks)
        assert bm.match_prefix(s) == hit, toks
        assert bm.allocate(s, len(toks) - hit)
        assert s.num_cached_tokens == s.num_computed_tokens == hit
        assert s.block_table[: hit // 4] == a.block_table[: hit // 4]
        bm.free(s)
    assert bm.num_queries == 7 and bm.num_hits == 4 and bm.num_hit_tokens == 20 + 16 + 8 + 12
    assert bm.num_query_tokens == 20 + 21 + 20 + 20 + 22 + 20 + 4


def test_lengths_only_requests_never_share():
    bm = BlockManager(16, 4)
    a = RequestState("a", num_prompt_tokens=12)
    b = RequestState("b", num_prompt_tokens=12)
    assert bm.allocate(a, 12) and bm.match_prefix(b) == 0 and bm.allocate(b, 12)
    assert set(a.block_table).isdisjoint(b.block_table) and len(bm.prefix_cache) == 0
    assert bm.num_queries == 0


def test_same_step_sharing_and_chunk_boundary():
    bm = BlockManager(64, 4)
    p = Planner(PlannerConfig(max_num_batched_tokens=64, max_num_seqs=8, prefill_chunk_size=10), bm)
    prefix = list(range(100, 124))  # 6 blocks
    a, b = R("a", prefix + [1, 2]), R("b", prefix + [3, 4])
    p.add(a)
    p.add(b)
    plan = p.schedule()
    # a's first chunk covers tokens [0, 10): only blocks 0 and 1 are complete → b reuses 8 tokens
    assert [(s.request_id, n) for s, n in plan.prefill] == [("a", 10), ("b", 10)]
    assert b.num_cached_tokens == 8 and b.block_table[:2] == a.block_table[:2]
    fake = FakeKV(bm)
    fake.run(plan)
    p.update(plan, [tok_fn(s) for s in plan.sampling])
    drive(p, fake)
    # later arrivals reuse all 6 prefix blocks (whoever registered them first)
    c = R("c", prefix + [5])
    assert bm.match_prefix(c) == 24


def test_same_step_full_prefix_sharing():
    bm = BlockManager(64, 4)
    p = Planner(PlannerConfig(max_num_batched_tokens=256, max_num_seqs=8), bm)
    prefix = list(range(100, 132))  # 8 blocks
    reqs = [R(i, prefix + [i] * (i + 1), max_new=3) for i in range(4)]
    for r in reqs:
        p.add(r)
    plan = p.schedule()
    assert [r.num_cached_tokens for r in reqs] == [0, 32, 32, 32]
    assert plan.num_batched_tokens == 33 + (2 + 3 + 4)
    fake = FakeKV(bm)
    fake.run(plan)
    p.update(plan, [tok_fn(s) for s in plan.sampling])
    drive(p, fake)
    assert bm.num_free_blocks == 64 and bm.usage() == 0.0


def test_lru_eviction_order_of_cached_blocks():
    bm = BlockManager(12, 2)
    a, b = R("a", [1, 2, 3, 4, 5, 6, 7]), R("b", [9, 8, 7, 6, 5, 4, 3])  # 3 full blocks + 1 token each
    for s in (a, b):
        bm.allocate(s, 7)
    assert a.block_table == [0, 1, 2, 3] and b.block_table == [4, 5, 6, 7]
    bm.free(a)  # a's cached blocks 0,1,2 go to the LRU tail as 2,1,0 (tail of the prefix first)
    bm.free(b)  # then 6,5,4; the partial blocks 3 and 7 go to the head (reused first)
    assert bm.num_free_blocks == 12 and len(bm.prefix_cache) == 6
    got = []
    while bm.num_free_blocks:  # one-block requests (peak 1: placement takes the free-list head)
        s = RequestState(("y", len(got)), num_prompt_tokens=1, max_new_tokens=1)
        bm.allocate(s, 1)
        got += s.block_table
        if len(got) == 6:
            assert bm.evictions == 0  # never-cached blocks are used before any cached one
    assert got == [7, 3, 8, 9, 10, 11, 2, 1, 0, 6, 5, 4]
    assert bm.evictions == 6 and len(bm.prefix_cache) == 0


def test_cached_block_reused_after_free_then_evicted_last_used_last():
    bm = BlockManager(6, 2)
    a = R("a", [1, 2, 3, 4, 5])
    bm.allocate(a, 5)
    bm.free(a)
    again = R("again", [1, 2, 3, 4, 9])
    assert bm.match_prefix(again) == 4 and bm.allocate(again, 1)
    assert again.block_table[:2] == [0, 1] and bm.evictions == 0  # taken back off the free list


def test_pinning_protects_hot_prefix():
    bm = BlockManager(8, 2)
    hot = R("hot", [1, 2, 3, 4, 5])
    bm.allocate(hot, 5)
    bm.free(hot)
    pinned = bm.pin_prefix([1, 2, 3, 4, 5])
    assert pinned == [0, 1] and bm.num_free_blocks == 6 and bm.usage() == 0.25
    filler = RequestState("fill", num_prompt_tokens=12)
    assert bm.allocate(filler, 12) and bm.evictions == 0  # pinned blocks were not reclaimed
    assert not bm.can_allocate(RequestState("more", num_prompt_tokens=1), 1)
    bm.free(filler)
    s = R("s", [1, 2, 3, 4, 7])
    assert bm.match_prefix(s) == 4
    bm.unpin(pinned)
    with pytest.raises(StateError):
        bm.unpin(pinned)
    big = RequestState("big", num_prompt_tokens=16)
    assert bm.allocate(big, 16) and bm.evictions == 2


@pytest.mark.parametrize("max_new", [9, 6])
def test_decode_blocks_registered_when_full_and_reused(max_new):
    # max_new=9: KV for 3 + 8 tokens, block 1 fills mid-decode (registered at the next boundary);
    # max_new=6: KV for 3 + 5 = 8 tokens, block 1 fills on the last step (registered at free)
    bm = BlockManager(32, 4)
    p = Planner(PlannerConfig(max_num_batched_tokens=64, max_num_seqs=4), bm)
    a = R("a", [7, 7, 7], max_new=max_new)
    p.add(a)
    fake = FakeKV(bm)
    drive(p, fake)
    full = a.prompt_token_ids + a.output_token_ids
    b = R("b", full[:8] + [0, 0])
    assert bm.match_prefix(b) == 8
    p.add(b)
    drive(p, fake)
    assert b.num_cached_tokens == 8


def test_preempted_request_hits_its_own_cached_blocks():
    bm = BlockManager(6, 4)
    p = Planner(PlannerConfig(max_num_batched_tokens=64, max_num_seqs=4), bm)
    a = R("a", list(range(8)), max_new=9)
    b = R("b", list(range(50, 58)), max_new=9)
    p.add(a)
    p.add(b)
    fake = FakeKV(bm)
    pre = None
    while p.has_unfinished():
        plan = p.schedule()
        if plan.preempted:
            pre = plan.preempted[0]
        elif pre is not None and any(s is pre for s, _ in plan.prefill):
            assert pre.num_cached_tokens >= 8  # its prompt blocks survived in the cache
            pre = "checked"
        fake.run(plan)
        p.update(plan, [tok_fn(s) for s in plan.sampling])
    assert pre == "checked"


def test_append_slots_short_changes_nothing_and_free_idempotent():
    bm = BlockManager(3, 2)
    a = RequestState("a", num_prompt_tokens=5)
    assert bm.can_allocate(a, 4) and bm.allocate(a, 4)
    assert bm.get_block_table(a) == [0, 1] and bm.num_free_blocks == 1
    b = RequestState("b", num_prompt_tokens=4)
    assert not bm.can_allocate(b, 4) and not bm.allocate(b, 4) and b.block_table == []
    a.num_computed_tokens = 4
    assert bm.append_slots(a, 1) and a.block_table == [0, 1, 2]
    a.num_output_tokens = 2  # pretend two outputs arrived (7 known tokens)
    a.num_computed_tokens = 6
    assert bm.append_slots(a, 1) is False and a.block_table == [0, 1, 2]
    with pytest.raises(ValidationError):
        bm.append_slots(a, 5)
    with pytest.raises(StateError):
        bm.allocate(a, 1)
    bm.free(a)
    bm.free(a)
    assert bm.num_free_blocks == 3 and bm.usage() == 0.0


def test_capacity_checks():
    bm = BlockManager(4, 4)
    with pytest.raises(CapacityError, match="prompt of 17 tokens"):
        bm.check_fits(RequestState(1, num_prompt_tokens=17))
    bm.check_fits(RequestState(1, num_prompt_tokens=16, max_new_tokens=1))
    with pytest.raises(CapacityError):
        BlockManager(4, 4).check_fits(RequestState(1, num_prompt_tokens=16, max_new_tokens=2))


# --------------------------------------------------- token ids without caching plan as lengths-only
@settings(max_examples=40, deadline=None)
@given(lens=st.lists(st.tuples(st.integers(1, 20), st.integers(1, 6)), min_size=1, max_size=10),
       blocks=st.integers(4, 20), bs=st.integers(1, 4), budget=st.integers(2, 16))
def test_without_caching_plans_equal_lengths_only_requests(lens, blocks, bs, budget):
    # (with caching on, a preempted request may hit its own blocks and plans legitimately differ)
    cfg = PlannerConfig(max_num_batched_tokens=budget, max_num_seqs=min(4, budget), prefill_chunk_size=5)
    bm = BlockManager(blocks, bs, enable_prefix_caching=False)
    p1, p2 = Planner(cfg, bm), Planner(cfg, BlockManager(blocks, bs))
    nxt = 1000
    for i, (n, mx) in enumerate(lens):
        toks = list(range(nxt, nxt + n))
        nxt += n
        a, b = R(i, toks, max_new=mx), RequestState(i, num_prompt_tokens=n, max_new_tokens=mx)
        try:
            p2.add(b)
        except CapacityError:
            with pytest.raises(CapacityError):
                p1.add(a)
            continue
        p1.add(a)
    fake = FakeKV(bm)
    while p2.has_unfinished():
        x, y = p1.schedule(), p2.schedule()
        assert [(s.request_id, n) for s, n in x.prefill] == [(s.request_id, n) for s, n in y.prefill]
        assert [s.request_id for s in x.decode] == [s.request_id for s in y.decode]
        assert [s.request_id for s in x.preempted] == [s.request_id for s in y.preempted]
        fake.run(x)
        p1.update(x, [tok_fn(s) for s in x.sampling])
        p2.update(y)
    assert not p1.has_unfinished() and bm.num_free_blocks == blocks and bm.num_hit_tokens == 0


# --------------------------------------------------------------------- stateful accounting
PREFIXES = [[1, 2, 1, 2, 1, 2, 1, 2], [3, 3, 3, 3, 1, 1], [1, 2, 1, 2, 4]]


class PlannerRules(RuleBasedStateMachine):
    """The add / abort / pin / unpin rules of the state machines over a planner ``self.p`` and its
    block manager ``self.bm``; subclasses add their own model, steps and invariants."""

    def __init__(self):
        super().__init__()
        self.live = {}
        self.pins = []
        self.next_id = 0

    @rule(prefix=st.integers(0, 2), tail=st.lists(st.integers(0, 4), max_size=6), max_new=st.integers(0, 6),
          prio=st.integers(0, 2))
    def add(self, prefix, tail, max_new, prio):
        s = R(self.next_id, PREFIXES[prefix] + tail, max_new=max_new, priority=prio)
        self.next_id += 1
        try:
            queued = self.p.add(s)
        except CapacityError:
            return
        if queued:
            self.live[s.request_id] = s
        else:
            assert s.status is RequestStatus.FINISHED_LENGTH

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def abort(self, data):
        rid = data.draw(st.sampled_from(sorted(self.live)))
        s = self.p.abort(rid)
        assert s.status is RequestStatus.FINISHED_ABORTED and s.block_table == []
        del self.live[rid]

    @rule(prefix=st.integers(0, 2))
    def pin(self, prefix):
        if len(self.pins) < 2:
            try:
                self.pins.append(self._pin(PREFIXES[prefix]))
            except CapacityError:  # the planner refuses a pin that would strand a live request
                pass

    def _pin(self, tokens):
        return self.p.pin_prefix(tokens)

    @precondition(lambda self: self.pins)
    @rule()
    def unpin(self):
        self.bm.unpin(self.pins.pop())


class BlockAccounting(PlannerRules):
    placement = FreeListPlacement  # tests/kv_arena/test_runs.py runs it with RunPlacement

    num_blocks = 14

    def __init__(self):
        super().__init__()
        self.bs = 2
        self.bm = BlockManager(self.num_blocks, self.bs, placement=self.placement)
        cfg = PlannerConfig(max_num_batched_tokens=8, max_num_seqs=4, prefill_chunk_size=3, policy="priority")
        self.p = Planner(cfg, self.bm)
        self.fake = FakeKV(self.bm)

    @rule(n=st.integers(1, 4))
    def step(self, n):
        for _ in range(n):
            if not self.p.has_unfinished():
                return
            plan = self.p.schedule()
            self.fake.run(plan)
            for s in self.p.update(plan, [tok_fn(s) for s in plan.sampling]):
                assert s.is_finished and s.block_table == []
                del self.live[s.request_id]

    def _pin(self, tokens):  # behind the planner's back: the block manager alone checks nothing
        return self.bm.pin_prefix(tokens)

    @invariant()
    def kv_intact(self):
        self.fake.check_all(self.p)
        self.fake.check_index()

    @invariant()
    def every_block_accounted_once(self):
        alloc = self.bm.allocator
        expect = [0] * self.bm.num_blocks
        for s in self.live.values():
            if s.status is RequestStatus.RUNNING:
                assert len(s.block_table) == -(-s.num_computed_tokens // self.bs)
            else:
                assert s.block_table == [] and s.num_computed_tokens == 0
            for b in s.block_table:
                expect[b] += 1
        for pages in self.pins:
            for b in pages:
                expect[b] += 1
        rooms = room_blocks(self.bm, self.live.values())
        for b in rooms:
            expect[b] += 1
        assert [alloc.refcount(b) for b in range(self.bm.num_blocks)] == expect
        assert alloc.num_free == expect.count(0)
        assert sorted(alloc.free_pages()) == [b for b in range(self.bm.num_blocks) if expect[b] == 0]
        check_placement_stats(self.bm, self.live.values())

    def teardown(self):
        drive(self.p, self.fake)
        for pages in self.pins:
            self.bm.unpin(pages)
        st_ = self.bm.allocator.stats()
        assert st_.free_pages == self.bm.num_blocks and st_.total_refs == 0
        assert st_.cached_free_pages == len(self.bm.prefix_cache)


TestBlockAccounting = BlockAccounting.TestCase
TestBlockAccounting.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)


def test_random_workload_with_shared_prefixes_kv_correct():
    rng = random.Random(7)
    for trial in range(6):
        bs = rng.choice([1, 2, 4])
        bm = BlockManager(rng.randint(12, 40), bs)
        cfg = PlannerConfig(max_num_batched_tokens=rng.randint(4, 24), max_num_seqs=4,
                            prefill_chunk_size=rng.choice([None, 3, 5]), policy=rng.choice(["fcfs", "priority"]))
        p = Planner(cfg, bm)
        fake = FakeKV(bm)
        prefixes = [[rng.randint(0, 3) for _ in range(rng.randint(2, 12))] for _ in range(3)]
        n_added = 0
        for step in range(400):
            if step < 60 and rng.random() < 0.4:
                toks = rng.choice(prefixes) + [rng.randint(0, 3) for _ in range(rng.randint(0, 6))]
                try:
                    p.add(R((trial, step), toks, max_new=rng.randint(1, 8), priority=rng.randint(0, 2)))
                    n_added += 1
                except CapacityError:
                    pass
            if p.has_unfinished():
                plan = p.schedule()
                fake.run(plan)
                p.update(plan, [tok_fn(s) for s in plan.sampling])
        drive(p, fake)
        assert bm.num_free_blocks == bm.num_blocks and n_added > 0


def test_append_decode_slots_all_or_nothing():
    kv = BlockManager(4, 2)
    seqs = [RequestState(i, [i], max_new_tokens=3) for i in range(2)]
    for s in seqs:
        assert kv.allocate(s, 1)
        s.output_token_ids.append(5)  # as if it sampled one token and decoded it
        s.num_output_tokens, s.num_computed_tokens = 1, 2
    assert [s.block_table for s in seqs] == [[0], [1]]  # the free list's order
    assert not kv.append_decode_slots(seqs + seqs[:1])  # 3 blocks wanted, 2 free
    assert kv.num_free_blocks == 2 and len(kv.prefix_cache) == 0
    assert [s.block_table for s in seqs] == [[0], [1]]
    assert kv.append_decode_slots(seqs) and kv.num_free_blocks == 0
    assert [s.block_table for s in seqs] == [[0, 2], [1, 3]]
    # the blocks that just filled are registered: (0, 5) and (1, 5)
    assert kv.prefix_cache.tokens_of(0) == (0, 5) and kv.prefix_cache.tokens_of(1) == (1, 5)
    assert [s.num_hashed_blocks for s in seqs] == [1, 1]
    for s in seqs:
        kv.free(s)
    assert kv.num_free_blocks == 4 and kv.stats()["block_tables"] == 0


def test_constructor_validates_and_maps_the_allocators_names():
    from llmds.memory.paged_allocator import PagedAllocator

    pool = PagedAllocator(4, 10)  # page_size 4, max_pages 10
    bm = BlockManager(10, 4, allocator=pool)
    assert (bm.num_blocks, bm.block_size, bm.allocator) == (10, 4, pool)
    for kw in (dict(num_blocks=0), dict(block_size=0), dict(num_blocks=2.0), dict(enable_prefix_caching=1),
               dict(allocator=object()), dict(allocator=PagedAllocator(4, 9))):
        with pytest.raises(ValidationError):
            BlockManager(**(dict(num_blocks=10, block_size=4) | kw))
