"""Liveness, readiness and the Prometheus metrics: no key needed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from mambo import metrics
from mambo.api.deps import Service

router = APIRouter(tags=["system"])


@router.get("/health")
def health(service: Service, request: Request) -> dict[str, Any]:
    """The process is up; whether access is open (no keys: local only); the live feed per topic
    (messages, last event time, seconds since the last message) and the WebSocket hub's counters."""
    return {
        "status": "ok",
        "auth": "open" if request.app.state.authorizer.open else "keys",
        "hub": service.hub.stats(),
        "feed": {t: h.model_dump() for t, h in service.feed_health().items()},
    }


@router.get("/ready", responses={503: {"description": "ClickHouse is not reachable"}})
def ready(service: Service) -> JSONResponse:
    """200 when ClickHouse answers, 503 otherwise."""
    ok = service.ready()
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


@router.get("/metrics", include_in_schema=False)
def prometheus_metrics() -> Response:
    """This process's Prometheus metrics (:mod:`mambo.metrics`): the API's requests and WebSocket
    clients, and with ``--demo`` the embedded pipeline's too."""
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE_LATEST)
