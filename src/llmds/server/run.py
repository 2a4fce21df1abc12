"""Run the server: load the engine, build the app, serve it with uvicorn until SIGTERM / SIGINT.

On SIGTERM (or Ctrl-C) the server stops accepting connections, aborts every request in flight at
once (streams end with an ``error`` event, whole responses with 503), frees every KV block, joins
the engine thread and exits with status 0 (uvicorn would re-raise the signal; :class:`Server`
does not).
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from typing import Callable

from llmds.errors import StateError

__all__ = ["build_server", "listen", "raise_open_files_limit", "serve"]

log = logging.getLogger(__name__)


def _uvicorn_server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server with a ``ready`` event, the bound address, and a prompt, clean SIGTERM."""

        def __init__(self, config, state, on_ready: Callable[[str], None] | None = None) -> None:
            super().__init__(config)
            self.state = state
            self.ready = threading.Event()
            self.on_ready = on_ready
            self.url: str | None = None

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started and self.servers:
                host, port = self.servers[0].sockets[0].getsockname()[:2]
                self.url = f"http://{host}:{port}"
                if self.on_ready is not None:
                    self.on_ready(self.url)
            self.ready.set()

        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            self._captured_signals.clear()  # exit 0 after the graceful shutdown, no re-raised signal
            # abort what runs now (uvicorn would wait for every stream to finish)
            threading.Thread(target=self.state.stop, name="llmds-stop", daemon=True).start()

    return Server


def build_server(state, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
                 on_ready: Callable[[str], None] | None = None):
    """A ready-to-``run()`` server for ``state`` (``port=0`` picks a free port; see ``.url``), its
    HTTP protocol bounded as ``state.config`` says (:mod:`llmds.server.connections`)."""
    import uvicorn
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    from llmds.server.app import create_app
    from llmds.server.connections import bounded_protocol

    cfg = state.config
    http = bounded_protocol(AutoHTTPProtocol, cfg.max_connections, cfg.header_timeout, cfg.send_timeout,
                            state.count_rejection)
    config = uvicorn.Config(create_app(state), host=host, port=port, log_level=log_level, lifespan="on",
                            access_log=log_level == "debug", timeout_graceful_shutdown=10,
                            server_header=False, http=http, backlog=max(2048, cfg.max_connections))
    return _uvicorn_server_class()(config, state, on_ready)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (``StateError`` saying why not: the port is taken, the host
    unknown, ...); ``serve`` binds it before loading the model, so such a mistake costs no load."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise StateError(f"cannot listen on {host}:{port}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = " (another server is using it: stop it or pick another with --port)" \
            if exc.errno == errno.EADDRINUSE else ""
        raise StateError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}") from None
    sock.set_inheritable(True)
    return sock


def raise_open_files_limit(needed: int) -> int:
    """Raise this process's soft limit on open files towards ``needed`` (as vLLM does; up to the
    hard limit); returns the soft limit now."""
    try:
        import resource
    except ImportError:  # not on this platform
        return needed
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return soft


def serve(engine_config, server_config, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          on_ready: Callable[[str], None] | None = None, pin_threads: bool = True) -> int:
    """Bind ``host:port``, load the model and serve until stopped; returns the exit status (0 after
    SIGTERM).

    The model is loaded on the thread that will run its steps (``AsyncLLMEngine.build``);
    ``pin_threads``: pin that thread and the OpenMP workers to CPUs (:mod:`llmds.server.affinity`)."""
    from llmds.server.affinity import pin_engine_threads
    from llmds.engine.async_engine import AsyncLLMEngine
    from llmds.engine.engine import LLMEngine
    from llmds.server.state import ServerState

    sock = listen(host, port)
    limit = raise_open_files_limit(server_config.max_connections + 256)
    if limit < server_config.max_connections + 64:
        log.warning("only %d open files are allowed; fewer than max_connections=%d connections will be "
                    "accepted", limit, server_config.max_connections)
    try:
        aengine = AsyncLLMEngine.build(lambda: LLMEngine(config=engine_config))
        engine = aengine.engine
        log.info("model loaded in %.1f s: %d KV blocks of %d tokens", engine.load_seconds, engine.num_blocks,
                 engine_config.block_size)
        if pin_threads:
            pinned = pin_engine_threads(aengine.thread_id)
            log.info("pinned %d threads: %s", len(pinned), {t: sorted(c) for t, c in pinned.items()})
        server = build_server(ServerState(aengine, server_config), host, port, log_level, on_ready)
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0 if server.started else 1
