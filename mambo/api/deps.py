"""The routes' dependencies as ``Annotated`` aliases: what a route needs shows in its signature."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, Query, Request, Security
from fastapi.security import APIKeyHeader
from pydantic import BaseModel

from mambo.api.auth import ApiKey, Authorizer
from mambo.api.service import PageRequest, SignalService, TimeRange, to_ns

__all__ = [
    "NOT_FOUND",
    "REFUSALS",
    "Admin",
    "AnalyticsReader",
    "EndQ",
    "PageQ",
    "Problem",
    "Service",
    "SignalsReader",
    "StartQ",
    "StrategyQ",
    "SymbolQ",
    "TimeRangeQ",
    "TimeframeQ",
]


class Problem(BaseModel):
    """Why a request was refused."""

    detail: str


#: The refusals every keyed route may answer with (422, bad parameters, FastAPI documents itself).
REFUSALS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "a parameter the caller must fix (the detail says how)"},
    401: {"model": Problem, "description": "missing or invalid API key"},
    403: {"model": Problem, "description": "the key lacks the scope"},
    429: {"model": Problem, "description": "the key's tier rate limit is spent; see Retry-After"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "nothing matches"}}

api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="An API key from `mambo keys create`."
)


def _service(request: Request) -> SignalService:
    service: SignalService = request.app.state.service
    return service


def _require(scope: str) -> Callable[..., ApiKey]:
    def check(request: Request, key: Annotated[str | None, Security(api_key_header)]) -> ApiKey:
        authorizer: Authorizer = request.app.state.authorizer
        return authorizer.authorize(key, scope)

    return check


Service = Annotated[SignalService, Depends(_service)]
SignalsReader = Annotated[ApiKey, Depends(_require("signals:read"))]
AnalyticsReader = Annotated[ApiKey, Depends(_require("analytics:read"))]
Admin = Annotated[ApiKey, Depends(_require("admin"))]

SymbolQ = Annotated[
    str | None,
    Query(max_length=200, description="`exchange:symbol` (e.g. `binance:BTC/USDT`) or a bare symbol"),
]
StrategyQ = Annotated[str | None, Query(max_length=200, description="strategy name, e.g. `sma_cross`")]
AccountQ = Annotated[
    str | None, Query(max_length=200, pattern=r"^[A-Za-z0-9_.:/-]+$", description="account id, e.g. `main`")
]
TimeframeQ = Annotated[str | None, Query(max_length=10, description="e.g. `1s`, `1m`, `1h`")]
StartQ = Annotated[datetime | None, Query(description="from this time (ISO-8601, UTC if no zone), inclusive")]
EndQ = Annotated[datetime | None, Query(description="to this time, exclusive")]


def _time_range(start: StartQ = None, end: EndQ = None) -> TimeRange:
    return TimeRange(to_ns(start), to_ns(end))


def _page(
    limit: Annotated[int, Query(ge=1, le=1000, description="rows per page")] = 100,
    cursor: Annotated[
        str | None,
        Query(pattern=r"^[0-9]{1,19}:[0-9a-f]{1,64}$", description="`next_cursor` of the previous page"),
    ] = None,
    order: Annotated[
        Literal["asc", "desc"], Query(description="oldest (asc) or latest (desc) first")
    ] = "asc",
) -> PageRequest:
    return PageRequest(limit, cursor, order)


TimeRangeQ = Annotated[TimeRange, Depends(_time_range)]
PageQ = Annotated[PageRequest, Depends(_page)]
