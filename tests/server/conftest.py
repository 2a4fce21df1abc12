"""One real server for the whole session: uvicorn on an ephemeral 127.0.0.1 port, in a thread.

The engine is the float32 default model with a small KV pool (so tests exercise capacity
errors cheaply) and no hot-prefix pinning (so the idle free-block count is a constant).  RAG
indexes three small documents written here.  Clients: the official ``openai`` client and httpx.
Tests leave the server idle (every request finished or aborted) and its admission gate as found.
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import contextmanager

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("torch")

from server_helpers import API_KEY, DOCS, NUM_BLOCKS, FakeClock  # noqa: E402


class Live:
    """The running server: its state (engine, gate, ...), URL and helpers to sync with it."""

    def __init__(self, state, server, thread) -> None:
        self.state, self.server, self.thread = state, server, thread
        self.url = server.url
        self.idle_free_blocks = state.engine.block_manager.num_free_blocks

    def barrier(self, timeout: float = 60.0) -> None:
        """Return once the engine thread applied every command sent so far (aborts included)."""
        asyncio.run_coroutine_threadsafe(self.state.aengine.barrier(), self.state.loop).result(timeout)

    def settle(self, timeout: float = 60.0) -> None:
        """Wait until no request is in flight and the engine applied their aborts."""
        assert self.state.wait_idle(timeout), "requests still in flight"
        self.barrier(timeout)

    @contextmanager
    def gate(self, **limits):
        """Swap in an admission gate with these limits and a frozen fake clock (yielded)."""
        from llmds.server.admission import AdmissionGate

        clock = FakeClock()
        old = self.state.gate
        self.state.gate = AdmissionGate(clock=clock, **limits)
        try:
            yield clock
        finally:
            self.settle()
            self.state.gate = old


@pytest.fixture(scope="session")
def live(tmp_path_factory):
    from llmds.engine.engine import LLMEngine
    from llmds.server.run import build_server
    from llmds.server.state import ServerConfig, ServerState

    docs = tmp_path_factory.mktemp("docs")
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    engine = LLMEngine(num_blocks=NUM_BLOCKS, max_num_seqs=4, max_num_batched_tokens=128, hot_prefix_threshold=0)
    reference = _reference(engine)  # the engine's own greedy outputs, before the server owns it
    state = ServerState(engine, ServerConfig(api_key=API_KEY, docs=(str(docs),), max_body_bytes=64 << 10))
    server = build_server(state, port=0, log_level="warning")
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    assert server.ready.wait(120) and server.started, "the server did not start"
    assert state.rag_ready.wait(300) and state.rag_error is None, state.rag_error
    live = Live(state, server, thread)
    live.reference = reference
    yield live
    server.should_exit = True
    thread.join(60)
    assert not thread.is_alive()
    assert engine.block_manager.num_free_blocks == engine.num_blocks  # shutdown freed everything


def _reference(engine) -> dict:
    from llmds.engine.config import SamplingParams

    greedy = SamplingParams(max_tokens=8, temperature=0)
    chat, text = engine.generate([[{"role": "user", "content": "What is the capital of France?"}],
                                  "The capital of France is"], greedy)
    return {"chat": chat.output_text, "text": text.output_text, "chat_prompt_tokens": chat.prompt_tokens}


@pytest.fixture(scope="session")
def openai_client(live):
    openai = pytest.importorskip("openai")
    with openai.OpenAI(base_url=live.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture(scope="session")
def http(live):
    import httpx

    with httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as c:
        yield c


@pytest.fixture(autouse=True)
def _idle_after(request):
    """Every server test leaves no request in flight and every KV block back."""
    yield
    if "live" in request.fixturenames:
        live = request.getfixturevalue("live")
        live.settle()
        assert live.state.engine.block_manager.num_free_blocks == live.idle_free_blocks
