"""Bad input never gets a 5xx: every malformed body is a 4xx with the OpenAI error body.

Also the limits in front of the engine: 413 for big bodies, 429 with ``Retry-After`` for a burst
over the rate limits (a frozen fake clock makes the count exact), the waiting bounds, and prompts
over the context or the KV pool.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from server_helpers import API_KEY, NUM_BLOCKS, chat_body, metric

MSG = [{"role": "user", "content": "hi"}]


def _chat(**kw):
    return {"messages": MSG, "max_tokens": 4, **kw}


# (route, raw JSON body or a Python value to send as JSON, expected status, expected param or None)
MALFORMED = [
    ("/v1/chat/completions", b"{", 400, None),
    ("/v1/chat/completions", b"", 400, None),
    ("/v1/chat/completions", b"\xff\xfe", 400, None),
    ("/v1/chat/completions", b'{"messages": NaN}', 400, "messages"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400,
     "temperature"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}', 400, "top_p"),
    ("/v1/chat/completions", [], 400, None),
    ("/v1/chat/completions", "text", 400, None),
    ("/v1/chat/completions", {}, 400, "messages"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "messages.0.content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url",
                                                                          "image_url": {"url": "x"}}]}]}, 400, None),
    ("/v1/chat/completions", _chat(temperature="hot"), 400, "temperature"),
    ("/v1/chat/completions", _chat(temperature=-1), 400, "temperature"),
    ("/v1/chat/completions", _chat(temperature=1e308), 400, "temperature"),
    ("/v1/chat/completions", _chat(top_p=0), 400, "top_p"),
    ("/v1/chat/completions", _chat(n=2), 400, "n"),
    ("/v1/chat/completions", _chat(max_tokens=0), 400, "max_tokens"),
    ("/v1/chat/completions", _chat(max_tokens=-5), 400, "max_tokens"),
    ("/v1/chat/completions", _chat(max_tokens=True), 400, "max_tokens"),
    ("/v1/chat/completions", _chat(max_tokens=2.5), 400, "max_tokens"),
    ("/v1/chat/completions", _chat(max_tokens="8"), 400, "max_tokens"),
    ("/v1/chat/completions", _chat(stop=[""]), 400, None),
    ("/v1/chat/completions", _chat(stop=["x"] * 17), 400, "stop"),
    ("/v1/chat/completions", _chat(stop=5), 400, "stop"),
    ("/v1/chat/completions", _chat(seed=2**80), 400, "seed"),
    ("/v1/chat/completions", _chat(logprobs=True, top_logprobs=21), 400, "top_logprobs"),
    ("/v1/chat/completions", _chat(presence_penalty=5), 400, "presence_penalty"),
    ("/v1/chat/completions", _chat(frequency_penalty=-3), 400, "frequency_penalty"),
    ("/v1/chat/completions", _chat(logit_bias={"1": 5}), 400, "logit_bias"),
    ("/v1/chat/completions", _chat(top_k=0), 400, "top_k"),
    ("/v1/chat/completions", _chat(repetition_penalty=0), 400, "repetition_penalty"),
    ("/v1/chat/completions", _chat(stop_token_ids=[-1]), 400, None),
    ("/v1/chat/completions", _chat(priority=2**40), 400, "priority"),
    ("/v1/chat/completions", _chat(stream="yes"), 400, "stream"),
    ("/v1/chat/completions", _chat(stream_options={"include_usage": 1}), 400, None),
    ("/v1/chat/completions", _chat(rag={"top_k": 0}), 400, None),
    ("/v1/chat/completions", _chat(rag={"top_k": 2, "query": ""}), 400, None),
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": "be brief"}], "rag": {}}, 400, "rag.query"),
    ("/v1/chat/completions", _chat(model="gpt-4o"), 404, "model"),
    ("/v1/completions", {}, 400, "prompt"),
    ("/v1/completions", {"prompt": ""}, 400, "prompt"),
    ("/v1/completions", {"prompt": []}, 400, "prompt"),
    ("/v1/completions", {"prompt": [[]]}, 400, "prompt"),
    ("/v1/completions", {"prompt": [10**9]}, 400, "prompt"),
    ("/v1/completions", {"prompt": [-1]}, 400, "prompt"),
    ("/v1/completions", {"prompt": ["a"] * 65}, 400, "prompt"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": -1}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 21}, 400, "logprobs"),
    ("/v1/completions", {"prompt": "hi", "echo": True}, 400, "echo"),
    ("/v1/completions", {"prompt": "hi", "suffix": "x"}, 400, "suffix"),
    ("/v1/completions", {"prompt": "hi", "best_of": 3}, 400, "best_of"),
    ("/v1/embeddings", {}, 400, "input"),
    ("/v1/embeddings", {"input": []}, 400, "input"),
    ("/v1/embeddings", {"input": 5}, 400, "input"),
    ("/v1/embeddings", {"input": [[1, 2]]}, 400, None),
    ("/v1/embeddings", {"input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
    ("/v1/embeddings", {"input": "x", "dimensions": 100}, 400, "dimensions"),
    ("/v1/embeddings", {"input": "x", "model": "text-embedding-3-small"}, 404, "model"),
    ("/v1/retrieve", {}, 400, "query"),
    ("/v1/retrieve", {"query": ""}, 400, "query"),
    ("/v1/retrieve", {"query": "x", "top_k": 0}, 400, "top_k"),
    ("/v1/retrieve", {"query": "x", "top_k": 10**6}, 400, "top_k"),
    ("/v1/retrieve", {"query": ["x"]}, 400, "query"),
]


@pytest.mark.parametrize("route,body,status,param", MALFORMED)
def test_malformed_bodies_get_a_4xx_with_an_openai_error(http, route, body, status, param):
    if isinstance(body, bytes):
        r = http.post(route, content=body, headers={"content-type": "application/json"})
    else:
        r = http.post(route, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param, err


def test_unknown_routes_and_methods(http):
    r = http.get("/v1/nothing")
    assert r.status_code == 404 and "/v1/nothing" in r.json()["error"]["message"]
    r = http.get("/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
    assert http.get("/v1/models/gpt-4").status_code == 404


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
    assert r.status_code == 400 and "max_new_tokens" in r.json()["error"]["message"]
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
