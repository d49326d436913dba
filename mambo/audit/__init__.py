"""``mambo audit``: every history checks itself.

:func:`audit` reads a history in ClickHouse (the pipeline's tables) and checks the invariants every
run must keep, whatever runtime wrote it (:data:`INVARIANTS`, in the order of the report):

* one content per event id (raw rows; repeats may differ in ``ts_init`` only) and one candle per bar;
* candles built from trades recompute from the stored trades; stored indicators recompute from the
  stored candles with the project's :class:`~mambo.core.indicators.IndicatorSet` (1e-9 relative);
* every fill lies within what its market traded at that time (or at its book), and every open
  position is valued at its market's price;
* every order has its intent and every fill its order;
* fills sum to positions, and cash plus positions equals equity in every snapshot, exactly.

Where to start: :func:`audit` returns an :class:`~mambo.audit.report.AuditReport` (a table and a
one-line summary). ClickHouse does the set work (:mod:`.sql`); what needs the project's code or
Decimal runs here (:mod:`.indicators`, :mod:`.positions`). Each check's docstring defines it precisely.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from clickhouse_connect.driver.client import Client

from mambo.audit import sql
from mambo.audit.indicators import indicators_recompute
from mambo.audit.positions import fills_sum_to_positions
from mambo.audit.report import AuditReport, Finding
from mambo.schemas.topics import TABLES

__all__ = ["INVARIANTS", "AuditReport", "Finding", "NoHistoryError", "audit"]

Check = Callable[[Client, str], Finding]

#: Every check, in the order of the report.
INVARIANTS: tuple[Check, ...] = (
    sql.event_ids,
    sql.repeated_bars,
    sql.candles_from_trades,
    indicators_recompute,
    sql.fills_in_range,
    sql.orders_have_intents,
    sql.fills_have_orders,
    fills_sum_to_positions,
    sql.positions_at_mark,
    sql.equity_identity,
)


class NoHistoryError(RuntimeError):
    """The database is not a Mambo history (it lacks the pipeline's tables)."""


def audit(client: Client, database: str) -> AuditReport:
    """Check every invariant of :data:`INVARIANTS` over the history in ``database``; read only."""
    start = time.perf_counter()
    present = {
        r[0]
        for r in client.query(
            "SELECT name FROM system.tables WHERE database = {db:String}", parameters={"db": database}
        ).result_rows
    }
    missing = sorted(set(TABLES) - present)
    if missing:
        raise NoHistoryError(f"database {database!r} holds no Mambo history (no table {', '.join(missing)})")
    findings = tuple(check(client, database) for check in INVARIANTS)
    return AuditReport(database, findings, time.perf_counter() - start)
