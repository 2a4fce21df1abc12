"""What the web page costs the server: ``bench_server``'s load with and without a page watching.

One ``llmds serve`` (as ``bench_server`` starts it: ``--no-rag --dtype bfloat16``), warmed up, then
``--repeats`` pairs of ``--duration``-second runs of ``--clients`` closed-loop streaming clients,
one *without* and one *with* (odd pairs: with first) one page open in headless Debian chromium
(Playwright for Python) on its Engine tab, whose event stream draws the KV block map, the batch
and the charts live the whole run.  Reported: the medians, their ratio (with / without; the goal is >= 0.98) and each
pair's.  Then the page load: ``--loads`` fresh loads of ``/`` (navigation timing: response end,
DOMContentLoaded, load event; new browser context each, so nothing is cached), and every URL the
page asked for, which must all be this server's.

Run: ``python -m benchmarks.bench_ui [--quick] [--clients N] [--duration S] [--repeats R]``;
writes ``benchmarks/results/bench_ui.json``.  Needs the ``bench`` extra (aiohttp), Playwright and
``/usr/bin/chromium`` (``LLMDS_CHROMIUM`` overrides the path).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import threading
from pathlib import Path

from benchmarks._common import add_out_arg, out_path, ratio_rule, require_bench_extra, run_main, write_results
from benchmarks.bench_server import _free_port, llmds_server, load, warm_up

RESULTS = Path(__file__).resolve().parent / "results" / "bench_ui.json"
CHROMIUM = os.environ.get("LLMDS_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]


def _cpu() -> dict:
    """The CPU's name and whether it has AMX (figures differ a lot with and without)."""
    name, flags = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    return {"machine": name, "amx": "amx_bf16" in flags}


def _load(url: str, clients: int, duration: float) -> dict:
    """``bench_server``'s load, on a thread of its own: Playwright's sync API holds this thread's
    event loop (the page keeps drawing meanwhile: its browser is another process)."""
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(asyncio.run(load(url, clients, duration))))
    t.start()
    t.join()
    return out


def page_loads(browser, url: str, n: int) -> dict:
    """``n`` loads of the page in fresh contexts: navigation timings (ms) and every URL asked for."""
    timings, urls = [], set()
    for _ in range(n):
        ctx = browser.new_context()
        page = ctx.new_page()
        page.on("request", lambda r: urls.add(r.url))
        page.goto(url + "/", wait_until="load")
        timings.append(page.evaluate("(() => { const t = performance.getEntriesByType('navigation')[0]; "
                                     "return [t.responseEnd, t.domContentLoadedEventEnd, t.loadEventEnd]; })()"))
        ctx.close()
    cols = list(zip(*timings))
    return {"loads": n, "response_end_ms": statistics.median(cols[0]),
            "dom_content_loaded_ms": statistics.median(cols[1]),
            "load_event_ms": statistics.median(cols[2]), "load_event_max_ms": max(cols[2]),
            "urls": sorted(urls), "only_this_server": all(u.startswith(url + "/") for u in urls)}


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
    ap.add_argument("--repeats", type=int, default=3, help="pairs of runs (default 3)")
    ap.add_argument("--loads", type=int, default=20, help="page loads timed (default 20)")
    add_out_arg(ap, RESULTS)
    args = ap.parse_args(argv)
    require_bench_extra("aiohttp")
    from playwright.sync_api import sync_playwright

    if args.quick:
        args.clients, args.duration, args.repeats, args.loads = 8, 8.0, 1, 3
    result = {"clients": args.clients, "duration": args.duration, "repeats": args.repeats,
              **_cpu(), "cpus": os.cpu_count()}
    server = llmds_server(_free_port())
    try:
        server.start()
        warm_up(server.url)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            result["page_load"] = page_loads(browser, server.url, args.loads)
            without, with_page, shown = [], [], []
            for i in range(args.repeats):  # odd pairs run the page first: no order bias
                for watched in ((False, True) if i % 2 == 0 else (True, False)):
                    if not watched:
                        without.append(_load(server.url, args.clients, args.duration)["tok_s"])
                        continue
                    ctx, page = watching_page(browser, server.url)
                    seen = page.evaluate("engine.last.counters.generation_tokens")
                    with_page.append(_load(server.url, args.clients, args.duration)["tok_s"])
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
    finally:
        server.stop()
    print(format_table(result))
    write_results(out_path(args, RESULTS), result)
    return result


def format_table(r: dict) -> str:
    pl = r["page_load"]
    return "\n".join([
        f"bench_ui: {r['clients']} streaming clients, {r['duration']} s runs, {r['repeats']} pairs (medians); "
        f"{r['machine']}, {r['cpus']} CPUs{', AMX' if r.get('amx') else ''}",
        ratio_rule("tok/s with the page open / without it (the goal: >= 0.98)", "the run with the page"),
        f"without the page {r['without_page_tok_s']:.1f} tok/s, with the Engine tab live {r['with_page_tok_s']:.1f} "
        f"tok/s: ratio {r['ratio']:.3f} (pairs {', '.join(f'{x:.3f}' for x in r['pair_ratios'])})",
        f"page load ({pl['loads']} fresh loads, medians): response end {pl['response_end_ms']:.0f} ms, "
        f"DOMContentLoaded {pl['dom_content_loaded_ms']:.0f} ms, load {pl['load_event_ms']:.0f} ms "
        f"(max {pl['load_event_max_ms']:.0f}); {len(pl['urls'])} URLs, all this server's: {pl['only_this_server']}",
    ])


if __name__ == "__main__":
    run_main(main)
