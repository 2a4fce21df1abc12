"""``POST /v1/embeddings`` (all-MiniLM-L6-v2; texts or its token ids; served with ``--no-rag`` too,
the model then loading on first use), ``POST /v1/retrieve`` (hybrid search of the indexed chunks) and
``POST /v1/documents`` (index one more document: every later search sees it; with ``--replicas N``
retrieval runs in the one ingress, so every replica's requests see it too)."""

from __future__ import annotations

import base64
import time
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from llmds.errors import LLMDSError
from llmds.server.errors import APIError, from_llmds_error, model_not_found, retry_after_header
from llmds.server.protocol import DocumentRequest, EmbeddingRequest, RetrieveRequest
from llmds.server.state import ServerState

__all__ = ["router", "retrieve_hits", "rag_status"]


def router(state: ServerState) -> APIRouter:
    from llmds.server.rag import EMBED_MODEL, EMBED_NAMES, hit_json

    api = APIRouter()

    @api.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> dict[str, Any]:
        if body.model is not None and body.model not in EMBED_NAMES:
            raise model_not_found(body.model, f"; the embedding model is {EMBED_MODEL!r}")
        emb = await state.get_embedder()
        if body.dimensions is not None and body.dimensions != emb.dim:
            raise APIError(400, f"{EMBED_MODEL} has {emb.dim} dimensions; dimensions={body.dimensions} "
                           "is not supported", param="dimensions")
        inputs = body.inputs()
        try:
            if isinstance(inputs[0], str):
                vecs, tokens = await run_in_threadpool(_embed_texts, emb, inputs)
            else:
                vecs = await run_in_threadpool(emb.embed_ids, inputs)
                tokens = sum(min(len(ids), emb.max_seq_length) for ids in inputs)
        except LLMDSError as exc:  # a token id outside the embedder's vocabulary
            raise from_llmds_error(exc, "input") from None
        data = []
        for i, v in enumerate(vecs):
            e = base64.b64encode(v.astype("<f4").tobytes()).decode() if body.encoding_format == "base64" \
                else v.tolist()
            data.append({"object": "embedding", "index": i, "embedding": e})
        return {"object": "list", "data": data, "model": EMBED_MODEL,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @api.post("/v1/retrieve")
    async def retrieve(body: RetrieveRequest) -> dict[str, Any]:
        hits = await retrieve_hits(state, body.query, body.top_k)
        return {"object": "list", "data": [hit_json(h) for h in hits]}

    @api.post("/v1/documents")
    async def add_document(body: DocumentRequest) -> dict[str, Any]:
        from llmds.server.rag import RagIndex

        _check_rag(state)
        emb = await state.get_embedder()
        source = body.source or f"document-{int(time.time() * 1000)}"
        try:
            if state.rag is None:  # the first document of a server started without any
                state.rag = RagIndex.empty(emb)
            added = await run_in_threadpool(state.rag.add_text, body.text, source, emb)
        except LLMDSError as exc:
            raise from_llmds_error(exc, "text") from None
        return {"object": "list", "data": [{"id": i, "source": c.source, "start": c.start, "end": c.end}
                                           for i, c in added]}

    return api


def rag_status(state: ServerState) -> str:
    """``off``, ``loading``, ``failed``, ``ready`` or ``no documents``."""
    return state.rag_status()


async def retrieve_hits(state: ServerState, query: str, top_k: int) -> list:
    """The ``top_k`` best chunks for ``query`` (``APIError`` when retrieval is off, loading or failed)."""
    _check_rag(state)
    if state.rag is None:
        raise APIError(404, "no documents are indexed (start with --docs DIR or --index PATH)",
                       "not_found_error", code="no_documents")
    hits, seconds = await run_in_threadpool(state.rag.search, query, top_k)
    state.metrics.retrieval_latency_seconds.observe(seconds)
    return hits


def _check_rag(state: ServerState) -> None:
    """``APIError`` unless retrieval is on and loaded (it may hold no documents yet)."""
    status = rag_status(state)
    if status == "loading":
        raise APIError(503, "retrieval is still loading; retry shortly", "service_unavailable",
                       code="loading", headers=retry_after_header(2))
    if status == "off":
        raise APIError(404, "retrieval is off on this server (started with --no-rag)", "not_found_error",
                       code="rag_disabled")
    if status == "failed":
        raise APIError(503, f"retrieval is unavailable: {state.rag_error}", "service_unavailable",
                       code="rag_unavailable", headers=retry_after_header(60))


def _embed_texts(emb, texts: list[str]):
    return emb.embed_batch(texts), emb.count_tokens(texts)
