"""The FastAPI app: OpenAI routes over one :class:`~llmds.server.state.ServerState`.

Routes: ``GET /health``, ``GET /metrics``, ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (``stream``, ``stream_options.include_usage``, logprobs, the
``rag`` extension), ``POST /v1/embeddings`` (all-MiniLM-L6-v2), ``POST /v1/retrieve`` (hybrid
search over the indexed documents).  Handlers never run the LLM: they tokenize, pass the admission
gate and await the engine thread's outputs.  Retrieval and embeddings run in worker threads.
"""

from __future__ import annotations

import base64
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from llmds.errors import LLMDSError
from llmds.server.errors import APIError, from_llmds_error, install_handlers, retry_after_header
from llmds.server.http import ClientGone, EventStream, Guard, unless_disconnected
from llmds.server.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, RetrieveRequest
from llmds.server.state import ServerState

__all__ = ["create_app"]

EMBED_MODEL = "all-MiniLM-L6-v2"
_EMBED_NAMES = (EMBED_MODEL, "sentence-transformers/all-MiniLM-L6-v2")


def create_app(state: ServerState):
    """The ASGI app (FastAPI inside :class:`~llmds.server.http.Guard`); ``app.state.llmds`` is ``state``."""
    from llmds.server.prometheus import make_registry
    from llmds.server.rag import hit_json, last_user_text, rag_messages
    from llmds.server.responses import ChatFormat, CompletionFormat, complete, events

    @asynccontextmanager
    async def lifespan(app):
        state.start()
        try:
            yield
        finally:
            state.stop()

    api = FastAPI(title="llmds", version=_version(), lifespan=lifespan,
                  description="OpenAI-compatible LLM server with RAG over the llmds engine")
    api.state.llmds = state
    install_handlers(api)
    registry = make_registry(state)

    async def respond(request: Request, gens: list, fmt, stream: bool, include_usage: bool):
        if stream:
            return EventStream(events(gens, fmt, include_usage))
        try:
            return JSONResponse(await unless_disconnected(request.receive, complete(gens, fmt)))
        except ClientGone:
            return Response(status_code=499)  # nobody reads it; the request was aborted

    # ------------------------------------------------------------------ routes
    @api.get("/health")
    async def health() -> dict[str, Any]:
        bm = state.engine.block_manager
        return {"status": "ok", "model": state.model_name, "rag": _rag_status(state),
                "kv_free_blocks": bm.num_free_blocks, "kv_num_blocks": state.engine.num_blocks,
                "kv_pinned_blocks": state.engine.metrics.num_pinned_blocks,
                "requests_in_flight": state.metrics.in_flight}

    @api.get("/metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @api.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": _model_cards(state)}

    @api.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        for card in _model_cards(state):
            if card["id"] == model_id:
                return card
        raise _no_model(model_id)

    @api.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        _check_llm(state, body.model, body.logit_bias)
        messages = [m.as_dict() for m in body.messages]
        extra = {}
        if body.rag is not None:
            query = body.rag.query or last_user_text(messages)
            if query is None:
                raise APIError(400, "rag needs a non-empty user message or rag.query", param="rag.query")
            hits = await _retrieve(state, query, body.rag.top_k)
            messages = rag_messages(messages, hits)
            extra["rag"] = {"chunks": [{k: v for k, v in hit_json(h).items() if k in ("id", "source", "score")}
                                       for h in hits]}
        ids = state.encode_chat(messages)
        max_tokens = body.requested_max_tokens() or state.default_max_tokens(len(ids))
        params = _params(body, max_tokens, body.logprobs_k())
        gen = await state.generate(ids, params, body.priority)
        fmt = ChatFormat(state.engine.tokenizer, state.model_name, extra)
        return await respond(request, [gen], fmt, body.stream, body.include_usage)

    @api.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        _check_llm(state, body.model, body.logit_bias)
        if body.echo or body.suffix:
            raise APIError(400, "echo and suffix are not supported", param="echo" if body.echo else "suffix")
        params = _params(body, body.max_tokens, body.logprobs)
        prompts = []
        for p in body.prompts():
            try:
                prompts.append(state.engine.encode_prompt(p))
            except LLMDSError as exc:  # an empty prompt, a token id outside the vocabulary
                raise from_llmds_error(exc, "prompt") from None
        gens = []
        try:
            for ids in prompts:
                gens.append(await state.generate(ids, params, body.priority, param="prompt"))
        except BaseException:
            for g in gens:
                await g.close()
            raise
        fmt = CompletionFormat(state.engine.tokenizer, state.model_name)
        return await respond(request, gens, fmt, body.stream, body.include_usage)

    @api.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> dict[str, Any]:
        if body.model is not None and body.model not in _EMBED_NAMES:
            raise _no_model(body.model, f"; the embedding model is {EMBED_MODEL!r}")
        emb = _embedder(state)
        if body.dimensions is not None and body.dimensions != emb.dim:
            raise APIError(400, f"{EMBED_MODEL} has {emb.dim} dimensions; dimensions={body.dimensions} "
                           "is not supported", param="dimensions")
        texts = body.texts()
        from starlette.concurrency import run_in_threadpool

        vecs, tokens = await run_in_threadpool(_embed, emb, texts)
        data = []
        for i, v in enumerate(vecs):
            e = base64.b64encode(v.astype("<f4").tobytes()).decode() if body.encoding_format == "base64" \
                else v.tolist()
            data.append({"object": "embedding", "index": i, "embedding": e})
        return {"object": "list", "data": data, "model": EMBED_MODEL,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @api.post("/v1/retrieve")
    async def retrieve(body: RetrieveRequest) -> dict[str, Any]:
        hits = await _retrieve(state, body.query, body.top_k)
        return {"object": "list", "data": [hit_json(h) for h in hits]}

    return Guard(api, state.config.api_key, state.config.max_body_bytes,
                 on_too_large=lambda: state.gate.reject("body_too_large", "", 0))


# ---------------------------------------------------------------------- helpers
def _version() -> str:
    import llmds

    return llmds.__version__


def _model_cards(state: ServerState) -> list[dict[str, Any]]:
    cards = [{"id": state.model_name, "object": "model", "created": state.created, "owned_by": "llmds",
              "max_model_len": state.engine.max_model_len}]
    if state.config.rag:
        cards.append({"id": EMBED_MODEL, "object": "model", "created": state.created, "owned_by": "llmds"})
    return cards


def _no_model(name: str, hint: str = "") -> APIError:
    return APIError(404, f"the model {name!r} does not exist{hint}", "not_found_error", "model",
                    "model_not_found")


def _check_llm(state: ServerState, model: str | None, logit_bias) -> None:
    if model is not None and model != state.model_name:
        raise _no_model(model, f"; this server serves {state.model_name!r}")
    if logit_bias:
        raise APIError(400, "logit_bias is not supported", param="logit_bias", code="unsupported_parameter")


def _params(body, max_tokens: int, logprobs: int | None):
    try:
        return body.sampling_params(max_tokens, logprobs)
    except LLMDSError as exc:
        raise from_llmds_error(exc) from None


def _rag_status(state: ServerState) -> str:
    if not state.config.rag:
        return "off"
    if not state.rag_ready.is_set():
        return "loading"
    if state.rag_error is not None:
        return "failed"
    return "ready" if state.rag is not None else "no documents"


def _ready_rag(state: ServerState, need_index: bool):
    status = _rag_status(state)
    if status == "loading":
        raise APIError(503, "retrieval is still loading; retry shortly", "service_unavailable",
                       code="loading", headers=retry_after_header(2))
    if status == "off":
        raise APIError(404, "retrieval is off on this server (started with --no-rag)", "not_found_error",
                       code="rag_disabled")
    if status == "failed":
        raise APIError(503, f"retrieval is unavailable: {state.rag_error}", "service_unavailable",
                       code="rag_unavailable")
    if need_index and state.rag is None:
        raise APIError(404, "no documents are indexed (start with --docs DIR or --index PATH)",
                       "not_found_error", code="no_documents")


def _embedder(state: ServerState):
    _ready_rag(state, need_index=False)
    return state.embedder


async def _retrieve(state: ServerState, query: str, top_k: int):
    from starlette.concurrency import run_in_threadpool

    _ready_rag(state, need_index=True)
    hits, seconds = await run_in_threadpool(state.rag.search, query, top_k)
    state.metrics.retrieval_latency_seconds.observe(seconds)
    return hits


def _embed(emb, texts: list[str]):
    vecs = emb.embed_batch(texts)
    return vecs, emb.count_tokens(texts)
