"""The embedded pipeline end to end: reference semantics, batch parity, bad input, stage faults."""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mambo.connectors.replay import DEMO_TRADES, load_trades
from mambo.core.market import Market
from mambo.core.risk import RiskConfig
from mambo.core.stages import EngineConfig, Stage
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import Candle, Fill, make_id, split_key
from mambo.schemas.topics import ACCOUNT_FEED
from mambo.streams.embedded import EmbeddedRuntime

FIXTURES = Path(__file__).parents[1] / "fixtures"
MINUTE = 60 * 10**9
STRATEGIES = ("sma_cross", "rsi_reversion", "macd_cross", "bollinger_breakout")


class Recorder:
    """Observer that keeps every message except trade batches (whose slicing differs by design) and the
    accounts' watermark-only feed (how far a market's stream had come when a batch ended, which the
    batching decides by design; what an account releases on them is kept)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.trade_ids: list[str] = []

    def __call__(self, topic: str, payload: Any) -> None:
        if isinstance(payload, TradeBatch):
            self.trade_ids += payload.trade_id.tolist()
        elif not (topic == ACCOUNT_FEED.name and payload.candle is None):
            self.events.append((topic, payload))

    def of(self, topic: str) -> list[Any]:
        return [e for t, e in self.events if t == topic]


def fixture_candles() -> list[Candle]:
    df = pd.read_csv(FIXTURES / "btc_perp_1m_5000.csv")
    ts = pd.to_datetime(df.timestamp, utc=True).dt.as_unit("ns").astype("int64").to_numpy()
    return [
        Candle(
            event_id=make_id("candle", "binance", "BTC/USDT", "1m", int(t)),
            ts_event=int(t) + MINUTE,
            ts_init=0,
            exchange="binance",
            symbol="BTC/USDT",
            timeframe="1m",
            open_time=int(t),
            open=o,
            high=h,
            low=lo,
            close=c,
            volume=v,
            trades=0,
        )
        for t, o, h, lo, c, v in zip(ts, df.open, df.high, df.low, df.close, df.volume, strict=True)
    ]


def reference_sma_trades(candles: list[Candle], qty: Decimal, fee_rate: Decimal) -> list[tuple]:
    """DESIGN.md's reference semantics, worked out independently of mambo.core."""
    close = pd.Series([c.close for c in candles])
    diff = (close.rolling(50).mean() - close.rolling(200).mean()).to_numpy()
    trades, long, prev_sign = [], False, 0
    for t in range(len(candles)):
        if math.isnan(diff[t]):
            continue
        sign = prev_sign if diff[t] == 0 else (1 if diff[t] > 0 else -1)
        up, down = prev_sign == -1 and sign == 1, prev_sign == 1 and sign == -1
        prev_sign = sign
        if t + 1 >= len(candles):
            break
        price = Decimal(repr(candles[t + 1].open))
        if up and not long:
            trades.append(("buy", candles[t + 1].open_time, price, qty, price * qty * fee_rate))
            long = True
        elif down and long:
            trades.append(("sell", candles[t + 1].open_time, price, qty, price * qty * fee_rate))
            long = False
    return trades


def test_sma_crossover_trades_equal_the_reference_semantics_on_real_candles() -> None:
    candles = fixture_candles()
    qty, fee = Decimal("0.5"), Decimal("0.001")
    config = EngineConfig(
        timeframes=("1m",),
        trading_timeframe="1m",
        strategies=("sma_cross",),
        order_qty=qty,
        fee_taker=fee,
        fill_on="candles",
        initial_cash=Decimal(10**9),
        indicators=(),
        risk=RiskConfig(position_fraction=1.0, max_exposure_per_symbol=1.0, max_total_exposure=1.0),
    )
    rt = EmbeddedRuntime(config, {"binance:BTC/USDT": Market.default("binance", "BTC/USDT")})
    rec = Recorder()
    rt.observe(rec)
    rt.ingest_candles(candles)
    fills: list[Fill] = rec.of("fills")
    got = [(f.side, f.ts_event, f.price, f.qty, f.fee) for f in fills]
    expected = reference_sma_trades(candles, qty, fee)
    assert len(expected) >= 10
    assert got == expected
    assert rec.of("risk.rejections") == []
    assert rt.dead_letter_count == 0


@pytest.fixture(scope="module")
def spot_trades() -> TradeBatch:
    batch, _ = load_trades(DEMO_TRADES, {"binance:BTC/USDT", "binance:ETH/USDT"})
    return batch


def run(
    batch: TradeBatch, batch_size: int, known: list[str] | None = None
) -> tuple[Recorder, EmbeddedRuntime]:
    config = EngineConfig(timeframes=("1s", "1m"), trading_timeframe="1s", strategies=STRATEGIES)
    markets = {k: Market.default(*split_key(k)) for k in ("binance:BTC/USDT", "binance:ETH/USDT")}
    rt = EmbeddedRuntime(config, markets, known_markets=known or list(markets))
    rec = Recorder()
    rt.observe(rec)
    for start in range(0, len(batch), batch_size):
        rt.ingest_trades(batch.slice(start, start + batch_size))
    return rec, rt


def test_one_at_a_time_and_batches_give_identical_outputs(spot_trades: TradeBatch) -> None:
    ref, _ = run(spot_trades, len(spot_trades))
    topics = {t for t, _ in ref.events}
    assert {"md.candles.1s", "indicators", "signals.raw", "signals", "orders", "fills", "equity"} <= topics
    assert len(ref.of("fills")) > 0
    for size in (1, 7, 1000):
        rec, _ = run(spot_trades, size)
        assert rec.trade_ids == ref.trade_ids
        assert len(rec.events) == len(ref.events)
        assert rec.events == ref.events, f"batch size {size} differs"


def test_bad_input_is_dead_lettered_with_reasons_and_loses_nothing_else(spot_trades: TradeBatch) -> None:
    clean = spot_trades.slice(0, 8000)
    ref, _ = run(clean, 500)
    # inject bad rows: NaN, negative price, negative qty, an unknown market
    n_bad = 4
    keys = (*clean.keys, "binance:DOGE/USDT")
    pos = np.array([100, 2000, 4000, 7000])
    idx = np.insert(np.arange(len(clean)), pos, pos)  # duplicate the rows at pos, then spoil the copies
    bad = TradeBatch(
        keys,
        clean.market[idx].copy(),
        clean.ts[idx],
        clean.price[idx].copy(),
        clean.qty[idx].copy(),
        clean.side[idx],
        clean.trade_id[idx].copy(),
    )
    spoiled = pos + np.arange(n_bad)
    bad.price[spoiled[0]] = np.nan
    bad.price[spoiled[1]] = -5.0
    bad.qty[spoiled[2]] = -1.0
    bad.market[spoiled[3]] = 2
    for i in spoiled:
        bad.trade_id[i] = f"bad-{i}"
    rec, rt = run(bad, 500)
    letters = rec.of("md.trades.dlq")
    assert len(letters) == n_bad == rt.dead_letter_count
    reasons = " | ".join(d.reason for d in letters)
    for needle in (
        "got nan",
        "got -5.0",
        "qty must be a finite number > 0, got -1.0",
        "unknown market binance:DOGE/USDT",
    ):
        assert needle in reasons
    assert [e for e in rec.events if not e[0].endswith(".dlq")] == ref.events
    assert [t for t in rec.trade_ids if not t.startswith("bad-")] == ref.trade_ids


def test_a_failing_stage_dead_letters_the_message_and_the_run_goes_on(spot_trades: TradeBatch) -> None:
    class Boom(Stage):
        name = "boom"
        inputs = ("md.candles.1m",)
        calls = 0

        def handle(self, topic: str, payload: Any) -> list:
            Boom.calls += 1
            raise RuntimeError("operator fault")

    ref, _ = run(spot_trades.slice(0, 6000), 1000)
    config = EngineConfig(timeframes=("1s", "1m"), trading_timeframe="1s", strategies=STRATEGIES)
    markets = {k: Market.default(*split_key(k)) for k in spot_trades.keys}
    rt = EmbeddedRuntime(config, markets)
    rt.bus.add_stage(Boom())
    rec = Recorder()
    rt.observe(rec)
    for start in range(0, 6000, 1000):
        rt.ingest_trades(spot_trades.slice(start, start + 1000))
    letters = rec.of("md.candles.1m.dlq")
    assert Boom.calls == len(letters) > 0
    assert all(d.reason == "boom: RuntimeError('operator fault')" for d in letters)
    assert [e for e in rec.events if not e[0].endswith(".dlq")] == ref.events


def test_a_market_built_from_trades_ignores_the_exchanges_bars_of_it(spot_trades: TradeBatch) -> None:
    """One source of bars per market: exchange candles drive only markets without trades."""
    btc = spot_trades.take((spot_trades.market == spot_trades.keys.index("binance:BTC/USDT")).nonzero()[0])
    config = EngineConfig(timeframes=("1m",), trading_timeframe="1m", strategies=("sma_cross",))
    markets = {k: Market.default(*split_key(k)) for k in ("binance:BTC/USDT", "binance:ETH/USDT")}
    rt = EmbeddedRuntime(config, markets)
    rec = Recorder()
    rt.observe(rec)
    rt.ingest_trades(btc)
    built = [c for c in rec.of("md.candles.1m") if c.key == "binance:BTC/USDT"]
    assert built
    exchange_bars = [
        c.model_copy(update={"event_id": "x" + c.event_id, "symbol": s})
        for c in built[:5]
        for s in ("BTC/USDT", "ETH/USDT")
    ]
    rt.ingest_candles(exchange_bars)
    after = rec.of("md.candles.1m")
    assert [c.key for c in after[len(built) :]] == ["binance:ETH/USDT"] * 5  # BTC's bars: from trades only
