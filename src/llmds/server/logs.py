"""Request ids in the server's log lines (standard library only, so the CLI can install it).

:class:`~llmds.server.http.Guard` sets :data:`REQUEST_ID` for each request (the client's
``X-Request-Id`` or a new one, echoed in the response); the context variable follows the
request's task, so whatever is logged while serving it carries the id.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

__all__ = ["REQUEST_ID", "RequestIdFilter", "LOG_FORMAT"]

REQUEST_ID: ContextVar[str | None] = ContextVar("llmds_request_id", default=None)

LOG_FORMAT = "%(levelname)s %(name)s%(request_id)s: %(message)s"


class RequestIdFilter(logging.Filter):
    """Sets ``record.request_id`` to ``" [request <id>]"`` while a request is served, else ``""``."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = REQUEST_ID.get()
        record.request_id = f" [request {rid}]" if rid else ""
        return True
