"""OpenAI response bodies and server-sent events from the engine's :class:`RequestOutput` stream.

A ``Format`` (chat or text completion) turns outputs into choices and chunks; :func:`complete`
collects whole responses, :func:`events` yields the SSE stream: ``data: {chunk}`` per delta, a
last chunk with ``finish_reason``, a usage chunk when ``stream_options.include_usage``, then
``data: [DONE]``.  A request the engine failed or the shutdown aborted ends its stream with an
``error`` event instead (the status line was sent already); a whole response gets 500 / 503.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import suppress
from typing import Any, AsyncIterator, Sequence

from llmds.server.errors import APIError, error_body, retry_after_header
from llmds.server.state import Generation

__all__ = ["ChatFormat", "CompletionFormat", "complete", "events", "usage"]

_FINISH = {"stop": "stop", "length": "length"}


def usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


class _Format:
    object = ""
    chunk_object = ""
    prefix = ""

    def __init__(self, tokenizer, model: str, extra: dict[str, Any] | None = None, request_id: str | None = None) -> None:
        self.tok = tokenizer
        self.model = model
        self.id = f"{self.prefix}-{request_id or uuid.uuid4().hex}"  # as vLLM: the X-Request-Id when given
        self.created = int(time.time())
        self.extra = extra or {}  # extension fields of the response / first chunk (e.g. "rag")

    def head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def response(self, choices: list[dict], use: dict) -> dict[str, Any]:
        return {**self.head(self.object), "choices": choices, "usage": use, **self.extra}

    def chunk(self, choices: list[dict], use: dict | None = None, first: bool = False) -> dict[str, Any]:
        out = {**self.head(self.chunk_object), "choices": choices}
        if first:
            out.update(self.extra)
        if use is not None:
            out["usage"] = use
        return out


class ChatFormat(_Format):
    object, chunk_object, prefix = "chat.completion", "chat.completion.chunk", "chatcmpl"

    def choice(self, i: int, out) -> dict[str, Any]:
        return {"index": i, "message": {"role": "assistant", "content": out.output_text},
                "logprobs": self.logprobs(out.output_logprobs), "finish_reason": _FINISH.get(out.finish_reason)}

    def delta(self, i: int, text: str | None, lps, finish: str | None, role: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
        if text:
            d["content"] = text
        return {"index": i, "delta": d, "logprobs": self.logprobs(lps), "finish_reason": finish}

    def first_deltas(self, n: int) -> list[dict[str, Any]]:
        return [self.delta(i, None, None, None, role=True) for i in range(n)]

    def logprobs(self, lps) -> dict[str, Any] | None:
        if lps is None:
            return None
        return {"content": [{**self._tok(t.token_id, t.logprob),
                             "top_logprobs": [self._tok(i, lp) for i, lp in t.top]} for t in lps if t is not None]}

    def _tok(self, token_id: int, logprob: float) -> dict[str, Any]:
        s = self.tok.token_to_str(token_id)
        return {"token": s, "logprob": _finite(logprob), "bytes": list(s.encode("utf-8"))}


class CompletionFormat(_Format):
    object, chunk_object, prefix = "text_completion", "text_completion", "cmpl"

    def choice(self, i: int, out) -> dict[str, Any]:
        return {"index": i, "text": out.output_text, "logprobs": self.logprobs(out.output_logprobs),
                "finish_reason": _FINISH.get(out.finish_reason)}

    def delta(self, i: int, text: str | None, lps, finish: str | None, role: bool = False) -> dict[str, Any]:
        return {"index": i, "text": text or "", "logprobs": self.logprobs(lps), "finish_reason": finish}

    def first_deltas(self, n: int) -> list[dict[str, Any]]:
        return []

    def logprobs(self, lps) -> dict[str, Any] | None:
        if lps is None:
            return None
        lps = [t for t in lps if t is not None]
        tokens = [self.tok.token_to_str(t.token_id) for t in lps]
        offsets, at = [], 0
        for s in tokens:
            offsets.append(at)
            at += len(s)
        return {"tokens": tokens, "token_logprobs": [_finite(t.logprob) for t in lps],
                "top_logprobs": [{self.tok.token_to_str(i): _finite(lp) for i, lp in t.top} for t in lps],
                "text_offset": offsets}


def _finite(x: float) -> float:
    return x if x > -1e30 else -9999.0  # -inf is not JSON


def _failure(out) -> APIError | None:
    """The error of a request that did not finish normally (None when it did)."""
    if out is None or out.finish_reason == "abort":
        return APIError(503, "the server is shutting down; the request was aborted", "service_unavailable",
                        code="shutting_down", headers=retry_after_header(5))
    if out.finish_reason == "replica_lost":  # llmds.server.replica_state: its replica died under it
        return APIError(503, "the replica serving this request stopped; retry it", "service_unavailable",
                        code="replica_lost", headers=retry_after_header(1))
    if out.finish_reason == "error":
        return APIError(500, "the engine failed while generating this request; it was aborted",
                        "server_error", code="engine_error")
    return None


async def complete(gens: Sequence[Generation], fmt: _Format) -> dict[str, Any]:
    """The whole response of one or more generations: ``n`` choices each, choice ``i * n + index``
    for sequence ``index`` of generation ``i`` (OpenAI's order for several prompts)."""

    async def run(gen: Generation) -> list:
        finals = [None] * gen.n
        try:
            while True:
                out = await gen.next()
                if out is None:
                    return finals
                if out.finished:
                    finals[out.index] = out
                if out.request_finished:
                    return finals
        finally:
            await gen.close()

    tasks = [asyncio.ensure_future(run(g)) for g in gens]
    try:
        per_gen = await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        for g in gens:
            await g.close()
    finals = [o for outs in per_gen for o in outs]
    for out in finals:
        err = _failure(out)
        if err is not None:
            raise err
    p = sum(outs[0].prompt_tokens for outs in per_gen)  # a prompt counts once, whatever its n
    cached = sum(outs[0].cached_tokens for outs in per_gen)
    c = sum(o.completion_tokens for o in finals)
    return fmt.response([fmt.choice(i, o) for i, o in enumerate(finals)], usage(p, c, cached))


async def events(gens: Sequence[Generation], fmt: _Format, include_usage: bool) -> AsyncIterator[bytes]:
    """The SSE byte stream of one or more generations (see the module docstring; choices as in
    :func:`complete`)."""
    totals = [0, 0, 0]
    usage_field = {"usage": None} if include_usage else {}
    try:
        first = fmt.first_deltas(sum(g.n for g in gens))
        if first or fmt.extra:
            yield _sse({**fmt.chunk(first, first=True), **usage_field})
        async for i, out in _merged(gens):
            err = _failure(out) if out is None or out.finished else None
            if err is not None:
                yield _sse(error_body(err.message, err.type, None, err.code))
                yield b"data: [DONE]\n\n"
                return
            finish = _FINISH.get(out.finish_reason) if out.finished else None
            if out.text or out.logprobs or finish:
                choice = fmt.delta(i * gens[i].n + out.index, out.text, out.logprobs, finish)
                yield _sse({**fmt.chunk([choice]), **usage_field})
            if out.finished:
                totals[1] += out.completion_tokens
            if out.request_finished:
                totals[0] += out.prompt_tokens
                totals[2] += out.cached_tokens
        if include_usage:
            yield _sse(fmt.chunk([], usage(*totals)))
        yield b"data: [DONE]\n\n"
    finally:
        for g in gens:
            await g.close()


async def _merged(gens: Sequence[Generation]) -> AsyncIterator[tuple[int, Any]]:
    """``(generation index, output)`` as they come, until each generation's request finished;
    ``None`` output = shut down."""
    if len(gens) == 1:
        g = gens[0]
        while True:
            out = await g.next()
            yield 0, out
            if out is None or out.request_finished:
                return
    pending = {asyncio.ensure_future(g.next()): i for i, g in enumerate(gens)}
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for t in sorted(done, key=pending.__getitem__):
                i = pending.pop(t)
                out = t.result()
                yield i, out
                if out is None:
                    return
                if not out.request_finished:
                    pending[asyncio.ensure_future(gens[i].next())] = i
    finally:
        for t in pending:
            t.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await t


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"
