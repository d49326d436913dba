"""The ClickHouse sink against the real engine (chdb): every model round-trips, column batches land
exactly (nanosecond timestamps, 18-place decimals), re-writes are idempotent, a failed insert loses
nothing; DSNs are checked and never leak a password."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from clickhouse_connect.driver.client import Client

from mambo.connectors.clickhouse import (
    ClickHouseError,
    ClickHouseSink,
    ClickHouseWriteError,
    connect,
    dsn_kind,
    ensure_schema,
    query_df,
    query_format,
    query_output,
    read_events,
    redact_dsn,
)
from mambo.schemas.backtests import BacktestRun, BacktestTrial
from mambo.schemas.events import (
    AggregatedSignal,
    Candle,
    ControlCommand,
    ControlResult,
    DeadLetter,
    EquitySnapshot,
    Event,
    FeedHealth,
    Fill,
    FundingPayment,
    FundingRate,
    IndicatorValues,
    Liquidation,
    MarkPrice,
    Notification,
    Order,
    OrderIntent,
    Position,
    Quote,
    RiskRejection,
    Signal,
    Trade,
    make_id,
)
from mambo.schemas.topics import TABLES

REPO = Path(__file__).resolve().parents[2]
TS = 1_700_000_000_123_456_789  # a timestamp with every nanosecond digit set
TINY = Decimal("0.000000000000000001")
BIG = Decimal("123456789.123456789")
MARKET = dict(exchange="binance", symbol="BTC/USDT")
PERP = dict(exchange="binanceusdm", symbol="BTC/USDT:USDT")


def _base(n: int = 0) -> dict[str, object]:
    return dict(event_id=make_id("sample", n), ts_event=TS + n, ts_init=TS + n + 7)


SAMPLES: dict[str, Event] = {
    "trades": Trade(**_base(), **MARKET, trade_id="t1", price=43_000.5, qty=0.25, side="buy"),
    "quotes": Quote(**_base(), **MARKET, bid=43_000.0, bid_qty=1.5, ask=43_000.5, ask_qty=0.0),
    "candles": Candle(
        **_base(),
        **MARKET,
        timeframe="1m",
        open_time=TS - 60 * 10**9,
        open=1.0,
        high=2.0,
        low=0.5,
        close=1.5,
        volume=12.5,
        trades=42,
        closed=False,
    ),
    "indicators": IndicatorValues(
        **_base(), **MARKET, timeframe="1m", values={"sma_50": 1.25, "rsi_14": 55.5}
    ),
    "signals_raw": Signal(
        **_base(),
        **MARKET,
        strategy="sma_cross",
        timeframe="1m",
        side="hold",
        confidence=0.5,
        price=1.5,
        values={"fast": 1.0},
    ),
    "signals": AggregatedSignal(
        **_base(),
        **MARKET,
        timeframe="1m",
        side="sell",
        score=-0.75,
        confidence=0.9,
        price=1.5,
        weights={"sma_cross": 1.0},
        contributions={"sma_cross": -0.75},
        lead_strategy="sma_cross",
    ),
    "order_intents": OrderIntent(
        **_base(),
        **MARKET,
        client_order_id="c1",
        strategy="sma_cross",
        side="buy",
        qty=None,
        limit_price=BIG,
        reduce_only=True,
        reason="cross up",
        price=1.5,
    ),
    "risk_rejections": RiskRejection(
        **_base(),
        **MARKET,
        client_order_id="c1",
        strategy="sma_cross",
        side="sell",
        rule="max_position",
        reason="would exceed 1 BTC",
    ),
    "orders": Order(
        **_base(),
        **MARKET,
        client_order_id="c1",
        strategy="sma_cross",
        side="buy",
        order_type="limit",
        qty=TINY,
        limit_price=None,
        status="partially_filled",
        filled_qty=Decimal("0.5"),
    ),
    "fills": Fill(
        **_base(),
        **MARKET,
        fill_id="f1",
        client_order_id="c1",
        strategy="sma_cross",
        side="buy",
        price=BIG,
        qty=TINY,
        fee=Decimal("-0.000123"),
        fee_currency="USDT",
        liquidity="maker",
        realized_pnl=Decimal("-99999999999999999999.999999999999999999"),
    ),
    "positions": Position(
        **_base(),
        **MARKET,
        qty=Decimal("-0.5"),
        avg_price=BIG,
        realized_pnl=Decimal(0),
        unrealized_pnl=TINY,
        fees=Decimal("0.1"),
        mark_price=Decimal("43000.12"),
    ),
    "equity": EquitySnapshot(
        **_base(),
        cash=BIG,
        positions_value=TINY,
        equity=BIG + TINY,
        realized_pnl=Decimal(1),
        unrealized_pnl=Decimal(-1),
        fees=Decimal("0.001"),
        drawdown=0.125,
    ),
    "dead_letters": DeadLetter(
        **_base(),
        topic="md.trades",
        partition=3,
        offset=17,
        key="binance:BTC/USDT",
        reason="price is NaN",
        payload='{"price": "NaN"}',
    ),
    "feed_health": FeedHealth(
        **_base(),
        exchange="binance",
        stream="trades:BTC/USDT",
        status="stalled",
        age_seconds=30.125,
        detail="silent for more than 30.0s",
    ),
    "mark_prices": MarkPrice(**_base(), **PERP, mark_price=43_001.25, index_price=None),
    "funding_rates": FundingRate(**_base(), **PERP, rate=-0.000125, mark_price=43_001.25),
    "funding_payments": FundingPayment(
        **_base(),
        **PERP,
        rate=Decimal("-0.000125"),
        mark_price=Decimal("43001.25"),
        qty=Decimal("-0.5"),
        amount=Decimal("-2.687578125"),
        margin_mode="isolated",
    ),
    "liquidations": Liquidation(
        **_base(),
        **PERP,
        side="sell",
        qty=TINY,
        price=BIG,
        realized_pnl=Decimal("-99999999999999999999.999999999999999999"),
        fee=Decimal("1.5"),
        insurance=Decimal(0),
        margin_mode="cross",
        margin_balance=Decimal("-3.25"),
        maintenance_margin=Decimal("12.5"),
    ),
    "control": ControlCommand(
        **_base(),
        command_id="c1",
        account="main",
        action="set_params",
        strategy="sma_cross",
        exchange="binance",
        symbol="BTC/USDT",
        params='{"fast": 20, "note": "it\'s \\ quoted"}',
        version=3,
        who="ops",
        why="wider averages\nfor the afternoon",
    ),
    "control_results": ControlResult(
        **_base(),
        command_id="c1",
        account="main",
        action="set_params",
        strategy="sma_cross",
        exchange="binance",
        symbol="BTC/USDT",
        status="rejected",
        reason="invalid parameters: fast must be > 0",
        params='{"fast": 50}',
        version=3,
        who="ops",
    ),
    "notifications": Notification(
        **_base(),
        account="main",
        kind="kill_switch",
        level="failure",
        title="[main] kill switch: entries halted",
        body="drawdown 10.00% reached the limit 10.00%; it's \\ 'quoted'\nand multi-line",
        source_topic="equity",
        source_id="e1",
    ),
    "backtest_runs": BacktestRun(
        **_base(),
        run_id="r1",
        exchange="binance",
        symbol="BTC/USDT",
        timeframe="1m",
        strategy="sma_cross",
        data="candles.csv",
        data_start=TS - 10**12,
        data_end=TS,
        search="optuna",
        objective="sharpe",
        folds=3,
        trials=40,
        space='{"fast": [5, 60]}',
        config="{}",
        best_params={"fast": 21.0, "slow": 180.0},
        oos_objective=1.25,
        oos_return=-0.031,
    ),
    "backtest_trials": BacktestTrial(
        **_base(),
        run_id="r1",
        exchange="binance",
        symbol="BTC/USDT",
        timeframe="1m",
        strategy="sma_cross",
        fold=2,
        phase="test",
        params={"fast": 21.0},
        window_start=TS - 10**12,
        window_end=TS,
        bars=16_667,
        objective=1.25,
        total_return=0.012,
        annualized_return=0.4,
        volatility=0.3,
        sharpe=1.25,
        sortino=1.9,
        calmar=2.2,
        max_drawdown=0.05,
        max_drawdown_days=1.5,
        win_rate=0.45,
        profit_factor=float("inf"),
        exposure=0.51,
        trades=40,
        round_trips=20,
        fees=BIG,
        final_equity=BIG + TINY,
        buy_hold_return=-0.02,
    ),
}


def trade_columns(n: int, start: int = 0) -> dict[str, np.ndarray]:
    """A batch of ``n`` trades as the hot path hands them over: numpy columns, int-ns timestamps."""
    i = np.arange(start, start + n)
    ts = TS + i * 1_000_003
    return {
        "event_id": np.array([make_id("trade", k) for k in i.tolist()], dtype=object),
        "ts_event": ts,
        "ts_init": ts + 11,
        "exchange": np.full(n, "binance", dtype=object),
        "symbol": np.where(i % 2 == 0, "BTC/USDT", "ETH/USDT").astype(object),
        "trade_id": i.astype(str).astype(object),
        "price": 100.0 + (i % 1000) * 0.01,
        "qty": 0.5 + (i % 7) * 0.125,
        "side": np.where(i % 3 == 0, "sell", "buy").astype(object),
    }


def count(client: Client, db: str, table: str, final: bool = True) -> int:
    return int(
        client.query(f"SELECT count() FROM `{db}`.`{table}`{' FINAL' if final else ''}").result_rows[0][0]
    )


def test_every_table_has_a_sample() -> None:
    assert set(SAMPLES) == set(TABLES)
    assert all(isinstance(SAMPLES[t], m) for t, m in TABLES.items())


@pytest.mark.parametrize("table", list(TABLES))
def test_every_model_round_trips_through_insert_and_select(
    clickhouse_client: Client, clickhouse_db: str, table: str
) -> None:
    sink = ClickHouseSink(clickhouse_client, clickhouse_db)
    sink.write(table, [SAMPLES[table]])
    assert sink.pending_rows(table) == 1
    sink.flush()
    assert sink.pending_rows() == 0
    assert read_events(clickhouse_client, table, clickhouse_db) == [SAMPLES[table]]
    assert sink.rows_written == {table: 1}


def test_timestamps_round_trip_to_the_nanosecond(clickhouse_client: Client, clickhouse_db: str) -> None:
    cols = trade_columns(4)
    cols["ts_event"] = np.array([1, TS, TS + 1, 9_223_372_036_854_775_000], dtype=np.int64)
    sink = ClickHouseSink(clickhouse_client, clickhouse_db)
    sink.write_columns("trades", cols)
    sink.flush()
    got = clickhouse_client.query(
        f"SELECT toUnixTimestamp64Nano(ts_event), toString(ts_event) FROM `{clickhouse_db}`.trades"
        " ORDER BY ts_event"
    ).result_rows
    assert [r[0] for r in got] == cols["ts_event"].tolist()
    assert got[1][1] == "2023-11-14 22:13:20.123456789"  # stored as UTC, whatever the local zone


def test_decimals_round_trip_exactly_and_too_many_places_are_refused(
    clickhouse_client: Client, clickhouse_db: str
) -> None:
    sink = ClickHouseSink(clickhouse_client, clickhouse_db)
    sink.write("fills", [SAMPLES["fills"]])
    sink.flush()
    price, qty = clickhouse_client.query(
        f"SELECT toString(price), toString(qty) FROM `{clickhouse_db}`.fills"
    ).result_rows[0]
    assert (price, qty) == ("123456789.123456789", "0.000000000000000001")
    [fill] = read_events(clickhouse_client, "fills", clickhouse_db)
    assert isinstance(fill, Fill) and (fill.price, fill.qty) == (BIG, TINY)
    assert str(fill.price.normalize()) == "123456789.123456789"
    fill = SAMPLES["fills"]
    for fee in (Decimal("1e-19"), Decimal("1e20"), Decimal("-123456789012345678901")):
        with pytest.raises(ValueError, match=r"fills\.fee: .* does not fit Decimal\(38, 18\) exactly"):
            sink.write("fills", [fill, fill.model_copy(update={"fee": fee})])
    assert sink.pending_rows() == 0  # nothing of a refused batch is kept
    sink.write(
        "fills", [fill.model_copy(update={"event_id": "z", "fee": Decimal("0.1000000000000000000000")})]
    )
    sink.flush()
    assert sink.rows_written == {"fills": 2}  # trailing zeros past 18 places lose nothing


def test_write_columns_takes_a_100k_trade_batch_and_flushes_on_size(
    clickhouse_client: Client, clickhouse_db: str
) -> None:
    cols = trade_columns(100_000)
    sink = ClickHouseSink(clickhouse_client, clickhouse_db, batch_rows=50_000)
    sink.write_columns("trades", {k: v[:60_000] for k, v in cols.items()})
    assert sink.rows_written == {"trades": 60_000} and sink.pending_rows() == 0  # full buffer: flushed
    sink.write_columns("trades", {k: v[60_000:] for k, v in cols.items()})
    assert sink.pending_rows("trades") == 40_000
    sink.flush()
    assert sink.rows_written == {"trades": 100_000}
    n, price, qty, sells, btc = clickhouse_client.query(
        f"SELECT count(), sum(price), sum(qty), countIf(side = 'sell'), countIf(symbol = 'BTC/USDT')"
        f" FROM `{clickhouse_db}`.trades FINAL"
    ).result_rows[0]
    assert n == 100_000
    assert price == pytest.approx(cols["price"].sum(), rel=1e-12)
    assert qty == pytest.approx(cols["qty"].sum(), rel=1e-12)
    assert sells == (cols["side"] == "sell").sum() and btc == 50_000


def test_write_columns_fills_defaults_and_refuses_bad_batches(
    clickhouse_client: Client, clickhouse_db: str
) -> None:
    sink = ClickHouseSink(clickhouse_client, clickhouse_db)
    cols = trade_columns(3)
    del cols["side"]  # the model's default: the venue did not say
    sink.write_columns("trades", cols)
    sink.flush()
    trades = read_events(clickhouse_client, "trades", clickhouse_db)
    assert len(trades) == 3 and all(isinstance(t, Trade) and t.side == "" for t in trades)
    signal = SAMPLES["signals_raw"]
    sink.write_columns("signals_raw", {k: [v] for k, v in signal.model_dump().items() if k != "values"})
    sink.flush()  # values: the model's default_factory (an empty map)
    assert read_events(clickhouse_client, "signals_raw", clickhouse_db) == [
        signal.model_copy(update={"values": {}})
    ]

    bad = [
        ({**trade_columns(2), "venue": np.zeros(2)}, "unknown columns"),
        ({k: v for k, v in trade_columns(2).items() if k != "price"}, "missing column 'price'"),
        ({**trade_columns(2), "qty": np.ones(3)}, "differ in length"),
        ({**trade_columns(2), "trade_id": np.array(["a", None], dtype=object)}, "nulls in a non-Nullable"),
        ({**trade_columns(2), "price": np.array(["x", "y"], dtype=object)}, r"trades\.price: cannot convert"),
    ]
    for columns, message in bad:
        with pytest.raises(ValueError, match=message):
            sink.write_columns("trades", columns)
    assert sink.pending_rows() == 0
    with pytest.raises(KeyError, match="unknown table"):
        sink.write_columns("nope", cols)
    with pytest.raises(TypeError, match="holds Trade events"):
        sink.write("trades", [SAMPLES["quotes"]])


def test_events_written_one_by_one_flush_on_size(clickhouse_client: Client, clickhouse_db: str) -> None:
    sink = ClickHouseSink(clickhouse_client, clickhouse_db, batch_rows=3)
    signals = [
        SAMPLES["signals"].model_copy(update={"event_id": f"s{i}", "ts_event": TS + i}) for i in range(4)
    ]
    for signal in signals:
        sink.write("signals", [signal])
    assert sink.rows_written == {"signals": 3} and sink.pending_rows("signals") == 1
    sink.write("signals", [])
    sink.flush()
    assert read_events(clickhouse_client, "signals", clickhouse_db) == signals


def test_writing_the_same_events_twice_leaves_one_row_each(
    clickhouse_client: Client, clickhouse_db: str
) -> None:
    sink = ClickHouseSink(clickhouse_client, clickhouse_db)
    cols = trade_columns(1_000)
    for _ in range(2):  # a replay: same batch, same dedup token -> the server drops the second insert
        sink.write_columns("trades", cols)
        sink.flush()
    assert count(clickhouse_client, clickhouse_db, "trades", final=False) == 1_000
    # a restart that re-sends an overlapping, differently cut batch: ReplacingMergeTree collapses it
    sink.write_columns("trades", {k: v[500:] for k, v in cols.items()})
    sink.write_columns("trades", trade_columns(200, start=1_000))
    sink.flush()
    assert count(clickhouse_client, clickhouse_db, "trades") == 1_200
    clickhouse_client.command(f"OPTIMIZE TABLE `{clickhouse_db}`.trades FINAL")
    assert count(clickhouse_client, clickhouse_db, "trades", final=False) == 1_200
    assert sink.rows_written == {"trades": 2_700}  # rows sent, not rows kept


def test_a_failed_insert_keeps_the_batch_and_the_next_flush_writes_it(
    clickhouse_client: Client, clickhouse_db: str
) -> None:
    sink = ClickHouseSink(clickhouse_client, clickhouse_db)
    sink.write_columns("trades", trade_columns(10))
    sink.write("signals", [SAMPLES["signals"]])
    clickhouse_client.command(f"DROP TABLE `{clickhouse_db}`.trades")
    with pytest.raises(
        ClickHouseWriteError, match=rf"10 rows into {clickhouse_db}\.trades failed.*stay buffered"
    ):
        sink.flush()
    assert sink.pending_rows("trades") == 10
    assert sink.rows_written == {"signals": 1}  # the other table still went out
    sink.write_columns("trades", trade_columns(5, start=10))  # below batch_rows: buffered, no insert
    ensure_schema(clickhouse_client, clickhouse_db)
    sink.flush()
    assert sink.rows_written == {"signals": 1, "trades": 15}
    assert count(clickhouse_client, clickhouse_db, "trades") == 15
    assert sink.pending_rows() == 0


def test_a_write_that_fills_the_buffer_raises_on_a_failed_insert_but_keeps_the_rows(
    clickhouse_client: Client, clickhouse_db: str
) -> None:
    sink = ClickHouseSink(clickhouse_client, clickhouse_db, batch_rows=5)
    clickhouse_client.command(f"DROP TABLE `{clickhouse_db}`.trades")
    with pytest.raises(ClickHouseWriteError):
        sink.write_columns("trades", trade_columns(5))
    assert sink.pending_rows("trades") == 5
    ensure_schema(clickhouse_client, clickhouse_db)
    sink.flush()
    assert count(clickhouse_client, clickhouse_db, "trades") == 5


@pytest.mark.parametrize(
    "dsn,kind",
    [
        ("chdb:///var/lib/mambo/clickhouse", "chdb"),
        ("chdb:relative/dir", "chdb"),
        ("chdb://memory", "chdb"),
        ("http://localhost:8123", "http"),
        ("https://user:pw@ch.example.com:8443/mambo", "http"),
    ],
)
def test_dsn_kind(dsn: str, kind: str) -> None:
    assert dsn_kind(dsn) == kind


@pytest.mark.parametrize(
    "dsn,message",
    [
        ("postgres://localhost", "scheme must be chdb, http or https"),
        ("clickhouse.example.com:8123", "scheme must be"),
        ("chdb://data/mambo", "chdb:///absolute/path"),
        ("http://:8123", "has no host"),
    ],
)
def test_bad_dsns_are_refused_with_a_hint(dsn: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dsn_kind(dsn)


def test_redact_dsn_masks_passwords() -> None:
    assert redact_dsn("https://mambo:s3cret@ch:8443/db?secure=1") == "https://mambo:***@ch:8443/db?secure=1"
    assert redact_dsn("http://ch:8123/?user=a&password=s3cret") == "http://ch:8123/?user=a&password=***"
    assert redact_dsn("http://ch:8123") == "http://ch:8123"
    assert redact_dsn("chdb:///tmp/x") == "chdb:///tmp/x"


def test_connect_errors_name_the_server_but_never_the_password() -> None:
    with pytest.raises(ClickHouseError) as info:
        connect("http://mambo:s3cret@127.0.0.1:9/")  # discard port: refused at once
    assert "mambo:***@127.0.0.1:9" in str(info.value)
    assert "s3cret" not in str(info.value)


def test_one_chdb_folder_at_a_time_per_process(
    clickhouse_client: Client, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with pytest.raises(ClickHouseError, match="one data folder at a time"):
        connect(f"chdb://{tmp_path_factory.mktemp('other')}")
    assert clickhouse_client.command("SELECT 1") == 1  # the session's engine is unharmed


def test_a_second_process_cannot_open_the_folder(clickhouse_client: Client, clickhouse_dsn: str) -> None:
    script = "import sys; from mambo.connectors.clickhouse import connect; connect(sys.argv[1])"
    run = subprocess.run(
        [sys.executable, "-c", script, clickhouse_dsn], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert run.returncode != 0
    assert "is another process using this chdb folder?" in run.stderr
    assert clickhouse_client.command("SELECT 1") == 1


def test_connect_uses_the_database_once_it_exists(clickhouse_dsn: str, clickhouse_db: str) -> None:
    client, other = connect(clickhouse_dsn, clickhouse_db), connect(clickhouse_dsn, "not_there")
    try:
        assert client.database == clickhouse_db
        assert other.database is None  # the server's default until ensure_schema creates it
    finally:
        client.close()
        other.close()


def test_query_output_prints_values_as_clickhouse_writes_them(
    clickhouse_client: Client, clickhouse_db: str
) -> None:
    """mambo sql's text: ClickHouse's own CSV, and a table of the same fields (issue 12 #10: a Map
    printed as a Python repr, {'vwap': np.float64(61835.79)}, and floats as pandas wrote them)."""
    sink = ClickHouseSink(clickhouse_client, clickhouse_db)
    sink.write_columns("trades", trade_columns(3))
    sink.flush()
    df = query_df(clickhouse_client, "SELECT trade_id, price, side FROM trades ORDER BY ts_event")
    assert list(df.columns) == ["trade_id", "price", "side"] and len(df) == 3
    sql = "SELECT trade_id, price, side FROM trades ORDER BY ts_event"
    assert query_output(clickhouse_client, sql, "csv").decode().splitlines() == [
        '"trade_id","price","side"',
        '"0",100,"sell"',  # trade_id is a String; a float in its shortest form
        '"1",100.01,"buy"',
        '"2",100.02,"buy"',
    ]
    assert query_output(clickhouse_client, sql, "table").decode().splitlines() == [
        "trade_id   price  side",
        "0            100  sell",
        "1         100.01  buy",
        "2         100.02  buy",
    ]
    assert query_output(clickhouse_client, sql + " LIMIT 0", "table") == b"trade_id  price  side\n(0 rows)\n"
    a_map = (
        "SELECT map('vwap', 61835.79, 'atr', 0.5) AS m, 'a \"b\", c' AS s, CAST(NULL, 'Nullable(Int8)') AS n"
    )
    assert query_output(clickhouse_client, a_map, "csv").decode().splitlines() == [
        '"m","s","n"',
        '"{\'vwap\':61835.79,\'atr\':0.5}","a ""b"", c",\\N',
    ]
    assert query_output(clickhouse_client, a_map, "table").decode().splitlines() == [
        "m" + " " * 26 + "  " + "s" + " " * 7 + "  " + " n",  # text to the left, numbers to the right
        "{'vwap':61835.79,'atr':0.5}" + "  " + 'a "b", c' + "  " + "\\N",
    ]
    with pytest.raises(ValueError, match="use 'table' or 'csv'"):
        query_output(clickhouse_client, sql, "json")  # type: ignore[arg-type]  # the wrong format on purpose


@pytest.mark.parametrize(
    ("sql", "named"),
    [
        ("SELECT 1", None),
        ("SELECT 1 FORMAT JSONEachRow", "JSONEachRow"),
        ("select 1 format  Parquet;", "Parquet"),
        ("SELECT 1 FORMAT CSV SETTINGS max_threads = 1", "CSV"),
        ("SELECT 1 -- FORMAT CSV", None),
        ("SELECT 'x\nFORMAT CSV' AS `FORMAT TSV`", None),
        ("SELECT * FROM (SELECT 1 AS a) AS t\nFORMAT Pretty", "Pretty"),
    ],
)
def test_query_format_is_the_clause_clickhouse_reads(
    clickhouse_client: Client, sql: str, named: str | None
) -> None:
    assert query_format(clickhouse_client, sql) == named
