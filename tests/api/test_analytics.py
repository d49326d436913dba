"""SQL analytics: only SELECTs over Mambo's tables run, read-only and within limits; the reports are
checked against the pipeline's own state."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
from clickhouse_connect.driver.client import Client
from fastapi import FastAPI
from fastapi.testclient import TestClient

from mambo.api.analytics import QueryError, check_sql, readonly_client, run_query
from mambo.api.service import SignalService

from .conftest import Pipeline, api_settings


@pytest.fixture
def api(open_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(open_app) as client:
        yield client


REFUSED = [
    ("INSERT INTO fills SELECT * FROM fills", "only SELECT"),
    ("DROP TABLE fills", "only SELECT"),
    ("ALTER TABLE fills DELETE WHERE 1", "only SELECT"),
    ("TRUNCATE TABLE fills", "only SELECT"),
    ("CREATE TABLE x (a Int64) ENGINE = Memory", "only SELECT"),
    ("SELECT 1; DROP TABLE fills", "exactly one statement"),
    ("SELECT * FROM system.tables", "Mambo's tables"),
    ("SELECT * FROM default.fills", "Mambo's tables"),
    ("SELECT name FROM system.users", "Mambo's tables"),
    ("SELECT * FROM secrets", "unknown table"),
    ("SELECT * FROM fills WHERE client_order_id IN (SELECT name FROM system.databases)", "Mambo's tables"),
    ("SELECT * FROM url('http://127.0.0.1:1/x', CSV)", "table functions"),
    ("SELECT * FROM file('/etc/passwd')", "table functions"),
    ("SELECT * FROM numbers(10)", "table functions"),
    ("SELECT * FROM fills JOIN remote('127.0.0.1', system.users) AS u ON 1", "table functions"),
    ("SELECT dictGet('d', 'x', 1) FROM fills", "not allowed"),
    ("SELECT * FROM fills SETTINGS readonly = 0", "SETTINGS"),
    ("SELEC * FROM fills", "parse"),
    ("", "exactly one statement"),
]


@pytest.mark.parametrize(("sql", "reason"), REFUSED)
def test_refused(sql: str, reason: str, api: TestClient, pipeline: Pipeline) -> None:
    with pytest.raises(QueryError, match=reason):
        check_sql(sql, pipeline.database)
    if sql:
        r = api.post("/analytics/query", json={"sql": sql})
        assert r.status_code == 400 and reason.lower() in r.json()["detail"].lower(), r.text


def test_allowed_queries(api: TestClient, pipeline: Pipeline) -> None:
    fills = pipeline.recorded.of("fills")
    r = api.post("/analytics/query", json={"sql": "SELECT count() AS n, sum(fee) AS fees FROM fills FINAL"})
    assert r.status_code == 200
    body = r.json()
    assert body["columns"] == ["n", "fees"] and body["row_count"] == 1
    assert body["rows"][0][0] == len(fills)
    assert Decimal(body["rows"][0][1]) == sum((f.fee for f in fills), Decimal(0))
    qualified = f"WITH s AS (SELECT strategy FROM `{pipeline.database}`.fills FINAL) SELECT count() FROM s"
    assert api.post("/analytics/query", json={"sql": qualified}).json()["rows"] == [[len(fills)]]
    csv = api.post(
        "/analytics/query",
        json={
            "sql": "SELECT strategy, count() AS n FROM fills FINAL GROUP BY strategy ORDER BY strategy",
            "format": "csv",
        },
    )
    assert csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.splitlines()
    assert lines[0] == "strategy,n"
    counts = {s: sum(f.strategy == s for f in fills) for s in {f.strategy for f in fills}}
    assert lines[1:] == [f"{s},{n}" for s, n in sorted(counts.items())]
    # a ClickHouse error is the caller's to fix: 400 with the engine's reason
    r = api.post("/analytics/query", json={"sql": "SELECT no_such_column FROM fills"})
    assert r.status_code == 400 and "no_such_column" in r.json()["detail"]


def test_limits(clickhouse_dsn: str, pipeline: Pipeline) -> None:
    tight = readonly_client(clickhouse_dsn, pipeline.database, max_seconds=0.05, max_rows=10)
    try:
        with pytest.raises(QueryError, match="10") as err:
            run_query(tight, "SELECT * FROM candles", pipeline.database)
        assert err.value.status == 413
        slow = (
            "SELECT count() FROM candles AS a, candles AS b, candles AS c WHERE a.close + b.close > c.close"
        )
        with pytest.raises(QueryError) as err:
            run_query(tight, slow, pipeline.database)
        assert err.value.status == 408
        # the session cannot lift its own limits
        with pytest.raises(Exception, match="readonly"):
            tight.command("SET max_result_rows = 0")
    finally:
        tight.close()


def test_engine_refuses_writes_even_past_the_parser(
    clickhouse_client: Client, analytics_client: Client, pipeline: Pipeline
) -> None:
    """The second lock: the analytics session is read-only, and only it: the sink's client still writes."""
    db = pipeline.database
    with pytest.raises(QueryError, match="readonly"):
        run_query(
            analytics_client, f"INSERT INTO `{db}`.equity SELECT * FROM `{db}`.equity", db, checked=True
        )
    with pytest.raises(QueryError, match="readonly"):
        run_query(analytics_client, f"DROP TABLE `{db}`.equity", db, checked=True)
    clickhouse_client.command(f"CREATE TABLE `{db}`.scratch (x Int64) ENGINE = Memory")
    clickhouse_client.command(f"INSERT INTO `{db}`.scratch VALUES (1)")
    clickhouse_client.command(f"DROP TABLE `{db}`.scratch")


def test_no_analytics_client_is_503(clickhouse_client: Client, pipeline: Pipeline) -> None:
    bare = SignalService(clickhouse_client, pipeline.database, api_settings())
    with pytest.raises(QueryError) as err:
        bare.query("SELECT 1 FROM fills")
    assert err.value.status == 503


def test_reports(api: TestClient, pipeline: Pipeline) -> None:
    listed = api.get("/analytics/reports").json()
    assert [r["name"] for r in listed] == ["pnl_by_strategy_day", "signal_hit_rate", "slippage", "latency"]
    fills = pipeline.recorded.of("fills")

    pnl = api.get("/analytics/reports/pnl_by_strategy_day").json()
    rows = [dict(zip(pnl["columns"], r, strict=True)) for r in pnl["rows"]]
    for row in rows:
        mine = [f for f in fills if f.strategy == row["strategy"] and _day(f.ts_event) == row["day"]]
        assert row["fills"] == len(mine)
        assert Decimal(row["realized"]) == sum((f.realized_pnl for f in mine), Decimal(0))
        assert Decimal(row["net_pnl"]) == Decimal(row["realized"]) - Decimal(row["fees"])
    assert sum(r["fills"] for r in rows) == len(fills)

    # the hit rates the aggregator weighs strategies by, recomputed in SQL
    hit = api.get("/analytics/reports/signal_hit_rate").json()
    got = {(r[0], f"{r[1]}:{r[2]}"): (r[5], r[6]) for r in hit["rows"]}
    for key, aggregator in pipeline.aggregators().items():
        for strategy, (alpha, beta) in aggregator.posteriors().items():
            assert got[(strategy, key)] == (alpha - 1, beta - 1), (strategy, key)

    intents = {i.client_order_id: i for i in pipeline.recorded.of("orders.intents")}
    slip = api.get("/analytics/reports/slippage").json()
    srows = [dict(zip(slip["columns"], r, strict=True)) for r in slip["rows"]]
    assert sum(r["fills"] for r in srows) == len(fills)
    for r in srows:
        bps = sorted(
            round(
                (float(f.price) / intents[f.client_order_id].price - 1)
                * 1e4
                * (1 if f.side == "buy" else -1),
                6,
            )
            for f in fills
            if (f.strategy, f.exchange, f.symbol) == (r["strategy"], r["exchange"], r["symbol"])
        )
        assert r["max_bps"] == pytest.approx(bps[-1], abs=1e-6)

    lat = api.get("/analytics/reports/latency", params={"format": "csv"})
    assert lat.text.splitlines()[0] == "strategy,exchange,symbol,fills,p50_ms,p90_ms,p99_ms,max_ms"
    worst = max((f.ts_event - intents[f.client_order_id].ts_event) / 1e6 for f in fills)
    assert max(float(line.split(",")[7]) for line in lat.text.splitlines()[1:]) == pytest.approx(worst)

    assert api.get("/analytics/reports/nope").status_code == 404


def _day(ts: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts / 1e9, tz=UTC).date().isoformat()
