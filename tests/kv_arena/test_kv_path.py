"""The KV path end to end: planner → block manager → block ids → KVStorage.

A hypothesis state machine drives the planner, its BlockManager and one KVStorage together,
with a CortexStream ``TensorKVCache`` sharing the same block manager and tensors: requests are
added, steps run (a fake model writes every computed position's K/V into the storage through
the block tables), steps fail and are cancelled, requests are aborted and preempted, prefixes
pinned, arena requests allocated, grown, written and freed.  After every rule:

* every running request reads back, through its block table, exactly the K/V of its computed
  positions (a K/V value names the token prefix it was computed from, so a shared prefix block
  holds the same values for every reader), and every indexed prefix block holds its prefix's K/V;
* the blocks in use are exactly the block manager's tables (planner and arena requests), its
  pins and its growth rooms, each counted once per holder: nothing leaks, nothing is shared
  that should not be;
* the placement counters (tables, contiguous tables, rooms) equal a recount.

At the end everything is drained: the pool is entirely free.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from hypothesis import settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import invariant, precondition, rule  # noqa: E402
from tests.engine.kv.test_block_manager import PlannerRules, check_placement_stats, room_blocks, tok_fn  # noqa: E402

from llmds.engine.kv.block_manager import BlockManager  # noqa: E402
from llmds.kv_arena.arena import TensorKVCache  # noqa: E402
from llmds.kv_arena.runs import RunPlacement  # noqa: E402
from llmds.engine.kv.storage import KVStorage  # noqa: E402
from llmds.engine.sched.planner import Planner, PlannerConfig  # noqa: E402
from llmds.engine.request import RequestStatus  # noqa: E402

BS, NUM_BLOCKS, LAYERS = 2, 18, 2
GARBAGE = -1.0


def code(tokens) -> float:
    """The K/V a position holds: a function of the token prefix up to it (exact in float64)."""
    return float(hash(tuple(tokens)) % (1 << 40))


def expected_kv(prefix_codes, layer):
    k = torch.tensor([[c + layer, i] for i, c in enumerate(prefix_codes)], dtype=torch.float64).reshape(-1, 1, 2)
    return k, -k


class KVPath(PlannerRules):
    def __init__(self):
        super().__init__()
        self.bm = BlockManager(NUM_BLOCKS, BS, placement=RunPlacement)  # the arena's views want runs
        self.storage = KVStorage(LAYERS, 1, 2, NUM_BLOCKS, BS, torch.float64)
        self.storage.warmup()
        cfg = PlannerConfig(max_num_batched_tokens=8, max_num_seqs=4, prefill_chunk_size=3, policy="priority")
        self.p = Planner(cfg, self.bm)
        self.arena = TensorKVCache.over(self.storage, self.bm)
        self.arena_rows: dict[int, dict[int, float]] = {}  # arena request -> {position: code written}
        self.prefix_of: dict[float, tuple] = {}  # K/V code -> the token prefix it was computed from

    # ------------------------------------------------------------ the fake model
    def _codes(self, s, upto):
        toks = s.all_token_ids
        out = []
        for i in range(upto):
            c = code(toks[: i + 1])
            self.prefix_of[c] = tuple(toks[: i + 1])
            out.append(c)
        return out

    def _read(self, s, n):
        return [self.storage.view(layer, s.block_table, n, self.bm.is_contiguous(s)) for layer in range(LAYERS)]

    def _check_request(self, s):
        codes = self._codes(s, s.num_computed_tokens)
        for layer, (k, v) in enumerate(self._read(s, s.num_computed_tokens)):
            ek, ev = expected_kv(codes, layer)
            assert torch.equal(k, ek) and torch.equal(v, ev), f"request {s.request_id}: KV not intact"

    def _write(self, s, n, garbage=False):
        start = s.num_computed_tokens
        slots = self.storage.slot_mapping(s.block_table, start, start + n)
        codes = self._codes(s, start + n)[start:]
        for layer in range(LAYERS):
            k, v = expected_kv(codes, layer)
            k[:, 0, 1] += start  # positions
            v[:, 0, 1] -= start
            if garbage:
                k.fill_(GARBAGE)
                v.fill_(GARBAGE)
            self.storage.write(layer, slots, k, v)

    def _run(self, plan, fail_at=None):
        """Run plan items in plan order (a later prefill may read an earlier one's blocks)."""
        items = [(s, 1) for s in plan.decode] + list(plan.prefill)
        for i, (s, n) in enumerate(items):
            self._check_request(s)
            self._write(s, n, garbage=(i == fail_at))
            if i == fail_at:
                return

    # ------------------------------------------------------------ rules: planner (+ PlannerRules)
    @rule()
    def step(self):
        if not self.p.has_unfinished():
            return
        plan = self.p.schedule()
        self._run(plan)
        for s in self.p.update(plan, [tok_fn(s) for s in plan.sampling]):
            assert s.is_finished and s.block_table == []
            del self.live[s.request_id]

    @rule(data=st.data())
    def failed_step(self, data):
        if not self.p.has_unfinished():
            return
        plan = self.p.schedule()
        items = len(plan.decode) + len(plan.prefill)
        self._run(plan, fail_at=data.draw(st.integers(0, max(0, items - 1))) if items else None)
        assert self.p.cancel(plan) == []
        for s in plan.preempted:
            assert s.block_table == [] and s.status is RequestStatus.PREEMPTED

    @precondition(lambda self: any(s.status is RequestStatus.RUNNING for s in self.live.values()))
    @rule(data=st.data())
    def preempt(self, data):
        rid = data.draw(st.sampled_from(sorted(r for r, s in self.live.items() if s.status is RequestStatus.RUNNING)))
        s = self.p.preempt(rid)
        assert s.status is RequestStatus.PREEMPTED and s.block_table == [] and s.num_computed_tokens == 0

    # ------------------------------------------------------------ rules: the arena on the same pool
    @rule(rid=st.integers(0, 2), prompt=st.integers(1, 5), extra=st.integers(0, 4), reserve=st.booleans())
    def arena_allocate(self, rid, prompt, extra, reserve):
        if rid in self.arena_rows:
            return
        if self.arena.allocate_for(rid, prompt, prompt + extra, reserve=reserve):
            self.arena_rows[rid] = {}
            self._arena_write(rid, range(prompt))

    @precondition(lambda self: self.arena_rows)
    @rule(data=st.data(), n=st.integers(1, 3))
    def arena_append(self, data, n):
        rid = data.draw(st.sampled_from(sorted(self.arena_rows)))
        used = self.arena.used_tokens(rid)
        if self.arena.append_tokens(rid, n):
            self._arena_write(rid, range(used, used + n))

    @precondition(lambda self: self.arena_rows)
    @rule(data=st.data())
    def arena_free(self, data):
        rid = data.draw(st.sampled_from(sorted(self.arena_rows)))
        assert self.arena.free_for(rid)
        del self.arena_rows[rid]

    def _arena_write(self, rid, positions):
        rows = self.arena_rows[rid]
        for pos in positions:
            rows[pos] = code(("arena", rid, pos))
        for layer in range(LAYERS):
            k, v = expected_kv([rows[p] for p in positions], layer)
            self.arena.write(rid, layer, list(positions), k, v)

    # ------------------------------------------------------------ invariants
    @invariant()
    def kv_intact(self):
        for s in self.p.running:
            self._check_request(s)
        for rid, rows in self.arena_rows.items():
            for layer in range(LAYERS):
                k = self.arena.k_view(rid, layer)
                assert [float(k[p, 0, 0]) - layer for p in sorted(rows)] == [rows[p] for p in sorted(rows)]

    @invariant()
    def indexed_blocks_hold_their_prefix(self):
        """Every indexed block (live or cached-free) holds the computed K/V of the prefix its chain
        key names: slot j holds the code of that prefix up to its j-th token."""
        pc = self.bm.prefix_cache
        for b in range(NUM_BLOCKS):
            if pc.key_of(b) is None:
                continue
            k = self.storage.k_layer(0)[b * BS : (b + 1) * BS, 0]
            assert (k[:, 1] >= 0).all(), f"indexed block {b} holds uncomputed KV"
            full = self.prefix_of[float(k[-1, 0])]
            assert len(full) % BS == 0 and full[-BS:] == pc.tokens_of(b), f"indexed block {b}: wrong tokens"
            assert pc.chain_keys(full, len(full) // BS)[-1] == pc.key_of(b), f"indexed block {b}: wrong prefix"
            start = len(full) - BS
            assert [float(x) for x in k[:, 0]] == [code(full[: start + j + 1]) for j in range(BS)]
            assert [int(x) for x in k[:, 1]] == list(range(start, start + BS))

    @invariant()
    def blocks_in_use_are_exactly_the_tables(self):
        alloc = self.bm.allocator
        seqs = list(self.live.values()) + [e.seq for e in self.arena._seqs.values()]
        expect = [0] * NUM_BLOCKS
        for s in seqs:
            for b in s.block_table:
                expect[b] += 1
        for pages in self.pins:
            for b in pages:
                expect[b] += 1
        for b in room_blocks(self.bm, seqs):
            expect[b] += 1
        assert [alloc.refcount(b) for b in range(NUM_BLOCKS)] == expect
        for s in self.live.values():  # a table holds exactly the computed tokens between steps
            if s.status is RequestStatus.RUNNING:
                assert len(s.block_table) == -(-s.num_computed_tokens // BS)
            else:
                assert s.block_table == []
        shared = [b for b in range(NUM_BLOCKS) if expect[b] > 1]
        assert all(self.bm.prefix_cache.is_indexed(b) for b in shared), "only prefix blocks are shared"
        check_placement_stats(self.bm, seqs)

    def teardown(self):
        for rid in list(self.arena_rows):  # the arena's requests hold blocks the planner may need
            self.arena_free_id(rid)
        for _ in range(500):
            if not self.p.has_unfinished():
                break
            self.step()
        assert not self.p.has_unfinished()
        while self.pins:
            self.p.unpin(self.pins.pop())
        stats = self.bm.allocator.stats()
        assert stats.free_pages == NUM_BLOCKS and stats.total_refs == 0
        assert stats.cached_free_pages == len(self.bm.prefix_cache)
        bm = self.bm.stats()
        assert (bm["block_tables"], bm["room_blocks"], bm["num_free_blocks"]) == (0, 0, NUM_BLOCKS)

    def arena_free_id(self, rid):
        assert self.arena.free_for(rid)
        del self.arena_rows[rid]


TestKVPath = KVPath.TestCase
TestKVPath.settings = settings(max_examples=80, stateful_step_count=40, deadline=None)
