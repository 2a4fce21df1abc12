"""Errors in the OpenAI wire format: ``{"error": {"message", "type", "param", "code"}}``.

Every failure a client can cause maps to a 4xx with this body: pydantic validation errors and
malformed JSON (400, ``param`` = the field's path), llmds' typed errors from the engine (400),
unknown routes and methods (404 / 405), admission rejections (429 with ``Retry-After``), bodies
over the limit (413).  Only a fault of the server itself is a 5xx.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from llmds.errors import CapacityError, LLMDSError, StateError, ValidationError

__all__ = ["APIError", "error_body", "error_response", "from_llmds_error", "install_handlers", "model_not_found",
           "retry_after_header", "validation_error"]

log = logging.getLogger(__name__)


class APIError(Exception):
    """An HTTP error with an OpenAI-style body (raise it from a handler)."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | int | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(err: APIError):
    from starlette.responses import JSONResponse

    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def model_not_found(name: str, hint: str = "") -> APIError:
    return APIError(404, f"the model {name!r} does not exist{hint}", "not_found_error", "model", "model_not_found")


def retry_after_header(seconds: float) -> dict[str, str]:
    """``Retry-After`` in whole seconds, at least 1 (HTTP allows no fractions)."""
    return {"Retry-After": str(max(1, math.ceil(min(seconds, 3600.0))))}


def from_llmds_error(exc: LLMDSError, param: str | None = None) -> APIError:
    """The engine refused a request: a bad parameter, a prompt over the context or the KV cache."""
    msg = str(exc)
    if isinstance(exc, CapacityError):
        return APIError(400, msg, param=param, code="kv_capacity_exceeded")
    if isinstance(exc, StateError):
        return APIError(503, msg, type="service_unavailable", code="shutting_down",
                        headers=retry_after_header(5))
    if isinstance(exc, ValidationError) and "context" in msg:
        return APIError(400, msg, param=param, code="context_length_exceeded")
    return APIError(400, msg, param=param or _param_of(msg), code="invalid_value")


def _param_of(message: str) -> str | None:
    """The parameter named at the start of an llmds validation message (``"top_k must be ..."``)."""
    head = message.split(" ", 1)[0]
    return head if head.isidentifier() else None


_STATUS_TYPES = {401: "authentication_error", 404: "not_found_error", 405: "invalid_request_error",
                 413: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable"}


def install_handlers(app) -> None:
    """Route every error through the OpenAI body (FastAPI's defaults answer 422 / ``{"detail"}``)."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(LLMDSError)
    async def _llmds_error(request, exc: LLMDSError):
        return error_response(from_llmds_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        return error_response(validation_error(exc.errors()))

    @app.exception_handler(HTTPException)
    async def _http(request, exc: HTTPException):
        kind = _STATUS_TYPES.get(exc.status_code, "invalid_request_error")
        msg = str(exc.detail)
        if exc.status_code in (404, 405):
            msg = f"{msg}: {request.method} {request.url.path}"
        return error_response(APIError(exc.status_code, msg, kind, headers=exc.headers))

    @app.exception_handler(Exception)
    async def _bug(request, exc: Exception):  # a server fault: logged, never the client's input
        log.exception("unhandled error serving %s %s", request.method, request.url.path)
        return error_response(APIError(500, "internal server error", "server_error"))


def validation_error(errors: list[dict[str, Any]]) -> APIError:
    """The first pydantic error as a 400: ``param`` is its dotted path inside the body."""
    if not errors:
        return APIError(400, "invalid request body")
    e = errors[0]
    loc = [str(p) for p in e.get("loc", ()) if p != "body" and not _is_type_tag(p)]
    if e.get("type") == "json_invalid":
        return APIError(400, f"the body is not valid JSON: {e.get('ctx', {}).get('error', e.get('msg'))}",
                        code="invalid_json")
    param = ".".join(loc) or None
    kind, ctx = e.get("type"), e.get("ctx") or {}
    if kind == "missing":
        msg = f"{param} is required" if param else "a JSON object body is required"
    elif kind in ("too_long", "too_short"):  # a list's size limit, stated
        bound = f"at most {ctx.get('max_length')}" if kind == "too_long" else f"at least {ctx.get('min_length')}"
        got = ctx.get("actual_length")
        if got is None and hasattr(e.get("input"), "__len__"):
            got = len(e["input"])
        msg = f"{param or 'body'}: {bound} items allowed, got {got}"
    else:
        value = e.get("input")
        shown = json.dumps(value)[:80] if _jsonable(value) else type(value).__name__
        text = str(e.get("msg", "invalid value")).removeprefix("Value error, ")
        if kind == "string_unicode":  # pydantic-core's own check, on some paths
            text = "holds an unpaired UTF-16 surrogate; send valid Unicode"
        msg = f"{param or 'body'}: {text} (got {shown})"
    return APIError(400, msg, param=param, code="invalid_value")


def _is_type_tag(part: Any) -> bool:
    """pydantic puts the union member it tried in ``loc`` (``"str"``, ``"list[int]"``): not a field."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool", "list", "dict", "none")
                                      or "[" in part or "-" in part)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
