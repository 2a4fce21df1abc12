"""``llmds serve --replicas 2`` on Ray Serve, end to end: one server for the module (Ray started
once, 2 replicas with fractional CPUs on this machine's cores), real HTTP.  Every wait is bounded
and waits for a condition."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")
httpx = pytest.importorskip("httpx")

START_TIMEOUT = 180.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(cond, timeout: float, what: str):
    end = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def _health(url: str) -> dict | None:
    try:
        r = httpx.get(url + "/health", timeout=5)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    log = open(tmp_path_factory.mktemp("ray") / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "llmds.cli", "serve", "--replicas", "2", "--no-rag",
                             "--port", str(port), "--max-num-seqs", "16", "--kv-cache-gb", "0.25",
                             "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: proc.poll() is not None or len((_health(url) or {}).get("replicas", {})) == 2,
              START_TIMEOUT, "2 healthy replicas")
        assert proc.poll() is None, f"the server exited; see {log.name}"
        yield proc, url
    finally:
        if proc.poll() is None:
            tree = psutil.Process(proc.pid).children(recursive=True)
            os.killpg(proc.pid, signal.SIGKILL) if _stop(proc, tree) is None else None
        log.close()


def _stop(proc, tree) -> int | None:
    """SIGTERM, then the driver's status (None if it did not exit within 60 s)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        return None


def _chat(system: str, user: str, **kw) -> dict:
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "temperature": 0, **kw}


SYSTEM_A = ("Alpha desk: you answer questions about trains, timetables and tickets for a regional "
            "railway company, politely and briefly, citing the relevant rule when there is one.")
SYSTEM_B = ("Bravo desk: you help gardeners choose plants for shady balconies, with watering advice "
            "and the month to plant each one, in short bullet lists.")
SYSTEM_C = ("Charlie desk: you explain kitchen chemistry, why bread rises and sauces split, to "
            "curious home cooks in plain words and one example each.")


def test_same_prefix_goes_to_the_same_replica(server):
    _, url = server
    first = httpx.post(url + "/v1/chat/completions", json=_chat(SYSTEM_A, "When does the first train leave?",
                                                                max_tokens=4), timeout=60)
    assert first.status_code == 200, first.text
    replica = first.headers["x-llmds-replica"]
    for q in ("Can I bring a bicycle?", "Is there a student discount?", "Where do I validate a ticket?"):
        r = httpx.post(url + "/v1/chat/completions", json=_chat(SYSTEM_A, q, max_tokens=4), timeout=60)
        assert r.status_code == 200 and r.headers["x-llmds-replica"] == replica
        assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0  # its prefix was cached there


def _open_stream(client: httpx.Client, url: str, body: dict):
    cm = client.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60)
    resp = cm.__enter__()
    assert resp.status_code == 200
    lines = resp.iter_lines()
    first = next(line for line in lines if line.startswith("data: "))
    return cm, resp, lines, first


def test_streams_and_different_prefixes_spread(server):
    _, url = server
    with httpx.Client() as client:
        cm, resp, lines, _ = _open_stream(client, url, _chat(SYSTEM_B, "List ten plants.", max_tokens=160,
                                                             ignore_eos=True))
        busy = resp.headers["x-llmds-replica"]
        # while that stream runs its replica is the busier: a new prefix goes to the other one
        r = httpx.post(url + "/v1/chat/completions", json=_chat(SYSTEM_C, "Why does bread rise?", max_tokens=4),
                       timeout=60)
        assert r.status_code == 200 and r.headers["x-llmds-replica"] != busy
        events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
        cm.__exit__(None, None, None)
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert len(text) > 100
    metrics = httpx.get(url + "/metrics", timeout=10).text
    served = {line.split('replica="')[1].split('"')[0] for line in metrics.splitlines()
              if line.startswith("llmds:generation_tokens_total{")}
    assert len(served) == 2  # one series per replica


def test_a_killed_replica_ends_its_streams_loses_no_new_request_and_comes_back(server):
    _, url = server
    pids = {name: h["pid"] for name, h in _health(url)["replicas"].items()}
    with httpx.Client() as client:
        cm, resp, lines, _ = _open_stream(client, url, _chat(SYSTEM_B, "Describe twenty plants.", max_tokens=2000,
                                                             ignore_eos=True))
        victim = resp.headers["x-llmds-replica"]
        os.kill(pids[victim], signal.SIGKILL)
        t0 = time.monotonic()
        rest = [line for line in lines if line.startswith("data: ")]  # ends: no hang
        cm.__exit__(None, None, None)
    assert rest[-1] == "data: [DONE]"
    err = json.loads(rest[-2][6:])
    assert err["error"]["code"] == "replica_lost"
    # requests sent now: none lost (one that reaches the dead replica is sent again to the live one)
    for q in ("Is it cold?", "Which fern?", "How much water?", "When to plant?"):
        r = httpx.post(url + "/v1/chat/completions", json=_chat(SYSTEM_B, q, max_tokens=4), timeout=60)
        assert r.status_code == 200, r.text
    back = _wait(lambda: (h := _health(url)) and len(h["replicas"]) == 2 and victim not in h["replicas"] and h,
                 60, "the killed replica to be replaced")
    print(f"replica replaced in {time.monotonic() - t0:.1f} s")
    assert set(back["replicas"]) != set(pids)


def test_the_web_page_and_its_engine_view_work_through_the_replicas(server):
    _, url = server
    page = httpx.get(url + "/", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    health = _health(url)
    first = sorted(health["replicas"])[0]
    views = [httpx.get(url + "/v1/engine/state", timeout=10).json() for _ in range(3)]
    assert {v["replica"] for v in views} == {first}  # one replica's view, the same every time
    assert len(views[-1]["blocks"]) == views[-1]["num_blocks"] == health["replicas"][first]["kv_num_blocks"]


def test_sigterm_stops_the_whole_ray_tree(server):
    proc, url = server
    tree = psutil.Process(proc.pid).children(recursive=True)
    assert len(tree) >= 4  # Ray's GCS, raylet, controller, proxy, replicas
    assert _stop(proc, tree) == 0
    _wait(lambda: not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], 60,
          "every Ray process to exit")
