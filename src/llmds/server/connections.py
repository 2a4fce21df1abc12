"""Connection-level bounds that uvicorn's HTTP protocol lacks, added by subclassing it.

uvicorn bounds neither how many connections are open nor how long a client may take to send a
request's headers or to read a response.  :func:`bounded_protocol` makes a subclass of its HTTP
protocol (httptools when installed, else h11) that, per connection:

* answers **503** with ``Retry-After`` and closes, when more than ``max_connections`` are open
  (the request is read far enough to answer it, then the connection is dropped);
* closes a connection whose request headers have not all arrived ``header_timeout`` seconds after
  their first byte (**408**), or that sent nothing ``header_timeout`` seconds after it opened (a
  kept-alive connection idle after a response is left to uvicorn's keep-alive timeout);
* drops a connection whose client has read nothing for ``send_timeout`` seconds while the server
  had more to write (the transport's buffer stayed over its high-water mark): the app sees a
  disconnect, so the request is aborted and its KV blocks are freed.

The request body's own deadline is :class:`~llmds.server.http.Guard`'s (``body_timeout``).  The
bounds are class attributes, read when used; every timer is one ``loop.call_later`` per connection
or response.  ``on_reject(reason)`` counts what was refused: ``connections``, ``header_timeout``,
``send_timeout``.
"""

from __future__ import annotations

import json
import logging
from typing import Callable

__all__ = ["bounded_protocol"]

log = logging.getLogger(__name__)


def canned_response(status: int, reason: str, message: str, code: str, retry_after: int | None = None) -> bytes:
    """A whole HTTP/1.1 error response with an OpenAI error body that closes the connection."""
    kind = "service_unavailable" if status == 503 else "invalid_request_error"
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}",
            "connection: close"] + ([f"retry-after: {retry_after}"] if retry_after is not None else [])
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def bounded_protocol(base: type, max_connections: int, header_timeout: float, send_timeout: float,
                     on_reject: Callable[[str], None] = lambda reason: None) -> type:
    """A subclass of uvicorn's HTTP protocol class ``base`` with the bounds of the module docstring."""

    class BoundedHTTPProtocol(base):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._over = len(self.connections) > self.max_connections
            self._header_timer = self._send_timer = None
            self._arm_header_timer(idle_ok=False)

        # ------------------------------------------------------------- headers
        def _arm_header_timer(self, idle_ok: bool) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._waiting_cycle, self._partial, self._idle_ok = self.cycle, False, idle_ok
            self._header_timer = self.loop.call_later(self.header_timeout, self._header_timeout)

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.cycle is not self._waiting_cycle or self.transport.is_closing():
                return  # a request began (its body has Guard's deadline) or the connection is gone
            if not self._partial:
                if not self._idle_ok:
                    self.transport.close()  # opened, never sent a byte
                return
            on_reject("header_timeout")
            self.transport.write(canned_response(
                408, "Request Timeout", f"the request headers did not arrive within {self.header_timeout:g} s",
                "request_timeout"))
            self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._over:
                if not self.transport.is_closing():
                    on_reject("connections")
                    self.transport.write(canned_response(
                        503, "Service Unavailable", f"the server has {self.max_connections} connections open "
                        "(max_connections); retry shortly", "too_many_connections", retry_after=1))
                    self.transport.close()
                return
            if not self._partial and self.cycle is self._waiting_cycle:  # a request begins: time its headers
                self._arm_header_timer(idle_ok=True)
                self._partial = True
            super().data_received(data)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_timer(idle_ok=True)

        # ---------------------------------------------------------------- sends
        def pause_writing(self) -> None:
            super().pause_writing()
            if self._send_timer is None:
                self._send_timer = self.loop.call_later(self.send_timeout, self._send_timeout)

        def resume_writing(self) -> None:
            super().resume_writing()
            if self._send_timer is not None:
                self._send_timer.cancel()
                self._send_timer = None

        def _send_timeout(self) -> None:
            self._send_timer = None
            if not self.transport.is_closing():
                on_reject("send_timeout")
                log.warning("dropping %s: it read nothing of its response for %g s", self.client, self.send_timeout)
                self.transport.abort()

        def connection_lost(self, exc) -> None:
            for timer in (self._header_timer, self._send_timer):
                if timer is not None:
                    timer.cancel()
            super().connection_lost(exc)

    BoundedHTTPProtocol.max_connections = max_connections
    BoundedHTTPProtocol.header_timeout = header_timeout
    BoundedHTTPProtocol.send_timeout = send_timeout
    return BoundedHTTPProtocol
