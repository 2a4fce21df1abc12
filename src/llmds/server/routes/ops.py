"""``GET`` / ``HEAD /health`` (never needs the API key) and ``GET /metrics`` (Prometheus text; open
without the key only with ``ServerConfig.public_metrics``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from llmds.server.state import ServerState

__all__ = ["router"]


def router(state: ServerState) -> APIRouter:
    from llmds.server.prometheus import make_registry

    api = APIRouter()
    registry = make_registry(state)

    @api.head("/health", include_in_schema=False)  # load balancers probe with HEAD
    @api.get("/health")
    async def health() -> dict[str, Any]:
        return await state.health()  # one engine in process, or every replica (llmds.server.replicas)

    @api.get("/metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        registry.engine_families = await state.engine_families()
        return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)

    return api
