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


@router.get("/metrics/summary")
def metrics_summary() -> JSONResponse:
    """The operator panel's figures, from the same registry ``/metrics`` serves (mambo.api.operator):
    messages and dead letters per topic, lag, latency p50 and p99 per stage, orders, fills,
    rejections, each account's equity, drawdown, exposure, positions and kill switch, feeds, the hub.
    A quantile with no observation is null."""
    from mambo.api.operator import summary

    return JSONResponse(_finite(summary()))


def _finite(value: Any) -> Any:
    """NaN and infinities as null (JSON has neither)."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
