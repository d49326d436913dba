"""SQL analytics: read-only ClickHouse SQL over Mambo's tables, and the named reports.

Two locks, either of which alone refuses a write:

1. :func:`check_sql` parses the text with sqlglot (ClickHouse dialect) and accepts exactly one
   ``SELECT`` (with ``WITH``/``UNION``/joins/subqueries) whose every table is one of Mambo's
   (:data:`~mambo.schemas.topics.TABLES`, unqualified or qualified by Mambo's database) or a CTE of the
   query; no table functions (``url()``, ``file()``, ``remote()``, ``numbers()``...), no dictionary or
   join-engine lookups, no ``SETTINGS`` clause.
2. :func:`run_query` sends it on a client of its own, made by :func:`readonly_client`: its session has
   ``max_execution_time``, ``max_result_rows`` with ``result_overflow_mode='throw'`` and then
   ``readonly=1`` set once, so the engine itself refuses writes, long queries and huge results, and
   nothing can unset them (ClickHouse refuses any setting change in a readonly session).

   Why a client of its own rather than per-query settings: clickhouse-connect's chdb backend applies
   per-query settings with ``SET`` on the session and restores them afterwards, and once ``readonly=1``
   is set the restore itself is refused, so a shared client (the sink's) would stay read-only.

Values come back JSON-safe: decimals as strings (exact), timestamps as ISO-8601 UTC, NaN as null.
"""

from __future__ import annotations

import csv
import io
import math
import threading
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlglot
from clickhouse_connect.driver.client import Client
from sqlglot import exp

from mambo.connectors.clickhouse import ClickHouseError, connect
from mambo.schemas.topics import TABLES

__all__ = [
    "REPORTS",
    "QueryError",
    "QueryResult",
    "Report",
    "check_sql",
    "readonly_client",
    "run_query",
    "to_csv",
]

_FORBIDDEN_FUNCTIONS = ("dict", "joinget", "file", "url", "remote", "s3", "hdfs", "input", "executable")


class QueryError(ValueError):
    """A query refused or failed; ``status`` is the HTTP status to answer with."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def check_sql(sql: str, database: str) -> None:
    """Raise :class:`QueryError` unless ``sql`` is one SELECT over Mambo's tables (see the module doc)."""
    try:
        statements = [s for s in sqlglot.parse(sql, read="clickhouse") if s is not None]
    except sqlglot.errors.SqlglotError as ex:
        raise QueryError(f"cannot parse the query: {str(ex).splitlines()[0]}") from ex
    if len(statements) != 1:
        raise QueryError(f"send exactly one statement, got {len(statements)}")
    (stmt,) = statements
    if not isinstance(stmt, exp.Query):
        raise QueryError(f"only SELECT queries are allowed, got {stmt.key.upper()}")
    ctes = {cte.alias_or_name for cte in stmt.find_all(exp.CTE)}
    for node in stmt.walk():
        if isinstance(node, exp.Table):
            _check_table(node, ctes, database)
        elif isinstance(node, exp.Func):
            name = (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()
            if name.startswith(_FORBIDDEN_FUNCTIONS):
                raise QueryError(f"function {name}() is not allowed")
        elif isinstance(node, exp.Query) and node.args.get("settings"):
            raise QueryError("a SETTINGS clause is not allowed; limits are set by the server")
        elif isinstance(node, exp.Into):
            raise QueryError("SELECT ... INTO is not allowed")


def _check_table(table: exp.Table, ctes: set[str], database: str) -> None:
    if not isinstance(table.this, exp.Identifier):
        raise QueryError(f"table functions are not allowed: {table.this.sql('clickhouse')}")
    if table.catalog or (table.db and table.db != database):
        raise QueryError(f"only Mambo's tables may be read, not {table.sql('clickhouse')}")
    if table.name in ctes and not table.db:
        return
    if table.name not in TABLES:
        raise QueryError(f"unknown table {table.name!r}; Mambo's tables: {', '.join(sorted(TABLES))}")


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r, strict=True)) for r in self.rows]


def _json_value(v: Any) -> Any:
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_value(x) for x in v]
    return v


_ERROR_STATUS = {159: 408, 396: 413}  # TIMEOUT_EXCEEDED, TOO_MANY_ROWS_OR_BYTES


def readonly_client(dsn: str, database: str, max_seconds: float, max_rows: int) -> Client:
    """A new client whose session is read-only with the time and row limits (see the module doc).

    Use it for analytics only: it can never write again. Raises ClickHouseError if the session did
    not turn read-only."""
    client = connect(dsn, database)
    client.command(f"SET max_execution_time = {float(max_seconds)!r}")
    client.command(f"SET max_result_rows = {int(max_rows)}")
    client.command("SET result_overflow_mode = 'throw'")
    client.command("SET readonly = 1")  # last: no setting can change after it
    if str(client.command("SELECT getSetting('readonly')")) != "1":
        raise ClickHouseError("the analytics session did not turn read-only; refusing to serve SQL")
    return client


def run_query(
    client: Client, sql: str, database: str, lock: threading.Lock | None = None, checked: bool = False
) -> QueryResult:
    """Check (unless ``checked``: a named report) and run ``sql`` on a :func:`readonly_client`."""
    if not checked:
        check_sql(sql, database)
    try:
        if lock is None:
            result = client.query(sql)
        else:
            with lock:
                result = client.query(sql)
    except Exception as ex:
        text = str(ex)
        code = next((c for c in _ERROR_STATUS if f"Code: {c}." in text), None)
        reason = text.split("DB::Exception: ")[-1].split(" (version")[0].strip()
        raise QueryError(f"ClickHouse refused the query: {reason}", _ERROR_STATUS.get(code or 0, 400)) from ex
    rows = [[_json_value(v) for v in row] for row in result.result_rows]
    return QueryResult(list(result.column_names), [t.name for t in result.column_types], rows)


def to_csv(result: QueryResult) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(result.columns)
    writer.writerows(result.rows)
    return out.getvalue()


@dataclass(frozen=True)
class Report:
    name: str
    description: str
    sql: str


_DIRECTIONAL = "PARTITION BY exchange, symbol, timeframe, strategy ORDER BY ts_event, event_id"

REPORTS: dict[str, Report] = {
    r.name: r
    for r in (
        Report(
            "pnl_by_strategy_day",
            "Realized PnL (before fees), fees and net PnL per strategy and UTC day, from the fills.",
            """
SELECT strategy, toDate(ts_event) AS day, count() AS fills,
       sum(realized_pnl) AS realized, sum(fee) AS fees, realized - fees AS net_pnl
FROM fills FINAL
GROUP BY strategy, day
ORDER BY day, strategy""",
        ),
        Report(
            "signal_hit_rate",
            "Round trips of each strategy's raw signals per market, scored as the aggregator scores them: "
            "from a buy (sell) to the next opposite signal, a hit if the price rose (fell).",
            f"""
WITH directional AS (
    SELECT exchange, symbol, timeframe, strategy, ts_event, event_id, side, price,
           lagInFrame(side, 1, '') OVER (
               {_DIRECTIONAL} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS prev_side
    FROM signals_raw FINAL
    WHERE side != 'hold'
), entries AS (
    SELECT exchange, symbol, timeframe, strategy, side, price,
           leadInFrame(price, 1, nan) OVER (
               {_DIRECTIONAL} ROWS BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING) AS exit_price,
           leadInFrame(toUInt8(1), 1, toUInt8(0)) OVER (
               {_DIRECTIONAL} ROWS BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING) AS closed
    FROM directional
    WHERE side != prev_side
)
SELECT strategy, exchange, symbol, timeframe,
       countIf(closed = 1) AS round_trips,
       countIf(closed = 1 AND ((side = 'buy' AND exit_price > price)
                            OR (side = 'sell' AND exit_price < price))) AS hits,
       round_trips - hits AS misses,
       if(round_trips > 0, hits / round_trips, nan) AS hit_rate
FROM entries
GROUP BY strategy, exchange, symbol, timeframe
ORDER BY strategy, exchange, symbol, timeframe""",
        ),
        Report(
            "slippage",
            "Fill price against the market price when the order was decided, in basis points "
            "(positive = worse for us; rounded to 1e-6 bp), percentiles per strategy and market.",
            """
SELECT f.strategy AS strategy, f.exchange AS exchange, f.symbol AS symbol, count() AS fills,
       quantileExact(0.5)(bps) AS p50_bps, quantileExact(0.9)(bps) AS p90_bps,
       quantileExact(0.99)(bps) AS p99_bps, max(bps) AS max_bps
FROM (
    SELECT f.strategy, f.exchange, f.symbol,
           round((toFloat64(f.price) / i.price - 1) * 10000 * if(f.side = 'buy', 1, -1), 6) + 0 AS bps
    FROM (SELECT * FROM fills FINAL) AS f
    INNER JOIN (SELECT client_order_id, price FROM order_intents FINAL) AS i
        ON f.client_order_id = i.client_order_id
) AS f
GROUP BY strategy, exchange, symbol
ORDER BY strategy, exchange, symbol""",
        ),
        Report(
            "latency",
            "Decision-to-fill latency in event time (milliseconds from the order intent to each fill), "
            "percentiles per strategy and market.",
            """
SELECT strategy, exchange, symbol, count() AS fills,
       quantileExact(0.5)(ms) AS p50_ms, quantileExact(0.9)(ms) AS p90_ms,
       quantileExact(0.99)(ms) AS p99_ms, max(ms) AS max_ms
FROM (
    SELECT f.strategy AS strategy, f.exchange AS exchange, f.symbol AS symbol,
           (toUnixTimestamp64Nano(f.ts_event) - toUnixTimestamp64Nano(i.ts_event)) / 1e6 AS ms
    FROM (SELECT * FROM fills FINAL) AS f
    INNER JOIN (SELECT client_order_id, ts_event FROM order_intents FINAL) AS i
        ON f.client_order_id = i.client_order_id
)
GROUP BY strategy, exchange, symbol
ORDER BY strategy, exchange, symbol""",
        ),
    )
}
