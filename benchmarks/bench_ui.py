"""What the web page costs the server: ``bench_server``'s load with and without a page watching.

One ``llmds serve`` (as ``bench_server`` starts it: ``--no-rag --dtype bfloat16``), warmed up, then
``--repeats`` pairs of ``--duration``-second runs of ``--clients`` closed-loop streaming clients,
one *without* and one *with* (odd pairs: with first) one page open in headless Debian chromium
(Playwright for Python) on its Engine tab, whose event stream draws the KV block map, the batch
and the charts live the whole run.  Reported: the medians, their ratio (with / without; the goal
is >= 0.98), each pair's, and the CPU seconds the server and chromium used in each run (what the
page costs whatever the machine's noise).  Then the page load (:func:`page_loads`: navigation
timing, warm and cold) and every URL the page asked for, which must all be this server's.

Run: ``python -m benchmarks.bench_ui [--quick] [--clients N] [--duration S] [--repeats R]``;
writes ``benchmarks/results/bench_ui.json``.  Needs the ``bench`` extra (aiohttp), Playwright and
``/usr/bin/chromium`` (``LLMDS_CHROMIUM`` overrides the path).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import threading
from pathlib import Path

from benchmarks._common import (
    add_out_arg, machine_info, out_path, ratio_rule, require_bench_extra, run_main, write_results,
)
from benchmarks.bench_server import _free_port, llmds_server, load, warm_up

RESULTS = Path(__file__).resolve().parent / "results" / "bench_ui.json"
CHROMIUM = os.environ.get("LLMDS_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]


def _load(url: str, clients: int, duration: float) -> dict:
    """``bench_server``'s load, on a thread of its own: Playwright's sync API holds this thread's
    event loop (the page keeps drawing meanwhile: its browser is another process)."""
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(asyncio.run(load(url, clients, duration))))
    t.start()
    t.join()
    return out


NAV = ("(() => { const t = performance.getEntriesByType('navigation')[0]; "
       "return [t.responseEnd, t.domContentLoadedEventEnd, t.loadEventEnd]; })()")


def _tree(pid: int) -> list:
    import psutil

    p = psutil.Process(pid)
    return [p, *p.children(recursive=True)]


def _cpu_seconds(procs: list) -> float:
    """User + system CPU seconds of ``procs`` so far (those gone since count nothing)."""
    import psutil

    total = 0.0
    for q in procs:
        try:
            t = q.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def page_loads(browser, url: str, n: int) -> dict:
    """``n`` loads of the page, twice: *cold*, each in a fresh browser context (a new renderer
    process, nothing cached), and *warm*, reloads in one tab with the HTTP cache disabled (every
    file fetched again, the renderer already running).  Navigation timings (ms, medians) and
    every URL asked for."""
    urls: set[str] = set()

    def timings(page) -> list[float]:
        page.goto(url + "/", wait_until="load")
        return page.evaluate(NAV)

    cold = []
    for _ in range(n):
        ctx = browser.new_context()
        page = ctx.new_page()
        page.on("request", lambda r: urls.add(r.url))
        cold.append(timings(page))
        ctx.close()
    ctx = browser.new_context()
    page = ctx.new_page()
    page.on("request", lambda r: urls.add(r.url))
    cdp = ctx.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
    timings(page)  # the tab's first load is a cold one
    warm = [timings(page) for _ in range(n)]
    ctx.close()
    out = {"loads": n, "urls": sorted(urls), "only_this_server": all(u.startswith(url + "/") for u in urls)}
    for name, ts in (("warm", warm), ("cold", cold)):
        cols = list(zip(*ts))
        out[name] = {"response_end_ms": statistics.median(cols[0]), "dom_content_loaded_ms": statistics.median(cols[1]),
                     "load_event_ms": statistics.median(cols[2]), "load_event_max_ms": max(cols[2])}
    return out


def watching_page(browser, url: str):
    """A page on the Engine tab with its live feed running; the context to close afterwards."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.goto(url + "/")
    page.click("button[data-view=engine]")
    page.wait_for_selector("[data-state=free]")  # the first event arrived
    return ctx, page


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 clients, 8 s, one pair, 3 loads")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per run (default 20)")
    ap.add_argument("--repeats", type=int, default=5, help="pairs of runs (default 5)")
    ap.add_argument("--loads", type=int, default=20, help="page loads timed (default 20)")
    add_out_arg(ap, RESULTS)
    args = ap.parse_args(argv)
    require_bench_extra("aiohttp")
    from playwright.sync_api import sync_playwright

    if args.quick:
        args.clients, args.duration, args.repeats, args.loads = 8, 8.0, 1, 3
    result = {"clients": args.clients, "duration": args.duration, "repeats": args.repeats,
              **machine_info()}
    server = llmds_server(_free_port())
    try:
        server.start()
        warm_up(server.url)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            result["page_load"] = page_loads(browser, server.url, args.loads)
            without, with_page, shown = [], [], []
            cpu = {"server_without": [], "server_with": [], "browser_with": []}  # CPU seconds per run
            for i in range(args.repeats):  # odd pairs run the page first: no order bias
                for watched in ((False, True) if i % 2 == 0 else (True, False)):
                    if not watched:
                        s0 = _cpu_seconds(_tree(server.proc.pid))
                        without.append(_load(server.url, args.clients, args.duration)["tok_s"])
                        cpu["server_without"].append(_cpu_seconds(_tree(server.proc.pid)) - s0)
                        continue
                    ctx, page = watching_page(browser, server.url)
                    seen = page.evaluate("engine.last.counters.generation_tokens")
                    chromium = [q for q in _tree(os.getpid()) if "chrom" in q.name().lower()]
                    s0, b0 = _cpu_seconds(_tree(server.proc.pid)), _cpu_seconds(chromium)
                    with_page.append(_load(server.url, args.clients, args.duration)["tok_s"])
                    cpu["server_with"].append(_cpu_seconds(_tree(server.proc.pid)) - s0)
                    cpu["browser_with"].append(_cpu_seconds(chromium) - b0)
                    page.wait_for_timeout(500)  # the last event of the run
                    shown.append(page.evaluate("engine.last.counters.generation_tokens") - seen)
                    ctx.close()
                print(f"  {args.clients} clients: {without[-1]:.1f} tok/s without the page, "
                      f"{with_page[-1]:.1f} with it", flush=True)
            browser.close()
        result["without_page_tok_s"] = statistics.median(without)
        result["with_page_tok_s"] = statistics.median(with_page)
        result["ratio"] = result["with_page_tok_s"] / result["without_page_tok_s"]
        result["pairs"] = [[a, b] for a, b in zip(without, with_page)]
        result["pair_ratios"] = [b / a for a, b in zip(without, with_page)]
        result["tokens_the_page_showed"] = shown  # generated tokens counted by the page's feed in each run
        result["cpu_seconds"] = cpu  # the server's process tree, and chromium's (while the page watched)
    finally:
        server.stop()
    print(format_table(result))
    write_results(out_path(args, RESULTS), result)
    return result


def format_table(r: dict) -> str:
    pl = r["page_load"]
    return "\n".join([
        f"bench_ui: {r['clients']} streaming clients, {r['duration']} s runs, {r['repeats']} pairs (medians); "
        f"{r['processor']}, {r['cpus']} CPUs{', AMX' if r.get('amx') else ''}",
        ratio_rule("tok/s with the page open / without it (the goal: >= 0.98)", "the run with the page"),
        f"without the page {r['without_page_tok_s']:.1f} tok/s, with the Engine tab live {r['with_page_tok_s']:.1f} "
        f"tok/s: ratio {r['ratio']:.3f} (pairs {', '.join(f'{x:.3f}' for x in r['pair_ratios'])})",
        "CPU seconds per run (medians): server {:.1f} without the page, {:.1f} with it; chromium {:.2f}".format(
            *(statistics.median(r["cpu_seconds"][k]) for k in ("server_without", "server_with", "browser_with"))),
        *(f"page load, {kind} ({pl['loads']} loads, medians): response end {t['response_end_ms']:.0f} ms, "
          f"DOMContentLoaded {t['dom_content_loaded_ms']:.0f} ms, load {t['load_event_ms']:.0f} ms "
          f"(max {t['load_event_max_ms']:.0f})" for kind, t in (("warm", pl["warm"]), ("cold", pl["cold"]))),
        f"{len(pl['urls'])} URLs asked for, all this server's: {pl['only_this_server']}",
    ])


if __name__ == "__main__":
    run_main(main)
