"""The web page in a real browser: Playwright for Python driving Debian's chromium, against the
session's server (``live``: an API key, three small documents).  One browser for the module;
every test leaves the server idle.

Skipped, saying why, only where chromium or Playwright is missing (``make test`` installs both).
"""

from __future__ import annotations

import os
import re
import shutil

import pytest
from server_helpers import API_KEY

sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright for Python (the dev extra)")

CHROMIUM = os.environ.get("LLMDS_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None,
                                reason=f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium)")
T = 60_000  # ms: Playwright's waits (the model answers in a few seconds; a loaded CI machine is slower)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def context(browser, live):
    ctx = browser.new_context(viewport={"width": 1100, "height": 800})
    ctx.set_default_timeout(T)
    ctx.requests = []  # every URL the pages ask for
    ctx.on("request", lambda r: ctx.requests.append(r.url))
    yield ctx
    ctx.close()


@pytest.fixture(scope="module")
def page(context, live):
    """The page, the API key entered in the dialog it opened on its first 401 (``asked_for_key``)."""
    p = context.new_page()
    p.goto(live.url + "/")
    p.locator("#keydialog").wait_for(state="visible")  # GET /v1/models answered 401
    p.asked_for_key = True
    p.fill("#keyinput", API_KEY)
    p.click("#keyform button.primary")
    return p


def _settings(page, **values):
    """Open the Settings (a closed ``<details>`` at first) and fill them."""
    if not page.locator("#settings").evaluate("d => d.open"):
        page.click("#settings summary")
    for name, value in values.items():
        page.fill("#" + name, str(value))


def _settle_page(page):
    page.locator("#send").wait_for(state="visible")  # no answer streaming


def test_a_401_prompts_for_the_key(page, live):
    assert page.asked_for_key
    sync_api.expect(page.locator("#model")).to_have_text(live.state.model_name)  # asked again with the key
    assert page.evaluate("localStorage.getItem('llmds.apiKey')") == f'"{API_KEY}"'


def test_the_page_loads_fast_and_asks_only_this_server(context, page, live):
    p = context.new_page()
    p.goto(live.url + "/")
    nav = p.evaluate("JSON.stringify(performance.getEntriesByType('navigation')[0])")
    import json

    timing = json.loads(nav)
    assert timing["loadEventEnd"] < 2000, timing  # <= 200 ms measured on loopback; slack for a busy CI
    p.close()
    assert context.requests and all(u.startswith(live.url + "/") for u in context.requests), context.requests


def test_a_message_streams_an_answer_with_usage_and_speed_and_is_kept(page):
    _settings(page, max_tokens=48, temperature=0)
    page.fill("#input", "Write a short poem about the sea.")
    page.press("#input", "Enter")
    answer = page.locator(".msg.assistant").last
    page.locator("#stop").wait_for(state="visible")
    sync_api.expect(answer.locator(".body")).not_to_have_text("")  # text arrives while it streams
    streaming = page.locator("#stop").is_visible()
    _settle_page(page)
    assert streaming, "the answer ended before any of it was shown"
    sync_api.expect(answer.locator(".usage")).to_contain_text("tokens")
    sync_api.expect(answer.locator(".ttft")).to_contain_text("TTFT")
    sync_api.expect(answer.locator(".tps")).to_contain_text("tok/s")
    text = answer.locator(".body").inner_text()
    page.reload()  # the conversation comes back from localStorage
    sync_api.expect(page.locator(".msg.user .body").last).to_have_text("Write a short poem about the sea.")
    assert page.locator(".msg.assistant").last.locator(".body").inner_text() == text
    assert page.locator("#convlist li.current").count() == 1


def test_enter_sends_and_shift_enter_breaks_the_line(page):
    page.fill("#input", "first line")
    page.press("#input", "Shift+Enter")
    page.type("#input", "second line")
    assert page.input_value("#input") == "first line\nsecond line"
    page.fill("#input", "")


def test_stop_regenerate_and_edit(page, live):
    _settings(page, max_tokens=400)
    page.fill("#input", "Tell me a long story about a lighthouse keeper.")
    page.press("#input", "Enter")
    answer = page.locator(".msg.assistant").last
    sync_api.expect(answer.locator(".body")).not_to_have_text("")
    page.click("#stop")  # the stream is cut: the server aborts the request (the idle check frees its blocks)
    _settle_page(page)
    sync_api.expect(page.locator(".msg.assistant").last.locator(".meta")).to_contain_text("stopped")
    _settings(page, max_tokens=8)
    n = page.locator(".msg").count()
    page.locator(".msg.assistant").last.get_by_role("button", name="regenerate").click()
    _settle_page(page)
    assert page.locator(".msg").count() == n  # the answer was replaced, not added
    sync_api.expect(page.locator(".msg.assistant").last.locator(".usage")).to_contain_text("tokens")
    page.locator(".msg.user").last.get_by_role("button", name="edit").click()
    page.fill(".msg textarea.edit", "Name one lighthouse.")
    page.get_by_role("button", name="Save & send").click()
    _settle_page(page)
    assert page.locator(".msg").count() == n
    sync_api.expect(page.locator(".msg.user .body").last).to_have_text("Name one lighthouse.")


def test_the_block_map_fills_while_an_answer_streams_and_returns_to_idle(context, page, live):
    eng = context.new_page()
    eng.goto(live.url + "/")
    eng.click("button[data-view=engine]")
    held = eng.locator("[data-state=running], [data-state=shared]")
    holding = eng.locator('[data-state=running]:not([data-count="0"]), [data-state=shared]:not([data-count="0"])')
    sync_api.expect(held).to_have_count(2)  # the first event arrived (the page's CSP forbids wait_for_function)
    sync_api.expect(holding).to_have_count(0)
    before = eng.eval_on_selector("#blockmap", "c => c.toDataURL()")
    _settings(page, max_tokens=48)  # long enough for the feed (4 events a second) to see it
    page.fill("#input", "Count from one to thirty in words.")
    page.press("#input", "Enter")
    holding.first.wait_for(state="attached")
    during = eng.eval_on_selector("#blockmap", "c => c.toDataURL()")
    assert during != before
    _settle_page(page)
    sync_api.expect(holding).to_have_count(0)
    sync_api.expect(eng.locator("#nrun")).to_have_text("(0)")
    free = int(eng.get_attribute("[data-state=free]", "data-count"))
    cached = int(eng.get_attribute("[data-state=cached]", "data-count"))
    assert free + cached == live.idle_free_blocks  # every block back (cached prefixes stay reusable)
    assert eng.locator("#chart-tput").is_visible()
    eng.close()


def test_rag_answers_show_their_sources(page):
    page.check("#rag")
    _settings(page, max_tokens=8)
    page.fill("#input", "How are KV blocks shared between requests?")
    page.press("#input", "Enter")
    _settle_page(page)
    sources = page.locator(".msg.assistant").last.locator(".sources li")
    assert sources.count() >= 1
    text = sources.first.inner_text()
    assert re.search(r"\.(md|txt) \[\d+–\d+\] score \d", text), text
    page.uncheck("#rag")


def test_a_pasted_document_is_found_by_search_and_by_rag_answers(page, live):
    page.click("button[data-view=docs]")
    page.fill("#docsource", "zorblax.md")
    page.fill("#doctext", "The zorblax festival pairs quasar pickles with violet bread every spring.")
    page.click("#addform button.primary")
    sync_api.expect(page.locator("#addinfo")).to_contain_text("indexed 1 chunk")
    added = int(re.search(r"ids (\d+)", page.inner_text("#addinfo")).group(1))
    try:
        page.fill("#query", "quasar pickles zorblax")
        page.press("#query", "Enter")
        first = page.locator("#hits tr").first
        sync_api.expect(first.locator(".source")).to_have_text("zorblax.md")
        assert float(first.locator(".bm25").inner_text()) > 0
        assert float(first.locator(".dense").inner_text()) > 0
        page.click("button[data-view=chat]")
        page.check("#rag")
        _settings(page, max_tokens=4)
        page.fill("#input", "What does the zorblax festival pair with violet bread?")
        page.press("#input", "Enter")
        _settle_page(page)
        first_source = page.locator(".msg.assistant").last.locator(".sources li .source").first
        sync_api.expect(first_source).to_have_text("zorblax.md")
    finally:  # the other tests expect the corpus they made
        live.state.rag.pipeline.remove_document(added)
        page.uncheck("#rag")
        page.click("button[data-view=chat]")


def test_an_uploaded_file_fills_the_form(page):
    page.click("button[data-view=docs]")
    page.fill("#docsource", "")
    text = "# Notes\n\nA note uploaded from a file."
    page.set_input_files("#docfile", files=[{"name": "notes.md", "mimeType": "text/markdown", "buffer": text.encode()}])
    sync_api.expect(page.locator("#doctext")).to_have_value(text)
    sync_api.expect(page.locator("#docsource")).to_have_value("notes.md")
    page.fill("#doctext", "")
    page.fill("#docsource", "")
    page.click("button[data-view=chat]")


UNSAFE = ('Here:\n\n```python\ndef f(x):\n    return x + 1\n```\n\n**bold** <img src=x onerror="window.pwned=1">'
          '<script>window.pwned=2</script> [a link](javascript:window.pwned=3)')


def test_answers_render_markdown_with_highlighted_code_and_nothing_unsafe_and_conversations_switch(browser, live):
    ctx = browser.new_context()  # storage of its own
    try:
        p = ctx.new_page()
        p.goto(live.url + "/")
        p.locator("#keydialog").wait_for(state="visible")
        convs = [{"id": "a", "title": "markdown", "messages": [{"role": "user", "content": "show me"},
                                                                {"role": "assistant", "content": UNSAFE}]},
                 {"id": "b", "title": "other", "messages": [{"role": "user", "content": "the other one"}]}]
        p.evaluate("c => { localStorage.setItem('llmds.conversations', JSON.stringify(c)); "
                   "localStorage.setItem('llmds.currentConversation', '\"a\"'); }", convs)
        p.reload()
        p.locator("#keydialog").wait_for(state="visible")  # no key in this context
        p.click("#keycancel")
        body = p.locator(".msg.assistant .body")
        sync_api.expect(body.locator("pre code.hljs .hljs-keyword").first).to_have_text("def")
        sync_api.expect(body.locator("strong")).to_have_text("bold")
        assert body.locator("script").count() == 0
        assert body.locator("img").get_attribute("onerror") is None
        assert not (body.locator("a").get_attribute("href") or "").startswith("javascript")
        assert p.evaluate("window.pwned") is None
        p.locator("#convlist li span", has_text="other").click()
        sync_api.expect(p.locator(".msg.user .body")).to_have_text("the other one")
        sync_api.expect(p.locator("#convlist li.current")).to_have_text(re.compile("other"))
    finally:
        ctx.close()


def test_usable_at_400_px_and_in_dark_mode(browser, page, live):
    ctx = browser.new_context(viewport={"width": 400, "height": 800}, color_scheme="dark")
    try:
        p = ctx.new_page()
        p.goto(live.url + "/")
        p.locator("#keydialog").wait_for(state="visible")
        assert p.evaluate("document.documentElement.scrollWidth") <= 400
        assert p.locator("#input").is_visible() and p.locator("#send").is_visible()
        bg = p.evaluate("getComputedStyle(document.body).backgroundColor")
        assert sum(map(int, re.findall(r"\d+", bg)[:3])) < 150, bg  # dark
    finally:
        ctx.close()
