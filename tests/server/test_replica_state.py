"""The ingress of ``--replicas N`` against fake replicas: a replica that dies before accepting is
replaced by another, none accepting means 503 + Retry-After, a replica dying under a stream ends
it with ``replica_lost``, and the load book follows every stream.  No Ray cluster; the clock is
injected."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("ray")
from ray.exceptions import ActorDiedError  # noqa: E402

from llmds.engine.config import EngineConfig, SamplingParams  # noqa: E402
from llmds.engine.request import RequestOutput  # noqa: E402
from llmds.server.errors import APIError  # noqa: E402
from llmds.server.replica_state import ReplicaSetState  # noqa: E402
from llmds.server.routing import LoadBook  # noqa: E402


def _tokenizer_json() -> str:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tok = Tokenizer(WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    return tok.to_str()


def _out(i: int, finished: bool) -> RequestOutput:
    return RequestOutput("r", [i], "x", finished, "length" if finished else None, 3, i + 1, 0)


class FakeStream:
    def __init__(self, items, clock=None, hang: bool = False) -> None:
        self.items, self.hang, self.cancelled = list(items), hang, False

    async def __anext__(self):
        if self.hang:
            await asyncio.sleep(3600)
        if not self.items:
            raise StopAsyncIteration
        item = self.items.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> None:
        self.cancelled = True


class FakeHandle:
    def __init__(self, streams) -> None:
        self.streams = list(streams)
        self.sent = []
        self.generate = self

    def options(self, **kw):
        return self

    def remote(self, *args, **kwargs):
        self.sent.append(kwargs["prefix_keys"])
        assert kwargs["route_token"]
        return self.streams.pop(0)


def _state(streams, accept_timeout: float = 15.0):
    info = {"tokenizer_json": _tokenizer_json(), "chat_template": None, "special_tokens": {},
            "config": EngineConfig(block_size=2), "max_model_len": 64, "num_blocks": 32}
    handle = FakeHandle(streams)
    st = ReplicaSetState(handle, info, None, lambda: {}, LoadBook(), accept_timeout)
    return st, handle


def _run(coro):
    return asyncio.run(coro)


def test_a_replica_dying_before_it_accepts_is_replaced_and_the_book_follows_the_stream():
    dead = FakeStream([ActorDiedError()])
    good = FakeStream([("accepted", "r1"), _out(0, False), _out(1, True)])
    st, handle = _state([dead, good])

    async def go():
        gen = await st.generate([1, 2, 1, 2, 1], SamplingParams(max_tokens=2))
        assert gen.replica == "r1" and st.retries == 1 and dead.cancelled
        assert st.book.load("r1") == 1 + 2  # in flight, and waiting for its first token
        first = await gen.next()
        assert first.new_token_ids == [0] and st.book.load("r1") == 1
        last = await gen.next()
        assert last.finished
        await gen.close()
        assert st.book.load("r1") == 0 and st.metrics.in_flight == 0 and st.gate.in_flight == 0

    _run(go())
    assert handle.sent[0] == handle.sent[1] and len(handle.sent[0]) == 2  # the prompt's 2 full blocks


def test_no_replica_accepting_is_503_with_retry_after():
    st, _ = _state([FakeStream([], hang=True)], accept_timeout=0.05)
    with pytest.raises(APIError) as exc:
        _run(st.generate([1, 2, 1], SamplingParams(max_tokens=2)))
    assert exc.value.status == 503 and "Retry-After" in exc.value.headers
    assert st.metrics.in_flight == 0 and st.gate.in_flight == 0


def test_a_replica_dying_under_a_stream_ends_it_with_replica_lost():
    st, _ = _state([FakeStream([("accepted", "r0"), _out(0, False), ActorDiedError()])])

    async def go():
        gen = await st.generate([1, 2, 1], SamplingParams(max_tokens=8))
        await gen.next()
        lost = await gen.next()
        assert lost.finished and lost.finish_reason == "replica_lost"
        assert await gen.next() is None
        await gen.close()
        assert st.book.load("r0") == 0

    _run(go())


def test_a_refusal_is_the_engines_error():
    from llmds.errors import CapacityError

    st, _ = _state([FakeStream([("refused", CapacityError("too long for the KV cache"))])])
    with pytest.raises(APIError) as exc:
        _run(st.generate([1, 2, 1], SamplingParams(max_tokens=2)))
    assert exc.value.status == 400 and exc.value.code == "kv_capacity_exceeded"


def test_n_sequences_stream_until_the_request_finishes():
    def out(index: int, last: bool) -> RequestOutput:
        return RequestOutput("r", [index], "x", True, "length", 3, 1, 0, index=index, request_finished=last)

    st, _ = _state([FakeStream([("accepted", "r0"), out(1, False), out(0, True), out(0, True)])])

    async def go():
        gen = await st.generate([1, 2, 1], SamplingParams(max_tokens=1, n=2))
        assert gen.n == 2
        got = [await gen.next(), await gen.next(), await gen.next()]
        await gen.close()
        return got

    first, second, after = _run(go())
    assert (first.index, first.request_finished) == (1, False)  # one sequence done: the stream goes on
    assert (second.index, second.request_finished) == (0, True) and after is None
