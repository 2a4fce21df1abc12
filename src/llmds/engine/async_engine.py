"""AsyncLLMEngine: one thread runs the engine's steps; asyncio code submits requests and awaits streams.

The engine is single-threaded by design (planner, block manager and model are never touched
concurrently).  Other threads talk to it only through a command queue drained between steps:
``add`` (its result, a request id or the validation error, comes back through a future),
``abort``, and ``call`` (a function of the engine run between two steps: a read-only look at its
state, e.g. the web page's KV block map, without racing the step).  Each step's outputs are handed to the event loop in one ``call_soon_threadsafe`` and
fanned out to the requests' ``asyncio.Queue``.  HTTP handlers therefore never run model code.

The next step starts once the loop has run the readers woken by those outputs (at most
``flush_timeout`` seconds later): the HTTP work of a step (JSON chunks, socket writes) then runs
between forward passes instead of during them, where it would hold the GIL that the forward takes
back after every torch op.  On 2 cores this raised a 32-client server from ~400 to ~490 tok/s
(``benchmarks/bench_server.py``); the wait costs well under a millisecond per step.

:meth:`AsyncLLMEngine.build` loads the model on the thread that will run its steps.  Loading
runs torch's parallel regions too, and the GNU OpenMP runtime gives every thread that starts
parallel regions its own team: a model loaded on one thread and stepped on another leaves 3
threads managed on a 2-core machine, and over-subscribed that way OpenMP cuts its spin-wait to
1,000 iterations, so the team's worker sleeps between the small operations of a decode step.
Sequential single requests then decoded 15-22% slower (31.5-34.6 against 40.3 tok/s).

A stream that is closed early (the client went away, the task was cancelled) aborts its request:
its KV blocks are freed before the next step.  If a step raises, every request in flight is
finished with ``finish_reason="error"`` (the error is logged) and the loop goes on serving new
requests.  ``shutdown()`` aborts everything and joins the thread.

A structured-outputs request's grammar is compiled on a worker thread before the request is
queued (compiling releases the GIL), so the engine thread only copies it from the cache.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import OrderedDict
from typing import Any, AsyncIterator, Callable, Hashable

from llmds.engine.config import SamplingParams
from llmds.engine.engine import LLMEngine
from llmds.engine.request import RequestOutput
from llmds.errors import StateError

__all__ = ["AsyncLLMEngine"]

_MAX_UNREAD = 1024  # finished, never-read streams kept for a late stream() call

log = logging.getLogger(__name__)


class AsyncLLMEngine:
    """Serve an :class:`LLMEngine` to asyncio callers from one background thread."""

    def __init__(self, engine: LLMEngine | None) -> None:
        self.engine = engine
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._streams: dict[Hashable, asyncio.Queue] = {}  # touched only on the event loop
        # finished requests whose stream nobody has read yet (bounded: the oldest are dropped)
        self._unread: OrderedDict[Hashable, asyncio.Queue] = OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._flushed = threading.Event()  # set on the loop once a step's outputs reached their readers
        self.flush_timeout = 0.05  # seconds the engine waits for that before its next step, at most
        self.errors = 0
        self._go = threading.Event()  # start() was called (the loop is known) or shutdown() was
        self._started = False

    @classmethod
    def build(cls, factory: Callable[[], LLMEngine]) -> AsyncLLMEngine:
        """Call ``factory`` (which loads an engine) on a new thread, the one that will run the
        engine's steps after :meth:`start` (see the module docstring); returns once it is built,
        or raises what ``factory`` raised."""
        self = cls(None)
        built = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            try:
                self.engine = factory()
            except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
                failure.append(exc)
                return
            finally:
                built.set()
            self._go.wait()
            if not self._stopping:
                self._run()

        self._thread = threading.Thread(target=main, name="llmds-engine", daemon=True)
        self._thread.start()
        built.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    # ---------------------------------------------------------------- lifecycle
    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        if self._started:
            return
        self._started = True
        self._loop = loop or asyncio.get_running_loop()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="llmds-engine", daemon=True)
            self._thread.start()
        else:  # built on its thread, which waits for the loop
            self._go.set()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the loop: abort every request (freeing its blocks) and join the thread."""
        if self._thread is None:
            return
        self._stopping = True
        self._wake.set()
        self._go.set()
        self._flushed.set()  # the loop may be the caller, blocked in join()
        self._thread.join(timeout)
        self._thread = None

    @property
    def thread_id(self) -> int | None:
        """The OS id of the thread that runs the engine's steps (None before it exists)."""
        return None if self._thread is None else self._thread.native_id

    @property
    def is_running(self) -> bool:
        return self._started and self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ calls
    async def generate(self, prompt: Any, sampling_params: SamplingParams | None = None, request_id: Hashable | None = None,
                       *, priority: int = 0, deadline: float | None = None) -> AsyncIterator[RequestOutput]:
        """Stream a request's outputs.  Raises the engine's ``ValidationError`` / ``CapacityError``
        before the first output when the request is refused."""
        rid = await self.add_request(prompt, sampling_params, request_id, priority=priority, deadline=deadline)
        async for out in self.stream(rid):
            yield out

    async def add_request(self, prompt: Any, sampling_params: SamplingParams | None = None,
                          request_id: Hashable | None = None, *, priority: int = 0,
                          deadline: float | None = None) -> Hashable:
        """Queue a request on the engine thread; returns its id (or raises what ``add_request`` raised).
        Read its outputs with :meth:`stream` (they are buffered until then)."""
        if not self.is_running or self._stopping:
            raise StateError("the engine is not running")
        if sampling_params is not None and sampling_params.structured_outputs is not None:
            # compile here, on a worker thread (the GIL released): the engine thread then finds the
            # grammar cached, so a slow schema never stalls a step; a bad one raises here
            await asyncio.to_thread(self.engine.grammars.matcher, sampling_params.structured_outputs)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._commands.put(("add", (prompt, sampling_params, request_id, priority, deadline), fut))
        self._wake.set()
        rid = await fut
        return rid

    async def stream(self, request_id: Hashable) -> AsyncIterator[RequestOutput]:
        q = self._streams.get(request_id)
        if q is None:
            q = self._unread.pop(request_id, None)
        if q is None:
            raise StateError(f"no stream for request {request_id!r}")
        finished = False
        try:
            while True:
                out = await q.get()
                if out is None:  # engine shut down
                    return
                yield out
                if out.request_finished:
                    finished = True
                    return
        finally:
            self._streams.pop(request_id, None)
            self._unread.pop(request_id, None)
            if not finished:
                self.abort(request_id)

    async def barrier(self) -> None:
        """Return once the engine thread has applied every command sent before this call."""
        fut = asyncio.get_running_loop().create_future()
        self._commands.put(("barrier", None, fut))
        self._wake.set()
        await fut

    async def call(self, fn: Callable[[LLMEngine], Any]) -> Any:
        """``fn(engine)`` run on the engine thread between two steps; its result (or what it raised).
        For short reads of the engine's state: the next step waits for it."""
        if not self.is_running or self._stopping:
            raise StateError("the engine is not running")
        fut = asyncio.get_running_loop().create_future()
        self._commands.put(("call", fn, fut))
        self._wake.set()
        return await fut

    def abort(self, request_id: Hashable) -> None:
        """Abort from any thread; takes effect before the next step."""
        self._commands.put(("abort", request_id, None))
        self._wake.set()

    # ----------------------------------------------------------- engine thread
    def _run(self) -> None:
        eng, loop = self.engine, self._loop
        while not self._stopping:
            self._drain()
            if not eng.has_unfinished_requests():
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                outputs = eng.step()
            except Exception:  # noqa: BLE001 - one bad step must not stop the server
                log.exception("engine step failed; failing the requests in flight")
                self.errors += 1
                outputs = self.engine.abort_all("error")
            if outputs:
                self._flushed.clear()
                loop.call_soon_threadsafe(self._dispatch, outputs)
                self._flushed.wait(self.flush_timeout)
        self._drain()
        outputs = self.engine.abort_all("abort")
        loop.call_soon_threadsafe(self._dispatch, outputs, True)

    def _drain(self) -> None:
        eng, loop = self.engine, self._loop
        while True:
            try:
                kind, arg, fut = self._commands.get_nowait()
            except queue.Empty:
                return
            if kind == "abort":
                eng.abort(arg)
                continue
            if kind == "barrier":
                loop.call_soon_threadsafe(_settle, fut, None, None)
                continue
            if kind == "call":
                try:
                    result = arg(eng)
                except Exception as exc:  # noqa: BLE001 - handed to the caller
                    loop.call_soon_threadsafe(_settle, fut, None, exc)
                else:
                    loop.call_soon_threadsafe(_settle, fut, result, None)
                continue
            prompt, params, rid, priority, deadline = arg
            try:
                rid = eng.add_request(prompt, params, rid, priority=priority, deadline=deadline)
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                loop.call_soon_threadsafe(_settle, fut, None, exc)
            else:
                loop.call_soon_threadsafe(self._opened, fut, rid)

    def _opened(self, fut: asyncio.Future, rid: Hashable) -> None:
        self._streams[rid] = asyncio.Queue()
        if not fut.cancelled():
            fut.set_result(rid)
        else:
            self._streams.pop(rid, None)
            self.abort(rid)

    def _dispatch(self, outputs: list[RequestOutput], closing: bool = False) -> None:
        streams = self._streams
        for out in outputs:
            q = streams.get(out.request_id)
            if q is not None:
                q.put_nowait(out)
                if out.request_finished:  # a reader holds its queue; an unread stream stays findable, bounded
                    del streams[out.request_id]
                    self._unread[out.request_id] = q
                    if len(self._unread) > _MAX_UNREAD:
                        self._unread.popitem(last=False)
        if closing:
            for q in streams.values():
                q.put_nowait(None)
        else:  # runs after the readers just woken (FIFO ready queue): they have written their chunks
            self._loop.call_soon(self._flushed.set)


def _settle(fut: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if fut.cancelled():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)
