"""``GET /v1/models`` and vLLM's ``POST /tokenize`` / ``POST /detokenize``.

``/tokenize`` takes a ``prompt`` or chat ``messages`` and returns the model's token ids (``count``,
``max_model_len``, ``tokens``, and ``token_strs`` on request); ``/detokenize`` turns ids back into
text.  Naming the embedding model (``"model": "all-MiniLM-L6-v2"``) uses its word-piece tokenizer
instead: those ids are what ``/v1/embeddings`` accepts as token input.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from llmds.errors import LLMDSError
from llmds.server.errors import APIError, from_llmds_error, model_not_found
from llmds.server.protocol import DetokenizeRequest, TokenizeRequest
from llmds.server.state import ServerState

__all__ = ["router"]


def router(state: ServerState) -> APIRouter:
    from llmds.server.rag import EMBED_MODEL, EMBED_NAMES

    api = APIRouter()

    def cards() -> list[dict[str, Any]]:
        out = [{"id": state.model_name, "object": "model", "created": state.created, "owned_by": "llmds",
                "max_model_len": state.engine.max_model_len}]
        if state.embeddings_available:
            out.append({"id": EMBED_MODEL, "object": "model", "created": state.created, "owned_by": "llmds"})
        return out

    @api.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": cards()}

    @api.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        for card in cards():
            if card["id"] == model_id:
                return card
        raise model_not_found(model_id)

    @api.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        _checked(body.check)
        if body.model in EMBED_NAMES:
            if body.messages is not None:
                raise APIError(400, f"{EMBED_MODEL} has no chat template: send a prompt", param="messages")
            emb = await state.get_embedder()
            ids = await run_in_threadpool(emb.encode, body.prompt, body.add_special_tokens)
            strs = await run_in_threadpool(emb.token_strs, ids) if body.return_token_strs else None
            return {"count": len(ids), "max_model_len": emb.max_seq_length, "tokens": ids, "token_strs": strs}
        state.check_model(body.model)
        tok = state.engine.tokenizer
        if body.messages is not None:
            text = _checked(tok.apply_chat_template, [m.as_dict() for m in body.messages],
                            body.add_generation_prompt, param="messages")
            ids = tok.encode(text)  # the template writes the special tokens itself
        else:
            ids = tok.encode(body.prompt, add_special_tokens=body.add_special_tokens)
        strs = [tok.token_to_str(t) for t in ids] if body.return_token_strs else None
        return {"count": len(ids), "max_model_len": state.engine.max_model_len, "tokens": ids, "token_strs": strs}

    @api.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict[str, Any]:
        if body.model in EMBED_NAMES:
            emb = await state.get_embedder()
            return {"prompt": _checked(emb.decode, body.tokens, param="tokens")}
        state.check_model(body.model)
        tok = state.engine.tokenizer
        ids = _checked(tok.check_ids, body.tokens, "tokens", param="tokens")
        return {"prompt": tok.decode(ids, skip_special_tokens=False)}

    return api


def _checked(fn, *args, param: str | None = None):
    try:
        return fn(*args)
    except LLMDSError as exc:
        raise from_llmds_error(exc, param) from None
