"""The OpenAI routes through real HTTP, with the official ``openai`` client and httpx.

Greedy outputs are compared with the engine's own ``generate`` on the same prompts (computed
before the server started), so the HTTP layer is checked to add and lose nothing.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from server_helpers import API_KEY, DOCS, chat_body, metric

MODEL = "SmolLM2-135M-Instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_models(openai_client):
    ids = [m.id for m in openai_client.models.list().data]
    assert ids == [MODEL, "all-MiniLM-L6-v2"]
    assert openai_client.models.retrieve(MODEL).id == MODEL


def test_chat_matches_the_engine(openai_client, live):
    r = openai_client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == live.reference["chat"]
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == live.reference["chat_prompt_tokens"]
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert 0 < r.usage.completion_tokens <= 8


def test_completion_matches_the_engine(openai_client, live):
    r = openai_client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8,
                                         temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].text == live.reference["text"]
    assert r.usage.completion_tokens == 8 and r.choices[0].finish_reason == "length"


def test_completion_of_several_prompts(http, live):
    body = {"prompt": ["The capital of France is", "Once upon a time"], "max_tokens": 8, "temperature": 0}
    r = http.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    assert choices[0]["text"] == live.reference["text"]
    assert r.json()["usage"]["completion_tokens"] == 16


def test_streaming_chat_equals_the_whole_response(openai_client, live):
    stream = openai_client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, temperature=0,
                                                   stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == live.reference["chat"]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1 and chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == live.reference["chat_prompt_tokens"]
    assert all(c.usage is None for c in chunks[:-1])


def test_streaming_completion_raw_events(http, live):
    body = {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0, "stream": True}
    with http.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert "".join(e["choices"][0]["text"] for e in events) == live.reference["text"]
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in e for e in events)  # not asked for


def test_max_completion_tokens_stop_and_seed(openai_client):
    r = openai_client.chat.completions.create(model=MODEL, messages=QUESTION, max_completion_tokens=3,
                                              temperature=0)
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"
    r = openai_client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, temperature=0,
                                              stop=[" Paris"])
    assert "Paris" not in r.choices[0].message.content and r.choices[0].finish_reason == "stop"
    sampled = [openai_client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=6, temperature=1.0, top_p=0.9, seed=7,
        presence_penalty=0.5, frequency_penalty=0.5).choices[0].message.content for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_chat_logprobs(openai_client):
    r = openai_client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, temperature=0,
                                              logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 3 and t.logprob <= 0
        assert t.top_logprobs[0].token == t.token  # greedy: the sampled token is the most likely
        assert t.top_logprobs[0].logprob == pytest.approx(t.logprob)
        assert [x.logprob for x in t.top_logprobs] == sorted((x.logprob for x in t.top_logprobs), reverse=True)
        assert bytes(t.bytes) == t.token.encode()


def test_completion_logprobs(http):
    r = http.post("/v1/completions", json={"prompt": "The capital of France is", "max_tokens": 4,
                                           "temperature": 0, "logprobs": 2}).json()
    lp = r["choices"][0]["logprobs"]
    assert "".join(lp["tokens"]) == r["choices"][0]["text"]
    assert len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 4
    assert lp["text_offset"] == list(np.cumsum([0] + [len(t) for t in lp["tokens"][:-1]]))


def test_embeddings(openai_client, http, live):
    texts = ["paged attention", "the capital of France"]
    r = openai_client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)  # base64 on the wire
    got = np.array([d.embedding for d in r.data], dtype=np.float32)
    want = live.state.embedder.embed_batch(texts)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert r.usage.prompt_tokens == live.state.embedder.count_tokens(texts) > 0
    plain = http.post("/v1/embeddings", json={"input": texts[0], "encoding_format": "float"}).json()
    np.testing.assert_allclose(plain["data"][0]["embedding"], want[0], atol=1e-6)


def test_retrieve(http):
    r = http.post("/v1/retrieve", json={"query": "which header tells a client when to retry?", "top_k": 2})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert len(data) == 2 and data[0]["source"] == "admission.txt"
    assert data[0]["score"] >= data[1]["score"]
    src = DOCS[data[0]["source"]]
    assert src[data[0]["start"]:data[0]["end"]] == data[0]["text"]


def test_an_added_document_is_searched_at_once(http, live):
    text = "The zorblax festival pairs quasar pickles with violet bread every spring."
    r = http.post("/v1/documents", json={"text": text, "source": "zorblax.md"})
    assert r.status_code == 200, r.text
    (added,) = r.json()["data"]
    try:
        hits = http.post("/v1/retrieve", json={"query": "quasar pickles zorblax", "top_k": 1}).json()["data"]
        assert hits[0]["id"] == added["id"] and hits[0]["source"] == "zorblax.md" and hits[0]["text"] == text
        assert http.post("/v1/documents", json={"text": ""}).status_code == 400
    finally:  # the other tests expect the corpus they made
        live.state.rag.pipeline.remove_document(added["id"])


def test_rag_shares_the_chunks_kv_through_the_prefix_cache(openai_client, http, live):
    before = http.get("/metrics").text
    answers = []
    for q in ("How does a block table work?", "What maps logical blocks to physical ones?"):
        answers.append(openai_client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": q}], max_tokens=4, temperature=0,
            extra_body={"rag": {"top_k": 3}}))
    first, second = answers
    chunks = [c["id"] for c in first.model_extra["rag"]["chunks"]]
    assert sorted(chunks) == sorted(c["id"] for c in second.model_extra["rag"]["chunks"]) == [0, 1, 2]
    # the chunks come first in a fixed order: the second request finds them in the prefix cache
    assert second.usage.prompt_tokens_details.cached_tokens >= 16 * 4
    after = http.get("/metrics").text
    hits = metric(after, "llmds:prefix_cache_hits_total") - metric(before, "llmds:prefix_cache_hits_total")
    assert hits >= second.usage.prompt_tokens_details.cached_tokens
    assert metric(after, "llmds:retrieval_latency_seconds_count") >= \
        metric(before, "llmds:retrieval_latency_seconds_count") + 2


def test_api_key(live, http):
    import httpx

    assert httpx.get(live.url + "/health").status_code == 200  # open without a key
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        r = httpx.post(live.url + "/v1/chat/completions", json=chat_body(), headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(live.url + "/metrics").status_code == 401
    assert http.get("/metrics").status_code == 200


def test_health(http, live):
    h = http.get("/health").json()
    assert h["status"] == "ok" and h["rag"] == "ready" and h["model"] == MODEL
    assert h["kv_free_blocks"] == h["kv_num_blocks"] == live.state.engine.num_blocks


def test_metrics_export_the_engines_collectors(http, live):
    http.post("/v1/chat/completions", json=chat_body())
    text = http.get("/metrics").text
    m = live.state.engine.metrics
    assert metric(text, "llmds:generation_tokens_total") == m.generation_tokens
    assert metric(text, "llmds:prompt_tokens_total") == m.prompt_tokens
    snap = m.time_to_first_token_seconds.snapshot()
    assert metric(text, "llmds:time_to_first_token_seconds_count") == snap.count > 0
    assert metric(text, 'llmds:time_to_first_token_seconds_bucket{le="+Inf"}') == snap.count
    for name in ("inter_token_latency_seconds_sum", "e2e_request_latency_seconds_count",
                 "request_queue_time_seconds_count", "num_requests_running", "num_requests_waiting",
                 "kv_cache_usage_perc", "prefix_cache_queries_total", "num_preemptions_total",
                 'admission_rejections_total{reason="requests_per_second"}', "retrieval_hot_documents"):
        metric(text, "llmds:" + name)
    assert metric(text, "llmds:num_requests_running") == 0
    assert metric(text, "llmds:kv_cache_usage_perc") == 0
    assert metric(text, "process_resident_memory_bytes") > 0
