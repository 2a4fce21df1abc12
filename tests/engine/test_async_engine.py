"""AsyncLLMEngine: streams from the engine thread, refusals raised to the caller, aborts free blocks."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from llmds.engine.async_engine import AsyncLLMEngine
from llmds.engine.config import SamplingParams
from llmds.engine.engine import LLMEngine
from llmds.errors import CapacityError, ValidationError


@pytest.fixture(scope="module")
def eng():
    return LLMEngine(num_blocks=48, max_num_seqs=4, max_num_batched_tokens=64, hot_prefix_threshold=0)


def run(coro):
    return asyncio.run(coro)


async def _with_engine(eng, body):
    a = AsyncLLMEngine(eng)
    a.start()
    try:
        return await body(a)
    finally:
        a.shutdown()


def test_concurrent_streams_equal_the_sync_engine(eng):
    prompts = ["The sun is", "Water boils at", "My favourite book is"]
    params = SamplingParams(temperature=0, max_tokens=8)
    want = [o.output_token_ids for o in eng.generate(prompts, params)]

    async def body(a):
        async def one(p):
            toks, text, final = [], "", None
            async for out in a.generate(p, params):
                toks += out.new_token_ids
                text += out.text
                final = out
            assert final.finished and final.output_text == text
            return toks
        return await asyncio.gather(*(one(p) for p in prompts))

    assert run(_with_engine(eng, body)) == want
    assert eng.block_manager.num_free_blocks == eng.num_blocks


def test_refusals_raise_before_streaming(eng):
    async def body(a):
        with pytest.raises(ValidationError):
            async for _ in a.generate("", SamplingParams()):
                pass
        with pytest.raises(CapacityError):
            async for _ in a.generate([5] * 900, SamplingParams()):
                pass
        return True

    assert run(_with_engine(eng, body))


def test_closing_a_stream_early_aborts_and_frees_its_blocks(eng):
    async def body(a):
        agen = a.generate("Tell me a very long story about a dragon", SamplingParams(temperature=0, max_tokens=200,
                                                                                      ignore_eos=True))
        async with contextlib.aclosing(agen) as stream:
            n = 0
            async for _ in stream:
                n += 1
                if n == 3:
                    break
        await a.barrier()  # the abort was applied before the engine's next step
        return n

    assert run(_with_engine(eng, body)) == 3
    assert not eng.has_unfinished_requests()
    assert eng.block_manager.num_free_blocks == eng.num_blocks


def test_shutdown_finishes_open_streams(eng):
    async def body(a):
        rid = await a.add_request("Count to one hundred:", SamplingParams(temperature=0, max_tokens=500, ignore_eos=True))
        got = []

        async def reader():
            async for out in a.stream(rid):
                got.append(out)
                if len(got) == 2:
                    await asyncio.get_running_loop().run_in_executor(None, a.shutdown)
        await asyncio.wait_for(reader(), 60)
        return got

    got = run(_with_engine(eng, body))
    assert got[-1].finished and got[-1].finish_reason == "abort"
    assert eng.block_manager.num_free_blocks == eng.num_blocks


def test_a_stream_nobody_reads_is_released_when_its_request_finishes(eng):
    params = SamplingParams(temperature=0, max_tokens=4)
    want = eng.generate(["Hello"], params)[0].output_token_ids

    async def body(a):
        rids = [await a.add_request("Hello", params) for _ in range(3)]
        while eng.has_unfinished_requests():
            await asyncio.sleep(0)
        await a.barrier()  # the last outputs were dispatched before this returns
        assert not a._streams and list(a._unread) == rids  # no live queue left behind
        toks = []
        async for out in a.stream(rids[0]):  # a late reader still gets the whole request
            toks += out.new_token_ids
        assert list(a._unread) == rids[1:]
        return toks

    assert run(_with_engine(eng, body)) == want


class _InstantEngine:
    """A stand-in engine whose steps take no time: one request, ``n`` outputs, then finished."""

    def __init__(self, n: int) -> None:
        self.n, self.steps, self.live = n, 0, False
        self.read: list[int] = []  # appended by the reader on the event loop
        self.read_at_step: list[int] = []

    def add_request(self, prompt, params, rid, priority=0, deadline=None):
        self.live = True
        return "r"

    def has_unfinished_requests(self) -> bool:
        return self.live

    def step(self):
        from types import SimpleNamespace

        self.read_at_step.append(len(self.read))
        k, self.steps = self.steps, self.steps + 1
        self.live = self.steps < self.n
        return [SimpleNamespace(request_id="r", finished=not self.live, request_finished=not self.live, token=k)]

    def abort(self, rid) -> bool:
        self.live = False
        return True

    def abort_all(self, reason="abort"):
        self.live = False
        return []


def test_a_step_starts_only_after_the_loop_has_taken_the_last_steps_outputs():
    """HTTP work never overlaps a forward pass: before each step, every earlier output has
    reached its reader (without the hand-off, instant steps would race far ahead of the loop)."""
    stub = _InstantEngine(50)

    async def body(a):
        a.flush_timeout = 60.0  # a slow machine must not turn this into a race
        rid = await a.add_request("x")
        async for out in a.stream(rid):
            stub.read.append(out.token)
        return stub.read

    assert run(_with_engine(stub, body)) == list(range(50))
    assert stub.read_at_step == list(range(50))


def test_build_loads_the_engine_on_the_thread_that_steps_it():
    import threading

    seen = {}

    class Recording(_InstantEngine):
        def step(self):
            seen.setdefault("step", threading.get_native_id())
            return super().step()

    def factory():
        seen["built"] = threading.get_native_id()
        return Recording(3)

    a = AsyncLLMEngine.build(factory)
    assert seen["built"] != threading.get_native_id() and a.thread_id == seen["built"]
    assert not a.is_running  # waits for start()

    async def body():
        a.start()
        try:
            rid = await a.add_request("x")
            return [out.token async for out in a.stream(rid)]
        finally:
            a.shutdown()

    assert run(body()) == [0, 1, 2]
    assert seen["step"] == seen["built"]


def test_build_raises_what_the_factory_raised_and_shutdown_before_start_ends_the_thread():
    def broken():
        raise ValidationError("no such model")

    with pytest.raises(ValidationError, match="no such model"):
        AsyncLLMEngine.build(broken)
    a = AsyncLLMEngine.build(lambda: _InstantEngine(1))
    thread = a._thread
    a.shutdown(timeout=30)
    assert not thread.is_alive()


def test_call_runs_between_steps_on_the_engine_thread(eng):
    import threading

    async def body(a):
        where = await a.call(lambda e: (e is eng, threading.get_ident()))
        assert where == (True, a._thread.ident)
        with pytest.raises(ZeroDivisionError):
            await a.call(lambda e: 1 / 0)  # what the function raised, raised here; the engine goes on
        gen = a.generate("The sun is", SamplingParams(temperature=0, max_tokens=6))
        await gen.__anext__()
        held = await a.call(lambda e: e.block_manager.num_free_blocks)  # mid-request, between two steps
        assert held < eng.num_blocks
        async for _ in gen:
            pass
        return await a.call(lambda e: e.block_manager.num_free_blocks)

    assert run(_with_engine(eng, body)) == eng.num_blocks


def test_call_refuses_when_the_engine_is_not_running(eng):
    from llmds.errors import StateError

    with pytest.raises(StateError):
        run(AsyncLLMEngine(eng).call(lambda e: None))
