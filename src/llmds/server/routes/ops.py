"""``GET`` / ``HEAD /health`` (never needs the API key) and ``GET /metrics`` (Prometheus text; open
without the key only with ``ServerConfig.public_metrics``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from llmds.server.state import ServerState

__all__ = ["router"]


def router(state: ServerState) -> APIRouter:
    from llmds.server.prometheus import make_registry
    from llmds.server.routes.retrieval import rag_status

    api = APIRouter()
    registry = make_registry(state)

    @api.head("/health", include_in_schema=False)  # load balancers probe with HEAD
    @api.get("/health")
    async def health() -> dict[str, Any]:
        bm = state.engine.block_manager
        return {"status": "ok", "model": state.model_name, "rag": rag_status(state),
                "kv_free_blocks": bm.num_free_blocks, "kv_num_blocks": state.engine.num_blocks,
                "kv_pinned_blocks": state.engine.metrics.num_pinned_blocks,
                "requests_in_flight": state.metrics.in_flight}

    @api.get("/metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return api
