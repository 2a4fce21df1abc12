"""ASGI plumbing under the routes: the front-door guard and responses that notice a client leaving.

:class:`Guard` wraps the whole app: ``Authorization: Bearer`` on every route but its open paths
(``/health``; constant-time comparison), a request id for every request (``X-Request-Id``: the
client's when it is a plain token of at most 128 characters, else a new one; echoed in the
response, in ``request.state.request_id`` and in log lines, :mod:`llmds.server.logs`), and the body
limits, before any route runs: the body is read here, up to ``max_body_bytes`` (else 413) and
within ``body_timeout`` seconds (else 408: a client that sends a ``Content-Length`` and stalls does
not hold its connection), then replayed to the app.  Both errors close the connection.
:class:`EventStream` sends server-sent events while watching for the client's disconnect;
:func:`unless_disconnected` does the same for a whole response.  Either way a client that leaves
cancels its generation at once, which aborts the request and frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import uuid
from contextlib import suppress
from typing import Any, AsyncIterator, Awaitable, Callable

from starlette.responses import Response

from llmds.server.errors import error_body
from llmds.server.logs import REQUEST_ID

__all__ = ["Guard", "EventStream", "unless_disconnected", "ClientGone", "request_id_of"]

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_CLOSE = [(b"connection", b"close")]


class ClientGone(Exception):
    """The client disconnected before its response was ready."""


def request_id_of(headers: dict[bytes, bytes]) -> str:
    """The client's ``X-Request-Id`` when it is a plain token (letters, digits, ``._:-``, at most
    128), else a new id."""
    given = headers.get(b"x-request-id", b"")
    return given.decode() if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


async def _send_json(send, status: int, body: dict[str, Any], headers: list | None = None) -> None:
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": raw})


class Guard:
    """API key, request id and body checks in front of ``app`` (see the module docstring)."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int, *, body_timeout: float = 30.0,
                 on_reject: Callable[[str], None] = lambda reason: None,
                 open_paths: tuple[str, ...] = ("/health",)) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.max_body = max_body_bytes
        self.body_timeout = body_timeout
        self.on_reject = on_reject  # called with "body_too_large" or "body_timeout"
        self.open_paths = open_paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        rid = request_id_of(headers)
        scope.setdefault("state", {})["request_id"] = rid
        REQUEST_ID.set(rid)  # this request's task: its log lines carry the id
        echo = (b"x-request-id", rid.encode())

        async def send_with_id(msg):
            if msg["type"] == "http.response.start":
                msg = {**msg, "headers": [*msg.get("headers", ()), echo]}
            await send(msg)

        if self.key is not None and scope.get("path") not in self.open_paths:
            auth = headers.get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                return await _send_json(send_with_id, 401, error_body(
                    "missing or incorrect API key: send 'Authorization: Bearer <key>'",
                    "authentication_error", None, "invalid_api_key"), [(b"www-authenticate", b"Bearer")])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await self._too_large(send_with_id)
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return await self._run(scope, receive, send_with_id)
        chunks, size = [], 0
        deadline = asyncio.get_running_loop().time() + self.body_timeout
        while True:  # read the body here, so an oversized or stalled body never reaches a route
            try:
                msg = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
            except asyncio.TimeoutError:
                self.on_reject("body_timeout")
                return await _send_json(send_with_id, 408, error_body(
                    f"the request body did not arrive within {self.body_timeout:g} s", "invalid_request_error",
                    None, "request_timeout"), _CLOSE)
            if msg["type"] != "http.request":
                return  # the client left
            body = msg.get("body", b"")
            size += len(body)
            if size > self.max_body:
                return await self._too_large(send_with_id)
            chunks.append(body)
            if not msg.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: the disconnect

        await self._run(scope, replay, send_with_id)

    async def _run(self, scope, receive, send) -> None:
        """The app, with a server fault confined to its own request (a 500, the connection kept)."""
        started = False

        async def tracked(msg):
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, receive, tracked)
        except Exception:  # noqa: BLE001 - logged by the app's handler, which answered 500 already
            if not started:
                await _send_json(send, 500, error_body("internal server error", "server_error", None, None))

    async def _too_large(self, send) -> None:
        self.on_reject("body_too_large")
        await _send_json(send, 413, error_body(f"the request body is larger than {self.max_body} bytes",
                                               "invalid_request_error", None, "request_too_large"), _CLOSE)


async def _disconnected(receive) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return


async def _race(receive, work: Awaitable[Any]) -> asyncio.Future:
    """Run ``work`` until it ends or the client disconnects (then it is cancelled); its task."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (watch, task):
            if not t.done():
                t.cancel()
                with suppress(asyncio.CancelledError):
                    await t
    return task


async def unless_disconnected(receive, work: Awaitable[Any]) -> Any:
    """``await work`` unless the client disconnects first (then it is cancelled: ``ClientGone``)."""
    task = await _race(receive, work)
    if task.cancelled():
        raise ClientGone()
    return task.result()


class EventStream(Response):
    """A ``text/event-stream`` response over an async iterator of byte events."""

    def __init__(self, events: AsyncIterator[bytes], headers: dict[str, str] | None = None) -> None:  # noqa: D107
        self.events = events
        self.status_code = 200
        self.background = None
        self.extra_headers = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8"),
                                (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"),
                                *self.extra_headers]})

        async def pump() -> None:
            async for ev in self.events:
                await send({"type": "http.response.body", "body": ev, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        try:
            task = await _race(receive, pump())
        finally:
            await self.events.aclose()  # its finally closes the generations (abort if unfinished)
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()
