"""``llmds serve --replicas N``: N engine replicas behind the same OpenAI API, on Ray Serve.

Plain Ray Serve (``ray.serve.llm`` imports vLLM and cannot host this engine), local only:

* ``EngineReplica`` (N replicas): one :class:`~llmds.engine.async_engine.AsyncLLMEngine` each,
  its threads set from the CPUs Ray gives it (``(cores - 0.1) / N``, at least one thread);
  ``generate`` streams a request's outputs, ``record_routing_stats`` reports the replica's
  prefix keys, health and engine metrics every second (see :mod:`llmds.server.ray_router`);
* ``Ingress`` (1 replica): the project's FastAPI app (``@serve.ingress``) over a
  :class:`~llmds.server.replica_state.ReplicaSetState`: the same routes, errors, admission
  limits, ``--api-key`` and retrieval index (built or loaded once, here, for every replica:
  a document indexed there reaches every request's search), ``/health`` and ``/metrics``
  over every replica (``replica`` label), and an ``x-llmds-replica`` response header.

Serve restarts a replica whose process dies (health checks every 2 s).  :func:`run_replicas`
starts Ray with usage stats off, token auth off, the dashboard off and every address on 127.0.0.1,
and shuts Serve and the whole local Ray cluster down on SIGTERM / SIGINT before returning.

Serve runs throughput-optimized (``RAY_SERVE_THROUGHPUT_OPTIMIZED``, Ray's own switch): the
ingress replica serves HTTP itself on ``host:port`` (Serve's *direct ingress*: no hop through
Serve's HTTP proxy actor, which is left idle on a spare port), handles talk gRPC, user code runs
on each replica's event loop.  On this 2-core machine that took ``llmds serve --replicas 2
--threads 1`` from 0.58x to 0.77x the single process's tokens/s at 32 clients (``bench_server``
profile: the proxy and ingress had used 0.44 of the 2 cores, now 0.12).  Importing this module imports Ray: the single-process
server never does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from dataclasses import replace
from typing import Any, Callable

# before Ray is imported (it reads them then): no usage stats, no token auth file, the node
# address on the loopback interface (Ray's "no cluster" mode, named for Windows and macOS), and
# workers at normal priority (Ray nices them by 15: a server's engines would lose every core to
# any other process)
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_worker_niceness": "0",
           # direct ingress, gRPC handles, user code on the replicas' loops (see the module docstring);
           # the ingress drains for 1 s at shutdown, not the 30 s Serve gives external load balancers
           "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}
for _k, _v in RAY_ENV.items():
    os.environ.setdefault(_k, _v)

import ray  # noqa: E402
from ray import serve  # noqa: E402
from ray.serve.config import RequestRouterConfig  # noqa: E402

from llmds.errors import LLMDSError

__all__ = ["EngineReplica", "Ingress", "build_app", "run_replicas"]

log = logging.getLogger(__name__)

STATS_PERIOD_S = 1.0
INGRESS_CPUS = 0.1


class EngineReplica:
    """One engine in a Serve replica (see the module docstring)."""

    def __init__(self, engine_config) -> None:
        from llmds.engine.async_engine import AsyncLLMEngine
        from llmds.engine.engine import LLMEngine

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        cfg = engine_config if engine_config.threads else replace(engine_config, threads=max(1, round(cpus)))
        self.aengine = AsyncLLMEngine.build(lambda: LLMEngine(config=cfg))
        self.engine = self.aengine.engine
        self.name = serve.get_replica_context().replica_id.unique_id
        log.info("replica %s: model loaded in %.1f s, %d threads, %d KV blocks", self.name,
                 self.engine.load_seconds, cfg.threads, self.engine.num_blocks)

    def _start(self) -> None:
        if not self.aengine.is_running:
            self.aengine.start(asyncio.get_running_loop())

    async def describe(self) -> dict[str, Any]:
        """What the ingress needs to tokenize and validate requests as this engine would."""
        from pathlib import Path

        tok = self.engine.tokenizer
        return {"tokenizer_json": tok.backend.to_str(), "chat_template": tok.chat_template,
                "special_tokens": tok.special_tokens, "config": self.engine.config,
                "max_model_len": self.engine.max_model_len, "num_blocks": self.engine.num_blocks,
                "name": self.name, "model": Path(self.engine.config.model).stem if self.engine.config.model else None}

    async def generate(self, prompt_ids: list[int], params, priority: int = 0, prefix_keys=None, route_token=None):
        """``("accepted", name)`` or ``("refused", error)``, then the request's outputs.
        ``prefix_keys`` and ``route_token`` are for the router (unused here)."""
        self._start()
        try:
            rid = await self.aengine.add_request(prompt_ids, params, priority=priority)
        except LLMDSError as exc:
            yield "refused", exc
            return
        yield "accepted", self.name
        async for out in self.aengine.stream(rid):  # cancelled with the caller's stream: aborts
            yield out

    async def engine_state(self, detail: bool = True, replica: str | None = None) -> dict[str, Any]:
        """The web page's engine view of this replica (:func:`llmds.server.engine_state.snapshot`,
        on the engine thread between two steps).  ``replica`` is for the router (the one asked)."""
        from llmds.server.engine_state import snapshot

        self._start()
        return {**await self.aengine.call(lambda engine: snapshot(engine, detail)), "replica": self.name}

    def record_routing_stats(self) -> dict[str, Any]:
        """Every ``STATS_PERIOD_S``: the prefix keys held here (the router's table), health and
        engine metrics (the ingress's ``/health`` and ``/metrics``)."""
        from llmds.server.prometheus import engine_families

        eng = self.engine
        bm = eng.block_manager
        return {"time": time.time(), "keys": bm.cached_keys(), "metrics": engine_families(eng),
                "health": {"pid": os.getpid(), "kv_free_blocks": bm.num_free_blocks, "kv_num_blocks": eng.num_blocks,
                           "kv_pinned_blocks": eng.metrics.num_pinned_blocks,
                           "requests_running": eng.metrics.num_requests_running,
                           "requests_waiting": eng.metrics.num_requests_waiting,
                           "engine_errors": self.aengine.errors}}

    def check_health(self) -> None:
        if self.aengine.thread_id is None:
            raise RuntimeError("the engine thread is gone")

    def __del__(self) -> None:
        aengine = getattr(self, "aengine", None)
        if aengine is not None:
            aengine.shutdown(timeout=5.0)


class Ingress:
    """The OpenAI app over the engine replicas (see the module docstring)."""

    async def __init__(self, engine, server_config, accept_timeout: float = 15.0) -> None:
        from llmds.server.replica_state import BOOK, ReplicaSetState, replica_reports

        info = await engine.options(stream=False).describe.remote()
        if server_config.model_name is None and info["model"]:
            server_config = replace(server_config, model_name=info["model"])
        self.state = ReplicaSetState(engine, info, server_config, replica_reports, BOOK, accept_timeout)

    def __serve_build_asgi_app__(self):
        from llmds.server.app import create_app

        return create_app(self.state)


def build_app(engine_config, server_config, replicas: int, cpus: float, accept_timeout: float = 15.0):
    """The Serve application: ``replicas`` engines sharing ``cpus`` CPUs, one ingress."""
    from llmds.server.ray_router import LlmdsRequestRouter

    per = max(0.01, (cpus - INGRESS_CPUS) / replicas)
    router = RequestRouterConfig(request_router_class=LlmdsRequestRouter,
                                 request_router_kwargs={"block_size": engine_config.block_size},
                                 request_routing_stats_period_s=STATS_PERIOD_S,
                                 request_routing_stats_timeout_s=5.0)
    limit = engine_config.max_num_seqs + server_config.max_waiting_requests
    engine = serve.deployment(EngineReplica, name="EngineReplica", num_replicas=replicas,
                              ray_actor_options={"num_cpus": per}, max_ongoing_requests=limit,
                              request_router_config=router, health_check_period_s=2.0,
                              health_check_timeout_s=10.0, graceful_shutdown_timeout_s=5.0)
    ingress = serve.deployment(serve.ingress()(Ingress), name="Ingress", num_replicas=1,
                               ray_actor_options={"num_cpus": INGRESS_CPUS}, max_ongoing_requests=limit * 2,
                               graceful_shutdown_timeout_s=5.0)
    return ingress.bind(engine.bind(engine_config), server_config, accept_timeout)


def start_ray(cpus: float | None = None) -> float:
    """Start a local Ray (usage stats and token auth off, on 127.0.0.1); its CPU count."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = float(cpus)
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             namespace="llmds", log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {k: v for k, v in os.environ.items()
                                       if k.startswith(("OMP_", "GOMP_", "LLMDS_", "RAY_SERVE_")) or k in RAY_ENV}})
    return cpus


def run_replicas(engine_config, server_config, replicas: int, host: str = "127.0.0.1", port: int = 8000,
          on_ready: Callable[[str], None] | None = None, ready_timeout: float = 300.0) -> int:
    """Serve ``replicas`` engines until SIGTERM / SIGINT; the exit status (0 after a signal)."""
    stop = threading.Event()

    def on_signal(*_) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    t0 = time.perf_counter()
    port, proxy_port = _ports(host, port)
    # the one ingress replica listens on `port` (Serve allocates direct-ingress ports from this range)
    os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] = str(port)
    os.environ["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] = str(port + 1)
    try:
        cpus = start_ray()
        for sig in (signal.SIGTERM, signal.SIGINT):  # Ray's core installs its own (it aborts): ours again
            signal.signal(sig, on_signal)
        serve.start(http_options={"host": host, "port": proxy_port}, logging_config={"log_level": "WARNING"})
        serve.run(build_app(engine_config, server_config, replicas, cpus), name="llmds", route_prefix="/",
                  blocking=False)
        url = f"http://{host}:{port}"
        if not _wait_healthy(url, replicas, ready_timeout, stop):
            return 0 if stop.is_set() else 1
        log.info("%d replicas healthy in %.1f s", replicas, time.perf_counter() - t0)
        if on_ready is not None:
            on_ready(url)
        stop.wait()
        return 0
    finally:
        _shutdown()


def _ports(host: str, port: int) -> tuple[int, int]:
    """``(port, proxy port)``: ``port`` checked free (``StateError`` saying why not, before Ray
    starts; 0 picks a free one) and a free one for Serve's idle HTTP proxy."""
    from llmds.server.run import listen

    with listen(host, port) as sock, listen("127.0.0.1", 0) as spare:
        return sock.getsockname()[1], spare.getsockname()[1]


def _wait_healthy(url: str, replicas: int, timeout: float, stop: threading.Event) -> bool:
    import json
    import urllib.request

    end = time.monotonic() + timeout
    while time.monotonic() < end and not stop.is_set():
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if len(json.loads(r.read()).get("replicas", {})) >= replicas:
                    return True
        except (OSError, ValueError):
            pass
        stop.wait(0.25)
    return False


def _shutdown() -> None:
    try:
        serve.shutdown()
    except Exception as exc:  # noqa: BLE001 - Ray goes down below either way
        log.warning("serve.shutdown failed: %s", exc)
    ray.shutdown()
