"""The server's memory under repeated bursts: RSS after each burst against its post-warm-up level,
and every KV block free again (or pinned for a hot prefix) once a burst is served.

``llmds serve`` with its default options (RAG over the README and docs/, bfloat16, 1 GiB of KV)
in its own process.  A burst: ``--streams`` streaming chat requests opened at once (aiohttp, one
connection each), a system prompt and one of 32 questions with a varying suffix, ``--max-tokens``
new tokens each at temperature 0.7, every ``--rag-every``-th with RAG (2 chunks); a request refused with 429 is sent again after its
``Retry-After``, so every burst serves all of its streams.  One warm-up burst, then ``--bursts``
measured ones; after each, once the server is idle (``/health``: nothing in flight) and
``--settle`` seconds later (the server returns freed memory after 1 s of idleness:
:mod:`llmds.server.memory`), its RSS and KV blocks.  Before the warm-up: the RSS of the idle
server with retrieval ready.

Side by side, the same server with ``--no-memory-trim`` (glibc's allocator defaults, never
trimmed) for ``--compare-bursts`` bursts (0: skip), first.

Run: ``python -m benchmarks.bench_bursts [--quick] [--bursts N] [--streams N] [--max-tokens N]
[--compare-bursts N] [-- extra llmds serve options]``; writes ``benchmarks/results/bench_bursts.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

from benchmarks._common import add_out_arg, machine_info, out_path, require_bench_extra, run_main, write_results
from benchmarks.bench_server import MODEL, QUESTIONS, SYSTEM, Server, _free_port, _idle_health

RESULTS = Path(__file__).resolve().parent / "results" / "bench_bursts.json"


async def burst(url: str, streams: int, max_tokens: int, seed: int, rag_every: int) -> dict:
    """``streams`` streaming requests at once, each retried after a 429 until it is served; every
    ``rag_every``-th asks for RAG (2 chunks), so the embedder and retrieval serve too."""
    import aiohttp

    rejected, tokens, failed, reconnects = [0], [0], [], [0]

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        q = f"{QUESTIONS[i % len(QUESTIONS)]} (reader {seed}-{i})"
        body = {"model": MODEL, "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
                "max_tokens": max_tokens, "temperature": 0.7, "seed": seed * 100_000 + i, "stream": True}
        if rag_every and i % rag_every == 0:
            body["rag"] = {"top_k": 2}
        while True:
            try:
                async with session.post(url + "/v1/chat/completions", json=body) as r:
                    if r.status == 429:
                        rejected[0] += 1
                        await asyncio.sleep(float(r.headers.get("retry-after", 1)))
                        continue
                    if r.status != 200:
                        failed.append(r.status)
                        return
                    async for line in r.content:
                        if line.startswith(b"data: {") and b'"content":"' in line:
                            tokens[0] += 1
                    return
            except aiohttp.ClientConnectionError:  # a connect refused or reset (e.g. the listen backlog)
                reconnects[0] += 1
                await asyncio.sleep(1.0)

    t0 = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=streams + 8, force_close=True)  # a connection per request
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=1800.0)) as session:
        await asyncio.gather(*(one(session, i) for i in range(streams)))
    return {"seconds": time.perf_counter() - t0, "tokens": tokens[0], "rejected_429": rejected[0],
            "failed": sorted(failed), "reconnects": reconnects[0]}


def wait_rag_ready(url: str, timeout: float = 600.0) -> str:
    import httpx

    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        status = httpx.get(url + "/health").json()["rag"]
        if status != "loading":
            return status
        time.sleep(0.5)
    raise RuntimeError("retrieval did not load")


def run(bursts: int, streams: int, max_tokens: int, serve_args: list[str], settle: float, rag_every: int) -> dict:
    port = _free_port()
    server = Server("llmds", [sys.executable, "-m", "llmds.cli", "serve", "--port", str(port), "--log-level",
                              "warning", *serve_args], port, "/health")
    res: dict = {"streams": streams, "max_tokens": max_tokens, "rag_every": rag_every, "serve_args": serve_args,
                 "bursts": []}
    try:
        server.start()
        res["rag"] = wait_rag_ready(server.url)
        time.sleep(settle)
        res["rss_idle_mb"] = server.rss_bytes() / 2**20
        print(f"idle, retrieval {res['rag']}: RSS {res['rss_idle_mb']:.0f} MB", flush=True)
        for k in range(bursts + 1):
            b = asyncio.run(burst(server.url, streams, max_tokens, k, rag_every))
            h = _idle_health(server.url)
            time.sleep(settle)
            b["rss_mb"] = server.rss_bytes() / 2**20
            b["kv_free_blocks"], b["kv_pinned_blocks"] = h["kv_free_blocks"], h["kv_pinned_blocks"]
            b["kv_num_blocks"] = h["kv_num_blocks"]
            b["kv_all_back"] = h["kv_free_blocks"] + h["kv_pinned_blocks"] == h["kv_num_blocks"]
            label = "warm-up" if k == 0 else f"burst {k:2d}"
            print(f"{label}: {b['seconds']:6.1f} s, {b['tokens'] / b['seconds']:6.1f} tok/s, 429s {b['rejected_429']:4d},"
                  f" reconnects {b['reconnects']},"
                  f" failed {len(b['failed'])}, RSS {b['rss_mb']:6.0f} MB, KV {b['kv_free_blocks']} free + "
                  f"{b['kv_pinned_blocks']} pinned of {b['kv_num_blocks']}", flush=True)
            if k == 0:
                res["warm_up"] = b
            else:
                res["bursts"].append(b)
        base = res["warm_up"]["rss_mb"]
        rss = [b["rss_mb"] for b in res["bursts"]]
        res["rss_post_warm_up_mb"] = base
        res["rss_max_mb"], res["rss_last_mb"] = max(rss), rss[-1]
        res["rss_max_over_post_warm_up"] = max(rss) / base
        res["kv_all_back_every_burst"] = all(b["kv_all_back"] for b in res["bursts"])
        res["failed_requests"] = sum(len(b["failed"]) for b in res["bursts"])
    finally:
        res["exit_status"] = server.stop()
    return res


def format_table(res: dict) -> str:
    lines = [f"bench_bursts on {res['machine']['processor']} ({res['machine']['cpus']} CPUs, AMX "
             f"{'yes' if res['machine']['amx'] else 'no'})"]
    for name in ("no_memory_trim", "llmds"):
        if name in res:
            lines += [f"-- {name}: llmds serve {' '.join(res[name]['serve_args'])}", _format_one(res[name])]
    return "\n".join(lines)


def _format_one(r: dict) -> str:
    return (f"{len(r['bursts'])} bursts of {r['streams']} concurrent streams, {r['max_tokens']} tokens "
            f"each (after one warm-up burst)\n"
            f"RSS idle (retrieval {r['rag']}) {r['rss_idle_mb']:.0f} MB; after the warm-up {r['rss_post_warm_up_mb']:.0f} MB; "
            f"after the bursts max {r['rss_max_mb']:.0f} MB ({r['rss_max_over_post_warm_up'] - 1:+.1%}), "
            f"last {r['rss_last_mb']:.0f} MB\n"
            f"every KV block free (or pinned) after every burst: {r['kv_all_back_every_burst']}; "
            f"failed requests: {r['failed_requests']}; 429s (retried): {sum(b['rejected_429'] for b in r['bursts'])}; "
            f"connections reset or refused (retried): {sum(b['reconnects'] for b in r['bursts'])}; "
            f"{statistics.median(b['tokens'] / b['seconds'] for b in r['bursts']):.1f} tok/s (median burst)")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 bursts of 100 streams, 8 tokens")
    ap.add_argument("--bursts", type=int, default=20)
    ap.add_argument("--streams", type=int, default=600)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--compare-bursts", type=int, default=5, help="bursts of the --no-memory-trim server (0: none)")
    ap.add_argument("--rag-every", type=int, default=10, help="every N-th request asks for RAG (0: none)")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds idle before each RSS reading")
    ap.add_argument("serve_args", nargs=argparse.REMAINDER, help="after --: extra `llmds serve` options")
    add_out_arg(ap, RESULTS)
    args = ap.parse_args(argv)
    require_bench_extra("aiohttp")
    if args.quick:
        args.bursts, args.streams, args.max_tokens, args.compare_bursts = 3, 100, 8, 1
    extra = [a for a in args.serve_args if a != "--"]
    result = {"machine": machine_info()}
    if args.compare_bursts:
        result["no_memory_trim"] = run(args.compare_bursts, args.streams, args.max_tokens,
                                       [*extra, "--no-memory-trim"], args.settle, args.rag_every)
    result["llmds"] = run(args.bursts, args.streams, args.max_tokens, extra, args.settle, args.rag_every)
    print(format_table(result))
    write_results(out_path(args, RESULTS), result)
    return result


if __name__ == "__main__":
    run_main(main)
