"""The limits in front of the engine: 413 for big bodies, 429 with ``Retry-After`` for a burst over
the rate limits (a frozen fake clock makes the count exact), the waiting bounds, and prompts over
the context or the KV pool.  The bad-input table is ``test_bad_input.py``.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from server_helpers import API_KEY, NUM_BLOCKS, chat_body, metric


def test_a_body_over_the_limit_gets_413(http, live):
    before = live.state.gate.rejections["body_too_large"]
    big = {"messages": [{"role": "user", "content": "x" * (live.state.config.max_body_bytes + 1)}]}
    r = http.post("/v1/chat/completions", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunked():  # no Content-Length: the limit applies to the bytes received
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(live.state.config.max_body_bytes // 1024 + 1):
            yield b"x" * 1024
        yield b'"}]}'

    r = http.post("/v1/chat/completions", content=chunked(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert live.state.gate.rejections["body_too_large"] == before + 2


def test_prompt_over_the_context_or_the_kv_pool(http, live):
    ctx = live.state.engine.max_model_len
    r = http.post("/v1/completions", json={"prompt": [100] * ctx, "max_tokens": 1})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    pool = NUM_BLOCKS * 16
    r = http.post("/v1/completions", json={"prompt": [100] * (pool + 1), "max_tokens": 1})
    assert r.status_code == 400 and r.json()["error"]["code"] == "kv_capacity_exceeded", r.text
    r = http.post("/v1/completions", json={"prompt": [100] * (pool - 8), "max_tokens": 100})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "max_tokens" and err["code"] == "kv_capacity_exceeded"
    assert f"holds {pool} tokens" in err["message"] and "1627" in err["message"]
    # no max_tokens on chat: the rest of what fits, so a long prompt still runs
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hello " * 20}],
                                                "max_tokens": None, "temperature": 0, "stop": ["."]})
    assert r.status_code == 200, r.text


def test_a_burst_over_the_request_rate_gets_429_with_retry_after(live):
    with live.gate(max_qps=0.3, window=10.0) as clock:  # 3 requests per 10 s, clock frozen

        async def burst():
            async with httpx.AsyncClient(base_url=live.url, timeout=120,
                                         headers={"Authorization": f"Bearer {API_KEY}"}) as c:
                return await asyncio.gather(*(c.post("/v1/chat/completions", json=chat_body(max_tokens=2))
                                              for _ in range(6)))

        rs = asyncio.run(burst())
        assert sorted(r.status_code for r in rs) == [200] * 3 + [429] * 3
        for r in rs:
            if r.status_code == 429:
                err = r.json()["error"]
                assert err["type"] == "rate_limit_error" and "requests_per_second" in err["message"]
                assert r.headers["Retry-After"] == "10"  # all three admissions happened at the same instant
        assert live.state.gate.rejections["requests_per_second"] == 3
        http = httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120)
        text = http.get("/metrics").text
        assert metric(text, 'llmds:admission_rejections_total{reason="requests_per_second"}') == 3
        clock.t += 10.0  # the window slid past the burst: admitted again
        assert http.post("/v1/chat/completions", json=chat_body(max_tokens=2)).status_code == 200


def test_token_rate_limit(http, live):
    with live.gate(max_token_rate=10.0, window=10.0):  # 100 tokens per window
        r = http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 50})
        assert r.status_code == 200
        r = http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 50})
        assert r.status_code == 429 and "tokens_per_second" in r.json()["error"]["message"]
        assert int(r.headers["Retry-After"]) == 10
        r = http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 200})  # alone over a window
        assert r.status_code == 400 and r.json()["error"]["code"] == "request_too_large"


def test_waiting_bounds(http, live):
    with live.gate(max_waiting_requests=1, max_waiting_tokens=64):
        gate = live.state.gate
        held = gate.admit(10, 1)  # a request still waiting for its first token
        try:
            r = http.post("/v1/chat/completions", json=chat_body())
            assert r.status_code == 429 and "waiting_requests" in r.json()["error"]["message"]
            assert r.headers["Retry-After"] == "1"
        finally:
            held.close()
        r = http.post("/v1/completions", json={"prompt": "word " * 100, "max_tokens": 1})
        assert r.status_code == 400 and r.json()["error"]["code"] == "request_too_large"
        assert gate.rejections["waiting_requests"] == 1 and gate.rejections["waiting_tokens"] == 1
        assert gate.waiting_requests == gate.waiting_tokens == gate.in_flight == 0
