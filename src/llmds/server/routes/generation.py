"""``POST /v1/chat/completions`` and ``POST /v1/completions`` (streamed or whole, ``n`` choices)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from llmds.engine.structured import GRAMMAR_ERROR
from llmds.errors import LLMDSError
from llmds.server.errors import APIError, from_llmds_error
from llmds.server.http import ClientGone, EventStream, unless_disconnected
from llmds.server.protocol import ChatCompletionRequest, CompletionRequest
from llmds.server.state import ServerState

__all__ = ["router"]


def router(state: ServerState) -> APIRouter:
    from llmds.server.rag import hit_json, last_user_text, rag_messages
    from llmds.server.responses import ChatFormat, CompletionFormat, complete, events
    from llmds.server.routes.retrieval import retrieve_hits
    from llmds.server.tools import ToolChatFormat, render_messages, tool_constraint

    api = APIRouter()

    async def respond(request: Request, gens: list, fmt, stream: bool, include_usage: bool):
        # which replica served it, with `llmds serve --replicas N` (llmds.server.replicas)
        served_by = sorted({g.replica for g in gens if getattr(g, "replica", None)})
        headers = {"x-llmds-replica": ",".join(served_by)} if served_by else None
        if stream:
            return EventStream(events(gens, fmt, include_usage), headers)
        try:
            return JSONResponse(await unless_disconnected(request.receive, complete(gens, fmt)), headers=headers)
        except ClientGone:
            return Response(status_code=499)  # nobody reads it; the request was aborted

    @api.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        state.check_model(body.model)
        tools = body.tools or []
        choice = body.tool_choice or ("auto" if tools else "none")
        spec, so_param = _structured(body)
        try:
            tool_spec = tool_constraint(tools, choice, body.parallel_tool_calls)
        except LLMDSError as exc:
            raise from_llmds_error(exc, "tool_choice") from None
        if tool_spec is not None:
            if spec is not None:
                raise APIError(400, f"tool_choice {choice if isinstance(choice, str) else 'naming a function'} "
                               f"and {so_param} both constrain the output; give one of them", param=so_param)
            spec, so_param = tool_spec, "tools"
        messages = render_messages(body.messages, tools, choice)
        extra = {}
        if body.rag is not None:
            query = body.rag.query or last_user_text(messages)
            if query is None:
                raise APIError(400, "rag needs a non-empty user message or rag.query", param="rag.query")
            hits = await retrieve_hits(state, query, body.rag.top_k)
            messages = rag_messages(messages, hits)
            extra["rag"] = {"chunks": [{k: v for k, v in hit_json(h).items() if k != "text"}
                                       for h in hits]}
        ids = state.encode_chat(messages)
        max_tokens = body.requested_max_tokens() or state.default_max_tokens(len(ids))
        params = _params(body, max_tokens, lambda: body.logprobs_k(), spec)
        gen = await _generate(state, ids, params, body.priority, "messages", so_param)
        if tools and choice != "none":
            fmt = ToolChatFormat(state.engine.tokenizer, state.model_name, extra, request.state.request_id,
                                 constrained=tool_spec is not None)
        else:
            fmt = ChatFormat(state.engine.tokenizer, state.model_name, extra, request.state.request_id)
        return await respond(request, [gen], fmt, body.stream, body.include_usage)

    @api.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        state.check_model(body.model)
        if body.echo or body.suffix:
            raise APIError(400, "echo and suffix are not supported", param="echo" if body.echo else "suffix")
        spec, so_param = _structured(body)
        params = _params(body, body.max_tokens, lambda: body.logprobs, spec)
        prompts = []
        for p in body.prompts():
            try:
                prompts.append(state.engine.encode_prompt(p))
            except LLMDSError as exc:  # an empty prompt, a token id outside the vocabulary
                raise from_llmds_error(exc, "prompt") from None
        gens = []
        try:
            for ids in prompts:
                gens.append(await _generate(state, ids, params, body.priority, "prompt", so_param))
        except BaseException:
            for g in gens:
                await g.close()
            raise
        fmt = CompletionFormat(state.engine.tokenizer, state.model_name, request_id=request.state.request_id)
        return await respond(request, gens, fmt, body.stream, body.include_usage)

    return api


def _params(body, max_tokens: int, logprobs, spec=None):
    try:
        return body.sampling_params(max_tokens, logprobs(), spec)
    except LLMDSError as exc:
        raise from_llmds_error(exc) from None


def _structured(body):
    """The body's output constraint and the field that gave it (a 400 naming that field when malformed)."""
    try:
        return body.structured()
    except LLMDSError as exc:
        param = str(exc).split(":", 1)[0]
        raise from_llmds_error(exc, param if param.replace(".", "_").isidentifier() else None) from None


async def _generate(state: ServerState, ids, params, priority: int, param: str, so_param: str | None):
    """``state.generate``; a grammar that does not compile is a 400 naming the field that gave it."""
    try:
        return await state.generate(ids, params, priority, param=param)
    except APIError as exc:
        if so_param is not None and exc.message.startswith(GRAMMAR_ERROR):
            exc.message = f"{so_param}: {exc.message[len(GRAMMAR_ERROR):]}"
            exc.param = so_param
        raise
