"""The exchange source through ccxt.pro against the local exchange: faults in mid-stream, and what
arrives is exactly the recording (no gap, no duplicate, in order), as Mambo events.

One replay of about 8 s carries the whole fault sequence; the rest are sub-second.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import numpy as np
import pytest

from mambo.connectors.clickhouse import ClickHouseSink, read_events
from mambo.connectors.errors import Backoff
from mambo.connectors.exchange_source import (
    EmbeddedPublisher,
    ExchangeSource,
    SourceConfig,
    fetch_candles_between,
    fetch_trades_between,
    trades_from_ccxt,
)
from mambo.core.stages import EngineConfig
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import Candle, FeedHealth, Quote
from mambo.schemas.topics import FEED_HEALTH
from mambo.streams.embedded import EmbeddedRuntime, SinkObserver
from tests.exchange.helpers import running_exchange

SYMBOLS = ["BTC/USDT", "ETH/USDT"]


class Recorder:
    """A Publisher that keeps everything."""

    def __init__(self) -> None:
        self.batches: list[TradeBatch] = []
        self.quote_events: list[Quote] = []
        self.candle_events: list[Candle] = []
        self.health_events: list[FeedHealth] = []

    def trades(self, batch: TradeBatch) -> None:
        self.batches.append(batch)

    def quotes(self, quotes: Sequence[Quote]) -> None:
        self.quote_events += quotes

    def candles(self, candles: Sequence[Candle]) -> None:
        self.candle_events += candles

    def health(self, event: FeedHealth) -> None:
        self.health_events.append(event)

    def trade_ids(self, key: str) -> list[int]:
        if not self.batches:
            return []
        batch = TradeBatch.concat(self.batches)
        return (
            [int(i) for i in batch.trade_id[np.asarray(batch.keys)[batch.market] == key]]
            if len(batch)
            else []
        )


async def _until(condition: Any, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_faults_mid_stream_lose_nothing_and_duplicate_nothing() -> None:
    async def main() -> None:
        async with running_exchange(speed=25, history_seconds=30) as (ex, client):
            out = Recorder()
            config = SourceConfig("binance", SYMBOLS, timeframe="1s", stall_seconds=1.0,
                                  backoff=Backoff(base=0.05, cap=0.2, attempts=8))  # fmt: skip
            source = ExchangeSource(client, out, config)
            task = asyncio.create_task(source.run())
            try:
                await _until(lambda: source.counts["trades"] > 200, 10)
                await ex.inject("429", count=2, seconds=0.3)  # the gap fill meets a rate limit
                await ex.inject("disconnect")
                await asyncio.sleep(1.2)
                await ex.inject("stall", seconds=2.0)  # silent, connection open
                await asyncio.sleep(3.0)
                await ex.inject("gap", count=25)
                await ex.inject("duplicate", count=25)
                await asyncio.sleep(1.0)
                await ex.pause()
                await ex.advance(3)  # a quiet tail with no fault: the feed catches up to the exchange
                for sid, key in (("BTCUSDT", "binance:BTC/USDT"), ("ETHUSDT", "binance:ETH/USDT")):
                    last = int(ex.symbols[sid].trade_id[ex.symbols[sid].released - 1])
                    await _until(lambda key=key, last=last: out.trade_ids(key)[-1:] == [last], 10)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

            for sid, key in (("BTCUSDT", "binance:BTC/USDT"), ("ETHUSDT", "binance:ETH/USDT")):
                sym = ex.symbols[sid]
                got = out.trade_ids(key)
                first = int(np.searchsorted(sym.trade_id, got[0]))
                assert got == sym.trade_id[first : sym.released].tolist()  # no gap, no duplicate, in order
            batch = TradeBatch.concat(out.batches)
            btc = ex.symbols["BTCUSDT"]
            rows = np.asarray(batch.keys)[batch.market] == "binance:BTC/USDT"
            first = int(np.searchsorted(btc.trade_id, int(batch.trade_id[rows][0])))
            n = int(rows.sum())
            np.testing.assert_array_equal(batch.price[rows], btc.price[first : first + n])
            np.testing.assert_array_equal(batch.ts[rows], btc.ts[first : first + n] * 1_000_000)
            assert source.counts["duplicates"] >= 25 and source.counts["recovered"] >= 25

            statuses = {(h.stream, h.status) for h in out.health_events}
            # the first stream to notice a stall closes the connections: the others see a disconnect
            assert {"stalled", "disconnected"} <= {status for _, status in statuses}
            assert ("trades:BTC/USDT", "gap_filled") in statuses
            assert ("trades:BTC/USDT", "reconnected") in statuses
            assert 429 in [code for _, _, code in ex.request_log]
            assert set(source.health()) >= {"trades:BTC/USDT", "quotes", "candles:ETH/USDT"}

            # candles: closed ones only, each the exchange's own kline for its second, none twice
            assert out.candle_events
            for symbol in SYMBOLS:
                mine = [c for c in out.candle_events if c.symbol == symbol]
                opens = [c.open_time for c in mine]
                assert opens == sorted(set(opens))
                since, until = opens[0] // 1_000_000, opens[-1] // 1_000_000 + 1
                rest = await fetch_candles_between(client, symbol, "1s", since, until)
                by_open = {r[0] * 1_000_000: r for r in rest}
                assert len(by_open) == len(mine)  # every candle the exchange has in that span
                for c in mine:
                    assert [c.open, c.high, c.low, c.close, c.volume] == pytest.approx(
                        by_open[c.open_time][1:]
                    )
            # quotes: the book top as Mambo events, values from the recording
            recorded = {(q.bid, q.ask) for s in ex.symbols.values() for q in s.quotes}
            assert out.quote_events and all((q.bid, q.ask) in recorded for q in out.quote_events)

    asyncio.run(main())


def test_backfill_pages_through_a_range_exactly() -> None:
    async def main() -> None:
        async with running_exchange(speed=0, history_seconds=400) as (ex, client):
            sym = ex.symbols["ETHUSDT"]
            since, until = int(sym.ts[10]), int(sym.ts[3_000])
            trades = await fetch_trades_between(client, "ETH/USDT", since, until, limit=250)
            expected = sym.trade_id[(sym.ts >= since) & (sym.ts < until)].tolist()
            assert [int(t["id"]) for t in trades] == expected
            batch = trades_from_ccxt("binance", trades, ts_init=1)
            assert batch.keys == ("binance:ETH/USDT",) and len(batch) == len(expected)
            rows = await fetch_candles_between(client, "ETH/USDT", "1m", since, until, limit=2)
            assert [r[0] for r in rows] == sorted({t - t % 60_000 for t in sym.ts[10:3_000].tolist()})[1:]

    asyncio.run(main())


def test_source_feeds_the_embedded_runtime() -> None:
    async def main() -> None:
        async with running_exchange(speed=20, history_seconds=5) as (_, client):
            runtime = EmbeddedRuntime(EngineConfig(timeframes=("1s",), trading_timeframe="1s",
                                                   initial_cash=Decimal(1000)))  # fmt: skip
            publisher = EmbeddedPublisher(runtime)
            source = ExchangeSource(client, publisher, SourceConfig("binance", ["BTC/USDT"], timeframe="1s"))
            task = asyncio.create_task(source.run())
            try:
                await _until(
                    lambda: min(runtime.bus.counts["md.candles.1s"], runtime.bus.counts["md.candles"]) >= 3,
                    15,
                )
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            assert runtime.bus.counts["md.trades"] == source.counts["trades"] > 0
            assert runtime.bus.counts["md.quotes"] > 0 and runtime.bus.counts["md.candles"] > 0
            assert runtime.dead_letter_count == 0
            assert runtime.bus.counts[FEED_HEALTH.name] >= 3  # connected, per stream

    asyncio.run(main())


def test_a_stall_is_reported_with_its_stream_and_age_and_reaches_clickhouse(
    clickhouse_client: Any, clickhouse_db: str
) -> None:
    """A silent stall on the exchange: the stream is reported ``stalled`` with the age of its last
    message (the stall threshold, not the time since the start), then ``reconnected``; periodic
    ``alive`` ages in between; every event goes through the bus into the feed_health table."""
    stall_seconds, ran_before = 0.5, 1.5

    async def main() -> list[FeedHealth]:
        async with running_exchange(speed=20, history_seconds=5) as (ex, client):
            runtime = EmbeddedRuntime(EngineConfig(timeframes=("1s",), trading_timeframe="1s",
                                                   initial_cash=Decimal(1000)))  # fmt: skip
            sink = ClickHouseSink(clickhouse_client, clickhouse_db)
            runtime.observe(SinkObserver(sink))
            seen: list[FeedHealth] = []
            runtime.observe(lambda topic, e: seen.append(e) if topic == FEED_HEALTH.name else None)
            config = SourceConfig("binance", ["BTC/USDT"], streams=("trades",), stall_seconds=stall_seconds,
                                  health_seconds=0.2, backoff=Backoff(base=0.05, cap=0.1))  # fmt: skip
            source = ExchangeSource(client, EmbeddedPublisher(runtime), config)
            task = asyncio.create_task(source.run())
            try:
                await _until(lambda: source.counts["trades"] > 20, 10)
                await asyncio.sleep(ran_before)
                await ex.inject("stall", seconds=0.8)
                await _until(lambda: any(h.status == "reconnected" for h in seen), 10)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            sink.flush()
            return seen

    seen = asyncio.run(main())
    assert {h.stream for h in seen} == {"trades:BTC/USDT"}
    statuses = [h.status for h in seen]
    assert statuses[0] == "connected" and "alive" in statuses
    [stalled] = [h for h in seen if h.status == "stalled"]
    assert stall_seconds <= stalled.age_seconds < ran_before  # silent since its last trade, not since start
    after = seen[seen.index(stalled) + 1 :]
    changes = [h.status for h in after if h.status != "alive"]  # REST fills what the stall lost
    assert changes[-1] == "reconnected" and set(changes[:-1]) == {"gap_filled"}
    assert all(h.age_seconds < stall_seconds for h in seen[: seen.index(stalled)] if h.status == "alive")
    stored = read_events(clickhouse_client, FEED_HEALTH.table, clickhouse_db)
    assert sorted(stored, key=lambda h: h.event_id) == sorted(seen, key=lambda h: h.event_id)


def test_a_long_gap_is_filled_a_page_at_a_time() -> None:
    """Started with a resume point minutes back: the history comes from REST and reaches the
    publisher page by page (never more than a page at once: memory holds a page, not the gap), in
    order, with nothing missing."""

    async def main() -> None:
        async with running_exchange(speed=0, history_seconds=240) as (ex, client):
            sym = ex.symbols["BTCUSDT"]
            since = int(sym.ts[0])
            out = Recorder()
            config = SourceConfig("binance", ["BTC/USDT"], streams=("trades",), since_ms=since)
            source = ExchangeSource(client, out, config)
            task = asyncio.create_task(source.run())
            try:
                await _until(
                    lambda: out.trade_ids("binance:BTC/USDT")[-1:] == [int(sym.trade_id[sym.released - 1])],
                    20,
                )
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            assert out.trade_ids("binance:BTC/USDT") == sym.trade_id[: sym.released].tolist()
            assert sym.released > 3_000 and max(len(b) for b in out.batches) <= 1_000

    asyncio.run(main())


def test_every_book_top_arrives_and_a_clean_run_reports_no_stall() -> None:
    """A minute of the recording released in three bursts (as a replay that runs ahead of a busy
    pipeline delivers it): ccxt.pro resolves ``watch_bids_asks`` once per wake-up and keeps only the
    latest top, so the source saw one or two of the minute's 792 book tops before; every one arrives
    now, in the exchange's order, with its time and prices. Trades whose frames never came, with no
    trade after them to reveal the gap (here the last two seconds', dropped), come from REST on
    ``catch_up``. Nothing is reported stalled or disconnected."""

    async def main() -> None:
        async with running_exchange(speed=0) as (ex, client):
            out = Recorder()
            config = SourceConfig("binance", SYMBOLS, streams=("trades", "quotes"), since_ms=ex.now_ms)
            source = ExchangeSource(client, out, config)
            task = asyncio.create_task(source.run())

            def released() -> list[Quote]:
                return [q for s in ex.symbols.values() for q in s.quotes[: s.quotes_released]]

            try:
                await _until(lambda: ex.subscribed(("aggTrade", "bookTicker")), 10)
                for _ in range(3):
                    await ex.advance(20)
                assert len(released()) > 500
                await _until(lambda: len(out.quote_events) >= len(released()), 10)
                await ex.inject("gap", count=10**6)  # the trade frames stop; the book tops go on
                await ex.advance(2)
                await _until(lambda: len(out.quote_events) >= len(released()), 10)
                await asyncio.sleep(0.2)  # nothing more comes
                missing = sum(s.released for s in ex.symbols.values()) - source.counts["trades"]
                assert missing > 0 and await source.catch_up() == missing
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for symbol in SYMBOLS:
                got = [(q.ts_event, q.bid, q.ask, q.bid_qty) for q in out.quote_events if q.symbol == symbol]
                assert got == [
                    (q.ts_event, q.bid, q.ask, q.bid_qty) for q in released() if q.symbol == symbol
                ]
                sym = ex.symbols[symbol.replace("/", "")]
                assert out.trade_ids(f"binance:{symbol}") == sym.trade_id[: sym.released].tolist()
            assert len({q.event_id for q in out.quote_events}) == len(released())
            assert not [h for h in out.health_events if h.status in ("stalled", "disconnected")]

    asyncio.run(main())
