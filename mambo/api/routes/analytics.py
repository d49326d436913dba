"""SQL analytics: read-only queries over Mambo's tables, and the named reports (JSON or CSV)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, Field

from mambo.api.analytics import REPORTS, QueryResult, to_csv
from mambo.api.deps import NOT_FOUND, REFUSALS, AnalyticsReader, Problem, Service

router = APIRouter(prefix="/analytics", tags=["analytics"], responses=REFUSALS)

Format = Literal["json", "csv"]


class QueryRequest(BaseModel):
    sql: str = Field(
        min_length=1, max_length=20_000, examples=["SELECT strategy, count() FROM fills GROUP BY 1"]
    )
    format: Format = "json"


class QueryAnswer(BaseModel):
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    row_count: int


class ReportInfo(BaseModel):
    name: str
    description: str
    sql: str


def _answer(result: QueryResult, fmt: Format) -> Response | QueryAnswer:
    if fmt == "csv":
        return PlainTextResponse(to_csv(result), media_type="text/csv")
    return QueryAnswer(
        columns=result.columns, types=result.types, rows=result.rows, row_count=len(result.rows)
    )


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {}}, "description": "JSON, or CSV with a header row"},
    400: {"model": Problem, "description": "refused (not one SELECT over Mambo's tables), or failed"},
    408: {"model": Problem, "description": "ran past the time limit"},
    413: {"model": Problem, "description": "more rows than the row limit"},
    503: {"model": Problem, "description": "analytics are not configured on this server"},
}


@router.post("/query", response_model=QueryAnswer, responses=_RESPONSES)
def query(request: QueryRequest, service: Service, _: AnalyticsReader) -> Response | QueryAnswer:
    """Run one read-only SELECT over Mambo's tables (``FINAL`` gives exact, deduplicated reads), with
    the server's time and row limits."""
    return _answer(service.query(request.sql), request.format)


@router.get("/reports", response_model=list[ReportInfo])
def reports(_: AnalyticsReader) -> list[ReportInfo]:
    """The named reports and their SQL."""
    return [ReportInfo(name=r.name, description=r.description, sql=r.sql.strip()) for r in REPORTS.values()]


@router.get("/reports/{name}", response_model=QueryAnswer, responses={**_RESPONSES, **NOT_FOUND})
def report(
    name: str,
    service: Service,
    _: AnalyticsReader,
    format: Annotated[Format, Query(description="json or csv")] = "json",
) -> Response | QueryAnswer:
    """Run a named report: pnl_by_strategy_day, signal_hit_rate, slippage, latency."""
    return _answer(service.report(name), format)
