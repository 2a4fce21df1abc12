"""Planner: budgets, decode-first, chunking, preemption order, and plan-by-plan equality
with a brute-force reference model (lists re-sorted every step)."""

from __future__ import annotations

import math

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule
from tests.engine.kv.test_block_manager import PREFIXES, BlockAccounting, FakeKV, R, drive, tok_fn

from llmds.engine.kv.block_manager import BlockManager, NullKV
from llmds.engine.sched.planner import KVManager, Planner, PlannerConfig, StepPlan
from llmds.engine.request import RequestState, RequestStatus, SamplingParams
from llmds.errors import CapacityError, NotFoundError, StateError, ValidationError

RUNNING, PREEMPTED = RequestStatus.RUNNING, RequestStatus.PREEMPTED


def req(rid, n, max_new=4, **kw):
    return RequestState(rid, num_prompt_tokens=n, max_new_tokens=max_new, **kw)


def ids(seqs):
    return [s.request_id for s in seqs]


def run_step(p, token_fn=None):
    plan = p.schedule()
    toks = None if token_fn is None else [token_fn(s) for s in plan.sampling]
    return plan, p.update(plan, toks)


# --------------------------------------------------------------------- config / request
def test_config_validation():
    for kw in ({"max_num_batched_tokens": 0}, {"max_num_seqs": 0}, {"prefill_chunk_size": 0},
               {"policy": "lifo"}, {"max_num_batched_tokens": 4, "max_num_seqs": 8},
               {"max_num_seqs": True}, {"prefill_chunk_size": 2.5}):
        with pytest.raises(ValidationError):
            PlannerConfig(**kw)
    assert PlannerConfig(max_num_batched_tokens=64, max_num_seqs=8).prefill_chunk_size == 64


def test_request_and_sampling_validation():
    with pytest.raises(ValidationError):
        RequestState(1)  # no prompt
    with pytest.raises(ValidationError):
        RequestState(1, [1, 2], num_prompt_tokens=3)
    with pytest.raises(ValidationError):
        RequestState(1, num_prompt_tokens=0)
    with pytest.raises(ValidationError):
        RequestState([1], num_prompt_tokens=2)  # unhashable id
    with pytest.raises(ValidationError):
        req(1, 3, max_new=-1)
    with pytest.raises(ValidationError):
        req(1, 3, deadline=float("nan"))
    r = RequestState(0, [5, 6, 7], max_new_tokens=2, stop_token_ids=[9])
    assert (r.request_id, r.num_prompt_tokens, r.num_tokens, r.stop_token_ids) == (0, 3, 3, frozenset({9}))
    for kw in ({"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": 0}, {"max_tokens": -1},
               {"stop_token_ids": [-3]}, {"ignore_eos": 1}, {"temperature": float("inf")}):
        with pytest.raises(ValidationError):
            SamplingParams(**kw)
    sp = SamplingParams(temperature=0, stop_token_ids=[3, 4])
    assert sp.greedy and sp.stop_token_ids == (3, 4)
    assert RequestStatus.FINISHED_LENGTH.finish_reason == "length" and not RequestStatus.RUNNING.is_finished


def test_kv_managers_satisfy_protocol():
    for kv in (NullKV(), BlockManager(8, 4), BlockManager(8, 4)):
        assert isinstance(kv, KVManager)


# --------------------------------------------------------------------- exact small scenarios
def test_chunked_prefill_then_decode_exact():
    p = Planner(PlannerConfig(max_num_batched_tokens=8, max_num_seqs=4, prefill_chunk_size=5))
    p.add(req("a", 12, max_new=3))
    p.add(req("b", 3, max_new=2))
    plans = []
    while p.has_unfinished():
        plan, fin = run_step(p)
        plans.append(([s.request_id for s in plan.decode], [(s.request_id, n) for s, n in plan.prefill],
                      ids(fin)))
    assert plans == [
        ([], [("a", 5), ("b", 3)], []),  # b completes its prompt and samples
        (["b"], [("a", 5)], ["b"]),  # decode first; b reaches max_new=2
        ([], [("a", 2)], []),
        (["a"], [], []),
        (["a"], [], ["a"]),
    ]


def test_prefill_first_runs_prompts_before_decodes_exact():
    """With prefill_first, a step that can prefill does only that; decodes run when no prompt waits."""
    p = Planner(PlannerConfig(max_num_batched_tokens=8, max_num_seqs=4, prefill_chunk_size=5, prefill_first=True))
    p.add(req("a", 12, max_new=3))
    p.add(req("b", 3, max_new=2))
    plans = []
    while p.has_unfinished():
        plan, fin = run_step(p)
        plans.append(([s.request_id for s in plan.decode], [(s.request_id, n) for s, n in plan.prefill],
                      ids(fin)))
    assert plans == [
        ([], [("a", 5), ("b", 3)], []),  # b completes its prompt and samples
        ([], [("a", 5)], []),  # a still prefills: b waits
        ([], [("a", 2)], []),  # a samples its first token
        (["b", "a"], [], ["b"]),  # nothing left to prefill: decode everyone
        (["a"], [], ["a"]),
    ]


@pytest.mark.parametrize("prefill_first", [False, True])
def test_extend_computes_known_outputs_as_one_chunk_beside_the_decodes(prefill_first):
    """A grammar's forced tokens: appended between steps, computed as one chunk riding with the
    decodes (even under prefill_first), then the request samples and decodes again."""
    p = Planner(PlannerConfig(max_num_batched_tokens=16, max_num_seqs=4, prefill_first=prefill_first))
    p.add(RequestState("a", [1, 2, 3], max_new_tokens=8))
    p.add(RequestState("b", [4, 5], max_new_tokens=8))
    run_step(p, lambda s: 7)  # both prefill and sample
    with pytest.raises(StateError):
        p.extend("a", [7] * 7)  # would leave no token to sample
    p.extend("a", [8, 9, 10])
    a = p.get("a")
    assert a.output_token_ids == [7, 8, 9, 10] and a.num_output_tokens == 4
    plan, _ = run_step(p, lambda s: 11)
    assert ids(plan.decode) == ["b"] and [(s.request_id, n) for s, n in plan.prefill] == [("a", 4)]
    assert a.output_token_ids == [7, 8, 9, 10, 11] and a.num_computed_tokens == 7 and a.is_decoding
    plan, _ = run_step(p, lambda s: 12)
    assert ids(plan.decode) == ["b", "a"] and plan.prefill == []
    plan = p.schedule()
    with pytest.raises(StateError):
        p.extend("b", [1])  # a plan is in flight
    p.update(plan, [1, 1])
    with pytest.raises(NotFoundError):
        p.extend("zz", [1])


def test_prefill_first_admissions_keep_a_block_per_decode():
    """Admitting under prefill_first stops where fewer free blocks than running requests would remain."""
    bm = BlockManager(7, 4, enable_prefix_caching=False)
    p = Planner(PlannerConfig(max_num_batched_tokens=64, max_num_seqs=8, prefill_first=True), bm)
    p.add(RequestState("a", list(range(4)), max_new_tokens=8))
    p.add(RequestState("b", list(range(4)), max_new_tokens=8))
    run_step(p, lambda s: 1)  # both prefill (2 blocks) and start decoding
    p.add(RequestState("c", list(range(8)), max_new_tokens=8))  # takes 2 of the 5 free blocks: 3 stay, one each
    plan, _ = run_step(p, lambda s: 1)
    assert [(s.request_id, n) for s, n in plan.prefill] == [("c", 8)] and plan.decode == []
    p.add(RequestState("d", list(range(8)), max_new_tokens=8))  # would leave 0 free for 3 decodes: not admitted
    plan, _ = run_step(p, lambda s: 1)
    assert plan.prefill == [] and ids(plan.decode) == ["a", "b", "c"]
    assert "d" in ids(p.waiting())


def test_decode_first_and_budget_split():
    p = Planner(PlannerConfig(max_num_batched_tokens=10, max_num_seqs=8, prefill_chunk_size=100))
    for i in range(4):
        p.add(req(i, 1, max_new=50))
    run_step(p)  # four 1-token prefills; all sample → decoding
    p.add(req("long", 100, max_new=1))
    plan, _ = run_step(p)
    assert ids(plan.decode) == [0, 1, 2, 3]
    assert [(s.request_id, n) for s, n in plan.prefill] == [("long", 6)]
    assert plan.num_batched_tokens == 10 and plan.num_decode_tokens == 4 and plan.num_prefill_tokens == 6


def test_max_num_seqs_and_queue_blocking():
    p = Planner(PlannerConfig(max_num_batched_tokens=100, max_num_seqs=2))
    for i in range(4):
        p.add(req(i, 3, max_new=2))
    plan, _ = run_step(p)
    assert ids(s for s, _ in plan.prefill) == [0, 1] and p.num_running == 2 and p.num_waiting == 2


def test_max_new_tokens_zero_finishes_at_add():
    p = Planner()
    r = req("z", 5, max_new=0)
    assert p.add(r) is False
    assert r.status is RequestStatus.FINISHED_LENGTH and not p.has_unfinished() and "z" not in p


def test_too_large_request_rejected_at_add():
    p = Planner(PlannerConfig(max_num_batched_tokens=16, max_num_seqs=4), BlockManager(4, 4))
    with pytest.raises(CapacityError, match="prompt of 17 tokens needs 5 blocks"):
        p.add(req("big", 17))
    with pytest.raises(CapacityError, match="lower max_new_tokens"):
        p.add(req("long", 10, max_new=8))  # 17 KV tokens at the end
    assert not p.has_unfinished() and p.num_waiting == 0
    assert p.add(req("ok", 10, max_new=7))  # exactly 16 KV tokens
    while p.has_unfinished():
        run_step(p)


def test_duplicate_and_not_new_rejected():
    p = Planner()
    r = req(0, 3)
    p.add(r)
    with pytest.raises(ValidationError):
        p.add(req(0, 3))
    with pytest.raises(ValidationError):
        p.add(r)
    with pytest.raises(ValidationError):
        p.add("not a request")
    assert p.num_waiting == 1


def test_update_contract_errors_change_nothing():
    p = Planner(PlannerConfig(max_num_batched_tokens=8, max_num_seqs=2))
    p.add(RequestState(1, [1, 2, 3], max_new_tokens=3))
    plan = p.schedule()
    with pytest.raises(StateError):
        p.schedule()
    with pytest.raises(StateError):
        p.update(StepPlan(99, [], [], [], 0))
    with pytest.raises(ValidationError, match="1 requests"):
        p.update(plan, [1, 2])
    with pytest.raises(NotFoundError):
        p.update(plan, [1], finished_ids=["nope"])
    s = p.get(1)
    assert (s.num_computed_tokens, s.num_output_tokens) == (0, 0)
    p.update(plan, [7])
    assert (s.num_computed_tokens, s.output_token_ids) == (3, [7])


def test_stop_tokens_and_caller_finish():
    p = Planner(PlannerConfig(max_num_batched_tokens=8, max_num_seqs=4))
    a = RequestState("a", [1, 2], max_new_tokens=10, stop_token_ids=[0])
    b = RequestState("b", [1, 2], max_new_tokens=10)
    p.add(a)
    p.add(b)
    plan, fin = run_step(p, lambda s: 5)
    plan, fin = run_step(p, lambda s: 0 if s is a else 5)
    assert fin == [a] and a.status is RequestStatus.FINISHED_STOPPED and a.output_token_ids == [5, 0]
    plan = p.schedule()
    fin = p.update(plan, [4], finished_ids=["b"])
    assert fin == [b] and b.status is RequestStatus.FINISHED_STOPPED and b.finish_reason == "stop"
    assert not p.has_unfinished()


def test_abort_waiting_running_and_in_flight():
    kv = BlockManager(16, 4)
    p = Planner(PlannerConfig(max_num_batched_tokens=8, max_num_seqs=2), kv)
    for i in range(3):
        p.add(req(i, 4, max_new=5))
    run_step(p)
    assert p.abort(2).status is RequestStatus.FINISHED_ABORTED  # waiting
    assert p.abort(0).status is RequestStatus.FINISHED_ABORTED and kv.num_free_blocks == 15  # running
    assert p.abort("unknown") is None and p.abort(0) is None
    plan = p.schedule()
    s1 = p.abort(1)  # in flight: deferred to update
    assert s1.status is RUNNING
    fin = p.update(plan)
    assert fin == [s1] and s1.status is RequestStatus.FINISHED_ABORTED and s1.num_output_tokens == 2
    assert kv.num_free_blocks == 16 and not p.has_unfinished()


def test_lengths_only_update_counts_outputs():
    p = Planner(PlannerConfig(max_num_batched_tokens=8, max_num_seqs=2), BlockManager(8, 2))
    r = req("x", 3, max_new=4)
    p.add(r)
    n = 0
    while p.has_unfinished():
        run_step(p)
        n += 1
    assert n == 4 and r.num_output_tokens == 4 and r.output_token_ids == [] and r.num_tokens == 7


# --------------------------------------------------------------------- preemption
def _fill_decoders(policy, prios):
    """len(prios) one-block requests decoding on a pool with exactly one block each."""
    kv = BlockManager(len(prios), 4)
    p = Planner(PlannerConfig(max_num_batched_tokens=64, max_num_seqs=8, policy=policy), kv)
    for i, pr in enumerate(prios):
        p.add(req(i, 4, max_new=4, priority=pr))
    run_step(p)  # prefill 4 tokens each (one full block), sample → the next decode needs a block
    return p, kv


def test_preemption_fcfs_most_recently_admitted_first():
    p, kv = _fill_decoders("fcfs", [0, 0, 0, 0])
    # every decode now needs a 2nd block; none free → victims 3, 2 (each frees one block)
    plan, _ = run_step(p)
    assert ids(plan.preempted) == [3, 2] and ids(plan.decode) == [0, 1]
    for s in plan.preempted:
        assert s.status is PREEMPTED and s.num_computed_tokens == 0 and s.num_preemptions == 1
        assert s.num_output_tokens == 1  # outputs are kept; recomputed later
    # no admission in a step that preempted; queue keeps arrival order
    assert ids(p.waiting()) == [2, 3]


def test_preemption_priority_lowest_priority_then_newest():
    p, kv = _fill_decoders("priority", [1, 5, 5, 0])
    plan, _ = run_step(p)
    assert ids(plan.preempted) == [2, 1] and sorted(ids(plan.decode)) == [0, 3]


def test_preempted_request_back_at_arrival_position_and_finishes():
    kv = BlockManager(2, 4)
    p = Planner(PlannerConfig(max_num_batched_tokens=64, max_num_seqs=8), kv)
    a, b, c = req("a", 4, max_new=4), req("b", 4, max_new=4), req("c", 4, max_new=4)
    for r in (a, b):
        p.add(r)
    run_step(p)
    p.add(c)  # arrives after b
    plan, _ = run_step(p)
    assert plan.preempted == [b] and ids(p.waiting()) == ["b", "c"]
    outs = {}
    while p.has_unfinished():
        _, fin = run_step(p)
        for s in fin:
            outs[s.request_id] = s.num_output_tokens
    assert outs == {"a": 4, "b": 4, "c": 4} and b.num_preemptions >= 1


def test_self_preemption_when_least_urgent():
    kv = BlockManager(3, 2)
    p = Planner(PlannerConfig(max_num_batched_tokens=64, max_num_seqs=8, policy="priority"), kv)
    p.add(req("hi", 3, max_new=4, priority=0))  # 2 blocks
    p.add(req("lo", 2, max_new=4, priority=9))  # 1 block
    run_step(p)  # hi: 3 computed; lo: 2 computed
    plan, _ = run_step(p)  # lo needs a block (2 % 2 == 0), none free: lo is the least urgent → itself
    assert ids(plan.preempted) == ["lo"] and ids(plan.decode) == ["hi"] and kv.num_free_blocks == 1


def test_running_prefill_preempts_scheduled_decode_and_returns_budget():
    kv = BlockManager(4, 2)
    cfg = PlannerConfig(max_num_batched_tokens=8, max_num_seqs=4, prefill_chunk_size=2, policy="priority")
    p = Planner(cfg, kv)
    p.add(req("d", 1, max_new=8, priority=5))  # decodes, low priority
    run_step(p)  # d: prefill 1 token, samples; holds 1 block
    p.add(req("big", 7, max_new=1, priority=0))
    plan, _ = run_step(p)  # d decodes (no new block: 1 % 2 != 0); big prefills 2 tokens (1 block)
    assert ids(plan.decode) == ["d"] and [(s.request_id, n) for s, n in plan.prefill] == [("big", 2)]
    run_step(p)  # d needs a block at 2 computed; big takes another
    assert kv.num_free_blocks == 0
    plan, _ = run_step(p)  # big needs a block, none free: victim d (scheduled decode) is unscheduled
    assert ids(plan.preempted) == ["d"] and plan.decode == []
    assert [(s.request_id, n) for s, n in plan.prefill] == [("big", 2)] and plan.num_batched_tokens == 2


# --------------------------------------------------------------------- queue orders
def _admission_order(policy, reqs, seqs=1):
    p = Planner(PlannerConfig(max_num_batched_tokens=64, max_num_seqs=seqs, policy=policy))
    for r in reqs:
        p.add(r)
    order = []
    while p.has_unfinished():
        plan = p.schedule()
        order += [s.request_id for s, n in plan.prefill if s.num_computed_tokens == 0]
        p.update(plan)
    return order


def test_queue_orders():
    mk = lambda: [req("a", 2, 1, priority=2, deadline=5.0), req("b", 2, 1, priority=1),
                  req("c", 2, 1, priority=1, deadline=-1.5), req("d", 2, 1, priority=0, deadline=5.0)]
    assert _admission_order("fcfs", mk()) == ["a", "b", "c", "d"]
    assert _admission_order("priority", mk()) == ["d", "b", "c", "a"]
    assert _admission_order("edf", mk()) == ["c", "d", "a", "b"]


def test_no_starvation_under_priority_mix():
    p = Planner(PlannerConfig(max_num_batched_tokens=4, max_num_seqs=2, policy="priority"), BlockManager(6, 2))
    low = req("low", 3, max_new=3, priority=10)
    p.add(low)
    step = 0
    while p.has_unfinished():
        if step < 40:  # a stream of urgent requests, then it stops
            p.add(req(("hi", step), 2, max_new=2, priority=0))
        run_step(p)
        step += 1
        assert step < 500
    assert low.status is RequestStatus.FINISHED_LENGTH and low.num_output_tokens == 3


# --------------------------------------------------------------------- reference model
class Ref:
    """Brute-force planner for lengths-only requests on a block-count pool (the documented policy)."""

    def __init__(self, cfg, num_blocks, bs):
        self.cfg, self.bs, self.free = cfg, bs, num_blocks
        self.live, self.decoding, self.prefilling = {}, [], []
        self.arrivals = self.admits = 0

    def qkey(self, r):
        pol = self.cfg.policy
        base = (r["arr"],)
        if pol == "priority":
            return (r["prio"],) + base
        if pol == "edf":
            return (math.inf if r["dl"] is None else r["dl"], r["prio"]) + base
        return base

    def rank(self, r):
        return self.qkey(r)[:-1] + (r["admit"],)

    def add(self, rid, n, max_new, prio, dl):
        if max_new == 0:
            return False
        if max(-(-n // self.bs), -(-(n + max_new - 1) // self.bs)) > self.free + sum(
                r["held"] for r in self.live.values()):
            raise CapacityError("too big")
        self.live[rid] = dict(id=rid, tokens=n, comp=0, out=0, max=max_new, prio=prio, dl=dl, arr=self.arrivals,
                              admit=-1, held=0, st="wait")
        self.arrivals += 1
        return True

    def preempt(self, pre):
        v = max(self.decoding + self.prefilling, key=self.rank)
        (self.decoding if v in self.decoding else self.prefilling).remove(v)
        self.free += v["held"]
        v.update(held=0, comp=0, st="wait")
        pre.append(v)
        return v

    def grow(self, r, n):
        need = -(-(r["comp"] + n) // self.bs) - r["held"]
        if need > self.free:
            return False
        self.free -= max(need, 0)
        r["held"] += max(need, 0)
        return True

    def step(self):
        pre, decode, prefill = [], list(self.decoding), []
        for r in sorted([r for r in decode if r["comp"] % self.bs == 0], key=self.rank):
            while r["st"] == "run" and not self.grow(r, 1):
                if self.preempt(pre) is r:
                    break
        decode = [r for r in decode if r["st"] == "run"]
        budget = self.cfg.max_num_batched_tokens - len(decode)
        for r in sorted(self.prefilling, key=self.rank):
            if budget <= 0:
                break
            if r["st"] != "run":
                continue
            n = min(r["tokens"] - r["comp"], self.cfg.prefill_chunk_size, budget)
            while not self.grow(r, n):
                v = self.preempt(pre)
                if v is r:
                    break
                if v in decode:
                    decode.remove(v)
                    budget += 1
            else:
                prefill.append((r, n))
                budget -= n
        if not pre:
            for r in sorted([r for r in self.live.values() if r["st"] == "wait"], key=self.qkey):
                if budget <= 0 or len(self.decoding) + len(self.prefilling) >= self.cfg.max_num_seqs:
                    break
                n = min(r["tokens"], self.cfg.prefill_chunk_size, budget)
                if not self.grow(r, n):
                    break
                r.update(st="run", admit=self.admits)
                self.admits += 1
                self.prefilling.append(r)
                prefill.append((r, n))
                budget -= n
        return decode, prefill, pre

    def update(self, decode, prefill):
        fin, started = [], []
        for r in decode:
            r["comp"] += 1
            r["tokens"] += 1
            r["out"] += 1
            if r["out"] >= r["max"]:
                fin.append(r)
        for r, n in prefill:
            r["comp"] += n
            if r["comp"] == r["tokens"]:
                r["tokens"] += 1
                r["out"] += 1
                (fin if r["out"] >= r["max"] else started).append(r)
        for r in fin:
            r["st"] = "done"
            self.free += r["held"]
            del self.live[r["id"]]
        self.decoding = [r for r in self.decoding if r["st"] == "run"] + started
        self.prefilling = [r for r in self.prefilling if r["st"] == "run" and r not in started]
        return fin


workloads = st.lists(
    st.tuples(st.integers(0, 12), st.integers(1, 30), st.integers(0, 8), st.integers(0, 3),
              st.one_of(st.none(), st.integers(0, 20).map(float))),
    min_size=1, max_size=14)


@settings(max_examples=200, deadline=None)
@given(work=workloads, budget=st.integers(1, 24), seqs=st.integers(1, 6), chunk=st.one_of(st.none(), st.integers(1, 9)),
       policy=st.sampled_from(["fcfs", "priority", "edf"]), bs=st.integers(1, 6), blocks=st.integers(2, 16))
def test_matches_reference_and_everything_finishes(work, budget, seqs, chunk, policy, bs, blocks):
    seqs = min(seqs, budget)
    cfg = PlannerConfig(max_num_batched_tokens=budget, max_num_seqs=seqs, prefill_chunk_size=chunk, policy=policy)
    kv = BlockManager(blocks, bs)
    p, ref = Planner(cfg, kv), Ref(cfg, blocks, bs)
    arrivals = sorted(enumerate(work), key=lambda x: x[1][0])
    reqs, done, step = {}, set(), 0
    while arrivals or p.has_unfinished():
        while arrivals and arrivals[0][1][0] <= step:
            i, (_, n, mx, pr, dl) = arrivals.pop(0)
            r = req(i, n, max_new=mx, priority=pr, deadline=dl)
            try:
                expect = ref.add(i, n, mx, pr, dl)
            except CapacityError:
                with pytest.raises(CapacityError):
                    p.add(r)
                continue
            assert p.add(r) is expect
            reqs[i] = r
            if not expect:
                done.add(i)
        rd, rp, rpre = ref.step()
        plan = p.schedule()
        assert ids(plan.decode) == [r["id"] for r in rd]
        assert [(s.request_id, n) for s, n in plan.prefill] == [(r["id"], n) for r, n in rp]
        assert ids(plan.preempted) == [r["id"] for r in rpre]
        if plan.preempted:
            event("preempted")
        if any(s.num_computed_tokens + n < s.num_tokens for s, n in plan.prefill):
            event("chunked")
        # budgets
        assert plan.num_batched_tokens == len(plan.decode) + sum(n for _, n in plan.prefill) <= budget
        assert p.num_running <= seqs
        assert all(1 <= n <= cfg.prefill_chunk_size for _, n in plan.prefill)
        assert all(s.num_tokens - s.num_computed_tokens == 1 for s in plan.decode)
        fin = p.update(plan)
        assert ids(fin) == [r["id"] for r in ref.update(rd, rp)]
        done.update(ids(fin))
        assert kv.num_free_blocks == ref.free
        step += 1
        assert step < 3000, "no progress"
    assert done == set(reqs)
    assert all(r.status is RequestStatus.FINISHED_LENGTH and r.num_output_tokens == r.max_new_tokens
               for r in reqs.values())
    assert kv.num_free_blocks == blocks


# --------------------------------------------------------------------- decode batch bookkeeping
def test_counters_exact_through_decode_preempt_and_abort():
    kv = BlockManager(6, 2)
    p = Planner(PlannerConfig(max_num_batched_tokens=16, max_num_seqs=4), kv)
    reqs = [req(i, 3, max_new=6) for i in range(3)]
    for r in reqs:
        p.add(r)
    seen_preempt = False
    while p.has_unfinished():
        plan = p.schedule()
        for s in plan.decode:
            assert s.num_tokens == s.num_prompt_tokens + s.num_output_tokens
            assert s.num_computed_tokens == s.num_tokens - 1 and s.is_decoding
            assert len(s.block_table) == -(-(s.num_computed_tokens + 1) // 2)
        for s in plan.preempted:
            seen_preempt = True
            assert s.num_computed_tokens == 0 and s.num_output_tokens >= 1 and len(s.block_table) == 0
        before = {s.request_id: s.num_output_tokens for s in plan.sampling}
        p.update(plan)
        for rid, n in before.items():
            assert reqs[rid].num_output_tokens == n + 1
        if plan.step_id == 4 and 1 in p:
            s = p.abort(1)
            assert s.num_tokens == 3 + s.num_output_tokens and s.request_id not in p._batch
            frozen = (s.num_computed_tokens, s.num_output_tokens)
    assert seen_preempt
    assert (reqs[1].num_computed_tokens, reqs[1].num_output_tokens) == frozen  # no longer ticking
    assert [r.num_output_tokens for r in (reqs[0], reqs[2])] == [6, 6] and kv.num_free_blocks == 6


def test_update_accepts_numpy_tokens():
    np = pytest.importorskip("numpy")
    p = Planner(PlannerConfig(max_num_batched_tokens=8, max_num_seqs=2))
    a = RequestState("a", [1, 2], max_new_tokens=3)
    p.add(a)
    for t in (5, 6, 7):
        plan = p.schedule()
        p.update(plan, np.array([t], dtype=np.int64))
    assert a.output_token_ids == [5, 6, 7] and a.status is RequestStatus.FINISHED_LENGTH


@settings(max_examples=60, deadline=None)
@given(work=st.lists(st.tuples(st.integers(1, 12), st.integers(1, 10), st.lists(st.integers(0, 5), max_size=2),
                               st.integers(0, 6)), min_size=1, max_size=10),
       budget=st.integers(1, 12), blocks=st.integers(8, 40), prefill_first=st.booleans())
def test_outputs_and_stops_independent_of_scheduling(work, budget, blocks, prefill_first):
    """Request i samples token (i * 7 + k) % 6 at output k: its outputs must be exactly that
    sequence cut at the first stop id (FINISHED_STOPPED) or at max_new (FINISHED_LENGTH),
    whichever step policy runs it, and every request finishes."""
    p = Planner(PlannerConfig(max_num_batched_tokens=budget, max_num_seqs=min(3, budget), prefill_chunk_size=4,
                              prefill_first=prefill_first), BlockManager(blocks, 2))
    reqs, step = [], 0
    arrivals = sorted(enumerate(work), key=lambda x: x[1][3])
    while arrivals or p.has_unfinished():
        while arrivals and arrivals[0][1][3] <= step:
            i, (n, mx, stops, _) = arrivals.pop(0)
            r = RequestState(i, [(i + j) % 4 for j in range(n)], max_new_tokens=mx, stop_token_ids=stops)
            try:
                p.add(r)
            except CapacityError:
                continue
            reqs.append(r)
        plan = p.schedule()
        p.update(plan, [(s.request_id * 7 + s.num_output_tokens) % 6 for s in plan.sampling])
        step += 1
        assert step < 2000
    for r in reqs:
        seq = [(r.request_id * 7 + k) % 6 for k in range(r.max_new_tokens)]
        cut = next((k for k, t in enumerate(seq) if t in r.stop_token_ids), None)
        if cut is None:
            assert r.output_token_ids == seq and r.status is RequestStatus.FINISHED_LENGTH
        else:
            assert r.output_token_ids == seq[: cut + 1] and r.status is RequestStatus.FINISHED_STOPPED
        assert r.num_output_tokens == len(r.output_token_ids)


# --------------------------------------------------------------------- cancel
def _snapshot(p, bm):
    """Everything a cancelled step must leave as it was (no preemption in the step)."""
    alloc, pc = bm.allocator, bm.prefix_cache
    reqs = {rid: (s.status, s.num_computed_tokens, s.num_cached_tokens, s.num_output_tokens, s.num_tokens,
                  list(s.output_token_ids), len(s.block_table)) for rid, s in p._requests.items()}
    return {
        "reqs": reqs,
        "waiting": ids(p.waiting()),
        "running": ids(p.running),
        "refs": [alloc.refcount(b) for b in range(bm.num_blocks)],
        "index": {b: pc.key_of(b) for b in range(bm.num_blocks) if pc.is_indexed(b)},
        "stats": bm.stats(),
        "tables": {rid: list(s.block_table) for rid, s in p._requests.items()},
    }


def _items(plan):
    return (ids(plan.decode), [(s.request_id, n) for s, n in plan.prefill], ids(plan.preempted))


@pytest.mark.parametrize("stop_at", [None, 0, 3])
def test_cancel_rolls_back_exactly_then_the_same_plan_runs(stop_at):
    bm = BlockManager(40, 4)
    p = Planner(PlannerConfig(max_num_batched_tokens=64, max_num_seqs=8, prefill_chunk_size=10), bm)
    fake = FakeKV(bm)
    prefix = list(range(100, 124))  # 6 blocks
    a = R("a", prefix + [1, 2, 3], max_new=3)
    d = R("d", [7, 7, 7, 7], max_new=6)
    p.add(a)
    p.add(d)
    plan = p.schedule()  # a: tokens [0, 10); d: its whole prompt, samples
    fake.run(plan)
    p.update(plan, [tok_fn(s) for s in plan.sampling])
    b, c = R("b", prefix + [9]), R("c", [5] * 9)
    p.add(b)
    p.add(c)
    before = _snapshot(p, bm)
    plan = p.schedule()
    # d decodes across a block boundary (a new block); a's chunk [10, 20) registers blocks 2..4 and
    # b, admitted in the same step, hits them: 20 tokens whose KV this plan has not computed yet
    assert _items(plan) == (["d"], [("a", 10), ("b", 5), ("c", 9)], [])
    assert len(d.block_table) == 2 and b.num_cached_tokens == 20 and b.block_table[:5] == a.block_table[:5]
    assert all(bm.prefix_cache.is_indexed(x) for x in a.block_table[2:5])
    with pytest.raises(StateError):
        p.pin_prefix(prefix)  # would pin blocks whose KV is not computed yet
    fake.run(plan, stop_at=stop_at)  # the model fails on item stop_at (writing garbage), or after all
    assert p.cancel(plan) == []
    assert _snapshot(p, bm) == before
    assert b.status is RequestStatus.WAITING and b.block_table == [] and b.num_cached_tokens == 0
    fake.check_all(p)
    fake.check_index()
    with pytest.raises(StateError):
        p.update(plan)
    with pytest.raises(StateError):
        p.cancel(plan)
    again = p.schedule()
    assert again.step_id == plan.step_id and _items(again) == _items(plan) and b.num_cached_tokens == 20
    fake.run(again)
    p.update(again, [tok_fn(s) for s in again.sampling])
    drive(p, fake)
    assert bm.num_free_blocks == 40 and [r.num_output_tokens for r in (a, b, c, d)] == [3, 2, 2, 6]


def test_cancel_keeps_preemptions_and_returns_boundary_blocks():
    p, kv = _fill_decoders("fcfs", [0, 0, 0, 0])
    plan = p.schedule()
    assert ids(plan.preempted) == [3, 2] and ids(plan.decode) == [0, 1] and kv.num_free_blocks == 0
    assert p.cancel(plan) == []
    # the victims stay preempted (waiting, nothing computed); 0 and 1 gave back their new blocks
    assert [p.get(i).status for i in range(4)] == [RUNNING, RUNNING, PREEMPTED, PREEMPTED]
    assert [len(p.get(i).block_table) for i in range(4)] == [1, 1, 0, 0] and kv.num_free_blocks == 2
    assert [p.get(i).num_computed_tokens for i in range(4)] == [4, 4, 0, 0]
    plan2, _ = run_step(p)
    assert plan2.step_id == plan.step_id and ids(plan2.decode) == [0, 1] and plan2.preempted == []
    while p.has_unfinished():
        run_step(p)
    assert kv.num_free_blocks == 4


def test_cancel_applies_aborts_made_in_flight_and_block_count_rollback():
    kv = BlockManager(16, 4)
    p = Planner(PlannerConfig(max_num_batched_tokens=8, max_num_seqs=4, prefill_chunk_size=3), kv)
    x, y = req("x", 7, max_new=3), req("y", 2, max_new=3)
    p.add(x)
    run_step(p)  # x: 3 of 7 computed, 1 block
    p.add(y)
    plan = p.schedule()  # x: [3, 6) needs a 2nd block; y admitted (1 block)
    assert kv.num_free_blocks == 13
    assert p.abort("x").status is RUNNING  # deferred while in flight
    fin = p.cancel(plan)
    assert fin == [x] and x.status is RequestStatus.FINISHED_ABORTED and "x" not in p
    assert y.status is RequestStatus.WAITING and kv.num_free_blocks == 16 and p.num_waiting == 1
    plan, _ = run_step(p)
    assert plan.step_id == 1 and [(s.request_id, n) for s, n in plan.prefill] == [("y", 2)]


def test_cancel_contract_errors():
    p = Planner()
    with pytest.raises(StateError):
        p.cancel(StepPlan(0, [], [], [], 0))
    p.add(req("a", 3))
    plan = p.schedule()
    with pytest.raises(StateError):
        p.cancel(StepPlan(0, [], [], [], 0))  # not the plan in flight
    p.update(plan)
    with pytest.raises(StateError):
        p.cancel(plan)  # already applied
    s = p.get("a")
    assert (s.num_computed_tokens, s.num_output_tokens) == (3, 1)


def test_preempt_public():
    kv = BlockManager(8, 2)
    p = Planner(PlannerConfig(max_num_batched_tokens=8, max_num_seqs=2), kv)
    p.add(req("a", 3, max_new=3))
    p.add(req("w", 3, max_new=3))
    p.add(req("z", 3, max_new=3))
    run_step(p)
    with pytest.raises(NotFoundError):
        p.preempt("nope")
    with pytest.raises(StateError):
        p.preempt("z")  # waiting
    plan = p.schedule()
    with pytest.raises(StateError):
        p.preempt("a")  # in flight
    p.update(plan)
    a = p.preempt("a")
    assert a.status is PREEMPTED and a.num_computed_tokens == 0 and len(a.block_table) == 0 and a.num_preemptions == 1
    outs = {}
    while p.has_unfinished():
        for s in run_step(p)[1]:
            outs[s.request_id] = s.num_output_tokens
    assert outs == {"a": 3, "w": 3, "z": 3}


class CancelledSteps(BlockAccounting):
    """BlockAccounting's random add/step/abort/pin/unpin, plus steps whose model fails part way and are
    cancelled, pins through the planner (refused when a live request could no longer finish), and
    the checks: a cancelled step advances nothing, indexed blocks hold computed KV, blocks add up.
    A smaller pool than BlockAccounting's, so that pins often leave too little room for a request."""

    num_blocks = 10

    @rule(data=st.data())
    def failed_step(self, data):
        p = self.p
        if not p.has_unfinished():
            return
        before = {rid: (s.status, s.num_computed_tokens, s.num_tokens, list(s.output_token_ids))
                  for rid, s in self.live.items()}
        waiting = set(ids(p.waiting()))
        plan = p.schedule()
        n_items = len(plan.decode) + len(plan.prefill)
        stop_at = data.draw(st.integers(0, n_items), label="stop_at")  # n_items: fails after the model
        self.fake.run(plan, stop_at=stop_at)
        if plan.preempted:
            event("cancelled a step that preempted")
        if any(s.num_cached_tokens for s, _ in plan.prefill):
            event("cancelled a step with prefix hits")
        aborted = set()
        if self.live and data.draw(st.booleans(), label="abort in flight"):
            rid = data.draw(st.sampled_from(sorted(self.live)))
            p.abort(rid)
            aborted.add(rid)
        for s in p.cancel(plan):
            assert s.request_id in aborted and s.status is RequestStatus.FINISHED_ABORTED and s.block_table == []
        for rid in aborted:
            del self.live[rid]
        pre = set(ids(plan.preempted))
        for rid, s in self.live.items():
            status, comp, ntok, outs = before[rid]
            assert (s.num_tokens, s.output_token_ids) == (ntok, outs), "a cancelled step advanced a request"
            if rid in pre:
                assert s.status is PREEMPTED and s.num_computed_tokens == 0
            else:
                assert (s.status, s.num_computed_tokens) == (status, comp)
        assert set(ids(p.waiting())) == (waiting | pre) - aborted
        if data.draw(st.booleans(), label="run the next step at once"):
            plan2 = p.schedule()
            assert plan2.step_id == plan.step_id
            self.fake.run(plan2)
            for s in p.update(plan2, [tok_fn(s) for s in plan2.sampling]):
                del self.live[s.request_id]

    @rule(prefix=st.integers(0, 2))
    def pin(self, prefix):
        if len(self.pins) < 2:
            pc = self.bm.prefix_cache
            refs = [self.bm.allocator.refcount(b) for b in range(self.bm.num_blocks)]
            try:
                self.pins.append(self.p.pin_prefix(PREFIXES[prefix]))
            except CapacityError:
                event("pin refused")
                assert [self.bm.allocator.refcount(b) for b in range(self.bm.num_blocks)] == refs
                assert pc.num_pinned == len({b for pages in self.pins for b in pages})

    @invariant()
    def every_live_request_can_finish(self):
        for s in self.live.values():
            self.bm.check_fits(s)


TestCancelledSteps = CancelledSteps.TestCase
TestCancelledSteps.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


# --------------------------------------------------------------------- pinned blocks and capacity
def _fake_step(p, fake):
    plan = p.schedule()
    fake.run(plan)
    return plan, p.update(plan, [tok_fn(s) for s in plan.sampling])


def _cache_prefix(p, fake, toks):
    """Leave ``toks`` (full blocks) in the prefix cache: run a request with that prompt."""
    p.add(R(("warm", tuple(toks)), list(toks) + [0], max_new=1))
    drive(p, fake)


def test_fit_check_counts_pinned_blocks_and_shared_ones():
    bm = BlockManager(8, 2)
    p = Planner(PlannerConfig(max_num_batched_tokens=8, max_num_seqs=4, prefill_chunk_size=4), bm)
    fake = FakeKV(bm)
    _cache_prefix(p, fake, [1, 2, 3, 4])
    pinned = p.pin_prefix([1, 2, 3, 4])
    assert len(pinned) == 2 and bm.prefix_cache.num_pinned == 2
    # 13 prompt tokens need 7 blocks: the pool has 8 but 2 are pinned and not shared
    with pytest.raises(CapacityError, match=r"only 6 of the pool's 8 blocks are available to it \(2 are pinned"):
        p.add(R("far", range(50, 63), max_new=1))
    with pytest.raises(CapacityError, match="needs 8 blocks"):
        p.add(R("far2", range(50, 62), max_new=4))  # 12 + 3 KV tokens: 8 blocks
    assert not p.has_unfinished()
    # 8 blocks at its peak, 2 of them the pinned prefix it shares: fits
    near = R("near", [1, 2, 3, 4] + list(range(50, 61)), max_new=2)
    assert p.add(near)
    ok = R("ok", range(70, 82), max_new=1)  # 6 blocks
    assert p.add(ok)
    drive(p, fake)
    assert near.num_output_tokens == 2 and near.num_cached_tokens == 4 and ok.num_output_tokens == 1
    assert bm.evictions == 0 or all(bm.prefix_cache.is_indexed(b) for b in pinned)
    p.unpin(pinned)
    assert p.add(R("far", range(50, 63), max_new=1))  # no pins: the whole pool
    drive(p, fake)
    assert bm.num_free_blocks == 8


@pytest.mark.parametrize("state", ["waiting", "running"])
def test_pin_refused_when_a_live_request_could_not_finish(state):
    bm = BlockManager(8, 2)
    p = Planner(PlannerConfig(max_num_batched_tokens=8, max_num_seqs=4, prefill_chunk_size=4), bm)
    fake = FakeKV(bm)
    _cache_prefix(p, fake, [1, 2, 3, 4])
    big = R("big", range(50, 62), max_new=3)  # 12 + 2 KV tokens: 7 blocks of 8
    p.add(big)
    if state == "running":
        _fake_step(p, fake)
        assert big.status is RUNNING
    refs = [bm.allocator.refcount(b) for b in range(8)]
    with pytest.raises(CapacityError, match="would leave request 'big' unable to finish"):
        p.pin_prefix([1, 2, 3, 4])
    assert bm.prefix_cache.num_pinned == 0 and [bm.allocator.refcount(b) for b in range(8)] == refs
    # a request that shares the pinned prefix keeps fitting: that pin is allowed
    p.abort("big")
    sharer = R("sharer", [1, 2, 3, 4] + list(range(50, 60)), max_new=3)  # 16 KV tokens: all 8 blocks
    p.add(sharer)
    pinned = p.pin_prefix([1, 2, 3, 4])
    assert len(pinned) == 2
    drive(p, fake)
    assert sharer.num_output_tokens == 3
    p.unpin(pinned)
    assert bm.num_free_blocks == 8 and bm.prefix_cache.num_pinned == 0


def test_pin_requires_a_prefix_cache():
    p = Planner(kv=BlockManager(4, 2, enable_prefix_caching=False))
    with pytest.raises(StateError):
        p.pin_prefix([1, 2])
    with pytest.raises(StateError):
        p.unpin([0])


@pytest.mark.parametrize("state", ["waiting", "running"])
def test_pin_behind_the_planners_back_is_reported_not_a_livelock(state):
    bm = BlockManager(8, 2)
    p = Planner(PlannerConfig(max_num_batched_tokens=8, max_num_seqs=4, prefill_chunk_size=4), bm)
    fake = FakeKV(bm)
    _cache_prefix(p, fake, [1, 2, 3, 4])
    big = R("big", range(50, 62), max_new=3)  # 7 blocks of 8
    p.add(big)
    if state == "running":
        _fake_step(p, fake)
    pinned = bm.pin_prefix([1, 2, 3, 4])  # directly on the manager: nothing checks the planner's requests
    with pytest.raises(CapacityError, match="'big'.*abort it or unpin"):
        for _ in range(20):  # a running big request preempts itself first, then cannot be readmitted
            _fake_step(p, fake)
    assert big.status is not RUNNING and p.num_running == 0
    with pytest.raises(CapacityError):
        p.schedule()  # still reported (nothing in flight, nothing changed)
    bm.unpin(pinned)
    drive(p, fake)
    assert big.num_output_tokens == 3 and bm.num_free_blocks == 8


# --------------------------------------------------------------------- parallel sampling (n > 1)

def _fork_drive(p, fake, n_kids_of, steps=1000):
    """``drive`` that forks: a request with ``n > 1`` completing its prompt gets ``n - 1`` new
    sequences (ids ``(rid, i)``, first token ``i``); the plan's block copies are applied to ``fake``."""
    finished = []
    for _ in range(steps):
        if not p.has_unfinished():
            return finished
        plan = p.schedule()
        fake.run(plan)
        forks = {s.request_id: [(R((s.request_id, i), s.prompt_token_ids, s.max_new_tokens), i)
                                for i in range(1, s.n)]
                 for s in plan.sampling if s.n > 1 and not s.num_output_tokens}
        n_kids_of.update({rid: len(kids) for rid, kids in forks.items()})
        finished += p.update(plan, [tok_fn(s) for s in plan.sampling], forks=forks)
        for src, dst in plan.copies:
            fake.mem[dst] = list(fake.mem[src])
        fake.check_all(p)
        fake.check_index()
    raise AssertionError("did not finish")


def test_a_request_with_n_forks_sharing_its_full_blocks_and_copying_the_last():
    bm = BlockManager(num_blocks=32, block_size=4)
    p = Planner(PlannerConfig(max_num_batched_tokens=64, max_num_seqs=4), kv=bm)
    fake = FakeKV(bm)
    p.add(R("a", range(10), max_new=5, n=3))
    plan = p.schedule()
    fake.run(plan)
    kids = [(R(("a", i), range(10), 5), 10 + i) for i in (1, 2)]
    p.update(plan, [7], forks={"a": kids})
    a = p.get("a")
    assert a.n == 1 and [k.output_token_ids for k, _ in kids] == [[11], [12]] and a.output_token_ids == [7]
    assert [k.block_table[:2] for k, _ in kids] == [a.block_table[:2]] * 2  # the two full blocks, shared
    assert [bm.allocator.refcount(b) for b in a.block_table] == [3, 3, 1]
    assert plan.copies == [(a.block_table[2], kids[0][0].block_table[2]), (a.block_table[2], kids[1][0].block_table[2])]
    assert bm.num_blocks - bm.num_free_blocks == 5
    for src, dst in plan.copies:
        fake.mem[dst] = list(fake.mem[src])
    finished = drive(p, fake)
    assert sorted(map(str, ids(finished))) == sorted(map(str, ["a", ("a", 1), ("a", 2)]))
    assert all(len(s.output_token_ids) == 5 for s in finished)
    assert bm.num_free_blocks == bm.num_blocks and sum(map(bm.allocator.refcount, range(32))) == 0


def test_n_takes_n_seats_and_a_block_aligned_prompt_copies_nothing():
    bm = BlockManager(num_blocks=32, block_size=4)
    p = Planner(PlannerConfig(max_num_batched_tokens=64, max_num_seqs=4), kv=bm)
    fake = FakeKV(bm)
    p.add(R("a", range(8), max_new=3, n=3))
    p.add(R("b", range(20, 23), max_new=3, n=2))  # 3 + 2 seats > 4: waits
    p.add(R("c", range(30, 33), max_new=3))
    plan = p.schedule()
    assert ids(s for s, _ in plan.prefill) == ["a"]  # b blocks the queue: no overtaking
    fake.run(plan)
    p.update(plan, [1], forks={"a": [(R(("a", 1), range(8), 3), 2), (R(("a", 2), range(8), 3), 3)]})
    assert plan.copies == [] and p.num_running == 3  # 8 tokens: two full blocks, nothing to copy
    assert [bm.allocator.refcount(b) for b in p.get("a").block_table] == [3, 3]
    kids: dict = {}
    finished = _fork_drive(p, fake, kids)
    assert kids == {"b": 1}
    assert sorted(map(str, ids(finished))) == sorted(map(str, ["a", ("a", 1), ("a", 2), "b", ("b", 1), "c"]))
    assert bm.num_free_blocks == bm.num_blocks and sum(map(bm.allocator.refcount, range(32))) == 0


def test_forked_sequences_that_finish_at_once_or_find_no_block():
    bm = BlockManager(num_blocks=3, block_size=4)
    p = Planner(PlannerConfig(max_num_batched_tokens=64, max_num_seqs=4), kv=bm)
    fake = FakeKV(bm)
    p.add(R("a", range(6), max_new=4, n=4, stop_token_ids=[99]))
    plan = p.schedule()
    fake.run(plan)
    stop, short, waits = R(("a", 1), range(6), 4, stop_token_ids=[99]), R(("a", 2), range(6), 1), R(("a", 3), range(6), 4)
    p.update(plan, [1], forks={"a": [(stop, 99), (short, 5), (waits, 6)]})
    # a holds 2 blocks; the two that finished on their first token take none, the last one the free block
    assert stop.status is RequestStatus.FINISHED_STOPPED and short.status is RequestStatus.FINISHED_LENGTH
    assert not stop.block_table and not short.block_table
    assert waits.status is RUNNING and plan.copies == [(p.get("a").block_table[1], waits.block_table[1])]
    for src, dst in plan.copies:
        fake.mem[dst] = list(fake.mem[src])
    # a second fork finds the pool empty: its sequence waits, to be recomputed from the prefix cache
    p2 = Planner(PlannerConfig(max_num_batched_tokens=64, max_num_seqs=4), kv=BlockManager(num_blocks=2, block_size=4))
    p2.add(R("x", range(6), max_new=3, n=2))
    plan = p2.schedule()
    later = R(("x", 1), range(6), 3)
    p2.update(plan, [1], forks={"x": [(later, 2)]})
    assert later.status is PREEMPTED and later.num_computed_tokens == 0 and later.output_token_ids == [2]
    assert p2.num_waiting == 1 and plan.copies == []
    while p2.has_unfinished():
        run_step(p2, lambda s: 0)
    assert later.is_finished and later.output_token_ids[0] == 2 and len(later.output_token_ids) == 3


def test_forks_are_checked():
    p = Planner(PlannerConfig(max_num_batched_tokens=64, max_num_seqs=4), kv=BlockManager(num_blocks=8, block_size=4))
    p.add(R("a", range(6), max_new=4, n=2))
    p.add(R("b", range(6), max_new=4))
    plan = p.schedule()
    for bad in ({"a": []}, {"b": [(R("k", range(6)), 1)]}, {"a": [(R("b", range(6)), 1)]}, {"z": [(R("k", [1]), 1)]}):
        with pytest.raises(ValidationError, match="forks"):
            p.update(plan, [1, 1], forks=bad)
    p.update(plan, [1, 1], forks={"a": [(R("k", range(6), 4), 3)]})
    assert p.get("k").output_token_ids == [3]
