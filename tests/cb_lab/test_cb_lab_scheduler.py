"""cb_lab Scheduler: continuous batching equals isolated runs, preemption, errors, failed steps."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lab_helpers import DIM, _prompts, assert_close, isolated_outputs, run_scheduler

from cb_lab.core.kv_cache import DenseKVCache, PagedKVCache
from cb_lab.core.request import Request
from cb_lab.core.scheduler import Scheduler
from cb_lab.exceptions import (
    ConfigurationError,
    DuplicateRequestError,
    KVMemoryError,
    RequestError,
    RequestNotFoundError,
    SchedulerError,
    ValidationError,
)
from cb_lab.model.tiny_llm import TinyLLM
from cb_lab.plugins.base import AttentionPlugin, CachePlugin, PluginManager, SchedulerPlugin
from cb_lab.plugins.builtin import CacheCompressionPlugin
from llmds import errors
from llmds.engine.kv.block_manager import BlockManager
from llmds.kv_arena.arena import TensorKVCache
from llmds.engine.request import RequestState, RequestStatus

LENGTHS, MAX_NEW = [7, 3, 10, 1, 5], [4, 6, 2, 5, 1]


def _requests(cache_factory, seed=0):
    return [
        Request(f"r{i}", p, m, cache_factory())
        for i, (p, m) in enumerate(zip(_prompts(seed, LENGTHS), MAX_NEW))
    ]


@pytest.mark.parametrize("budget,chunk", [(8, 4), (5, 2), (3, 3)])
def test_continuous_batching_equals_isolated_runs(budget, chunk):
    model = TinyLLM(DIM, num_heads=2, seed=3)
    reqs = _requests(DenseKVCache)
    stats = run_scheduler(Scheduler(model, budget, chunk), reqs, arrivals=[0, 0, 2, 3, 5])
    assert any(s["decode_tokens"] and s["prefill_tokens"] for s in stats)  # really mixed
    assert all(s["total_tokens"] <= budget for s in stats)
    assert sorted(i for s in stats for i in s["finished_request_ids"]) == sorted(
        r.req_id for r in reqs
    )
    for r in reqs:
        assert r.finished and len(r.generated_tokens) == r.max_new_tokens
        ref = isolated_outputs(model, r.prompt, r.max_new_tokens)
        assert_close(torch.stack(r.generated_tokens), ref, atol=1e-5)
        # teacher-forced check: one dense pass over prompt + outputs reproduces every output
        seq = (
            torch.cat([r.prompt, torch.stack(r.generated_tokens[:-1])])
            if r.max_new_tokens > 1
            else r.prompt
        )
        dense = model.forward_prefill_dense(seq)[0][r.num_prompt_tokens - 1 :]
        assert_close(torch.stack(r.generated_tokens), dense, atol=1e-5)


@settings(max_examples=8, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 9), st.integers(0, 5), st.integers(0, 4)), min_size=1,
             max_size=5),
    st.integers(1, 9),
    st.integers(1, 6),
    st.sampled_from([None, 2, 3]),
)
def test_random_workloads_equal_isolated_runs(spec, budget, chunk, kv_blocks):
    """Random prompts, output lengths, arrival steps, budgets and (tight) block pools; with a
    block manager the requests' paged caches store into the planner's blocks."""
    model = TinyLLM(DIM, num_heads=2, seed=8)
    prompts = _prompts(len(spec), [n for n, _, _ in spec])
    cache = DenseKVCache if kv_blocks is None else PagedKVCache
    reqs = [Request(i, p, m, cache()) for i, (p, (_, m, _)) in enumerate(zip(prompts, spec))]
    kv = None
    if kv_blocks is not None:  # big enough for the longest request alone, often too small for all
        need = max(-(-(n + max(m, 1) - 1) // kv_blocks) for n, m, _ in spec)
        kv = BlockManager(num_blocks=need + 1, block_size=kv_blocks)
    chunk = min(chunk, budget)
    stats = run_scheduler(Scheduler(model, budget, chunk, kv=kv), reqs, [a for _, _, a in spec])
    assert all(s["total_tokens"] <= budget for s in stats)
    for r in reqs:
        assert r.finished and len(r.generated_tokens) == r.max_new_tokens
        if r.max_new_tokens:
            ref = isolated_outputs(model, r.prompt, r.max_new_tokens)
            assert_close(torch.stack(r.generated_tokens), ref, atol=1e-5)
    if kv is not None:
        assert kv.num_free_blocks == kv.num_blocks and kv.stats()["block_tables"] == 0


def test_paged_cache_decoding_equals_dense_cache():
    model = TinyLLM(DIM, seed=4)
    dense = _requests(DenseKVCache, seed=9)
    paged = _requests(lambda: PagedKVCache(block_size=2), seed=9)
    pool = TensorKVCache(1, 1, DIM, 256, block_size=4)
    shared = _requests(lambda: PagedKVCache(pool=pool), seed=9)
    for reqs in (dense, paged, shared):
        run_scheduler(Scheduler(model, 6, 3), reqs)
    for d, p, s in zip(dense, paged, shared):
        assert_close(torch.stack(p.generated_tokens), torch.stack(d.generated_tokens), atol=1e-6)
        assert_close(torch.stack(s.generated_tokens), torch.stack(d.generated_tokens), atol=1e-6)
    assert pool.allocator.num_free == pool.num_blocks  # finished requests gave their blocks back


@pytest.mark.parametrize("blocks", [64, 6])  # roomy, and tight enough to preempt
def test_paged_caches_in_the_planners_blocks_equal_dense(blocks):
    """The scheduler drives a real BlockManager: paged caches hold their rows in exactly the
    blocks the planner allocated, and decode as the dense caches do (1e-6)."""
    model = TinyLLM(DIM, seed=4)
    dense = _requests(DenseKVCache, seed=9)
    run_scheduler(Scheduler(model, 6, 3), dense)
    bm = BlockManager(blocks, 4)
    sched = Scheduler(model, 6, 3, kv=bm)
    paged = _requests(PagedKVCache, seed=9)
    pending, stats = list(paged), []
    while pending or sched.active:
        if pending:
            sched.add_request(pending.pop(0))
        stats.append(sched.step())
        for r in sched.active:
            c = r.kv_cache
            assert c.is_bound and c.pool is sched.kv_storage
            if len(c):  # the rows live in the planner's blocks, at the request's positions
                assert c.block_table() == r.block_table[: -(-len(c) // 4)]
                k, _ = c.get_kv()
                flat = sched.kv_storage.k_layer(0)
                slots = [r.block_table[i // 4] * 4 + i % 4 for i in range(len(c))]
                assert torch.equal(flat[slots].reshape(len(c), DIM), k)
        assert bm.stats()["block_tables"] == sum(1 for r in sched.active if r.block_table)
    assert (blocks == 6) == any(s["preempted_request_ids"] for s in stats)
    for d, p in zip(dense, paged):
        assert_close(torch.stack(p.generated_tokens), torch.stack(d.generated_tokens), atol=1e-6)
        assert not p.kv_cache.is_bound and len(p.kv_cache) == 0  # released when it finished
    assert bm.num_free_blocks == blocks and bm.stats()["block_tables"] == 0


def test_finished_paged_cache_keeps_its_rows_outside_the_freed_blocks():
    model = TinyLLM(DIM, seed=4)
    bm = BlockManager(16, 4)
    sched = Scheduler(model, 6, 3, kv=bm, release_finished_kv=False)
    reqs = _requests(PagedKVCache, seed=9)
    dense = _requests(DenseKVCache, seed=9)
    run_scheduler(sched, reqs)
    run_scheduler(Scheduler(model, 6, 3, release_finished_kv=False), dense)
    assert bm.num_free_blocks == 16
    sched.kv_storage.k_cache.fill_(float("nan"))  # the planner's blocks are reused: rows must not be there
    for p, d in zip(reqs, dense):
        assert not p.kv_cache.is_bound and len(p.kv_cache) == len(d.kv_cache) > 0
        for a, b in zip(p.kv_cache.get_kv(), d.kv_cache.get_kv()):
            assert_close(a, b, atol=1e-6)


def test_a_paged_cache_on_its_own_pool_cannot_bypass_the_planners_blocks():
    sched = Scheduler(TinyLLM(DIM), kv=BlockManager(8, 4))
    pool = TensorKVCache(1, 1, DIM, 64, block_size=4)
    with pytest.raises(ValidationError, match="without pool"):
        sched.add_request(Request("a", torch.randn(3, DIM), 2, PagedKVCache(pool=pool)))
    with pytest.raises(ValidationError, match="block_size=8"):
        sched.add_request(Request("a", torch.randn(3, DIM), 2, PagedKVCache(block_size=8)))
    assert not sched.active and not sched.planner.has_unfinished() and sched.kv_storage is None
    sched.add_request(Request("a", torch.randn(3, DIM), 2, PagedKVCache(block_size=4)))
    assert sched.active[0].kv_cache.is_bound


def test_preemption_by_planner_recomputes_and_outputs_stay_exact():
    model = TinyLLM(DIM, seed=5)
    reqs = _requests(DenseKVCache, seed=2)
    sched = Scheduler(model, 8, 4, kv=BlockManager(num_blocks=5, block_size=3))
    stats = run_scheduler(sched, reqs)
    assert any(s["preempted_request_ids"] for s in stats)
    for r in reqs:
        ref = isolated_outputs(model, r.prompt, r.max_new_tokens)
        assert_close(torch.stack(r.generated_tokens), ref, atol=1e-5)


def test_zero_max_new_tokens_finishes_at_once_and_leaves_active_at_the_next_step():
    sched = Scheduler(TinyLLM(DIM))
    s = sched.step()
    assert s["status"] == "no_active_requests" and s["total_tokens"] == 0
    req = Request("z", torch.randn(4, DIM), 0, DenseKVCache())
    assert req.finished
    sched.add_request(req)
    # finished, but (as in the reference) still active until the next step removes it
    assert req.finished and sched.active == [req] and req.generated_tokens == []
    with pytest.raises(DuplicateRequestError):
        sched.add_request(Request("z", torch.randn(4, DIM), 1, DenseKVCache()))
    assert sched.abort("z") is req and req.status is RequestStatus.FINISHED_LENGTH  # already finished
    s = sched.step()
    assert s["status"] == "completed" and s["finished_request_ids"] == ["z"] and s["total_tokens"] == 0
    assert s["finished_requests"] == 1 and s["step_id"] == 1 and s["active_requests"] == 0
    assert not sched.active and sched.step()["status"] == "no_active_requests"
    sched.add_request(Request("z", torch.randn(4, DIM), 0, DenseKVCache()))  # the id is free again
    sched.add_request(Request("w", torch.randn(2, DIM), 2, DenseKVCache()))
    stats = run_scheduler(sched, [])
    assert stats[0]["finished_request_ids"] == ["z"] and stats[-1]["finished_request_ids"] == ["w"]


def test_prefill_chunk_larger_than_the_step_budget_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="cannot exceed max_tokens_per_step"):
        Scheduler(TinyLLM(DIM), max_tokens_per_step=4, prefill_chunk_size=5)
    assert Scheduler(TinyLLM(DIM), max_tokens_per_step=4, prefill_chunk_size=4).prefill_chunk_size == 4


def test_step_duration_uses_injected_clock():
    ticks = iter(range(0, 1000, 5))
    sched = Scheduler(TinyLLM(DIM), clock=lambda: float(next(ticks)))
    sched.add_request(Request("a", torch.randn(3, DIM), 2, DenseKVCache()))
    assert [sched.step()["step_duration"] for _ in range(3)] == [5.0, 5.0, 5.0]


def test_request_manual_api_and_states():
    cache = DenseKVCache()
    req = Request("test", torch.randn(10, 16), 5, cache)
    assert req.in_prefill and not req.in_decode and req.decode_seed is None
    chunk = req.get_prefill_chunk(3)
    assert chunk.shape == (3, 16) and req.prefill_pos == 3
    with pytest.raises(RequestError):
        req.append_token(torch.randn(16))  # prompt not done
    req.get_prefill_chunk(100)
    assert req.prefill_pos == 10 and req.get_prefill_chunk(4).shape == (0, 16)
    req.append_token(torch.randn(1, 16))
    assert req.in_decode and req.decode_seed.shape == (16,)
    with pytest.raises(ValidationError):
        req.append_token(torch.randn(3, 16))
    for _ in range(4):
        req.append_token(torch.randn(16))
    assert req.finished and not req.in_decode
    with pytest.raises(RequestError):
        req.append_token(torch.randn(16))
    sched = Scheduler(TinyLLM(16))
    with pytest.raises(RequestError):
        sched.add_request(req)  # not new


def test_scheduler_errors_are_typed_and_change_nothing():
    model = TinyLLM(DIM)
    for budget, chunk in [(0, 4), (8, 0), (-1, 2), (8, 2.5), (3, 4)]:
        with pytest.raises(ConfigurationError) as ei:
            Scheduler(model, budget, chunk)
        assert isinstance(ei.value, errors.ValidationError) and isinstance(ei.value, ValueError)
    with pytest.raises(ValidationError):
        Scheduler("not a model")
    sched = Scheduler(model)
    sched.add_request(Request("a", torch.randn(3, DIM), 2, DenseKVCache()))
    with pytest.raises(DuplicateRequestError) as ei:
        sched.add_request(Request("a", torch.randn(3, DIM), 2, DenseKVCache()))
    assert isinstance(ei.value, ValueError)
    with pytest.raises(ValidationError):
        sched.add_request(Request("b", torch.randn(3, 8), 2, DenseKVCache()))
    with pytest.raises(ValidationError):
        sched.add_request("b")
    used = DenseKVCache()
    used.append(torch.randn(1, DIM), torch.randn(1, DIM))
    with pytest.raises(RequestError):
        sched.add_request(Request("c", torch.randn(3, DIM), 2, used))
    with pytest.raises(RequestError):  # the cache of active request "a"
        sched.add_request(Request("d", torch.randn(3, DIM), 2, sched.active[0].kv_cache))
    with pytest.raises(RequestNotFoundError) as ei:
        sched.abort("nope")
    assert isinstance(ei.value, KeyError) and isinstance(ei.value, errors.NotFoundError)
    with pytest.raises(KVMemoryError):
        Scheduler(model, kv=BlockManager(2, 2)).add_request(
            Request("big", torch.randn(9, DIM), 1, DenseKVCache())
        )
    assert [r.req_id for r in sched.active] == ["a"]
    with pytest.raises(RequestError):
        sched.active[0].get_prefill_chunk(2)  # driven by the scheduler
    for bad in [
        dict(prompt=torch.randn(0, DIM)),
        dict(prompt=torch.randn(DIM)),
        dict(prompt=torch.ones(2, DIM, dtype=torch.int64)),
        dict(max_new_tokens=-1),
        dict(kv_cache=object()),
        dict(prefill_pos=2),
    ]:
        args = dict(
            req_id="x", prompt=torch.randn(2, DIM), max_new_tokens=1, kv_cache=DenseKVCache()
        )
        args.update(bad)
        with pytest.raises(ValidationError):
            Request(**args)


def test_abort_finishes_request_and_frees_its_cache():
    pool = TensorKVCache(1, 1, DIM, 64, block_size=4)
    sched = Scheduler(TinyLLM(DIM))
    a = Request("a", torch.randn(6, DIM), 5, PagedKVCache(pool=pool))
    sched.add_request(a)
    sched.step()
    assert len(a.kv_cache) == 4 and pool.allocator.num_free < pool.num_blocks
    sched.abort("a")
    assert a.finished and a.status.name == "FINISHED_ABORTED" and not sched.active
    assert pool.allocator.num_free == pool.num_blocks
    s = sched.step()
    assert s["finished_request_ids"] == ["a"] and s["status"] == "no_active_requests"


def test_decode_rounds_are_exact():
    """L prompt tokens and M outputs take ceil(L/chunk) prefill steps, then M-1 decodes."""
    sched = Scheduler(TinyLLM(DIM), 8, 4)
    sched.add_request(Request("a", torch.randn(10, DIM), 5, DenseKVCache()))
    stats = run_scheduler(sched, [])
    assert [(s["prefill_tokens"], s["decode_tokens"]) for s in stats] == [
        (4, 0),
        (4, 0),
        (2, 0),
    ] + [(0, 1)] * 4
    assert len(stats) == math.ceil(10 / 4) + 5 - 1


# ------------------------------------------------------------ a failing step is cancelled
class FailOnce(SchedulerPlugin, AttentionPlugin, CachePlugin):
    """Raises ``RuntimeError`` at the ``at``-th call of one hook ("model" wraps the forward pass)."""

    def __init__(self, hook: str, at: int):
        self.hook, self.at, self.calls, self.error = hook, at, 0, None

    def tick(self, name: str) -> None:
        if name == self.hook and self.error is None:
            self.calls += 1
            if self.calls == self.at:
                self.error = RuntimeError(f"injected failure in {name}")
                raise self.error

    def install(self, sched: Scheduler) -> None:
        pm = sched.plugins
        pm.register_scheduler_plugin(self)
        pm.register_attention_plugin(self)
        pm.register_cache_plugin(self)
        forward = sched.model.forward_ragged

        def failing_forward(*args, **kw):
            self.tick("model")
            return forward(*args, **kw)

        sched.model.forward_ragged = failing_forward  # this instance only

    def before_step(self, scheduler):
        self.tick("before_step")

    def after_step(self, scheduler, stats):
        self.tick("after_step")

    def on_request_finished(self, scheduler, request):
        self.tick("finished")

    def on_attention(self, scheduler, record):
        self.tick("attention")

    def before_append(self, cache, k, v):
        self.tick("before_append")

    def after_append(self, cache, k, v):
        self.tick("after_append")


# hooks whose failure leaves the scheduler as before the step (the step is redone); a failure in
# on_request_finished / after_step comes after the step was applied
REDONE = ("before_step", "model", "attention", "before_append", "after_append")


def _run_failing(sched, reqs, arrivals, plugin):
    """run_scheduler, catching the one injected failure; returns (stats, the error).

    Arrivals count applied steps, so a redone step sees what the failed one saw."""
    pending = sorted(zip(arrivals, range(len(reqs))))
    stats, caught, step = [], None, 0
    while pending or sched.active:
        while pending and pending[0][0] <= step:
            sched.add_request(reqs[pending.pop(0)[1]])
        try:
            stats.append(sched.step())
        except RuntimeError as exc:
            assert caught is None and exc is plugin.error  # the original error, re-raised once
            caught = exc
            if plugin.hook in REDONE:
                continue
        step += 1
        assert step < 500
    return stats, caught


def _setup(name):
    model = TinyLLM(DIM, num_heads=2, seed=3)
    if name == "dense":
        return Scheduler(model, 5, 2), _requests(DenseKVCache)
    # tight: preempts; the paged caches store into the planner's blocks
    sched = Scheduler(model, 8, 4, kv=BlockManager(num_blocks=5, block_size=3))
    return sched, _requests(PagedKVCache, seed=0)


ARRIVALS = [0, 0, 2, 3, 5]
_BASELINES: dict = {}


def _baseline(name):
    """The run without a failure (checked once against isolated runs)."""
    if name not in _BASELINES:
        sched, reqs = _setup(name)
        stats = run_scheduler(sched, reqs, ARRIVALS)
        for r in reqs:
            ref = isolated_outputs(sched.model, r.prompt, r.max_new_tokens)
            assert_close(torch.stack(r.generated_tokens), ref, atol=1e-5)
        _BASELINES[name] = (stats, [torch.stack(r.generated_tokens) for r in reqs])
    return _BASELINES[name]


def _without_duration(stats):
    return [{k: v for k, v in s.items() if k != "step_duration"} for s in stats]


@pytest.mark.parametrize("hook,at", [("model", 3), ("attention", 4), ("before_append", 5),
                                     ("after_append", 6), ("after_append", 1), ("before_step", 2),
                                     ("finished", 1), ("after_step", 3)])
@pytest.mark.parametrize("setup", ["dense", "paged-tight"])
def test_failing_step_is_cancelled_and_outputs_equal_a_run_without_it(hook, at, setup):
    base_stats, base_outputs = _baseline(setup)
    sched, reqs = _setup(setup)
    plugin = FailOnce(hook, at)
    plugin.install(sched)
    stats, err = _run_failing(sched, reqs, ARRIVALS, plugin)
    assert err is not None
    if hook in REDONE:
        if hook != "before_step":
            assert any("was cancelled" in n for n in err.__notes__)
        # the failed step was redone as planned: the very same steps as without the failure
        assert _without_duration(stats) == _without_duration(base_stats)
    else:  # applied, its stats lost with the error; its finished requests are reported next
        finished = [i for s in stats for i in s["finished_request_ids"]]
        assert sorted(finished) == sorted(r.req_id for r in reqs)
    assert not sched.planner.has_unfinished() and not sched.active
    for r, out in zip(reqs, base_outputs):
        assert r.finished and len(r.generated_tokens) == r.max_new_tokens
        assert_close(torch.stack(r.generated_tokens), out, atol=1e-6)
    if setup != "dense":
        bm = sched.planner.kv
        assert bm.num_free_blocks == bm.num_blocks and bm.allocator.num_free == bm.num_blocks
        assert any(s["preempted_request_ids"] for s in stats)


def test_failed_step_that_crossed_a_block_cuts_the_bound_cache_back_to_its_blocks():
    """The planner's rollback returns the step's new block; the bound cache is cut to its rows
    before the step without reading past its (now shorter) table, and the redo is exact."""
    model = TinyLLM(DIM, seed=1)
    bm = BlockManager(16, 2)
    sched = Scheduler(model, 4, 2, kv=bm)
    plugin = FailOnce("after_append", 2)  # step 1: rows 2..3 were appended into a new block
    plugin.install(sched)
    r = Request("a", _prompts(0, [5])[0], 3, PagedKVCache())
    sched.add_request(r)
    sched.step()
    with pytest.raises(RuntimeError, match="injected"):
        sched.step()
    assert len(r.kv_cache) == r.num_computed_tokens == 2 and len(r.block_table) == 1
    assert r.kv_cache.block_table() == r.block_table
    while sched.active:
        sched.step()
    assert_close(torch.stack(r.generated_tokens), isolated_outputs(model, r.prompt, 3), atol=1e-5)
    assert bm.num_free_blocks == 16


def test_cache_shrunk_during_a_failed_step_is_recomputed():
    """A compressed cache cannot be cut back to its pre-step rows: its request is preempted."""
    model = TinyLLM(DIM, seed=11)
    pm = PluginManager()
    pm.register_cache_plugin(CacheCompressionPlugin(0.5, num_sink_tokens=2, min_tokens=4))
    sched = Scheduler(model, 8, 4, plugins=pm)
    plugin = FailOnce("after_append", 3)  # step 1, r0's append: r0's cache was just compressed 8 -> 4 rows
    plugin.install(sched)
    g = torch.Generator().manual_seed(0)
    reqs = [Request(i, torch.randn(n, DIM, generator=g), 5, DenseKVCache()) for i, n in enumerate((16, 11))]
    for r in reqs:
        sched.add_request(r)
    sched.step()
    with pytest.raises(RuntimeError, match="injected"):
        sched.step()
    r0, r1 = reqs
    assert r0.num_preemptions == 1 and r0.status is RequestStatus.PREEMPTED and len(r0.kv_cache) == 0
    assert r1.num_computed_tokens == 4 and len(r1.kv_cache) == 4  # restored exactly
    while sched.active:
        sched.step()
    assert [len(r.generated_tokens) for r in reqs] == [5, 5]


def test_abort_from_inside_a_step_is_refused_and_the_step_cancelled():
    class Aborter(AttentionPlugin):
        def on_attention(self, scheduler, record):
            scheduler.abort(record.req_ids[0])

    pm = PluginManager()
    pm.register_attention_plugin(Aborter())
    sched = Scheduler(TinyLLM(DIM), 8, 4, plugins=pm)
    req = Request("a", torch.randn(3, DIM), 2, DenseKVCache())
    sched.add_request(req)
    with pytest.raises(SchedulerError, match="abort"):
        sched.step()
    assert req.num_computed_tokens == 0 and len(req.kv_cache) == 0 and req.status is RequestStatus.WAITING
    pm.attention_plugins.clear()
    assert sched.step()["step_id"] == 0 and len(req.kv_cache) == 3
    sched.abort("a")  # between steps: fine
    assert req.status is RequestStatus.FINISHED_ABORTED


def test_pinned_blocks_that_strand_a_queued_request_raise_kv_memory_error():
    bm = BlockManager(8, 2)
    warm = RequestState("warm", [1, 2, 3, 4, 0], max_new_tokens=1)  # leaves [1, 2], [3, 4] cached
    assert bm.allocate(warm, 5)
    bm.free(warm)
    sched = Scheduler(TinyLLM(DIM), 8, 4, kv=bm)
    sched.add_request(Request("big", torch.randn(12, DIM), 3, DenseKVCache()))  # 7 of 8 blocks
    pinned = bm.pin_prefix([1, 2, 3, 4])  # behind the planner's back: only 6 blocks left for "big"
    with pytest.raises(KVMemoryError, match="'big'"):
        sched.step()
    bm.unpin(pinned)
    while sched.active:
        sched.step()
    assert bm.num_free_blocks == 8
