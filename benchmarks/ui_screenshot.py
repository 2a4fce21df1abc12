"""The README's picture of the web page (``docs/images/webui.png``): a RAG answer with its sources
beside the engine view while ``bench_server``'s 32 streaming clients run.

One ``llmds serve`` (RAG over the project's README and docs/), headless Debian chromium driven by
Playwright for Python: the chat tab answers a RAG question; then the load starts and, half-way
through it, the Engine tab is taken; the two shots are set side by side in one PNG.  Loads the
model: run it under the CPU lock.

Run: ``python -m benchmarks.ui_screenshot [--out docs/images/webui.png]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import threading
from pathlib import Path

from benchmarks.bench_server import Server, _free_port, load, warm_up

OUT = Path(__file__).resolve().parent.parent / "docs" / "images" / "webui.png"
CHROMIUM = os.environ.get("LLMDS_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
VIEW = {"width": 820, "height": 720}
QUESTION = "How does llmds share KV blocks between requests?"


def _wait_rag(url: str) -> None:
    import time

    import httpx

    for _ in range(600):
        if httpx.get(url + "/health", timeout=5).json()["rag"] != "loading":
            return
        time.sleep(0.5)
    raise RuntimeError("retrieval did not load in 5 minutes")


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=16.0, help="seconds of load (the shot half-way)")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    port = _free_port()
    server = Server("llmds-ui", [sys.executable, "-m", "llmds.cli", "serve", "--port", str(port), "--dtype",
                                 "bfloat16", "--log-level", "warning"], port, "/health")
    try:
        server.start()
        warm_up(server.url)
        _wait_rag(server.url)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            ctx = browser.new_context(viewport=VIEW, device_scale_factor=1)
            chat = ctx.new_page()
            chat.goto(server.url + "/")
            chat.check("#rag")
            chat.click("#settings summary")
            chat.fill("#max_tokens", "96")
            chat.fill("#temperature", "0")
            chat.click("#settings summary")
            chat.fill("#input", QUESTION)
            chat.press("#input", "Enter")
            chat.locator(".msg.assistant .usage").wait_for(timeout=120_000)
            shots = [chat.screenshot()]
            engine = ctx.new_page()
            engine.goto(server.url + "/")
            engine.click("button[data-view=engine]")
            engine.wait_for_selector("[data-state=free]")
            runner = threading.Thread(target=lambda: asyncio.run(load(server.url, args.clients, args.duration)))
            runner.start()
            engine.wait_for_timeout(args.duration * 500)  # half-way through the load
            shots.append(engine.screenshot())
            runner.join()
            both = ctx.new_page()  # the two shots side by side, drawn by the browser itself
            both.set_viewport_size({"width": 2 * VIEW["width"] + 12, "height": VIEW["height"]})
            imgs = "".join(f'<img src="data:image/png;base64,{base64.b64encode(s).decode()}">' for s in shots)
            both.set_content(f'<body style="margin:0;display:flex;gap:12px;background:#888">{imgs}</body>')
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_bytes(both.screenshot())
            browser.close()
    finally:
        server.stop()
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")
    return args.out


if __name__ == "__main__":
    main()
