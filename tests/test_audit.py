"""``mambo audit`` over a real history: the embedded pipeline runs a slice of the bundled recording into
chdb once; each test copies that history, breaks one invariant the way a bug would, and checks the audit
counts exactly the rows it broke, in that invariant and no other.

The counts are taken against the audit of the template itself, so an injection test measures its own
injection whatever the pipeline's state; whether the pipeline's own history is clean is
:func:`test_the_pipeline_leaves_a_clean_history`'s question.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from decimal import Decimal

import numpy as np
import pytest
import talib
from clickhouse_connect.driver.client import Client

from mambo.audit import INVARIANTS, AuditReport, NoHistoryError, audit
from mambo.audit.indicators import spec_of
from mambo.audit.sql import fills_in_range
from mambo.connectors.clickhouse import ClickHouseSink, ensure_schema
from mambo.connectors.replay import DEMO_QUOTES, DEMO_TRADES, Recording, load_quotes, load_trades, replay
from mambo.core.indicators import FORMS, output_names
from mambo.core.portfolio import held
from mambo.core.stages import EngineConfig
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import Fill, make_id
from mambo.schemas.topics import TABLES
from mambo.streams.embedded import EmbeddedRuntime, SinkObserver, run_replay

STRATEGIES = ("sma_cross", "rsi_reversion", "macd_cross", "bollinger_breakout")
TRADES = 20_000  # about four minutes of BTC/USDT and ETH/USDT: some 400 1s candles and 30 round trips


@pytest.fixture(scope="module")
def template(clickhouse_client: Client) -> Iterator[str]:
    """A history the embedded pipeline wrote: trades, quotes, 1s and 1m candles, indicators, four
    strategies trading on 1s candles through the paper broker."""
    database = f"audit_{uuid.uuid4().hex[:12]}"
    ensure_schema(clickhouse_client, database)
    symbols = {"BTC/USDT", "ETH/USDT"}
    trades = load_trades(DEMO_TRADES, symbols)[0].slice(0, TRADES)
    quotes = [q for q in load_quotes(DEMO_QUOTES, symbols)[0] if q.ts_event <= trades.ts[-1]]
    recording = Recording(trades, quotes)
    config = EngineConfig(timeframes=("1s", "1m"), trading_timeframe="1s", strategies=STRATEGIES)
    runtime = EmbeddedRuntime(config, known_markets=recording.markets)
    sink = ClickHouseSink(clickhouse_client, database)
    runtime.observe(SinkObserver(sink))
    asyncio.run(run_replay(runtime, replay(recording, 2_000), flush=sink.flush))
    sink.flush()
    yield database
    clickhouse_client.command(f"DROP DATABASE IF EXISTS `{database}`")


@pytest.fixture(scope="module")
def baseline(clickhouse_client: Client, template: str) -> dict[str, int]:
    """Violations per invariant in the template as the pipeline wrote it."""
    return {f.invariant: f.violations for f in audit(clickhouse_client, template).findings}


@pytest.fixture
def history(clickhouse_client: Client, template: str, baseline: dict[str, int]) -> Iterator[Copier]:
    copier = Copier(clickhouse_client, template, baseline)
    yield copier
    for database in copier.made:
        clickhouse_client.command(f"DROP DATABASE IF EXISTS `{database}`")


class Copier:
    """Copies of the template history, each with some tables' rows given by a query of the original
    (``{src}`` names the original table); merges are stopped, so repeated event ids stay visible."""

    def __init__(self, client: Client, template: str, baseline: dict[str, int]) -> None:
        self.client = client
        self.template = template
        self.baseline = baseline
        self.made: list[str] = []

    def copy(self, **selects: str) -> str:
        database = f"audit_{uuid.uuid4().hex[:12]}"
        self.made.append(database)
        ensure_schema(self.client, database)
        for table in TABLES:
            self.client.command(f"SYSTEM STOP MERGES `{database}`.`{table}`")
            src = f"`{self.template}`.`{table}`"
            select = selects.get(table, "SELECT * FROM {src}").format(src=src)
            # as the sink inserts: repeats inside one insert are kept, not collapsed
            self.client.command(
                f"INSERT INTO `{database}`.`{table}` SETTINGS optimize_on_insert = 0 {select}"
            )
        return database

    def one(self, sql: str) -> tuple:
        """The first row of a query over the template (``{db}`` names its database)."""
        rows = self.client.query(sql.format(db=f"`{self.template}`")).result_rows
        assert rows, sql
        return tuple(rows[0])

    def audit(self, database: str) -> AuditReport:
        return audit(self.client, database)

    def added(self, **selects: str) -> dict[str, int]:
        """Violations per invariant in a copy made with ``selects``, beyond those of the template."""
        after = self.audit(self.copy(**selects))
        return {
            f.invariant: f.violations - self.baseline[f.invariant]
            for f in after.findings
            if f.violations != self.baseline[f.invariant]
        }


def test_the_template_is_a_trading_history(history: Copier) -> None:
    report = history.audit(history.template)
    checked = {f.invariant: f.checked for f in report.findings}
    assert len(report.findings) == len(INVARIANTS)
    assert checked["candles recompute from trades"] > 300
    assert checked["indicators recompute from candles"] == checked["candles recompute from trades"]
    assert checked["fills within the market"] > 20
    assert checked["fills sum to positions"] == 2  # two markets


def test_the_pipeline_leaves_a_clean_history(history: Copier) -> None:
    report = history.audit(history.template)
    assert report.ok, "\n".join(f"{f.invariant}: {f.violations} e.g. {f.example}" for f in report.findings)
    assert "hold" in report.summary()


# --- one content per event id -----------------------------------------------------------------------


def test_repeats_that_differ_only_in_ts_init_are_one_event(history: Copier) -> None:
    """At-least-once delivery repeats an event with a later ts_init (README): not a violation."""
    again = (
        "SELECT * FROM {src} UNION ALL SELECT * REPLACE (ts_init + INTERVAL 5 SECOND AS ts_init) FROM {src}"
    )
    assert history.added(fills=again, signals_raw=again, indicators=again) == {}


def test_an_event_id_with_two_contents_is_caught(history: Copier) -> None:
    (event_id,) = history.one("SELECT event_id FROM {db}.signals_raw ORDER BY ts_event LIMIT 1 OFFSET 50")
    other = (
        "SELECT * FROM {src} UNION ALL SELECT * REPLACE (price * 2 AS price) FROM {src} "
        f"WHERE event_id = '{event_id}'"
    )
    assert history.added(signals_raw=other) == {"one content per event id": 1}
    finding = history.audit(history.made[-1]).findings[0]
    assert f"signals_raw {event_id}" in finding.example and "price" in finding.example


# --- candles ----------------------------------------------------------------------------------------


def test_a_second_candle_for_a_bar_is_caught(history: Copier) -> None:
    """An exchange's candle (trades 0, its own id) landing beside the one built from trades."""
    ex, sym, tf, ot = history.one(
        "SELECT exchange, symbol, timeframe, toUnixTimestamp64Nano(open_time) FROM {db}.candles "
        "WHERE timeframe = '1m' ORDER BY open_time LIMIT 1 OFFSET 1"
    )
    twin = make_id("md.candles", ex, sym, tf, ot)
    more = (
        "SELECT * FROM {src} UNION ALL SELECT * REPLACE ("
        f"'{twin}' AS event_id, volume + 1 AS volume, 0 AS trades) FROM {{src}} "
        f"WHERE exchange = '{ex}' AND symbol = '{sym}' AND timeframe = '{tf}' "
        f"AND open_time = fromUnixTimestamp64Nano({ot}, 'UTC')"
    )
    assert history.added(candles=more) == {"one candle per bar": 1}


def test_a_candle_that_is_not_its_trades_is_caught(history: Copier) -> None:
    """A trade inside a bar that its candles never counted: the 1s and the 1m candle holding it."""
    ex, sym, ts, price = history.one(
        "SELECT exchange, symbol, ts_event, price FROM {db}.trades ORDER BY ts_event LIMIT 1 OFFSET 5000"
    )
    extra = (
        "SELECT * FROM {src} UNION ALL SELECT * REPLACE ('injected' AS event_id, 'injected' AS trade_id, "
        f"1.5 AS qty) FROM {{src}} WHERE exchange = '{ex}' AND symbol = '{sym}' AND ts_event = '{ts}' "
        f"AND price = {price!r} LIMIT 1"
    )
    assert history.added(trades=extra) == {"candles recompute from trades": 2}


# --- indicators -------------------------------------------------------------------------------------


def _scale_value(event_id: str, name: str, factor: float) -> str:
    return (
        f"SELECT * REPLACE (if(event_id = '{event_id}', mapApply((k, v) -> (k, if(k = '{name}', "
        f"v * {factor!r}, v)), values), values) AS values) FROM {{src}}"
    )


@pytest.fixture
def warm_row(history: Copier) -> str:
    (event_id,) = history.one(
        "SELECT event_id FROM {db}.indicators WHERE mapContains(values, 'rsi_14') AND timeframe = '1s' "
        "ORDER BY ts_event LIMIT 1 OFFSET 100"
    )
    return str(event_id)


def test_an_indicator_off_by_a_millionth_is_caught(history: Copier, warm_row: str) -> None:
    assert history.added(indicators=_scale_value(warm_row, "rsi_14", 1 + 1e-6)) == {
        "indicators recompute from candles": 1
    }


def test_an_indicator_within_the_tolerance_passes(history: Copier, warm_row: str) -> None:
    assert history.added(indicators=_scale_value(warm_row, "rsi_14", 1 + 1e-12)) == {}


def test_an_indicator_value_left_out_is_caught(history: Copier, warm_row: str) -> None:
    drop = (
        f"SELECT * REPLACE (if(event_id = '{warm_row}', mapFilter((k, v) -> k != 'ema_20', values), values) "
        "AS values) FROM {src}"
    )
    assert history.added(indicators=drop) == {"indicators recompute from candles": 1}


def _talib(close: np.ndarray, high: np.ndarray, low: np.ndarray) -> dict[str, np.ndarray]:
    upper, middle, lower = talib.BBANDS(close, 20, 2.0, 2.0)
    macd, signal, hist = talib.MACD(close, 12, 26, 9)
    return {
        "ema_20": talib.EMA(close, 20),
        "rsi_14": talib.RSI(close, 14),
        "atr_14": talib.ATR(high, low, close, 14),
        "sma_50": talib.SMA(close, 50),
        "sma_200": talib.SMA(close, 200),
        "bb_upper_20_2": upper,
        "bb_middle_20_2": middle,
        "bb_lower_20_2": lower,
        "macd_12_26_9": macd,
        "macd_signal_12_26_9": signal,
        "macd_hist_12_26_9": hist,
    }


def test_indicators_written_by_talib_pass_the_audit(history: Copier) -> None:
    """TA-Lib, the independent reference, over the stored candles: a history whose indicators TA-Lib
    wrote (its values, and none where TA-Lib is still warming up) passes the audit's recomputation
    (1e-9 relative), and one whose RSI 14 is TA-Lib's RSI 13 fails on every row that holds it."""
    client, template = history.client, history.template
    candles = client.query(
        "SELECT exchange, symbol, timeframe, toUnixTimestamp64Nano(open_time), high, low, close "
        f"FROM `{template}`.candles FINAL ORDER BY exchange, symbol, timeframe, open_time"
    ).result_rows
    series: dict[tuple[str, str, str], list[tuple[int, float, float, float]]] = {}
    for ex, sym, tf, ot, h, lo, c in candles:
        series.setdefault((ex, sym, tf), []).append((ot, h, lo, c))
    exact, rsi13 = [], []
    for (ex, sym, tf), bars in series.items():
        ot, high, low, close = (np.array(col) for col in zip(*bars, strict=True))
        reference = _talib(close, high, low)
        other = talib.RSI(close, 13)
        for i, t in enumerate(ot):
            event_id = make_id("indicators", f"{ex}:{sym}", tf, int(t))
            values = {k: float(v[i]) for k, v in reference.items() if not np.isnan(v[i])}
            exact.append((event_id, values))
            if "rsi_14" in values:
                values = {**values, "rsi_14": float(other[i])}
            rsi13.append((event_id, values))
    names = ", ".join(f"'{n}'" for n in _talib(np.ones(3), np.ones(3), np.ones(3)))
    wrong_rows = sum(
        1
        for (_, right), (_, wrong) in zip(exact, rsi13, strict=True)
        if "rsi_14" in right and abs(right["rsi_14"] - wrong["rsi_14"]) > 1e-9 * abs(right["rsi_14"])
    )
    for written, expected in ((exact, {}), (rsi13, {"indicators recompute from candles": wrong_rows})):
        staging = f"talib_{uuid.uuid4().hex[:8]}"
        client.command(
            f"CREATE TABLE `{template}`.{staging} (event_id String, values Map(String, Float64)) "
            "ENGINE = Memory"
        )
        try:
            client.insert(staging, written, column_names=["event_id", "values"], database=template)
            select = (
                f"SELECT i.* REPLACE (mapUpdate(mapFilter((k, v) -> k NOT IN ({names}), i.values), t.values) "
                f"AS values) FROM {{src}} AS i LEFT JOIN `{template}`.{staging} AS t USING event_id"
            )
            assert history.added(indicators=select) == expected
        finally:
            client.command(f"DROP TABLE `{template}`.{staging}")


def test_spec_of_reads_every_output_name_back() -> None:
    for form in FORMS:
        kind, *params = form.split(":")
        spec = ":".join(
            [kind, *("2.5" if kind == "bbands" and i else str(7 + i) for i, _ in enumerate(params))]
        )
        for name in output_names(spec):
            assert spec_of(name) == spec
    assert spec_of("not_an_indicator_3") is None


# --- fills and the market ---------------------------------------------------------------------------


def _fill(history: Copier, offset: int = 3) -> tuple:
    return history.one(
        "SELECT event_id, exchange, symbol, ts_event, price, client_order_id FROM {db}.fills "
        f"ORDER BY ts_event, event_id LIMIT 1 OFFSET {offset}"
    )


def test_a_fill_outside_its_market_is_caught(history: Copier) -> None:
    event_id, *_ = _fill(history)
    moved = f"SELECT * REPLACE (if(event_id = '{event_id}', price * 1.01, price) AS price) FROM {{src}}"
    assert history.added(fills=moved) == {"fills within the market": 1}


def test_a_fill_at_the_book_is_within_the_market(history: Copier) -> None:
    """A price the trades never printed, but the book top at that moment quoted."""
    event_id, ex, sym, ts, price, _ = _fill(history)
    moved = f"SELECT * REPLACE (if(event_id = '{event_id}', price * 1.01, price) AS price) FROM {{src}}"
    book = (
        "SELECT * FROM {src} UNION ALL SELECT * REPLACE ('injected' AS event_id, "
        f"toDateTime64('{ts}', 9, 'UTC') AS ts_event, {float(price):.2f} AS bid, "
        f"{float(price) * 1.02:.2f} AS ask) "
        f"FROM {{src}} WHERE exchange = '{ex}' AND symbol = '{sym}' LIMIT 1"
    )
    assert history.added(fills=moved, quotes=book) == {}


@pytest.mark.parametrize(("price", "violations"), [("61000.5", 0), ("61002", 1)])
def test_a_fill_in_a_bar_no_candle_closed_is_checked_against_its_seconds_trades(
    clickhouse_client: Client, clickhouse_db: str, price: str, violations: int
) -> None:
    """The last bar of a run: no later trade closed it, so no candle holds the fill; the trades of the
    fill's second do (here 61000.0 and 61001.0)."""
    ts = 1_723_161_600 * 10**9
    trades = TradeBatch(
        ("binance:BTC/USDT",), np.zeros(2, np.int32), np.array([ts + 100_000_000, ts + 900_000_000]),
        np.array([61000.0, 61001.0]), np.array([0.5, 0.5]), np.zeros(2, np.int8),
        np.array(["1", "2"], dtype=object), ts_init=ts,
    )  # fmt: skip
    fill = Fill(
        event_id="f", ts_event=ts + 500_000_000, ts_init=ts, exchange="binance", symbol="BTC/USDT",
        fill_id="f", client_order_id="o", strategy="s", side="buy", price=Decimal(price), qty=Decimal(1),
        fee=Decimal(0), fee_currency="USDT", liquidity="taker",
    )  # fmt: skip
    sink = ClickHouseSink(clickhouse_client, clickhouse_db)
    sink.write_columns("trades", trades.columns())
    sink.write("fills", [fill])
    sink.flush()
    finding = fills_in_range(clickhouse_client, clickhouse_db)
    assert (finding.checked, finding.violations) == (1, violations)


def test_an_order_without_its_intent_is_caught(history: Copier) -> None:
    *_, client_order_id = _fill(history)
    assert history.added(
        order_intents=f"SELECT * FROM {{src}} WHERE client_order_id != '{client_order_id}'"
    ) == {"every order has its intent": 1}


def test_a_fill_without_its_order_is_caught(history: Copier) -> None:
    *_, client_order_id = _fill(history)
    assert history.added(orders=f"SELECT * FROM {{src}} WHERE client_order_id != '{client_order_id}'") == {
        "every fill has its order": 1
    }


# --- positions and equity ---------------------------------------------------------------------------


def test_held_takes_a_base_currency_fee_off_the_coin() -> None:
    """Binance charges a spot buy's fee in the coin bought: 1 BTC bought with a 0.001 BTC fee is 0.999
    BTC held; a fee in USDT leaves the quantity alone."""
    assert held("buy", Decimal(1), Decimal("0.001"), "BTC", "BTC/USDT") == Decimal("0.999")
    assert held("sell", Decimal(1), Decimal("0.001"), "BTC", "BTC/USDT") == Decimal("-1.001")
    assert held("buy", Decimal(1), Decimal(50), "USDT", "BTC/USDT") == Decimal(1)


def test_a_position_that_is_not_its_fills_is_caught(history: Copier) -> None:
    (position,) = history.one(
        "SELECT event_id FROM {db}.positions WHERE qty != 0 ORDER BY ts_event, event_id LIMIT 1 OFFSET 3"
    )
    doubled = f"SELECT * REPLACE (if(event_id = '{position}', qty * 2, qty) AS qty) FROM {{src}}"
    assert history.added(positions=doubled) == {"fills sum to positions": 1}


def test_a_fill_whose_fee_was_in_the_coin_is_caught(history: Copier) -> None:
    """The position did not take the base-currency fee off: the fills no longer sum to it."""
    event_id, _, sym, *_ = _fill(history)
    base = sym.split("/")[0]
    coin_fee = (
        f"SELECT * REPLACE (if(event_id = '{event_id}', '{base}', fee_currency) AS fee_currency) FROM {{src}}"
    )
    assert history.added(fills=coin_fee) == {"fills sum to positions": 1}


def test_a_position_at_a_stale_mark_is_caught(history: Copier) -> None:
    (event_id,) = history.one(
        "SELECT event_id FROM {db}.positions WHERE qty != 0 ORDER BY ts_event, event_id LIMIT 1"
    )
    stale = (
        f"SELECT * REPLACE (if(event_id = '{event_id}', mark_price * 1.05, mark_price) AS mark_price) "
        "FROM {src}"
    )
    assert history.added(positions=stale) == {"positions at the market's price": 1}


def test_equity_one_unit_off_cash_plus_positions_is_caught(history: Copier) -> None:
    (event_id,) = history.one("SELECT event_id FROM {db}.equity ORDER BY ts_event, event_id LIMIT 1 OFFSET 7")
    off = (
        f"SELECT * REPLACE (if(event_id = '{event_id}', equity + toDecimal128('0.000000000000000001', 18), "
        "equity) AS equity) FROM {src}"
    )
    assert history.added(equity=off) == {"cash + positions = equity": 1}


def test_a_database_without_a_history_is_refused(clickhouse_client: Client) -> None:
    with pytest.raises(NoHistoryError, match="no Mambo history"):
        audit(clickhouse_client, "no_such_database")
