"""The FastAPI app: :func:`create_app` wires the service, the key check and the router table.

Start reading at :func:`create_app`; the routes live in :mod:`mambo.api.routes` (one module per
area), each a thin call into :class:`~mambo.api.service.SignalService`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import structlog
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from mambo import metrics
from mambo.api.analytics import QueryError
from mambo.api.auth import AuthError, Authorizer, KeyStore
from mambo.api.hub import PROTOCOL
from mambo.api.routes import ROUTERS
from mambo.api.routes.dashboard import STATIC
from mambo.api.service import BadRequest, NotFound, SignalService

if TYPE_CHECKING:
    from mambo.api.kafka_feed import KafkaFeed

__all__ = ["create_app"]

log = structlog.get_logger("mambo.api")

DESCRIPTION = (
    """
Mambo's signals, market data, trading state and analytics.

**Access.** Send an API key (`mambo keys create`) in the `X-API-Key` header. Scopes: `signals:read`
(everything but analytics), `analytics:read` (`/analytics`), `admin` (all). Tiers limit requests per
minute per key: basic 60, pro 600, enterprise 6000 (429 with `Retry-After` past it). A missing or bad
key is 401, a missing scope 403. `/health`, `/ready`, `/metrics`, `/docs` and the dashboard need no key.

**Numbers.** Timestamps are integer nanoseconds since the epoch, UTC (`ts_event`: exchange time,
`ts_init`: when the event entered Mambo); prices and quantities of market data are floats; order
quantities, cash, fees and PnL are decimals sent as strings, exact to the last unit.

**Pages.** History endpoints answer `{"items": [...], "next_cursor": ...}` in time order (`order=desc`
for the latest first); pass `next_cursor` back as `cursor` for the next page.
"""
    + PROTOCOL
)


def create_app(
    service: SignalService, authorizer: Authorizer | KeyStore | None, feed: KafkaFeed | None = None
) -> FastAPI:
    """The API over ``service``. ``authorizer``: an :class:`Authorizer`, a :class:`KeyStore` (keys
    required), or None for open access (the local demo: every request allowed; say so loudly).
    ``feed``: the live feed in distributed mode (:class:`~mambo.api.kafka_feed.KafkaFeed`, handing
    events to ``service.on_event_threadsafe``), started once the hub has its loop, stopped on shutdown."""
    if not isinstance(authorizer, Authorizer):
        authorizer = Authorizer(authorizer)
    settings = service.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.hub.start()
        if feed is not None:
            feed.start()
        heartbeats = asyncio.create_task(service.hub.heartbeats(settings.ws_heartbeat_seconds))
        if authorizer.open:
            log.warning(
                "API OPEN: no API key is required; every request has every scope. "
                "For local use only (loopback)",
                host=settings.host,
            )
        yield
        heartbeats.cancel()
        if feed is not None:
            await asyncio.to_thread(feed.stop)

    app = FastAPI(
        title="Mambo signal API",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.authorizer = authorizer
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["X-API-Key", "Content-Type"],
        )

    @app.middleware("http")
    async def _count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """mambo_http_requests_total and the request time, by route template (never the raw path)."""
        began = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            metrics.HTTP_REQUESTS.labels(name, request.method, str(status)).inc()
            metrics.HTTP_SECONDS.labels(name).observe(time.perf_counter() - began)

    @app.exception_handler(AuthError)
    async def _auth_error(_: Request, ex: AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": "APIKey"} if ex.status == 401 else {}
        if ex.status == 429:
            headers["Retry-After"] = str(max(1, round(ex.retry_after)))
        return JSONResponse({"detail": ex.reason}, status_code=ex.status, headers=headers)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, ex: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(ex)}, status_code=404)

    @app.exception_handler(BadRequest)
    async def _bad_request(_: Request, ex: BadRequest) -> JSONResponse:
        return JSONResponse({"detail": str(ex)}, status_code=400)

    @app.exception_handler(QueryError)
    async def _query_error(_: Request, ex: QueryError) -> JSONResponse:
        return JSONResponse({"detail": ex.reason}, status_code=ex.status)

    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
