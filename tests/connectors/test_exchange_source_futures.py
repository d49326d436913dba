"""The exchange source on a perpetual (issue 16's market data): ccxt.pro's own ``binanceusdm`` client,
only its URLs pointed at the local exchange replaying Binance's BTCUSDT recording across the funding
time of 2023-04-05 00:00 UTC. Expected figures come from the recording file, read here directly:

* md.mark: every mark frame the source published is one of the recording's (price, index, time),
  in time order, and the last one is there;
* md.funding: exactly the funding time the recording crosses, with the rate and mark of the first
  frame at or after it (as Binance settles and the local exchange answers on ``fundingRate``), put
  in line with the trades: after every trade before it, before every trade at or after it;
* the trades are the recording's, every one, in order, none twice.

A second run starts after the funding time, from the recording's beginning (``since_ms``): the
funding comes over REST and in line with the backfilled trades, through the embedded runtime, into
ClickHouse's ``funding_rates`` and ``mark_prices`` tables."""

from __future__ import annotations

import asyncio
import bisect
import gzip
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ccxt.pro
import numpy as np

from mambo.connectors.ccxt_client import local_urls
from mambo.connectors.exchange_source import ExchangeSource, SourceConfig
from mambo.exchange import serve
from mambo.exchange.binance.futures import FuturesExchange, load_usdm_recording
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import Candle, FeedHealth, FundingRate, MarkPrice, Quote

FIXTURE = Path(__file__).parents[1] / "fixtures" / "binance_usdm" / "btcusdt_20230404_funding.dat.gz"
SYMBOL = "BTC/USDT:USDT"
FUNDING_TIME = 1680652800000  # 2023-04-05 00:00 UTC
MS = 1_000_000


def messages() -> list[dict[str, Any]]:
    with gzip.open(FIXTURE, "rt") as f:
        return [json.loads(line.partition(" ")[2])["data"] for line in f]


class Sequence_:
    """A Publisher keeping what came, in the order it came."""

    def __init__(self) -> None:
        self.items: list[tuple[str, Any]] = []

    def trades(self, batch: TradeBatch) -> None:
        self.items.append(("trades", batch))

    def quotes(self, quotes: Sequence[Quote]) -> None:
        pass

    def candles(self, candles: Sequence[Candle]) -> None:
        pass

    def health(self, event: FeedHealth) -> None:
        self.items.append(("health", event))

    def marks(self, marks: Sequence[MarkPrice]) -> None:
        self.items += [("mark", m) for m in marks]

    def funding(self, rates: Sequence[FundingRate]) -> None:
        self.items += [("funding", r) for r in rates]

    def of(self, kind: str) -> list[Any]:
        return [x for k, x in self.items if k == kind]


class LastMark:
    """A publisher passed through, noting the time (ms) of the last mark published."""

    def __init__(self, publisher: Any) -> None:
        self.publisher, self.last = publisher, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.publisher, name)

    def marks(self, marks: Sequence[MarkPrice]) -> None:
        self.publisher.marks(marks)
        self.last = max([self.last, *(m.ts_event // MS for m in marks)])


async def run_source(publisher: Any, since_ms: int | None, history_seconds: float = 2) -> FuturesExchange:
    """The recording replayed a second at a time under a source of trades and marks, to its end, from
    ``history_seconds`` in."""
    exchange = FuturesExchange(load_usdm_recording(FIXTURE), history_seconds=history_seconds)
    runner, url = await serve(exchange)
    client = ccxt.pro.binanceusdm({})
    client.urls["api"] = local_urls(client.urls["api"], url)
    config = SourceConfig("binanceusdm", [SYMBOL], streams=("trades", "marks"), health_seconds=0,
                          since_ms=since_ms, stall_seconds=20)  # fmt: skip
    watching = LastMark(publisher)
    source = ExchangeSource(client, watching, config)
    task = asyncio.ensure_future(source.run())
    try:
        for _ in range(200):  # both streams subscribed before the clock moves
            if exchange.subscribed("btcusdt@markPrice@1s") and exchange.subscribed("btcusdt@aggTrade"):
                break
            await asyncio.sleep(0.02)
        # a second at a time (the recording has silent seconds), each mark frame taken before the next
        # (ccxt hands a watch only the latest mark when several came since it last returned)
        frames = sorted(m["E"] for m in messages() if m["e"] == "markPriceUpdate")
        clock = exchange.now_ms
        while not exchange.finished.is_set():
            clock += 1000
            await exchange.advance((clock - exchange.now_ms) / 1000)
            released = frames[bisect.bisect_right(frames, exchange.now_ms) - 1]
            for _ in range(50):
                if watching.last >= released:
                    break
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)
        await source.catch_up()
        assert not task.done(), task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
        await runner.cleanup()
    return exchange


def test_marks_and_funding_in_line_with_the_trades() -> None:
    published = Sequence_()
    asyncio.run(run_source(published, since_ms=None))
    recorded = messages()

    frames = {(m["E"], m["p"], m["i"]) for m in recorded if m["e"] == "markPriceUpdate"}
    marks = published.of("mark")
    assert len(marks) > 50
    assert {(m.ts_event // MS, f"{m.mark_price:.8f}", f"{m.index_price:.8f}") for m in marks} <= {
        (e, f"{float(p):.8f}", f"{float(i):.8f}") for e, p, i in frames
    }
    assert [m.ts_event for m in marks] == sorted(m.ts_event for m in marks)
    assert marks[-1].ts_event // MS == max(e for e, _, _ in frames)

    # the funding: the first frame at or after the funding time settles it (Binance's rule)
    settling = next(m for m in recorded if m["e"] == "markPriceUpdate" and m["E"] >= FUNDING_TIME)
    (funding,) = published.of("funding")
    assert (funding.ts_event, funding.rate, funding.mark_price) == (
        FUNDING_TIME * MS,
        float(settling["r"]),
        float(settling["p"]),
    )

    # in line: the trades before the funding time, the funding, then the rest
    order = [k for k, _ in published.items if k in ("trades", "funding")]
    at = order.index("funding")
    before = TradeBatch.concat([b for k, b in published.items[: published.items.index(("funding", funding))]
                                if k == "trades"])  # fmt: skip
    after = TradeBatch.concat([b for k, b in published.items[published.items.index(("funding", funding)) :]
                               if k == "trades"])  # fmt: skip
    assert 0 < at < len(order) - 1
    assert (before.ts < FUNDING_TIME * MS).all() and (after.ts >= FUNDING_TIME * MS).all()

    # every trade of the recording from the first streamed on (its aggTrade ids are its trade ids), in
    # order, once
    trades = TradeBatch.concat(published.of("trades"))
    expected = [m for m in recorded if m["e"] == "trade" and m["t"] >= int(trades.trade_id[0])]
    assert trades.trade_id.astype(np.int64).tolist() == [m["t"] for m in expected]
    assert (trades.ts // MS).tolist() == [m["T"] for m in expected]


def test_a_start_in_the_past_backfills_funding_into_clickhouse(
    clickhouse_client: Any, clickhouse_db: str
) -> None:
    """Started 110 s into the recording (past the funding time) from its beginning (``since_ms``): the
    funding time already past comes over REST and goes in line with the trades REST backfills, through
    the embedded runtime, into ClickHouse's tables; every trade once."""
    from mambo.connectors.clickhouse import ClickHouseSink
    from mambo.connectors.exchange_source import EmbeddedPublisher
    from mambo.core.stages import EngineConfig
    from mambo.streams.embedded import EmbeddedRuntime, SinkObserver

    first = min(m["E"] for m in messages())
    client, db = clickhouse_client, clickhouse_db
    sink = ClickHouseSink(client, db)
    runtime = EmbeddedRuntime(EngineConfig(timeframes=("1s",), trading_timeframe="1s"), metrics=False)
    runtime.observe(SinkObserver(sink))
    asyncio.run(run_source(EmbeddedPublisher(runtime), since_ms=first, history_seconds=110))
    runtime.finish()
    sink.flush()
    settling = next(m for m in messages() if m["e"] == "markPriceUpdate" and m["E"] >= FUNDING_TIME)
    rows = client.query(
        f"SELECT toUnixTimestamp64Milli(ts_event), rate, mark_price FROM `{db}`.funding_rates FINAL"
    ).result_rows
    assert [tuple(r) for r in rows] == [(FUNDING_TIME, float(settling["r"]), float(settling["p"]))]
    marks = client.command(f"SELECT count() FROM `{db}`.mark_prices FINAL")
    assert isinstance(marks, int) and marks > 20  # the last 30 s of frames
    trades = client.command(f"SELECT count() FROM `{db}`.trades FINAL")
    assert trades == sum(m["e"] == "trade" for m in messages())
