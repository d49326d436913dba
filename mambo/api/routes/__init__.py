"""The API's routers, one module per area; :data:`ROUTERS` is the table ``create_app`` mounts."""

from __future__ import annotations

from fastapi import APIRouter

from mambo.api.routes import analytics, control, dashboard, market, signals, system, trading, ws

__all__ = ["ROUTERS"]

ROUTERS: tuple[APIRouter, ...] = (
    system.router,
    signals.router,
    market.router,
    trading.router,
    control.router,
    analytics.router,
    ws.router,
    dashboard.router,
)
