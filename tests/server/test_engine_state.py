"""The engine view's snapshot and feed, without a model: a real planner and block manager under a
stand-in engine (exact block states), and the feed's rate bound and change events on a fake clock."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import numpy as np

from llmds.engine.kv.block_manager import BlockManager
from llmds.engine.metrics import EngineMetrics
from llmds.engine.request import RequestState
from llmds.engine.sched.planner import Planner, PlannerConfig
from llmds.server.engine_state import BLOCK_STATES, EngineFeed, block_states, snapshot

BS = 4


def _engine(num_blocks: int = 16):
    bm = BlockManager(num_blocks, BS)
    planner = Planner(PlannerConfig(max_num_batched_tokens=64, max_num_seqs=2), kv=bm)
    return SimpleNamespace(block_manager=bm, planner=planner, metrics=EngineMetrics(), num_blocks=num_blocks,
                           config=SimpleNamespace(block_size=BS))


def _run_prefill(eng, *prompts, name="r"):
    for i, p in enumerate(prompts):
        eng.planner.add(RequestState(f"{name}{i}", p, max_new_tokens=4))
    plan = eng.planner.schedule()
    eng.planner.update(plan, [7] * len(plan.sampling))
    return plan


def test_block_states_free_running_shared_cached_pinned():
    eng = _engine()
    shared = list(range(1, 9))  # two full blocks both prompts start with
    _run_prefill(eng, shared + [20, 21, 22], shared + [30])  # third request waits (max_num_seqs=2)
    bm = eng.block_manager
    tables = [s.block_table for s in eng.planner.running]
    states = block_states(bm)
    assert tables[0][:2] == tables[1][:2]  # the prefix is shared by reference
    assert [states[b] for b in tables[0][:2]] == [BLOCK_STATES.index("shared")] * 2
    assert states[tables[0][2]] == BLOCK_STATES.index("running")
    assert int((states == 0).sum()) == bm.num_free_blocks
    for s in list(eng.planner.running):
        eng.planner.abort(s.request_id)
    states = block_states(bm)
    assert [states[b] for b in tables[0][:2]] == [BLOCK_STATES.index("cached")] * 2  # freed, reusable
    pinned = bm.pin_prefix(shared)
    assert pinned == tables[0][:2]
    states = block_states(bm)
    assert [states[b] for b in pinned] == [BLOCK_STATES.index("pinned")] * 2
    assert set(np.flatnonzero(states > 1)) == set(pinned)


def test_snapshot_lists_requests_and_counts_blocks():
    eng = _engine()
    _run_prefill(eng, list(range(1, 10)), list(range(50, 56)))
    eng.planner.add(RequestState("late", list(range(90, 95)), max_new_tokens=2))
    snap = snapshot(eng)
    assert snap["num_running"] == 2 and snap["num_waiting"] == 1
    assert {r["id"] for r in snap["running"]} == {"r0", "r1"}
    r0 = next(r for r in snap["running"] if r["id"] == "r0")
    assert r0 == {"id": "r0", "prompt_tokens": 9, "cached_tokens": 0, "computed_tokens": 9, "output_tokens": 1,
                  "max_tokens": 4, "blocks": 3, "priority": 0, "preemptions": 0, "phase": "decode"}
    assert snap["waiting"] == [{"id": "late", "prompt_tokens": 5, "output_tokens": 0, "max_tokens": 2,
                                "priority": 0, "preemptions": 0}]
    assert sum(snap["block_counts"].values()) == 16 and snap["block_counts"]["running"] == 3 + 2
    assert snap["blocks"].dtype == np.uint8 and snap["blocks"].shape == (16,)
    light = snapshot(eng, detail=False)
    assert "blocks" not in light and "running" not in light and light["num_running"] == 2


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _parse(raw: bytes):
    kind, data = raw.decode().strip().split("\n")
    return kind.removeprefix("event: "), json.loads(data.removeprefix("data: "))


def test_feed_takes_one_snapshot_per_interval_for_every_reader():
    eng, clock = _engine(), FakeClock()
    reads = []

    async def read(detail):
        reads.append(detail)
        await asyncio.sleep(0)
        return snapshot(eng, detail)

    async def body():
        feed = EngineFeed(read, interval=0.25, clock=clock)
        await asyncio.gather(*(feed.latest() for _ in range(10)))  # concurrent readers share one read
        assert reads == [True]
        clock.t = 0.2
        await feed.state_json()
        assert reads == [True]
        clock.t = 0.3
        body = await feed.state_json()
        assert reads == [True, True] and body["blocks"] == "0" * 16 and body["block_states"] == BLOCK_STATES

    asyncio.run(body())


def test_events_send_the_state_then_only_changes():
    eng, clock = _engine(), FakeClock()

    async def read(detail):
        return snapshot(eng, detail)

    async def body():
        feed = EngineFeed(read, interval=0.0, heartbeat=1e9, clock=clock)
        feed.history.append([0.0, 0, 0, 0.0, 0, 0])
        events = feed.events()
        kind, first = _parse(await events.__anext__())
        assert kind == "state" and first["blocks"] == "0" * 16 and first["history"] == [[0.0, 0, 0, 0.0, 0, 0]]
        _run_prefill(eng, list(range(1, 6)))  # 2 blocks
        clock.t += 1
        kind, delta = _parse(await events.__anext__())
        table = eng.planner.running[0].block_table
        assert kind == "delta" and delta["block_changes"] == {"i": sorted(table), "s": "22"}
        assert delta["num_running"] == 1 and "blocks" not in delta
        _run_prefill(eng, list(range(100, 100 + 4 * 6)), name="big")  # a quarter and more of the map changes
        clock.t += 1
        kind, delta = _parse(await events.__anext__())
        assert len(delta["blocks"]) == 16 and "block_changes" not in delta
        feed.history.append([1.0, 5, 1, 0.1, 1, 0])
        clock.t += 1
        kind, delta = _parse(await events.__anext__())
        assert delta.keys() == {"sample", "time"} and delta["sample"] == [1.0, 5, 1, 0.1, 1, 0]
        await events.aclose()

    asyncio.run(body())
