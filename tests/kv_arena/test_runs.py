"""RunPlacement: block tables as runs of consecutive blocks with growth rooms (the arena's placement).

Exact block ids and room ends, rooms given back before cached blocks are evicted, a cancelled
step's blocks back in the room; and the block manager's accounting state machine
(``tests/engine/kv/test_block_manager.py``) run with this placement.
"""

from __future__ import annotations

from hypothesis import settings

from llmds.engine.kv.block_manager import BlockManager
from llmds.engine.request import RequestState
from llmds.engine.sched.planner import Planner, PlannerConfig
from llmds.kv_arena.runs import RunPlacement
from tests.engine.kv.test_block_manager import BlockAccounting, R, drive


def room_end(bm: BlockManager, seq: RequestState) -> int:
    return bm.placement.room_end(seq)


class RunAccounting(BlockAccounting):
    placement = RunPlacement


TestRunAccounting = RunAccounting.TestCase
TestRunAccounting.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)


def test_append_decode_slots_takes_each_rooms_next_block_all_or_nothing():
    kv = BlockManager(4, 2, placement=RunPlacement)
    seqs = [RequestState(i, [i], max_new_tokens=3) for i in range(2)]
    for s in seqs:
        assert kv.allocate(s, 1)
        s.output_token_ids.append(5)  # as if it sampled one token and decoded it
        s.num_output_tokens, s.num_computed_tokens = 1, 2
    # each table is placed with a room for its peak (2 blocks): [0] + room [1], [2] + room [3]
    assert [s.block_table for s in seqs] == [[0], [2]] and kv.stats()["room_blocks"] == 2
    assert not kv.append_decode_slots(seqs + seqs[:1])  # 3 blocks wanted, 2 free
    assert kv.num_free_blocks == 2 and len(kv.prefix_cache) == 0
    assert [s.block_table for s in seqs] == [[0], [2]] and kv.stats()["room_blocks"] == 2
    assert kv.append_decode_slots(seqs) and kv.num_free_blocks == 0
    assert [s.block_table for s in seqs] == [[0, 1], [2, 3]] and kv.stats()["contiguous_tables"] == 2
    # the blocks that just filled are registered: (0, 5) and (1, 5)
    assert kv.prefix_cache.tokens_of(0) == (0, 5) and kv.prefix_cache.tokens_of(2) == (1, 5)
    assert [s.num_hashed_blocks for s in seqs] == [1, 1]
    for s in seqs:
        kv.free(s)
    assert kv.num_free_blocks == 4 and kv.stats()["block_tables"] == 0


def test_tables_are_runs_with_growth_rooms_up_to_the_peak():
    bm = BlockManager(16, 4, placement=RunPlacement)
    a = RequestState("a", num_prompt_tokens=5, max_new_tokens=8)  # peak: 12 KV tokens = 3 blocks
    b = RequestState("b", num_prompt_tokens=4, max_new_tokens=1)  # peak 1 block: no room
    assert bm.allocate(a, 5) and bm.allocate(b, 4)
    assert a.block_table == [0, 1] and room_end(bm, a) == 3 and b.block_table == [3]
    st_ = bm.stats()
    assert (st_["block_tables"], st_["contiguous_tables"], st_["room_blocks"]) == (2, 2, 1)
    assert bm.num_free_blocks == 13 and bm.allocator.num_free == 12 and bm.usage() == 3 / 16
    a.num_output_tokens, a.num_computed_tokens = 4, 8
    assert bm.append_slots(a, 1) and a.block_table == [0, 1, 2] and room_end(bm, a) == 0  # from the room
    assert bm.is_contiguous(a) and bm.stats()["room_blocks"] == 0
    a.num_output_tokens, a.num_computed_tokens = 7, 12  # past its peak: no room, the next block is 3 (b's)
    assert bm.append_slots(a, 0) and bm.append_slots(a, 0)
    a.num_output_tokens = 8
    assert bm.append_slots(a, 1) and a.block_table == [0, 1, 2, 4] and not bm.is_contiguous(a)
    assert bm.stats()["contiguous_tables"] == 1
    bm.free(b)
    c = RequestState("c", num_prompt_tokens=4, max_new_tokens=5)  # peak 2: head run [3, 5, ...] is too short
    assert bm.allocate(c, 4) and c.block_table == [5] and room_end(bm, c) == 7  # first free run that holds it


def test_rooms_are_given_back_before_cached_blocks_are_evicted():
    bm = BlockManager(8, 2, placement=RunPlacement)
    warm = R("warm", [1, 2, 3, 4, 9], max_new=1)
    assert bm.allocate(warm, 5)
    bm.free(warm)  # blocks 0, 1 hold [1, 2], [3, 4]: cached, free
    x = RequestState("x", num_prompt_tokens=2, max_new_tokens=7)  # peak 4 blocks: [2] + room [3, 6)
    assert bm.allocate(x, 2) and x.block_table == [2] and room_end(bm, x) == 6
    y = RequestState("y", num_prompt_tokens=6, max_new_tokens=1)  # 3 blocks; only 6, 7 are uncached free
    assert bm.allocate(y, 6) and y.block_table == [3, 4, 5]  # x's room was given back, not a cached block
    assert room_end(bm, x) == 0 and bm.evictions == 0
    z = RequestState("z", num_prompt_tokens=4, max_new_tokens=1)
    assert bm.allocate(z, 4) and z.block_table == [6, 7] and bm.evictions == 0
    again = R("again", [1, 2, 3, 4, 5])  # the cached prefix survived
    assert bm.match_prefix(again) == 4


def test_rollback_returns_a_runs_blocks_to_its_room_and_the_redo_gets_them_back():
    bm = BlockManager(16, 2, placement=RunPlacement)
    p = Planner(PlannerConfig(max_num_batched_tokens=8, max_num_seqs=2, prefill_chunk_size=3), bm)
    a = R("a", range(7), max_new=4)  # peak 5 blocks
    p.add(a)
    plan = p.schedule()
    p.update(plan, [0] * len(plan.sampling))
    before = (list(a.block_table), room_end(bm, a))
    plan = p.schedule()  # a prefills 3 more tokens: one more block from its room
    assert len(a.block_table) == 3
    p.cancel(plan)
    assert (a.block_table, room_end(bm, a)) == before
    plan = p.schedule()
    assert a.block_table == list(range(3)) and bm.is_contiguous(a)
    p.update(plan, [0] * len(plan.sampling))
    drive(p)
    assert bm.num_free_blocks == 16 and bm.stats()["block_tables"] == 0 and bm.allocator.num_free == 16
