"""What people reach for beyond the basic routes: ``n`` choices, ``logit_bias``, ``/tokenize`` and
``/detokenize``, embeddings of token ids, ``HEAD``/``GET /health`` without a key, request ids in
responses and logs; and, on their own app over the same engine (its routes that do not generate),
``/metrics`` left open, CORS and embeddings with ``--no-rag``."""

from __future__ import annotations

import json
import logging

import httpx
import numpy as np
import pytest
from server_helpers import API_KEY, chat_body

MODEL = "SmolLM2-135M-Instruct"
QUESTION = [{"role": "user", "content": "Write one word."}]


def test_n_choices_whole_and_streamed_reproducible_with_a_seed(openai_client, http):
    r = openai_client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=6, temperature=1.0,
                                              n=3, seed=5)
    assert [c.index for c in r.choices] == [0, 1, 2]
    again = openai_client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=6, temperature=1.0,
                                                  n=3, seed=5)
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]
    # choice i is what the same request with seed + i gives alone
    alone = [openai_client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=6, temperature=1.0,
                                                   seed=5 + i) for i in range(3)]
    assert [a.choices[0].message.content for a in alone] == [c.message.content for c in r.choices]
    assert r.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone)
    assert r.usage.prompt_tokens == alone[0].usage.prompt_tokens  # the prompt counts once
    stream = openai_client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=6, temperature=1.0,
                                                   n=3, seed=5, stream=True, stream_options={"include_usage": True})
    texts, finishes = ["", "", ""], [0, 0, 0]
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            finishes[c.index] += c.finish_reason is not None
        if chunk.usage is not None:
            assert chunk.usage.completion_tokens == r.usage.completion_tokens
    assert texts == [c.message.content for c in r.choices] and finishes == [1, 1, 1]
    # completions: several prompts x n, choice i * n + j
    body = {"prompt": ["Once upon a time", "The capital of France is"], "n": 2, "max_tokens": 3, "temperature": 0}
    choices = http.post("/v1/completions", json=body).json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    assert choices[0]["text"] == choices[1]["text"] and choices[2]["text"] == choices[3]["text"]  # greedy


def test_logit_bias(openai_client, live):
    paris = live.state.engine.tokenizer.encode(" Paris")[0]
    kw = dict(model=MODEL, prompt="The capital of France is", max_tokens=3, temperature=0)
    assert openai_client.completions.create(**kw).choices[0].text.startswith(" Paris")
    assert "Paris" not in openai_client.completions.create(**kw, logit_bias={str(paris): -100}).choices[0].text


def test_tokenize_and_detokenize(http, live):
    tok = live.state.engine.tokenizer
    r = http.post("/tokenize", json={"prompt": "The capital of France"}).json()
    assert r["tokens"] == tok.encode("The capital of France") and r["count"] == len(r["tokens"])
    assert r["max_model_len"] == live.state.engine.max_model_len and r["token_strs"] is None
    r = http.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}], "return_token_strs": True}).json()
    assert r["tokens"] == live.state.engine.encode_prompt([{"role": "user", "content": "hi"}])
    assert "".join(r["token_strs"]) == tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert http.post("/detokenize", json={"tokens": r["tokens"]}).json()["prompt"] == "".join(r["token_strs"])
    # the embedding model's word pieces: what /v1/embeddings takes as token input
    r = http.post("/tokenize", json={"prompt": "hello world", "model": "all-MiniLM-L6-v2",
                                     "return_token_strs": True}).json()
    assert r["token_strs"] == ["[CLS]", "hello", "world", "[SEP]"] and r["max_model_len"] == 256
    assert http.post("/detokenize", json={"tokens": r["tokens"], "model": "all-MiniLM-L6-v2"}).json()["prompt"] \
        == "[CLS] hello world [SEP]"
    by_ids = http.post("/v1/embeddings", json={"input": [r["tokens"], r["tokens"][:2]]}).json()
    by_text = http.post("/v1/embeddings", json={"input": "hello world"}).json()
    np.testing.assert_allclose(by_ids["data"][0]["embedding"], by_text["data"][0]["embedding"], atol=1e-5)
    assert by_ids["usage"]["prompt_tokens"] == 6 and len(by_ids["data"]) == 2


def test_health_with_get_and_head_needs_no_key(live):
    assert httpx.get(live.url + "/health").json()["status"] == "ok"
    r = httpx.head(live.url + "/health")
    assert r.status_code == 200 and r.content == b""
    assert httpx.head(live.url + "/v1/models").status_code == 401


def test_request_ids_are_echoed_in_the_response_and_the_logs(http, live, caplog, monkeypatch):
    from llmds.server.logs import RequestIdFilter

    r = http.post("/v1/chat/completions", json=chat_body(max_tokens=1), headers={"X-Request-Id": "client-42"})
    assert r.headers["x-request-id"] == "client-42" and r.json()["id"] == "chatcmpl-client-42"
    r = http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1})
    made = r.headers["x-request-id"]
    assert len(made) == 32 and r.json()["id"] == f"cmpl-{made}"
    assert http.post("/v1/chat/completions", json={}).headers["x-request-id"]  # errors too

    def broken(query, top_k):
        raise RuntimeError("injected fault")

    monkeypatch.setattr(live.state.rag, "search", broken)
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.ERROR, logger="llmds"):
        r = http.post("/v1/chat/completions", json=chat_body(rag={"top_k": 1}), headers={"X-Request-Id": "rag-7"})
    assert r.status_code == 500 and r.headers["x-request-id"] == "rag-7"
    assert any(rec.request_id == " [request rag-7]" for rec in caplog.records), caplog.records


@pytest.fixture
def side_app(live):
    """``make(**config)``: a TestClient on an app of its own over the live engine (no lifespan: it never
    starts a second engine thread, so only routes that do not generate are asked)."""
    from starlette.testclient import TestClient

    from llmds.server.app import create_app
    from llmds.server.state import ServerConfig, ServerState

    def make(**config):
        return TestClient(create_app(ServerState(live.state.engine, ServerConfig(**config))))

    return make


def test_metrics_can_be_left_open_with_an_api_key(side_app):
    closed = side_app(api_key="k", rag=False)
    assert closed.get("/metrics").status_code == 401 and closed.get("/health").status_code == 200
    opened = side_app(api_key="k", rag=False, public_metrics=True)
    assert opened.get("/metrics").status_code == 200
    assert opened.get("/v1/models").status_code == 401  # only /metrics and /health


def test_cors_is_off_by_default_and_on_for_the_allowed_origins(side_app):
    preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    off = side_app(api_key="k", rag=False)
    assert "access-control-allow-origin" not in off.options("/v1/chat/completions", headers=preflight).headers
    on = side_app(api_key="k", rag=False, allowed_origins=("http://app.example",))
    r = on.options("/v1/chat/completions", headers=preflight)  # no key needed for a preflight
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.example"
    r = on.get("/health", headers={"Origin": "http://app.example"})
    assert r.headers["access-control-allow-origin"] == "http://app.example"
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
    r = on.options("/v1/chat/completions", headers={**preflight, "Origin": "http://evil.example"})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers


def test_embeddings_with_rag_off_load_on_first_use(side_app, live):
    pytest.importorskip("sentence_transformers")
    app = side_app(rag=False)
    assert [m["id"] for m in app.get("/v1/models").json()["data"]] == [MODEL, "all-MiniLM-L6-v2"]
    assert app.post("/v1/retrieve", json={"query": "x"}).status_code == 404
    r = app.post("/v1/embeddings", json={"input": ["paged attention"]})
    assert r.status_code == 200, r.text
    want = live.state.embedder.embed_batch(["paged attention"])[0]
    np.testing.assert_allclose(r.json()["data"][0]["embedding"], want, atol=1e-5)
    assert json.loads(app.get("/health").text)["rag"] == "off"
