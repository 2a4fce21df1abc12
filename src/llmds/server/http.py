"""ASGI plumbing under the routes: the front-door guard and responses that notice a client leaving.

:class:`Guard` wraps the whole app: ``Authorization: Bearer`` on every route but ``/health``
(constant-time comparison) and the body limit (413, before any route runs: the body is read
here, up to the limit, and replayed to the app).  :class:`EventStream` sends server-sent events
while watching for the client's disconnect; :func:`unless_disconnected` does the same for a
whole response.  Either way a client that leaves cancels its generation at once, which aborts
the request and frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from contextlib import suppress
from typing import Any, AsyncIterator, Awaitable, Callable

from starlette.responses import Response

from llmds.server.errors import error_body

__all__ = ["Guard", "EventStream", "unless_disconnected", "ClientGone"]


class ClientGone(Exception):
    """The client disconnected before its response was ready."""


async def _send_json(send, status: int, body: dict[str, Any], headers: list | None = None) -> None:
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": raw})


class Guard:
    """API key and body-size checks in front of ``app`` (see the module docstring)."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int,
                 on_too_large: Callable[[], None] = lambda: None, open_paths: tuple[str, ...] = ("/health",)) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.max_body = max_body_bytes
        self.on_too_large = on_too_large
        self.open_paths = open_paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.key is not None and scope.get("path") not in self.open_paths:
            auth = headers.get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                return await _send_json(send, 401, error_body(
                    "missing or incorrect API key: send 'Authorization: Bearer <key>'",
                    "authentication_error", None, "invalid_api_key"), [(b"www-authenticate", b"Bearer")])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await self._too_large(send)
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return await self._run(scope, receive, send)
        chunks, size = [], 0
        while True:  # read the body here, so an oversized chunked body never reaches a route
            msg = await receive()
            if msg["type"] != "http.request":
                return  # the client left
            body = msg.get("body", b"")
            size += len(body)
            if size > self.max_body:
                return await self._too_large(send)
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

        await self._run(scope, replay, send)

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
        self.on_too_large()
        await _send_json(send, 413, error_body(f"the request body is larger than {self.max_body} bytes",
                                               "invalid_request_error", None, "request_too_large"))


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

    def __init__(self, events: AsyncIterator[bytes]) -> None:  # noqa: D107 - no Response.__init__
        self.events = events
        self.status_code = 200
        self.background = None

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8"),
                                (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]})

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
