"""The ingress of ``llmds serve --replicas N``: a :class:`ServerState` whose engine is N replicas.

The routes, admission gate, retrieval index and metrics are the single-process server's
(:mod:`llmds.server.app` over this state); only opening a request differs.  The ingress
tokenizes (with the replicas' own tokenizer, from :meth:`EngineReplica.describe`), keys the
prompt by its block chain (:func:`~llmds.server.routing.prompt_keys`) and opens a stream on
the engine deployment through its handle; the prefix-aware router
(:mod:`llmds.server.ray_router`) picks the replica.  The replica answers first with
``("accepted", its name)`` or ``("refused", the engine's error)``, then the engine's outputs.

Faults:

* a replica that dies before accepting a request (or while the router picks it): the request
  is sent again, to another replica, until ``accept_timeout`` seconds have passed;
* no replica accepts within ``accept_timeout`` (none is up): 503 with ``Retry-After``;
* a replica that dies under an open stream: the stream ends with an ``error`` event (a whole
  response: 503 with ``Retry-After``), through a final output with ``finish_reason="replica_lost"``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
import uuid
from typing import Any, Callable

from ray.exceptions import RayError

from llmds.engine.request import RequestOutput
from llmds.server.admission import Ticket
from llmds.server.errors import APIError, retry_after_header
from llmds.server.prometheus import label_families
from llmds.server.routing import LoadBook, prompt_keys
from llmds.server.state import Generation, ServerConfig, ServerState

__all__ = ["EngineView", "ReplicaSetState", "RemoteGeneration", "BOOK", "ROUTERS", "replica_reports"]

log = logging.getLogger(__name__)

# Shared between the ingress and the routers of its deployment handle (llmds.server.ray_router),
# in the same process: the loads (the router counts a request when it picks its replica, the
# ingress as the stream starts, reads and ends), which replica the router picked for each open
# request ({route token: replica}), and the routers, which hold the replicas' reports.
BOOK = LoadBook()
ROUTED: dict[str, str] = {}
ROUTERS: list = []


def replica_reports() -> dict[str, dict[str, Any]]:
    """Every live replica's last routing-stats report, over the routers of this process."""
    out: dict[str, dict[str, Any]] = {}
    for router in list(ROUTERS):
        out.update(router.reports())
    return out


class EngineView:
    """What the routes read of an engine (``tokenizer``, ``max_model_len``, ``num_blocks``,
    ``config``, ``encode_prompt``), from a replica's ``describe()``."""

    def __init__(self, info: dict[str, Any]) -> None:
        from llmds.engine.text import TextTokenizer

        fd, path = tempfile.mkstemp(prefix="llmds-tokenizer-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(info["tokenizer_json"])
            self.tokenizer = TextTokenizer(path, info["chat_template"], info["special_tokens"])
        finally:
            os.unlink(path)
        self.config = info["config"]
        self.max_model_len = info["max_model_len"]
        self.num_blocks = info["num_blocks"]

    def encode_prompt(self, prompt: Any) -> list[int]:
        return self.tokenizer.encode_prompt(prompt)


class ReplicaSetState(ServerState):
    """The server state of the ingress (see the module docstring).

    ``handle``: the engine deployment's handle; ``reports``: a callable returning every live
    replica's last routing-stats report (``{name: report}``); ``book``: the loads the router
    reads, kept here as streams open, start and close.
    """

    def __init__(self, handle, info: dict[str, Any], config: ServerConfig | None,
                 reports: Callable[[], dict[str, dict[str, Any]]], book: LoadBook,
                 accept_timeout: float = 15.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.aengine = None
        self._setup(EngineView(info), config, clock)
        self.handle = handle.options(stream=True)
        self.unary = handle.options(stream=False)
        self.reports = reports
        self.book = book
        self.accept_timeout = accept_timeout
        self.clock = clock
        self.retries = 0  # requests sent again after their replica died before accepting them

    def start(self) -> None:
        import threading

        self.loop = asyncio.get_running_loop()
        if self.config.rag:
            threading.Thread(target=self._load_rag, name="llmds-rag", daemon=True).start()
        else:
            self.rag_ready.set()

    def stop(self) -> None:
        """Nothing to join here: Serve stops the replicas (their streams end with them)."""

    async def open(self, prompt_ids: list[int], params, priority: int, ticket: Ticket) -> RemoteGeneration:
        keys = prompt_keys(prompt_ids, self.engine.config.block_size)
        deadline = self.clock() + self.accept_timeout
        while True:
            token = uuid.uuid4().hex
            stream = self.handle.generate.remote(prompt_ids, params, priority, prefix_keys=keys, route_token=token)
            try:
                kind, payload = await asyncio.wait_for(stream.__anext__(), max(0.1, deadline - self.clock()))
            except asyncio.TimeoutError:
                stream.cancel()
                self._unsend(token)
                raise _no_replica() from None
            except asyncio.CancelledError:  # the client left while its request was routed
                stream.cancel()
                self._unsend(token)
                raise
            except RayError as exc:  # the replica died before it accepted: try another
                stream.cancel()
                self._unsend(token)
                if self.clock() >= deadline:
                    raise _no_replica() from None
                self.retries += 1
                log.warning("a replica failed before accepting a request (%s); sending it again",
                            type(exc).__name__)
                continue
            if kind == "refused":
                self._unsend(token)
                raise payload
            if ROUTED.pop(token, None) != payload:  # not where the router counted it (or uncounted)
                self._unsend(token, payload)
                self.book.sent(payload)
            return RemoteGeneration(self, stream, payload, ticket, params.n)

    def _unsend(self, token: str, picked: str | None = None) -> None:
        """Take back the router's count of a request that did not start where it picked."""
        picked = ROUTED.pop(token, picked)
        if picked is not None:
            self.book.finished(picked, False)

    async def health(self) -> dict[str, Any]:
        reports = self.reports()
        if not reports:
            raise _no_replica()
        per = {name: r["health"] for name, r in sorted(reports.items())}
        total = lambda k: sum(h[k] for h in per.values())  # noqa: E731
        return {"status": "ok", "model": self.model_name, "rag": self.rag_status(),
                "kv_free_blocks": total("kv_free_blocks"), "kv_num_blocks": total("kv_num_blocks"),
                "kv_pinned_blocks": total("kv_pinned_blocks"), "requests_in_flight": self.metrics.in_flight,
                "replicas": per}

    async def engine_state(self, detail: bool = True) -> dict[str, Any]:
        """The web page's engine view: one replica's (the first by name, the same while it lives;
        the page draws one engine), its name in ``replica``."""
        names = sorted(self.reports())
        if not names:
            raise _no_replica()
        return await self.unary.engine_state.remote(detail, replica=names[0])

    async def engine_families(self) -> list:
        return label_families({name: r["metrics"] for name, r in self.reports().items()})


def _no_replica() -> APIError:
    return APIError(503, "no engine replica is up; retry shortly", "service_unavailable", code="no_replica",
                    headers=retry_after_header(2))


class RemoteGeneration(Generation):
    """One request's outputs (of its ``n`` sequences), streamed from its replica."""

    def __init__(self, state: ReplicaSetState, stream, replica: str, ticket: Ticket,  # noqa: D107
                 n: int = 1) -> None:
        self.state, self.stream, self.replica, self.ticket, self.n = state, stream, replica, ticket, n
        self.request_id = None
        self._first = False
        self._done = False
        self._closed = False

    async def next(self) -> RequestOutput | None:
        """The next output; a ``replica_lost`` final output when the replica died under it."""
        if self._done:
            return None
        try:
            out = await self.stream.__anext__()
        except StopAsyncIteration:
            self._done = True
            return None
        except RayError as exc:
            log.warning("replica %s failed under an open stream: %s", self.replica, type(exc).__name__)
            self._done = True
            return RequestOutput(self.request_id, [], "", True, "replica_lost", 0, 0, 0)
        self.request_id = out.request_id
        if not self._first:
            self._first = True
            self.ticket.started()
            self.state.book.first_token(self.replica)
        if out.request_finished:
            self._done = True
        return out

    async def _stop(self) -> None:
        if not self._done:
            self.stream.cancel()  # the replica's generator is cancelled: it aborts the request

    def _release(self) -> None:
        self.state.book.finished(self.replica, self._first)
        super()._release()

