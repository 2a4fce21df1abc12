"""The ASGI app: FastAPI with the routes of :mod:`llmds.server.routes` over one
:class:`~llmds.server.state.ServerState`, behind :class:`~llmds.server.http.Guard` (API key, request
ids, body size and time limits) and, when origins are allowed, CORS.

Routes: ``GET``/``HEAD /health``, ``GET /metrics``, ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (``stream``, ``n``, ``logprobs``, ``logit_bias``, the ``rag``
extension), ``POST /v1/embeddings`` (all-MiniLM-L6-v2), ``POST /v1/retrieve`` (hybrid search over
the indexed documents), ``POST /v1/documents`` (index one more document), ``POST /tokenize`` and
``POST /detokenize`` (vLLM's).  To add a route group, write a module with ``router(state)`` and
include it in :func:`create_app`.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from llmds.server.errors import install_handlers
from llmds.server.http import Guard
from llmds.server.state import ServerState

__all__ = ["create_app", "CORS_HEADERS"]

# what browsers may send and read across origins (with --allowed-origins)
CORS_HEADERS = {"allow_methods": ["GET", "HEAD", "POST", "OPTIONS"],
                "allow_headers": ["Authorization", "Content-Type", "X-Request-Id"],
                "expose_headers": ["X-Request-Id", "Retry-After", "X-Llmds-Replica"]}


def create_app(state: ServerState):
    """The ASGI app (FastAPI inside :class:`~llmds.server.http.Guard`, inside CORS when
    ``state.config.allowed_origins``); ``app.state.llmds`` of the FastAPI app is ``state``.  The web
    page at ``/``, the engine view's routes and the documents search: :mod:`llmds.server.ui`."""
    from llmds.server import ui
    from llmds.server.routes import generation, ops, retrieval, tokens

    feed = ui.EngineFeed(state.engine_state)  # the engine view's snapshots, shared by every page

    @asynccontextmanager
    async def lifespan(app):
        state.start()
        feed.start()
        try:
            yield
        finally:
            await feed.stop()
            state.stop()

    api = FastAPI(title="llmds", version=_version(), lifespan=lifespan,
                  description="OpenAI-compatible LLM server with RAG over the llmds engine")
    api.state.llmds = state
    install_handlers(api)
    for group in (ops, generation, retrieval, tokens):
        api.include_router(group.router(state))
    api.include_router(ui.router(state, feed))
    cfg = state.config
    open_paths = (("/health", "/metrics") if cfg.public_metrics else ("/health",)) + ui.open_paths(cfg.ui)
    app = Guard(api, cfg.api_key, cfg.max_body_bytes, body_timeout=cfg.body_timeout, on_reject=state.count_rejection,
                open_paths=open_paths)
    if cfg.allowed_origins:
        from starlette.middleware.cors import CORSMiddleware

        app = CORSMiddleware(app, allow_origins=list(cfg.allowed_origins), **CORS_HEADERS)
    return app


def _version() -> str:
    import llmds

    return llmds.__version__
