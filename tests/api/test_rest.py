"""Every REST endpoint against the pipeline's own events: values, filters, pages, errors."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from fastapi import FastAPI
from fastapi.testclient import TestClient

from mambo.api.auth import Authorizer
from mambo.api.main import create_app
from mambo.api.service import SignalService, iso, market_filter
from mambo.connectors.clickhouse import ClickHouseSink
from mambo.schemas.events import AggregatedSignal, FeedHealth, Fill

from .conftest import MARKETS, Pipeline, api_settings


@pytest.fixture
def api(open_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(open_app) as client:
        yield client


def walk(api: TestClient, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a paginated endpoint, following next_cursor."""
    items, cursor = [], None
    while True:
        r = api.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items


def ids(events: list[Any]) -> list[str]:
    return [e.event_id for e in events]


def by_time(events: list[Any]) -> list[Any]:
    return sorted(events, key=lambda e: (e.ts_event, e.event_id))


def test_signal_has_the_proof_of_concept_shape(api: TestClient, pipeline: Pipeline) -> None:
    last = [s for s in pipeline.recorded.of("signals") if s.key == MARKETS[0]][-1]
    r = api.get("/signal", params={"symbol": MARKETS[0]})
    assert r.status_code == 200
    body = r.json()
    assert body == {
        "symbol": "BTC/USDT",
        "exchange": "binance",
        "sma50": last.values["sma_50"],
        "sma200": last.values["sma_200"],
        "signal": {"buy": "BUY", "sell": "SELL", "hold": "HOLD"}[last.side],
        "timestamp": iso(last.ts_event),
        "price": last.price,
        "confidence": last.confidence,
    }
    assert body["timestamp"].endswith("Z") and body["sma50"] > 0
    # the default symbol is the first market; a bare symbol finds its market
    assert api.get("/signal").json() == body
    assert api.get("/signal", params={"symbol": "BTC/USDT"}).json() == body


def test_signal_errors(api: TestClient, clickhouse_client: Client, clickhouse_db: str) -> None:
    assert api.get("/signal", params={"symbol": "binance:DOGE/USDT"}).status_code == 404
    assert api.get("/signal", params={"symbol": ":BTC"}).status_code == 404
    empty = SignalService(clickhouse_client, clickhouse_db, api_settings())
    with TestClient(create_app(empty, None)) as fresh:
        r = fresh.get("/signal")
        assert r.status_code == 404 and r.json() == {"detail": "no signal yet"}


def test_latest_signals_live_view_wins(api: TestClient, pipeline: Pipeline, service: SignalService) -> None:
    signals = pipeline.recorded.of("signals")
    latest = {s.key: s for s in signals}
    stored = api.get("/signals/latest").json()
    assert [s["event_id"] for s in stored] == [latest[k].event_id for k in MARKETS]
    # once the live feed has delivered a newer signal, it is served without waiting for ClickHouse
    newer = latest[MARKETS[1]].model_copy(update={"ts_event": latest[MARKETS[1]].ts_event + 1})
    service.on_event("signals", newer)
    got = api.get("/signals/latest", params={"symbol": "ETH/USDT"}).json()
    assert got == [newer.model_dump(mode="json")]


def test_signals_history_filters_and_pages(api: TestClient, pipeline: Pipeline) -> None:
    signals = pipeline.recorded.of("signals")
    btc = [s for s in signals if s.key == MARKETS[0]]
    assert ids(by_time(btc)) == [s["event_id"] for s in walk(api, "/signals", symbol=MARKETS[0], limit=97)]
    # time range: [start, end)
    t0, t1 = btc[20].ts_event, btc[60].ts_event
    got = walk(api, "/signals", symbol=MARKETS[0], start=iso(t0), end=iso(t1), limit=1000)
    assert [s["event_id"] for s in got] == ids(btc[20:60])
    # latest first
    desc = api.get("/signals", params={"symbol": MARKETS[0], "order": "desc", "limit": 3}).json()
    assert [s["event_id"] for s in desc["items"]] == ids(btc[::-1][:3])
    # a strategy's own signals
    raw = [s for s in pipeline.recorded.of("signals.raw") if s.strategy == "macd_cross"]
    got = walk(api, "/signals", strategy="macd_cross", limit=1000)
    assert [s["event_id"] for s in got] == ids(by_time(raw))
    assert {s["strategy"] for s in got} == {"macd_cross"}


def test_candles_and_indicators(api: TestClient, pipeline: Pipeline) -> None:
    candles = [c for c in pipeline.recorded.of("md.candles.1m") if c.key == MARKETS[1]]
    got = walk(api, "/candles", symbol=MARKETS[1], timeframe="1m")
    assert [c["event_id"] for c in got] == ids(candles)
    assert got[0]["close"] == candles[0].close and got[0]["open_time"] == candles[0].open_time
    inds = [i for i in pipeline.recorded.of("indicators") if i.key == MARKETS[1] and i.timeframe == "1s"]
    got = walk(api, "/indicators", symbol=MARKETS[1], timeframe="1s", limit=1000)
    assert [i["event_id"] for i in got] == ids(by_time(inds))


def test_orders_and_fills(api: TestClient, pipeline: Pipeline) -> None:
    fills: list[Fill] = pipeline.recorded.of("fills")
    assert len(fills) > 20
    got = walk(api, "/fills", limit=50)
    assert [f["event_id"] for f in got] == ids(by_time(fills))
    # decimals arrive as exact strings
    assert [Decimal(f["realized_pnl"]) for f in got] == [f.realized_pnl for f in by_time(fills)]
    assert [Decimal(f["fee"]) for f in got] == [f.fee for f in by_time(fills)]
    rsi_eth = [f for f in fills if f.strategy == "rsi_reversion" and f.key == MARKETS[1]]
    got = walk(api, "/fills", strategy="rsi_reversion", symbol=MARKETS[1])
    assert [f["event_id"] for f in got] == ids(by_time(rsi_eth))
    orders = pipeline.recorded.of("orders")
    filled = [o for o in orders if o.status == "filled"]
    got = walk(api, "/orders", status="filled", limit=1000)
    assert [o["event_id"] for o in got] == ids(by_time(filled))
    assert len(walk(api, "/orders", limit=1000)) == len(orders)


def test_positions_pnl_symbols_strategies(api: TestClient, pipeline: Pipeline) -> None:
    rec = pipeline.recorded
    last_pos = {p.key: p for p in by_time(rec.of("positions"))}
    got = {f"{p['exchange']}:{p['symbol']}": p for p in api.get("/positions").json()}
    assert set(got) == set(last_pos)
    for key, pos in last_pos.items():
        assert Decimal(got[key]["qty"]) == pos.qty
        assert Decimal(got[key]["realized_pnl"]) == pos.realized_pnl
    pnl = api.get("/pnl", params={"limit": 1000, "order": "desc"}).json()
    equity = rec.of("equity")
    assert pnl["equity"][0]["event_id"] == by_time(equity)[-1].event_id
    for row in pnl["by_strategy"]:
        mine = [f for f in rec.of("fills") if f.strategy == row["strategy"]]
        realized = sum((f.realized_pnl for f in mine), Decimal(0))
        fees = sum((f.fee for f in mine), Decimal(0))
        assert (row["fills"], Decimal(row["realized_pnl"]), Decimal(row["fees"])) == (
            len(mine),
            realized,
            fees,
        )
        assert Decimal(row["net_pnl"]) == realized - fees
    symbols = api.get("/symbols").json()
    assert [s["key"] for s in symbols] == sorted(MARKETS)
    last_btc = [c for c in rec.of("md.candles.1s") if c.key == "binance:BTC/USDT"][-1]
    btc = next(s for s in symbols if s["key"] == "binance:BTC/USDT")
    assert btc["last_price"] == last_btc.close
    latest: dict[str, AggregatedSignal] = {s.key: s for s in rec.of("signals")}
    strategies = {s["name"]: s for s in api.get("/strategies").json()}
    assert set(strategies) == {"sma_cross", "rsi_reversion", "macd_cross", "bollinger_breakout"}
    for name, info in strategies.items():
        assert info["weights"] == {k: latest[k].weights[name] for k in MARKETS}
        raw = [s for s in rec.of("signals.raw") if s.strategy == name]
        assert (info["signals"], info["buys"]) == (len(raw), sum(s.side == "buy" for s in raw))


def test_trading_state_by_account(api: TestClient, pipeline: Pipeline) -> None:
    """The pipeline's one account is ``main``: asking for it gives everything, another account nothing,
    and a malformed id is a 422 with the reason."""
    rec = pipeline.recorded
    everything = api.get("/fills", params={"limit": 1000}).json()["items"]
    assert everything and {f["account"] for f in everything} == {"main"}
    assert api.get("/fills", params={"limit": 1000, "account": "main"}).json()["items"] == everything
    assert api.get("/fills", params={"account": "other"}).json()["items"] == []
    assert api.get("/orders", params={"account": "other"}).json()["items"] == []
    assert len(api.get("/positions", params={"account": "main"}).json()) == len(
        {p.key for p in rec.of("positions")}
    )
    assert api.get("/positions", params={"account": "other"}).json() == []
    pnl = api.get("/pnl", params={"account": "other"}).json()
    assert pnl["equity"] == [] and pnl["by_strategy"] == []
    bad = api.get("/fills", params={"account": "a b"})
    assert bad.status_code == 422 and "account" in bad.text


def test_health_and_ready(api: TestClient, service: SignalService, pipeline: Pipeline) -> None:
    body = api.get("/health").json()
    assert body["status"] == "ok" and body["auth"] == "open" and body["feed"] == {}
    candle = pipeline.recorded.of("md.candles.1s")[-1]
    service.on_event("md.candles.1s", candle)
    feed = api.get("/health").json()["feed"]["md.candles.1s"]
    assert feed["messages"] == 1 and feed["last_event_ts"] == candle.ts_event
    assert api.get("/health").json()["hub"]["published"] == 1
    assert api.get("/ready").json() == {"ready": True}


def test_bad_requests_say_why(api: TestClient) -> None:
    assert api.get("/fills", params={"cursor": "nonsense"}).status_code == 422
    assert api.get("/fills", params={"cursor": "99999999999999999999:ab"}).status_code == 422
    past_int64 = api.get("/fills", params={"cursor": "9999999999999999999:ab"})  # > 2**63 - 1
    assert past_int64.json() == {"items": [], "next_cursor": None}
    assert api.get("/fills", params={"limit": 0}).status_code == 422
    assert api.get("/fills", params={"limit": 1001}).status_code == 422
    assert api.get("/orders", params={"status": "lost"}).status_code == 422
    assert api.get("/candles", params={"start": "yesterday"}).status_code == 422
    assert api.get("/candles", params={"symbol": "x:"}).json() == {"items": [], "next_cursor": None}
    assert api.get("/nowhere").status_code == 404


def test_cors_is_configurable(service: SignalService) -> None:
    service.settings = api_settings(cors_origins="https://desk.example")
    with TestClient(create_app(service, Authorizer(None))) as api:
        ok = api.get("/health", headers={"Origin": "https://desk.example"})
        other = api.get("/health", headers={"Origin": "https://evil.example"})
    assert ok.headers["access-control-allow-origin"] == "https://desk.example"
    assert "access-control-allow-origin" not in other.headers


def test_openapi_and_docs(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    paths = set(spec["paths"])
    expected = {"/signal", "/signals", "/signals/latest", "/candles", "/indicators", "/orders", "/fills"}
    expected |= {"/positions", "/pnl", "/symbols", "/strategies", "/health", "/ready", "/analytics/query"}
    expected |= {"/feeds/health"}
    assert expected <= paths
    assert '"op": "subscribe"' in spec["info"]["description"]  # the WebSocket frames are documented
    assert api.get("/docs").status_code == 200
    page = api.get("/")
    assert page.status_code == 200 and "lightweight-charts" in page.text
    assert api.get("/static/dashboard.js").status_code == 200


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("binance:BTC/USDT", ("binance", "BTC/USDT")),
        ("binanceusdm:BTC/USDT:USDT", ("binanceusdm", "BTC/USDT:USDT")),
        ("BTC/USDT:USDT", ("", "BTC/USDT:USDT")),  # a bare perpetual symbol, not exchange "BTC/USDT"
        ("BTC/USDT", ("", "BTC/USDT")),
        (":BTC", ("", ":BTC")),
        ("x:", ("", "x:")),
    ],
)
def test_market_filter(text: str, expected: tuple[str, str]) -> None:
    assert market_filter(text) == expected


def test_iso_is_exact() -> None:
    assert iso(1_723_161_905_012_345_678) == "2024-08-09T00:05:05.012345Z"
    assert iso(1_723_161_905_999_999_999) == "2024-08-09T00:05:05.999999Z"  # truncated, never rounded up
    assert iso(0) == "1970-01-01T00:00:00Z"


def test_feeds_health_gives_each_streams_latest_report(clickhouse_client: Client, clickhouse_db: str) -> None:
    def report(n: int, stream: str, status: str, age: float) -> FeedHealth:
        return FeedHealth(event_id=f"h{n}", ts_event=1_700_000_000_000_000_000 + n * 10**9,
                          ts_init=1_700_000_000_000_000_000 + n * 10**9, exchange="binance", stream=stream,
                          status=status, age_seconds=age)  # type: ignore[arg-type]  # fmt: skip

    btc = "trades:BTC/USDT"
    reports = [report(1, btc, "alive", 0.1), report(2, "quotes", "alive", 0.4),
               report(3, btc, "stalled", 30.5), report(4, btc, "reconnected", 0.2),
               report(5, "quotes", "stalled", 31.0)]  # fmt: skip
    sink = ClickHouseSink(clickhouse_client, clickhouse_db)
    sink.write("feed_health", reports)
    sink.flush()
    app = create_app(SignalService(clickhouse_client, clickhouse_db, api_settings()), Authorizer(None))
    with TestClient(app) as api:
        r = api.get("/feeds/health")
    assert r.status_code == 200, r.text
    assert [FeedHealth.model_validate(h) for h in r.json()] == [reports[4], reports[3]]  # quotes, trades
