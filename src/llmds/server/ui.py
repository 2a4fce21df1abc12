"""The web page and the routes it reads: ``GET /`` (the page, unless ``--no-ui``), its assets under
``/ui/``, ``GET /v1/engine/state``, ``GET /v1/engine/events`` and ``POST /v1/documents/search``.

The page (``static/``: one HTML file, one script, one style sheet, and three vendored libraries
with their licenses: marked for markdown, DOMPurify to sanitize it, highlight.js for code) is
read into memory once and served with an ``ETag``; it is the only thing open without the API key
(it holds no data: it asks for the key when a route answers 401).  Its
``Content-Security-Policy`` lets it load and connect to this server only, so nothing it does
leaves the machine.

The engine routes read an :class:`~llmds.server.engine_state.EngineFeed` (bounded rate, one
snapshot for every watcher).  ``/v1/engine/events`` is an endless event stream, so it is left
out of the OpenAPI schema (documented in ``docs/serving.md``).
"""

from __future__ import annotations

import hashlib
import mimetypes
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import Field

from llmds.server.engine_state import EngineFeed
from llmds.server.http import EventStream
from llmds.server.protocol import RetrieveRequest

__all__ = ["STATIC", "EngineFeed", "open_paths", "router"]

STATIC = Path(__file__).with_name("static")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _assets() -> dict[str, Path]:
    """``{url path: file}`` of the page and its assets."""
    files = {"/": STATIC / "index.html"}
    for p in sorted(STATIC.rglob("*")):
        if p.is_file() and p.name != "index.html":
            files["/ui/" + p.relative_to(STATIC).as_posix()] = p
    return files


def open_paths(ui: bool) -> tuple[str, ...]:
    """The paths served without the API key: the page and its assets (none with ``ui=False``)."""
    return tuple(_assets()) if ui else ()


class DocumentSearchRequest(RetrieveRequest):
    top_k: int = Field(8, ge=1, le=100)


def router(state, feed: EngineFeed) -> APIRouter:
    """The engine view's routes (fed by ``feed``) and the documents search; with
    ``state.config.ui`` the page and its assets too."""
    from starlette.concurrency import run_in_threadpool

    from llmds.server.rag import hit_json
    from llmds.server.routes.retrieval import retrieve_hits

    api = APIRouter()

    @api.get("/v1/engine/state")
    async def engine_state() -> dict[str, Any]:
        """The engine now: one state per KV block (``blocks``, a digit per block indexing
        ``block_states``), the running and waiting requests, counters, and the last minutes of
        ``history`` (``[time, prompt_tokens, generation_tokens, kv_usage, running, waiting]`` a second)."""
        return await feed.state_json()

    @api.get("/v1/engine/events", include_in_schema=False)
    async def engine_events() -> EventStream:
        return EventStream(feed.events())

    @api.post("/v1/documents/search")
    async def search_documents(body: DocumentSearchRequest) -> dict[str, Any]:
        """Hybrid search of the indexed documents, with each hit's BM25 and dense scores beside
        the fused one."""
        t0 = time.perf_counter()
        hits = await retrieve_hits(state, body.query, body.top_k)
        seconds = time.perf_counter() - t0
        bm25, dense = await run_in_threadpool(state.rag.pipeline.side_scores, body.query, [h.doc_id for h in hits])
        data = [{**hit_json(h), "bm25": float(b), "dense": None if d != d else float(d)}
                for h, b, d in zip(hits, bm25, dense)]
        return {"object": "list", "data": data, "seconds": seconds}

    if state.config.ui:
        for path, f in _assets().items():
            api.add_api_route(path, _Asset(f).get, methods=["GET"], include_in_schema=False)
    return api


class _Asset:
    """One static file, read once, served with an ETag (304 when the browser has it)."""

    __slots__ = ("body", "etag", "media_type", "headers")

    def __init__(self, path: Path) -> None:
        self.body = path.read_bytes()
        self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:20] + '"'
        self.media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if self.media_type.startswith("text/") or self.media_type.endswith("javascript"):
            self.media_type += "; charset=utf-8"
        self.headers = {"ETag": self.etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        if path.suffix == ".html":
            self.headers["Content-Security-Policy"] = CSP

    async def get(self, request: Request) -> Response:
        if request.headers.get("if-none-match") == self.etag:
            return Response(status_code=304, headers=self.headers)
        return Response(self.body, media_type=self.media_type, headers=self.headers)
