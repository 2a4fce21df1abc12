"""Requests that end early: a client that leaves mid-stream, a failing step, a failing retrieval,
and SIGTERM on a real ``llmds serve`` process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import httpx
import pytest
from server_helpers import API_KEY, chat_body, metric

LONG = "Write a very long story about a lighthouse keeper and his cat, with many chapters."


def test_disconnect_mid_stream_aborts_and_frees_the_blocks(http, live):
    bm = live.state.engine.block_manager
    aborted = live.state.engine.metrics.requests_finished["abort"]
    with http.stream("POST", "/v1/chat/completions", json=chat_body(LONG, max_tokens=1000, stream=True)) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        first = next(ln for ln in lines if ln.startswith("data: "))
        assert json.loads(first[6:])["object"] == "chat.completion.chunk"
        next(ln for ln in lines if ln.startswith("data: "))  # a token: the request holds KV blocks
        assert bm.num_free_blocks < live.idle_free_blocks
    # the connection is closed: the server aborts the request at once
    live.settle()
    assert bm.num_free_blocks == live.idle_free_blocks
    assert live.state.engine.metrics.requests_finished["abort"] == aborted + 1
    assert live.state.gate.in_flight == 0 and live.state.gate.waiting_requests == 0


def test_a_client_that_gives_up_on_a_whole_response_aborts_it(live):
    aborted = live.state.engine.metrics.requests_finished["abort"]
    with httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {API_KEY}"}) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.post("/v1/chat/completions", json=chat_body(LONG, max_tokens=1000), timeout=httpx.Timeout(120, read=1.0))
    live.settle()
    assert live.state.engine.metrics.requests_finished["abort"] == aborted + 1


def test_a_failing_step_fails_only_the_requests_in_it(http, live, monkeypatch):
    model = live.state.engine.model
    real = model.forward
    calls = []

    def broken(batch):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected fault")
        return real(batch)

    monkeypatch.setattr(model, "forward", broken)
    r = http.post("/v1/chat/completions", json=chat_body())
    assert r.status_code == 500 and r.json()["error"]["code"] == "engine_error"
    with http.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as s:
        lines = [ln for ln in s.iter_lines() if ln]
    assert s.status_code == 200 and lines[-1] == "data: [DONE]"  # the engine loop went on serving
    assert json.loads(lines[-2][6:])["choices"] == [] or "error" not in lines[-2]
    live.settle()
    assert live.state.engine.metrics.requests_finished["error"] >= 1


def test_a_failing_retrieval_fails_only_that_request(http, live, monkeypatch):
    def broken(query, top_k):
        raise RuntimeError("injected fault")

    monkeypatch.setattr(live.state.rag, "search", broken)
    r = http.post("/v1/chat/completions", json=chat_body(rag={"top_k": 2}))
    assert r.status_code == 500 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert http.post("/v1/chat/completions", json=chat_body()).status_code == 200


def test_sigterm_aborts_frees_everything_and_exits_0(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmds.cli", "serve", "--port", "0", "--no-rag", "--dtype", "float32",
         "--num-blocks", "64", "--max-num-seqs", "4", "--log-level", "info"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert " on http://" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = line.split(" on ")[1].split()[0]
        events: list[str] = []
        started = threading.Event()

        def stream():
            with httpx.stream("POST", url + "/v1/chat/completions", timeout=120,
                              json=chat_body(LONG, max_tokens=900, stream=True)) as r:
                for ln in r.iter_lines():
                    if ln:
                        events.append(ln)
                        if len(events) == 2:
                            started.set()

        t = threading.Thread(target=stream)
        t.start()
        assert started.wait(120)
        metrics = httpx.get(url + "/metrics").text
        assert metric(metrics, "llmds:num_requests_running") == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        t.join(60)
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    # the stream was ended by the server (an error event, then [DONE]), not left hanging
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["error"]["code"] == "shutting_down"
    assert "engine stopped: 64 of 64 KV blocks free" in stderr
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health")
