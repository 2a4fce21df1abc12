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
