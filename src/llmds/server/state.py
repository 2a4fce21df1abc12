"""What one running server holds: the engine and its thread, the admission gate, the retrieval
index, the metrics; and :class:`Generation`, one admitted request's output stream.

Every exit path of a request (finished, client gone, exception, shutdown) goes through
:meth:`Generation.close`, which aborts an unfinished request (its KV blocks are freed before the
engine's next step) and releases its admission ticket.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Hashable

from llmds._checks import check_float, check_int
from llmds.engine.request import RequestOutput
from llmds.errors import CapacityError, LLMDSError
from llmds.server.admission import AdmissionGate, Rejection, Ticket
from llmds.server.errors import APIError, from_llmds_error, model_not_found, retry_after_header
from llmds.server.memory import IdleTrimmer
from llmds.server.metrics import ServerMetrics

__all__ = ["ServerConfig", "ServerState", "Generation"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The server's own options (the engine's are an :class:`~llmds.engine.config.EngineConfig`).

    ``model_name``: the id ``/v1/models`` lists and requests may name (None: the model's file name).
    ``max_body_bytes``: larger request bodies get 413.  ``max_qps`` / ``max_token_rate`` /
    ``rate_window`` / ``max_waiting_requests`` / ``max_waiting_tokens``: see
    :mod:`llmds.server.admission`.  ``docs`` / ``index``: what RAG retrieves from (None: the
    project's README and docs); ``rag=False`` serves no retrieval and no embeddings.
    ``hot_threshold``: hits that make a chunk "hot" in ``llmds:retrieval_hot_documents``.
    ``trim_delay``: seconds of idleness (no request in flight) after which freed memory is
    returned to the system (:mod:`llmds.server.memory`); None: never.
    ``public_metrics``: serve ``/metrics`` without the API key (``/health`` never needs it).
    ``allowed_origins``: origins allowed by CORS (none: CORS off; ``"*"``: any).
    Connections (:mod:`llmds.server.connections`): ``max_connections`` open at once (more get 503
    with ``Retry-After``), ``header_timeout`` / ``body_timeout`` seconds to receive a request's
    headers / body (then 408), ``send_timeout`` seconds a client may read nothing of a response
    before it is dropped (its request aborted).
    ``ui``: serve the web page at ``/`` (:mod:`llmds.server.ui`).
    """

    model_name: str | None = None
    api_key: str | None = None
    public_metrics: bool = False
    allowed_origins: tuple[str, ...] = ()
    max_connections: int = 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    send_timeout: float = 60.0
    max_body_bytes: int = 2 << 20
    max_qps: float = 50.0
    max_token_rate: float = 200_000.0
    rate_window: float = 10.0
    max_waiting_requests: int = 256
    max_waiting_tokens: int = 262_144
    docs: tuple[str, ...] | None = None
    index: str | None = None
    rag: bool = True
    hot_threshold: int = 8
    trim_delay: float | None = 1.0
    ui: bool = True

    def __post_init__(self) -> None:
        check_int("max_body_bytes", self.max_body_bytes, 1024)
        check_int("hot_threshold", self.hot_threshold, 1)
        check_int("max_connections", self.max_connections, 1)
        for name in ("header_timeout", "body_timeout", "send_timeout"):
            check_float(name, getattr(self, name), 0.0, low_open=True)
        if self.trim_delay is not None:
            check_float("trim_delay", self.trim_delay, 0.0)


class ServerState:
    """Engine, engine thread, gate, retrieval and metrics of one server (see the module docstring)."""

    def __init__(self, engine, config: ServerConfig | None = None, clock=time.monotonic) -> None:
        """``engine``: an :class:`~llmds.engine.engine.LLMEngine`, or an
        :class:`~llmds.engine.async_engine.AsyncLLMEngine` made by ``AsyncLLMEngine.build``."""
        from llmds.engine.async_engine import AsyncLLMEngine  # here: importing state needs no torch

        self.aengine = engine if isinstance(engine, AsyncLLMEngine) else AsyncLLMEngine(engine)
        self._setup(self.aengine.engine, config, clock)

    def _setup(self, engine, config: ServerConfig | None, clock) -> None:
        """What every server state holds; ``engine`` is the engine, or what the routes read of
        one (``tokenizer``, ``max_model_len``, ``num_blocks``, ``config``, ``encode_prompt``)."""
        self.config = cfg = config or ServerConfig()
        self.engine = engine
        self.model_name = cfg.model_name or _model_name(engine)
        self.gate = AdmissionGate(cfg.max_qps, cfg.max_token_rate, cfg.rate_window, cfg.max_waiting_requests,
                                  cfg.max_waiting_tokens, clock=clock)
        self.metrics = ServerMetrics()
        self.rag = None  # a RagIndex once ready
        self.embedder = None
        self.rag_error: str | None = None
        self.rag_ready = threading.Event()  # set when retrieval is ready or has failed
        self._embedder_load: asyncio.Future | None = None  # with rag=False: the embedder, loaded on first use
        self.loop: asyncio.AbstractEventLoop | None = None
        # the longest prompt + output that fits both the model's context and the KV pool
        self.context_limit = min(engine.max_model_len, engine.num_blocks * engine.config.block_size)
        self.created = int(time.time())
        self._idle = threading.Condition()
        self.trimmer = None if cfg.trim_delay is None else IdleTrimmer(cfg.trim_delay, run=self._in_executor)

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the engine thread (call on the event loop) and prepare retrieval in the background."""
        self.loop = asyncio.get_running_loop()
        self.aengine.start(self.loop)
        if self.config.rag:
            threading.Thread(target=self._load_rag, name="llmds-rag", daemon=True).start()
        else:
            self.rag_ready.set()
        if self.trimmer is not None:  # idle from the start: what loading the model freed goes back
            self._trim_when_idle()

    def stop(self) -> None:
        """Abort every request, free all blocks, join the engine thread (idempotent)."""
        self.aengine.shutdown()
        bm = self.engine.block_manager
        log.info("engine stopped: %d of %d KV blocks free", bm.num_free_blocks, self.engine.num_blocks)

    async def engine_state(self, detail: bool = True) -> dict[str, Any]:
        """The engine's KV blocks, batch and counters (:func:`llmds.server.engine_state.snapshot`),
        read on the engine thread between two steps."""
        from llmds.server.engine_state import snapshot

        return await self.aengine.call(lambda engine: snapshot(engine, detail))

    async def health(self) -> dict[str, Any]:
        """The body of ``GET /health``."""
        bm = self.engine.block_manager
        return {"status": "ok", "model": self.model_name, "rag": self.rag_status(),
                "kv_free_blocks": bm.num_free_blocks, "kv_num_blocks": self.engine.num_blocks,
                "kv_pinned_blocks": self.engine.metrics.num_pinned_blocks,
                "requests_in_flight": self.metrics.in_flight}

    async def engine_families(self) -> list:
        """The engine's Prometheus metric families (read at each scrape of ``/metrics``)."""
        from llmds.server.prometheus import engine_families

        return engine_families(self.engine)

    def rag_status(self) -> str:
        if not self.config.rag:
            return "off"
        if not self.rag_ready.is_set():
            return "loading"
        if self.rag_error is not None:
            return "failed"
        return "ready" if self.rag is not None else "no documents"

    def _load_rag(self) -> None:
        from llmds.retrieval.embeddings import MiniLMEmbedder
        from llmds.server.rag import RagIndex, default_docs

        t0 = time.perf_counter()
        try:
            # one torch thread: a second OpenMP team beside the engine's would over-subscribe the
            # cores, and OpenMP would then cut its spin-wait (see llmds.engine.async_engine)
            emb = MiniLMEmbedder(batch_size=32, num_threads=1).load()
            self.embedder = emb
            if self.config.index:
                rag = RagIndex.load(self.config.index, emb)
            else:
                paths = list(self.config.docs) if self.config.docs is not None else default_docs()
                rag = RagIndex.from_paths(paths, emb) if paths else None
            self.rag = rag
            log.info("retrieval ready in %.1f s: %s chunks", time.perf_counter() - t0, len(rag) if rag else 0)
        except Exception as exc:  # noqa: BLE001 - the LLM routes keep serving without retrieval
            self.rag_error = f"{type(exc).__name__}: {exc}"
            log.error("retrieval is unavailable: %s", self.rag_error)
        finally:
            self.rag_ready.set()
            if self.trimmer is not None:  # what embedding the documents freed goes back
                self.loop.call_soon_threadsafe(self._trim_when_idle)

    # ------------------------------------------------------------------- requests
    async def generate(self, prompt_ids: list[int], params, priority: int = 0, param: str = "messages") -> Generation:
        """Admit and queue a request; raises :class:`APIError` (4xx / 429 / 503) when refused
        (``param``: the request field that holds the prompt)."""
        eng = self.engine
        ctx, n = eng.max_model_len, len(prompt_ids)
        if n >= ctx:
            raise APIError(400, f"the prompt has {n} tokens; this model's context is {ctx} tokens "
                           "(prompt + at least one generated token)", param=param, code="context_length_exceeded")
        if n + params.max_tokens > ctx:  # as vLLM and OpenAI: an error, not a silent cap
            raise APIError(400, f"This model's maximum context length is {ctx} tokens. However, you requested "
                           f"{n + params.max_tokens} tokens ({n} in the {param}, {params.max_tokens} in the "
                           f"completion). Please reduce the length of the {param} or completion.",
                           param="max_tokens", code="context_length_exceeded")
        pool = eng.num_blocks * eng.config.block_size
        if n + params.max_tokens - 1 > pool:  # the last sampled token's KV is never stored
            where = ("the prompt alone", param) if n > pool else ("the prompt + max_tokens", "max_tokens")
            raise APIError(400, f"the KV cache holds {pool} tokens ({eng.num_blocks} blocks of "
                           f"{eng.config.block_size}); {where[0]} needs {n + params.max_tokens - 1} ({n} in the "
                           f"{param}, {params.max_tokens} to generate): lower max_tokens or start the server with "
                           "more KV memory (--kv-cache-gb)", param=where[1], code="kv_capacity_exceeded")
        ticket = self.gate.admit(n, params.max_tokens * params.n)
        if isinstance(ticket, Rejection):
            raise rejection_error(ticket)
        self.enter()
        try:
            gen = await self.open(prompt_ids, params, priority, ticket)
        except BaseException as exc:
            ticket.close()
            self.leave()
            if isinstance(exc, LLMDSError):
                raise from_llmds_error(exc, param if isinstance(exc, CapacityError) else None) from None
            raise
        await asyncio.sleep(0)  # the stream's first step runs now: from here closing it aborts
        return gen

    async def open(self, prompt_ids: list[int], params, priority: int, ticket: Ticket) -> Generation:
        """Queue an admitted request on the engine; its output stream."""
        rid = await self.aengine.add_request(prompt_ids, params, priority=priority)
        return Generation(self, rid, ticket, params.n)

    async def get_embedder(self):
        """The embedding model: the one retrieval loaded, or (``rag=False``) loaded on first use in
        a worker thread; ``APIError`` while retrieval loads or when it cannot be had."""
        if self.config.rag:
            if not self.rag_ready.is_set():
                raise APIError(503, "retrieval is still loading; retry shortly", "service_unavailable",
                               code="loading", headers=retry_after_header(2))
            if self.embedder is None:
                raise APIError(503, f"embeddings are unavailable: {self.rag_error}", "service_unavailable",
                               code="embeddings_unavailable", headers=retry_after_header(60))
            return self.embedder
        if self._embedder_load is None:
            from llmds.retrieval.embeddings import MiniLMEmbedder, is_available

            if not is_available():
                raise APIError(404, "embeddings need the `embed` extra (all-MiniLM-L6-v2), which is not "
                               "installed", "not_found_error", code="embeddings_unavailable")
            emb = MiniLMEmbedder(batch_size=32, num_threads=1)  # one torch thread: see _load_rag
            self._embedder_load = asyncio.get_running_loop().run_in_executor(None, emb.load)
        try:
            return await asyncio.shield(self._embedder_load)
        except Exception as exc:  # noqa: BLE001 - logged; the next request tries again
            self._embedder_load = None
            log.error("the embedding model failed to load: %s: %s", type(exc).__name__, exc)
            raise APIError(503, f"the embedding model failed to load: {type(exc).__name__}: {exc}",
                           "service_unavailable", code="embeddings_unavailable",
                           headers=retry_after_header(60)) from None

    def count_rejection(self, reason: str) -> None:
        """Count a request or connection the HTTP layer refused (``llmds:admission_rejections_total``)."""
        self.gate.reject(reason, "", 0.0)

    @property
    def embeddings_available(self) -> bool:
        """True when ``/v1/embeddings`` can serve (retrieval's embedder, or the ``embed`` extra with ``rag=False``)."""
        if self.config.rag:
            return self.embedder is not None or not self.rag_ready.is_set()
        from llmds.retrieval.embeddings import is_available

        return is_available()

    def default_max_tokens(self, prompt_tokens: int) -> int:
        """``max_tokens`` when a chat request names none: the rest of what fits (at least 1)."""
        return max(1, self.context_limit - prompt_tokens)

    def enter(self) -> None:
        """Count one admitted request in flight (``leave`` when it closes)."""
        with self._idle:
            self.metrics.in_flight += 1
            if self.trimmer is not None:
                self.trimmer.busy()

    def leave(self) -> None:
        with self._idle:
            self.metrics.in_flight -= 1
            if self.metrics.in_flight == 0:
                self._idle.notify_all()
                if self.trimmer is not None and self.loop is not None:
                    self.trimmer.idle(self._call_later)

    def _trim_when_idle(self) -> None:
        with self._idle:
            if self.metrics.in_flight == 0:
                self.trimmer.idle(self._call_later)

    def _call_later(self, delay: float, callback) -> None:
        self.loop.call_soon_threadsafe(self.loop.call_later, delay, callback)

    def _in_executor(self, fn) -> None:
        self.loop.run_in_executor(None, fn)

    def wait_idle(self, timeout: float) -> bool:
        """Block (another thread) until no request is in flight; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self.metrics.in_flight == 0, timeout)

    def encode_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        try:
            return self.engine.tokenizer.encode_chat(messages, add_generation_prompt)
        except LLMDSError as exc:
            raise from_llmds_error(exc, "messages") from None

    def check_model(self, name: str | None) -> None:
        """404 unless ``name`` is None or the served model's id."""
        if name is not None and name != self.model_name:
            raise model_not_found(name, f"; this server serves {self.model_name!r}")


class Generation:
    """One admitted request's outputs, of its ``n`` sequences (see the module docstring)."""

    def __init__(self, state: ServerState, request_id: Hashable, ticket: Ticket, n: int = 1) -> None:
        self.state, self.request_id, self.ticket, self.n = state, request_id, ticket, n
        self._agen = state.aengine.stream(request_id)
        self._next: asyncio.Future | None = asyncio.ensure_future(self._agen.__anext__())
        self._closed = False

    async def next(self) -> RequestOutput | None:
        """The next output of any of its sequences (``request_finished`` on the last); None when
        the engine shut down under the request."""
        try:
            if self._next is not None:
                fut, self._next = self._next, None
                out = await fut
            else:
                out = await self._agen.__anext__()
        except StopAsyncIteration:
            return None
        self.ticket.started()
        return out

    async def close(self) -> None:
        """Stop the stream (aborting an unfinished request) and release the ticket; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._stop()
        finally:
            self._release()

    async def _stop(self) -> None:
        if self._next is not None:
            self._next.cancel()
            with suppress(asyncio.CancelledError, StopAsyncIteration):
                await self._next
        await self._agen.aclose()

    def _release(self) -> None:
        self.ticket.close()
        self.state.leave()


def rejection_error(rej: Rejection) -> APIError:
    import math

    if not math.isfinite(rej.retry_after):
        return APIError(400, f"this request can never be admitted: {rej.message}",
                        param="max_tokens" if rej.reason == "tokens_per_second" else "messages",
                        code="request_too_large")
    return APIError(429, f"Rate limit reached ({rej.reason}): {rej.message}. Retry after "
                    f"{rej.retry_after:.1f} s.", type="rate_limit_error", code="rate_limit_exceeded",
                    headers=retry_after_header(rej.retry_after))


def _model_name(engine) -> str:
    from pathlib import Path

    m = engine.config.model
    return "SmolLM2-135M-Instruct" if m is None else Path(m).stem
