"""Event models refuse bad values with a reason; the topic registry is consistent."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from mambo.schemas import ALL_TOPICS, TABLES, Trade, by_name, candle_topic, dlq_topic
from mambo.schemas.batches import TradeBatch, trade_event_id, validate_trades
from mambo.schemas.events import TIMEFRAMES, make_id, market_key, split_key, timeframe_ns

GOOD = dict(
    event_id="e",
    ts_event=1,
    ts_init=2,
    exchange="binance",
    symbol="BTC/USDT",
    trade_id="1",
    price=10.0,
    qty=1.0,
)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("price", math.nan, "finite number > 0"),
        ("price", -1.0, "finite number > 0"),
        ("qty", -0.5, "finite number > 0"),
        ("qty", math.inf, "finite number > 0"),
        ("ts_event", -1, "greater than or equal"),
        ("symbol", "", "at least 1"),
    ],
)
def test_trade_rejects_bad_values_with_a_reason(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Trade(**{**GOOD, field: value})


def test_events_are_frozen_and_keyed() -> None:
    t = Trade(**GOOD)
    assert t.key == "binance:BTC/USDT"
    with pytest.raises(ValidationError):
        t.price = 3.0  # type: ignore[misc]


def test_ids_and_keys() -> None:
    assert make_id("a", 1) == make_id("a", 1) != make_id("a", 2)
    assert split_key(market_key("binanceusdm", "BTC/USDT:USDT")) == ("binanceusdm", "BTC/USDT:USDT")
    with pytest.raises(ValueError, match="exchange:symbol"):
        split_key("nokey")
    assert [timeframe_ns(tf) // 10**9 for tf in TIMEFRAMES] == [1, 60, 300, 900, 3600, 14400, 86400]
    with pytest.raises(ValueError, match="unknown timeframe"):
        timeframe_ns("3w")


def test_registry_is_consistent() -> None:
    names = [t.name for t in ALL_TOPICS]
    assert len(names) == len(set(names))
    for t in ALL_TOPICS:
        if not t.name.endswith(".dlq"):
            assert by_name(dlq_topic(t.name)).table == "dead_letters"
    assert {by_name(candle_topic(tf)).table for tf in TIMEFRAMES} == {"candles"}
    assert set(TABLES) >= {"trades", "candles", "indicators", "signals", "orders", "fills", "equity"}
    with pytest.raises(KeyError, match="unknown topic"):
        by_name("nope")


def test_validate_trades_rejects_each_bad_row_with_its_reason_and_keeps_the_rest() -> None:
    batch = TradeBatch(
        ("binance:BTC/USDT", "binance:DOGE/USDT"),
        np.array([0, 0, 0, 0, 1, 0], np.int32),
        np.array([1, 2, 3, 4, 5, 6], np.int64),
        np.array([10.0, math.nan, -2.0, 11.0, 12.0, 13.0]),
        np.array([1.0, 1.0, 1.0, -3.0, 1.0, 2.0]),
        np.zeros(6, np.int8),
        np.array(list("abcdef"), dtype=object),
    )
    good, dead = validate_trades(batch, {"binance:BTC/USDT"})
    assert good.trade_id.tolist() == ["a", "f"]
    reasons = [d.reason for d in dead]
    assert "price must be a finite number > 0, got nan" in reasons[0]
    assert "got -2.0" in reasons[1]
    assert "qty must be a finite number > 0, got -3.0" in reasons[2]
    assert reasons[3] == "unknown market binance:DOGE/USDT"
    assert len(good) + len(dead) == len(batch)


def test_trade_batch_round_trips_events() -> None:
    trades = [
        Trade(**{**GOOD, "trade_id": str(i), "price": 10.0 + i, "side": "buy" if i % 2 else "sell"})
        for i in range(5)
    ]
    batch = TradeBatch.from_trades(trades)
    back = batch.to_trades()
    assert [(t.trade_id, t.price, t.side) for t in back] == [(t.trade_id, t.price, t.side) for t in trades]
    assert back[0].event_id == batch.event_ids()[0].decode() == trade_event_id("binance:BTC/USDT", "0")
    assert (
        TradeBatch.concat([batch.slice(0, 2), batch.slice(2, 5)]).trade_id.tolist() == batch.trade_id.tolist()
    )
