"""Exchange candles (md.candles, what ``mambo source`` publishes) reach the worker's stages beside
trades: one market traded on exchange candles, another on trades, in one worker, gives the orders
and fills of the same pipelines run in process; bad candle messages land in md.candles.dlq with
their origin. Cost: ~15 s besides the session broker."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mambo.connectors.exchange_source import candles_from_ccxt
from mambo.connectors.replay import load_trades
from mambo.schemas.events import Candle
from mambo.schemas.topics import EXCHANGE_CANDLES, FILLS, ORDERS, candle_topic
from mambo.settings import EngineSettings
from mambo.streams.kafka.codec import headers_for
from mambo.streams.kafka.producer import KafkaPublisher
from mambo.streams.kafka.worker import Worker
from mambo.streams.markets import MarketPipelines

from .conftest import FIXTURE_ROOT, read_topic
from .test_pipeline import SLICE, of

pytestmark = pytest.mark.kafka
CANDLES = 5_000


def exchange_candles() -> list[Candle]:
    """BTC/USDT 1-minute candles of the fixture, as the source makes them from ccxt's OHLCV rows."""
    df = pd.read_csv(FIXTURE_ROOT / "btc_perp_1m_5000.csv", nrows=CANDLES)
    ms = pd.to_datetime(df["timestamp"], utc=True).astype("int64") // 10**6
    rows = [
        [int(t), o, h, lo, c, v] for t, o, h, lo, c, v in zip(ms, *(df[k] for k in list(df)[1:]), strict=True)
    ]
    return candles_from_ccxt("binance", "BTC/USDT", "1m", rows, ts_init=1_700_000_000_000_000_000)


def test_exchange_candles_and_trades_through_one_worker(
    bootstrap: str, kafka_prefix: str, tmp_path: Path
) -> None:
    config = EngineSettings.model_validate(
        {
            "timeframes": "1m",
            "trading_timeframe": "1m",
            "strategies": "sma_cross,rsi_reversion,macd_cross,bollinger_breakout",
            "fill_on": "candles",
        }
    ).to_config()
    candles = exchange_candles()
    trades, _ = load_trades()
    eth = trades.take(trades.market == trades.keys.index("binance:ETH/USDT"))
    known = ["binance:BTC/USDT", "binance:ETH/USDT"]

    ref: list[tuple[str, Any]] = []
    mp = MarketPipelines(config, lambda t, e: ref.append((t, e)), known_markets=known, loopback=True)
    mp.ingest_candles(candles)
    for s in range(0, len(eth), SLICE):
        mp.ingest_trades(eth.slice(s, s + SLICE))

    bad = [
        b"not json",  # undecodable
        candles[0].model_dump_json().replace('"high":', '"hi":').encode(),  # not a Candle
        candles[0].model_copy(update={"exchange": "nowhere"}).model_dump_json().encode(),  # unknown market
    ]
    with KafkaPublisher(bootstrap, kafka_prefix) as pub:
        for s in range(0, len(candles), 1_000):
            pub.publish_many(EXCHANGE_CANDLES, candles[s : s + 1_000])
            for value in bad:
                pub._producer.produce(
                    kafka_prefix + EXCHANGE_CANDLES.name,
                    value,
                    b"binance:BTC/USDT",
                    headers=headers_for(Candle),
                )
        for s in range(0, len(eth), SLICE):
            pub.publish_trades(eth.slice(s, s + SLICE))

    worker = Worker(bootstrap, config, known_markets=known, prefix=kafka_prefix, batch_size=1_000)
    worker.run(idle_exit=3.0)
    assert worker.candles == CANDLES  # the unknown market's candles decode, then are refused
    assert worker.processed == len(eth)

    assert len(of(ref, ORDERS.name)) >= 5 and len(of(ref, FILLS.name)) >= 2  # traded on exchange candles
    for topic in (ORDERS.name, FILLS.name):
        got = sorted(read_topic(bootstrap, topic, kafka_prefix), key=lambda e: e.event_id)
        assert got == of(ref, topic), topic
    out = read_topic(bootstrap, candle_topic("1m"), kafka_prefix)
    passed = sorted((c for c in out if c.symbol == "BTC/USDT"), key=lambda c: c.open_time)
    assert passed == candles  # passed through, unchanged
    built = sorted((c for c in out if c.symbol == "ETH/USDT"), key=lambda c: c.event_id)
    assert built  # and the other market's, built from its trades
    assert built == [c for c in of(ref, candle_topic("1m")) if c.symbol == "ETH/USDT"]

    letters = read_topic(bootstrap, "md.candles.dlq", kafka_prefix)
    assert len(letters) == 3 * 5
    assert all(d.topic == "md.candles" and d.partition >= 0 and d.offset >= 0 for d in letters)
    reasons = Counter(d.reason.split(":")[0] for d in letters)
    assert reasons == {"not a Candle": 10, "unknown market nowhere": 5}, reasons
