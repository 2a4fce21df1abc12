"""The page's routes over HTTP (no browser): the page open without the key and cached by ETag,
the engine state and its event stream behind the key, the documents search with both sides'
scores, and ``--no-ui``."""

from __future__ import annotations

import json

import httpx
import pytest


def test_the_page_and_its_assets_need_no_key_and_revalidate(live):
    r = httpx.get(live.url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp
    for src in ("/ui/app.js", "/ui/app.css", "/ui/vendor/marked.umd.js", "/ui/vendor/purify.min.js",
                "/ui/vendor/highlight.min.js"):
        assert f'"{src}"' in r.text or f'"{src}"' in httpx.get(live.url + "/ui/app.js").text  # highlight.js: lazily
        a = httpx.get(live.url + src)
        assert a.status_code == 200 and a.content
        assert httpx.get(live.url + src, headers={"If-None-Match": a.headers["etag"]}).status_code == 304
    assert httpx.get(live.url + "/ui/nothing.js").status_code == 401  # only the page's own files are open


def test_engine_state_is_behind_the_key_and_counts_every_block(live, http):
    assert httpx.get(live.url + "/v1/engine/state").status_code == 401
    s = http.get("/v1/engine/state").json()
    n = live.state.engine.num_blocks
    assert s["num_blocks"] == n and len(s["blocks"]) == n and set(s["blocks"]) <= set("01234")
    assert s["block_states"] == ["free", "cached", "running", "shared", "pinned"]
    assert sum(s["block_counts"].values()) == n
    assert s["block_counts"]["free"] + s["block_counts"]["cached"] == live.idle_free_blocks
    assert s["running"] == [] and s["num_running"] == 0 and s["kv_usage"] == 0.0
    assert {"generation_tokens", "prompt_tokens", "prefix_cache_hits"} <= set(s["counters"])
    assert all(len(h) == 6 for h in s["history"])


def test_engine_events_start_with_the_whole_state(live, http):
    assert httpx.get(live.url + "/v1/engine/events").status_code == 401
    with http.stream("GET", "/v1/engine/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        assert next(lines) == "event: state"
        state = json.loads(next(lines).removeprefix("data: "))
    assert len(state["blocks"]) == live.state.engine.num_blocks and "history" in state


def test_documents_search_shows_both_sides_scores(http):
    r = http.post("/v1/documents/search", json={"query": "prefix caching shares KV blocks", "top_k": 3})
    assert r.status_code == 200, r.text
    hits = r.json()["data"]
    fused = http.post("/v1/retrieve", json={"query": "prefix caching shares KV blocks", "top_k": 3}).json()["data"]
    assert [h["id"] for h in hits] == [h["id"] for h in fused]  # the same search, scores added
    assert hits[0]["source"] == "prefix.md" and hits[0]["bm25"] > 0 and 0 < hits[0]["dense"] <= 1
    assert all(h["bm25"] >= 0 for h in hits)
    assert http.post("/v1/documents/search", json={"query": ""}).status_code == 400


def test_no_ui_serves_no_page(live):
    from starlette.testclient import TestClient

    from llmds.server.app import create_app
    from llmds.server.state import ServerConfig, ServerState

    client = TestClient(create_app(ServerState(live.state.engine, ServerConfig(ui=False, rag=False))))
    assert client.get("/").status_code == 404 and client.get("/ui/app.js").status_code == 404
    assert "/v1/engine/state" in client.get("/openapi.json").json()["paths"]  # the JSON routes stay


@pytest.mark.parametrize("path", ["/", "/ui/app.js"])
def test_the_page_is_not_in_the_api_schema(http, path):
    assert path not in http.get("/openapi.json").json()["paths"]
