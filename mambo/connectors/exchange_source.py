"""Live market data from any ccxt exchange, without gaps or duplicates.

:class:`ExchangeSource` watches trades, candles and the book top of its symbols through ccxt.pro and
hands Mambo events (raw exchange dicts stop here) to a :class:`Publisher`: the embedded runtime
(:class:`EmbeddedPublisher`), ClickHouse (:class:`ClickHousePublisher`, for ``mambo backfill``) or
Kafka (the Kafka producer implements the same protocol).

Gaps. At start (from ``since_ms``, when given) and after every reconnect, the stream is subscribed
first and the missing history is then fetched over REST (:func:`fetch_trades_between`,
:func:`fetch_candles_between`: paginated, rate limited by ccxt, retried by
:func:`~mambo.connectors.errors.with_retry`) up to the first streamed trade, so nothing falls between
the two. Trades are deduplicated by trade id per market (a bounded window of recent ids) and
published in order. On exchanges whose trade ids are consecutive (:data:`CONSECUTIVE_TRADE_IDS`: a
quirk kept as data), a jump in the ids is a gap too, and is filled the same way.

Candles. The stream says when a candle closed (a later one opened); the closed candle is then
published as REST gives it, the exchange's final word, since ccxt's ``newUpdates`` count only new
timestamps and a closing candle's last update can be missing from what a watch returns.

Health. :meth:`ExchangeSource.health` gives the age of the last message per stream, and every
``health_seconds`` each stream's age goes to the publisher as a
:class:`~mambo.schemas.events.FeedHealth` event (``alive``; topic ``feeds.health``, table
``feed_health``). A stream silent for ``stall_seconds`` is treated as dead: its connection is closed
and reopened; every disconnect waits an exponential backoff with jitter first. Each change (stalled,
disconnected, reconnected, gap filled) is a FeedHealth event with the stream's age at that moment
and a log line.

Book tops. ccxt.pro resolves a ``watch_bids_asks`` once per wake-up and keeps only the latest top per
symbol, so the tops that arrive between two calls reach no caller: on a busy event loop nearly all of
them (the exchange demo recorded 212 of 9,077). While it runs, the source therefore has ccxt's table
of the latest tops (``client.bidsasks``) hand it every top written to it, in the order ccxt parsed
them, and publishes them all (at most ``quote_buffer`` waiting; beyond that the oldest are dropped,
with a warning). Where an exchange's ccxt code does not keep that table, the watch's answer is used.

Binance notes: trades are watched on the ``aggTrade`` stream, whose ids are those of the REST
``aggTrades`` that fill gaps (the ``trade`` stream's ids are not); Binance's spot book ticker carries
no time, so a quote's ``ts_event`` is then the time of the market's last trade ccxt had parsed when
the quote came (the exchange's clock as we know it), or the local time before any trade; a ticker's
own time is used when it has one (Binance's futures frames, the local exchange's replay).

Perpetuals (a symbol with a settle currency, ``BTC/USDT:USDT``). A ``marks:<symbol>`` stream watches
the mark price (ccxt.pro ``watch_mark_price``: Binance's ``@markPrice@1s``) into md.mark, with the
same stall, reconnect and health handling as trades; its frames also say the next funding time. A
mark goes in line with the market's trades (where paper trading values and liquidates at it): after
the trades at or before its time, waiting for them if the trade stream is behind.
Funding (md.funding) goes in line with the market's trades, as a replay puts it: the funding times
from ``since_ms`` on are fetched over REST (:func:`fetch_funding_between`) at start and after each
reconnect; a trade after the next funding time (known from the mark frames) holds the trades from
there until that funding's settled rate is fetched over REST, the exchange's final word (retried while
the exchange has not published it yet); then the trades up to it, the funding, and the rest go out.

End of stream. Trades that a full ccxt cache dropped, or that ccxt parsed after a watch returned,
reach the source only with a later trade (ccxt hands them over on the next message; the ids reveal
what the cache dropped, and REST fills it). When no trade follows (a replay that ended),
:meth:`ExchangeSource.catch_up` fills every market to the exchange's latest trade over REST, as a
reconnect does.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import structlog

from mambo.connectors.errors import Backoff, TemporaryError, classify, with_retry
from mambo.core.margin import is_perpetual
from mambo.schemas.batches import SIDE_CODES, TradeBatch
from mambo.schemas.events import (
    Candle,
    FeedHealth,
    FeedStatus,
    FundingRate,
    MarkPrice,
    Quote,
    make_id,
    market_key,
    timeframe_ns,
)
from mambo.schemas.topics import EXCHANGE_CANDLES, FEED_HEALTH, MARK_PRICES, QUOTES

__all__ = [
    "CONSECUTIVE_TRADE_IDS",
    "ClickHousePublisher",
    "EmbeddedPublisher",
    "ExchangeSource",
    "KafkaSourcePublisher",
    "Publisher",
    "SourceConfig",
    "candles_from_ccxt",
    "fetch_candles_between",
    "fetch_funding_between",
    "fetch_trades_between",
    "funding_from_ccxt",
    "mark_from_ccxt",
    "quote_from_ccxt",
    "select_symbols",
    "trade_pages",
    "trades_from_ccxt",
]

log = structlog.get_logger(__name__)

_MS = 1_000_000
_HOUR_MS = 3_600_000
#: Exchanges whose public trade ids are consecutive integers per market, so a jump is a gap.
CONSECUTIVE_TRADE_IDS = frozenset({"binance", "binanceus", "binanceusdm"})
#: Extra ccxt.pro ``watch_trades`` parameters per exchange (the stream whose ids match REST's).
WATCH_TRADES_PARAMS: dict[str, dict[str, Any]] = {
    "binance": {"name": "aggTrade"},
    "binanceusdm": {"name": "aggTrade"},
}


class Publisher(Protocol):
    """Where a source's events go. Calls must not block (a Kafka producer queues and returns)."""

    def trades(self, batch: TradeBatch) -> None: ...
    def quotes(self, quotes: Sequence[Quote]) -> None: ...
    def candles(self, candles: Sequence[Candle]) -> None: ...
    def health(self, event: FeedHealth) -> None: ...
    def marks(self, marks: Sequence[MarkPrice]) -> None: ...
    def funding(self, rates: Sequence[FundingRate]) -> None: ...


class EmbeddedPublisher:
    """Publishes into the embedded runtime (validation and dead letters are the runtime's); feed
    health goes on the bus as it is, to its observers (the ClickHouse sink, the API)."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime

    def trades(self, batch: TradeBatch) -> None:
        self.runtime.ingest_trades(batch)

    def quotes(self, quotes: Sequence[Quote]) -> None:
        self.runtime.ingest_quotes(quotes)

    def candles(self, candles: Sequence[Candle]) -> None:
        self.runtime.ingest_candles(candles)

    def health(self, event: FeedHealth) -> None:
        self.runtime.bus.publish(FEED_HEALTH.name, event)

    def marks(self, marks: Sequence[MarkPrice]) -> None:
        self.runtime.ingest_marks(marks)

    def funding(self, rates: Sequence[FundingRate]) -> None:
        self.runtime.ingest_funding(rates)


class ClickHousePublisher:
    """Writes market data straight to its ClickHouse tables (``mambo backfill``); flush to finish."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink

    def trades(self, batch: TradeBatch) -> None:
        if len(batch):
            self.sink.write_columns("trades", batch.columns())

    def quotes(self, quotes: Sequence[Quote]) -> None:
        self.sink.write("quotes", list(quotes))

    def candles(self, candles: Sequence[Candle]) -> None:
        self.sink.write("candles", list(candles))

    def health(self, event: FeedHealth) -> None:
        self.sink.write(FEED_HEALTH.table, [event])

    def marks(self, marks: Sequence[MarkPrice]) -> None:
        self.sink.write(MARK_PRICES.table, list(marks))

    def funding(self, rates: Sequence[FundingRate]) -> None:
        from mambo.schemas.topics import FUNDING_RATES

        self.sink.write(FUNDING_RATES.table, list(rates))


class KafkaSourcePublisher:
    """Publishes to Kafka through :class:`mambo.streams.kafka.producer.KafkaPublisher` (idempotent,
    keyed by market; feed health keyed by exchange)."""

    def __init__(self, bootstrap: str, **config: Any) -> None:
        from mambo.streams.kafka.producer import KafkaPublisher

        self.producer = KafkaPublisher(bootstrap, **config)

    def trades(self, batch: TradeBatch) -> None:
        self.producer.publish_trades(batch)

    def quotes(self, quotes: Sequence[Quote]) -> None:
        self.producer.publish_many(QUOTES, quotes)

    def candles(self, candles: Sequence[Candle]) -> None:
        self.producer.publish_many(EXCHANGE_CANDLES, candles)

    def health(self, event: FeedHealth) -> None:
        self.producer.publish_many(FEED_HEALTH, [event])

    def marks(self, marks: Sequence[MarkPrice]) -> None:
        self.producer.publish_marks(marks)

    def funding(self, rates: Sequence[FundingRate]) -> None:
        self.producer.publish_funding(rates)

    def flush(self) -> None:
        self.producer.flush()


async def select_symbols(client: Any, *, top: int | None = None, quote: str | None = None) -> list[str]:
    """Symbols by rule: active spot markets (quoted in ``quote`` when given), the ``top`` N by 24h
    quote volume when given, else all of them, sorted."""
    markets = await client.load_markets()
    spot = [m["symbol"] for m in markets.values() if m.get("spot") and m.get("active") is not False
            and (quote is None or m.get("quote") == quote)]  # fmt: skip
    if top is None:
        return sorted(spot)
    tickers = await with_retry(lambda: client.fetch_tickers(spot), what="fetch_tickers", client=client)
    volume = {s: float(tickers.get(s, {}).get("quoteVolume") or 0.0) for s in spot}
    return sorted(spot, key=lambda s: -volume[s])[:top]


# --- ccxt structures -> Mambo events (the border) ------------------------------------------------


def trades_from_ccxt(exchange: str, trades: Sequence[dict[str, Any]], ts_init: int) -> TradeBatch:
    """ccxt trade structures (any symbols) as one batch, in the given order."""
    keys: dict[str, int] = {}
    market = [keys.setdefault(market_key(exchange, t["symbol"]), len(keys)) for t in trades]
    return TradeBatch(
        tuple(keys),
        np.array(market, np.int32),
        np.array([int(t["timestamp"]) * _MS for t in trades], np.int64),
        np.array([float(t["price"]) for t in trades], np.float64),
        np.array([float(t["amount"]) for t in trades], np.float64),
        np.array([SIDE_CODES.get(t.get("side") or "", 0) for t in trades], np.int8),
        np.array([str(t["id"]) for t in trades], dtype=object),
        ts_init=ts_init,
    )


def candles_from_ccxt(
    exchange: str, symbol: str, timeframe: str, rows: Sequence[Sequence[Any]], ts_init: int
) -> list[Candle]:
    """Closed ccxt OHLCV rows ``[ms, o, h, l, c, v]`` as Candle events (``trades`` unknown: 0)."""
    tf = timeframe_ns(timeframe)
    out = []
    for r in rows:
        open_time = int(r[0]) * _MS
        out.append(
            Candle(
                event_id=make_id("md.candles", exchange, symbol, timeframe, open_time),
                ts_event=open_time + tf,
                ts_init=ts_init,
                exchange=exchange,
                symbol=symbol,
                timeframe=timeframe,
                open_time=open_time,
                open=float(r[1]),
                high=float(r[2]),
                low=float(r[3]),
                close=float(r[4]),
                volume=float(r[5] or 0.0),
                trades=0,
            )
        )
    return out


def quote_from_ccxt(exchange: str, ticker: dict[str, Any], ts_event_ms: int, ts_init: int) -> Quote:
    """A ccxt bid/ask ticker as a Quote (``ts_event_ms``: the ticker's time, or the caller's best)."""
    symbol = ticker["symbol"]
    ts = int(ticker.get("timestamp") or ts_event_ms) * _MS
    info = ticker.get("info") or {}
    update = info.get("u", "") if isinstance(info, dict) else ""
    return Quote(
        event_id=make_id("quote", market_key(exchange, symbol), ts, update),
        ts_event=ts,
        ts_init=ts_init,
        exchange=exchange,
        symbol=symbol,
        bid=float(ticker["bid"]),
        bid_qty=float(ticker.get("bidVolume") or 0.0),
        ask=float(ticker["ask"]),
        ask_qty=float(ticker.get("askVolume") or 0.0),
    )


def mark_from_ccxt(exchange: str, ticker: dict[str, Any], ts_init: int) -> MarkPrice | None:
    """A ccxt mark-price ticker (``watch_mark_price``) as a MarkPrice; None without a mark or a time."""
    if ticker.get("markPrice") is None or ticker.get("timestamp") is None:
        return None
    ts = int(ticker["timestamp"]) * _MS
    index = ticker.get("indexPrice")
    return MarkPrice(
        event_id=make_id("mark", market_key(exchange, ticker["symbol"]), ts),
        ts_event=ts,
        ts_init=ts_init,
        exchange=exchange,
        symbol=ticker["symbol"],
        mark_price=float(ticker["markPrice"]),
        index_price=float(index) if index else None,
    )


def funding_from_ccxt(exchange: str, symbol: str, row: dict[str, Any], ts_init: int) -> FundingRate:
    """A ccxt funding-rate history row as a FundingRate at its funding time (with the mark price
    there when the venue gives it: Binance's ``fundingRate`` does)."""
    ts = int(row["timestamp"]) * _MS
    info = row.get("info") or {}
    mark = info.get("markPrice") if isinstance(info, dict) else None
    return FundingRate(
        event_id=make_id("funding_rate", exchange, symbol, ts),
        ts_event=ts,
        ts_init=ts_init,
        exchange=exchange,
        symbol=symbol,
        rate=float(row["fundingRate"]),
        mark_price=float(mark) if mark not in (None, "", "0") else None,
    )


# --- REST history, paginated ---------------------------------------------------------------------


async def trade_pages(
    client: Any,
    symbol: str,
    since_ms: int,
    until_ms: int,
    *,
    limit: int = 1000,
    backoff: Backoff | None = None,
) -> AsyncIterator[list[dict[str, Any]]]:
    """Every trade of ``symbol`` with ``since_ms <= time < until_ms``, a page at a time, oldest first,
    ids unique: memory holds one page however long the range (a gap of hours, a day's backfill).

    Pages through windows of at most an hour (Binance's ``aggTrades`` limit), advancing to the last
    trade's time when a page is full; trades sharing that millisecond come again and are dropped by id
    (only that millisecond's ids are remembered).
    """
    seen: set[str] = set()  # ids at the cursor's millisecond, which the next page starts with
    cursor = since_ms
    while cursor < until_ms:
        window_end = min(cursor + _HOUR_MS, until_ms) - 1
        start = cursor

        async def page(start: int = start, end: int = window_end) -> list[dict[str, Any]]:
            result: list[dict[str, Any]] = await client.fetch_trades(
                symbol, since=start, limit=limit, params={"until": end}
            )
            return result

        trades = await with_retry(page, what=f"fetch_trades {symbol}", backoff=backoff, client=client)
        fresh = [t for t in trades if str(t["id"]) not in seen and since_ms <= t["timestamp"] < until_ms]
        fresh.sort(key=_trade_order)
        if len(trades) >= limit and fresh:  # a full page: more in this window, from its last trade's time
            last = int(trades[-1]["timestamp"])
            seen = (seen if last == cursor else set()) | {
                str(t["id"]) for t in trades if t["timestamp"] == last
            }
            cursor = last
        else:  # the next window
            cursor = window_end + 1
        if fresh:
            yield fresh


async def fetch_trades_between(
    client: Any,
    symbol: str,
    since_ms: int,
    until_ms: int,
    *,
    limit: int = 1000,
    backoff: Backoff | None = None,
) -> list[dict[str, Any]]:
    """Every trade of ``symbol`` with ``since_ms <= time < until_ms``, oldest first, ids unique, in one
    list (:func:`trade_pages` holds one page at a time)."""
    out: list[dict[str, Any]] = []
    async for page in trade_pages(client, symbol, since_ms, until_ms, limit=limit, backoff=backoff):
        out += page
    return out


def _discard(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not warn about it


def _id_order(trade_id: Any) -> tuple[int, str]:
    s = str(trade_id)
    return (int(s), "") if s.isdigit() else (0, s)


def _trade_order(trade: dict[str, Any]) -> tuple[int, tuple[int, str]]:
    """Time, then id: the order trades are published in."""
    return int(trade["timestamp"]), _id_order(trade["id"])


async def fetch_candles_between(
    client: Any,
    symbol: str,
    timeframe: str,
    since_ms: int,
    until_ms: int,
    *,
    limit: int = 1000,
    backoff: Backoff | None = None,
) -> list[list[Any]]:
    """OHLCV rows of candles opening in ``[since_ms, until_ms)``, oldest first (closed ones if
    ``until_ms`` is the open time of the candle still forming)."""
    step = timeframe_ns(timeframe) // _MS
    out: list[list[Any]] = []
    cursor = -(-since_ms // step) * step  # the first open time at or after since_ms
    while cursor < until_ms:
        start = cursor

        async def page(start: int = start) -> list[list[Any]]:
            rows: list[list[Any]] = await client.fetch_ohlcv(symbol, timeframe, since=start, limit=limit)
            return rows

        rows = await with_retry(page, what=f"fetch_ohlcv {symbol}", backoff=backoff, client=client)
        rows = [r for r in rows if cursor <= r[0] < until_ms]
        out += rows
        if not rows:
            break  # nothing opens after the cursor (the exchange answers from ``since`` on)
        cursor = int(rows[-1][0]) + step
    return out


async def fetch_funding_between(
    client: Any,
    symbol: str,
    since_ms: int,
    until_ms: int,
    *,
    limit: int = 1000,
    backoff: Backoff | None = None,
) -> list[dict[str, Any]]:
    """Funding-rate history rows of ``symbol`` with ``since_ms <= time < until_ms``, oldest first
    (ccxt ``fetch_funding_rate_history``, paged from the last row's time)."""
    out: list[dict[str, Any]] = []
    cursor = since_ms
    while cursor < until_ms:
        start = cursor

        async def page(start: int = start) -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = await client.fetch_funding_rate_history(
                symbol, since=start, limit=limit, params={"until": until_ms - 1}
            )
            return rows

        rows = await with_retry(page, what=f"fetch_funding_rate_history {symbol}", backoff=backoff,
                                client=client)  # fmt: skip
        rows = sorted((r for r in rows if cursor <= r["timestamp"] < until_ms), key=lambda r: r["timestamp"])
        out += rows
        if len(rows) < limit:
            break
        cursor = int(rows[-1]["timestamp"]) + 1
    return out


# --- the live source -----------------------------------------------------------------------------


@dataclass
class SourceConfig:
    exchange: str
    symbols: list[str]
    #: "marks" runs for perpetual symbols only (and with it, funding in line with the trades)
    streams: tuple[str, ...] = ("trades", "quotes", "candles", "marks")
    funding_wait_seconds: float = 30.0  # how long a funding time's rate is asked for before going on
    timeframe: str = "1m"
    stall_seconds: float = 30.0
    health_seconds: float = 10.0  # every stream's age is published this often (0: never)
    since_ms: int | None = None  # fill trades and candles from here at start
    dedupe_window: int = 20_000  # recent trade ids remembered per market (a REST page is 1,000)
    quote_buffer: int = 100_000  # book tops parsed and not yet published, at most
    backoff: Backoff = field(default_factory=lambda: Backoff(base=0.5, cap=30.0, attempts=8))


@dataclass
class _TradeState:
    last_ts: int | None = None  # ms of the last published trade
    last_id: int | None = None  # for exchanges with consecutive ids
    recent: deque[str] = field(default_factory=deque)
    seen: set[str] = field(default_factory=set)


class _BookTops(dict[str, Any]):
    """ccxt's table of the latest book top per symbol (``client.bidsasks``), which also hands every top
    written to it to ``on_top``: what ccxt parsed, whether or not a watch call was waiting for it."""

    def __init__(self, tops: dict[str, Any], on_top: Callable[[str, dict[str, Any]], None]) -> None:
        super().__init__(tops)
        self.on_top = on_top

    def __setitem__(self, symbol: str, ticker: dict[str, Any]) -> None:
        super().__setitem__(symbol, ticker)
        self.on_top(symbol, ticker)


class ExchangeSource:
    """Streams of one exchange's markets into a :class:`Publisher`; see the module docstring."""

    def __init__(
        self,
        client: Any,
        publisher: Publisher,
        config: SourceConfig,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.client = client
        self.publisher = publisher
        self.config = config
        self.clock = clock
        self._trades: dict[str, _TradeState] = {s: _TradeState() for s in config.symbols}
        self._last_candle: dict[str, list[Any]] = {}  # the candle still forming, per symbol
        self._last_closed: dict[str, int] = {}  # open time (ms) of the last published candle
        self._last_message: dict[str, float] = {}  # monotonic time of each stream's last message
        self._started = time.monotonic()  # the age of a stream not heard from yet counts from here
        self._last_trade_ms: dict[str, int] = {}
        self._tops: deque[Quote] = deque()  # book tops ccxt parsed, not yet published
        self._tops_taped = False  # whether this exchange's ccxt code writes its book tops to bidsasks
        self._tops_dropped = 0  # tops dropped from a full buffer since the last publish
        #: perpetuals: the funding times (ms) the mark frames gave, not yet published (a frame after a
        #: funding time names the next one, perhaps before the trades reach the first), the last mark
        #: frame's estimated rate, funding fetched and not yet published (in time order), the last
        #: funding time published
        self._next_funding: dict[str, set[int]] = {}
        self._estimate: dict[str, tuple[int, float]] = {}
        self._funding: dict[str, deque[FundingRate]] = {s: deque() for s in config.symbols}
        self._last_funding_ms: dict[str, int] = {}
        #: perpetuals: mark frames waiting for the trades to pass their time (they go in line after),
        #: and the time (ms) of the last trade published
        self._marks: dict[str, deque[MarkPrice]] = {s: deque() for s in config.symbols}
        self._emitted_ms: dict[str, int] = {}
        self.counts = {
            "trades": 0,
            "quotes": 0,
            "candles": 0,
            "marks": 0,
            "funding": 0,
            "duplicates": 0,
            "recovered": 0,
            "reconnects": 0,
        }

    @property
    def streams(self) -> list[str]:
        """The streams this source runs: ``trades:<symbol>``, ``candles:<symbol>``, ``quotes``."""
        cfg = self.config
        out = [f"{kind}:{symbol}" for symbol in cfg.symbols for kind in ("trades", "candles")
               if kind in cfg.streams]  # fmt: skip
        out += [f"marks:{symbol}" for symbol in self._perpetuals]
        return out + (["quotes"] if "quotes" in cfg.streams else [])

    @property
    def _perpetuals(self) -> list[str]:
        """The symbols with a mark stream: perpetuals, when "marks" is among the streams."""
        return [s for s in self.config.symbols if is_perpetual(s)] if "marks" in self.config.streams else []

    def health(self) -> dict[str, float]:
        """Seconds since the last message of each stream (since the start for one not heard from)."""
        return {stream: self._age(stream) for stream in self.streams}

    def _age(self, stream: str) -> float:
        return time.monotonic() - self._last_message.get(stream, self._started)

    async def run(self) -> None:
        """Run every stream until cancelled (or an error that must stop us is raised)."""
        cfg = self.config
        self._started = time.monotonic()
        tasks = []
        for symbol in cfg.symbols:
            if "trades" in cfg.streams:
                tasks.append(self._loop(f"trades:{symbol}", symbol, self._trades_once))
            if "candles" in cfg.streams:
                tasks.append(self._loop(f"candles:{symbol}", symbol, self._candles_once))
        for symbol in self._perpetuals:
            tasks.append(self._loop(f"marks:{symbol}", symbol, self._marks_once))
        if "quotes" in cfg.streams:
            tasks.append(self._loop("quotes", None, self._quotes_once))
        if cfg.health_seconds > 0:
            tasks.append(self._report_ages())
        taped = "quotes" in cfg.streams and isinstance(getattr(self.client, "bidsasks", None), dict)
        if taped:
            self.client.bidsasks = _BookTops(self.client.bidsasks, self._on_top)
        try:
            await asyncio.gather(*tasks)
        finally:
            if taped:  # ccxt's table as it was: nobody reads the tops once we stop
                self.client.bidsasks = dict(self.client.bidsasks)

    async def catch_up(self) -> int:
        """Fill every market's trades to the exchange's latest over REST now, as a reconnect does,
        instead of waiting for a next trade to reveal what a full ccxt cache dropped: for an end of
        stream (a replay that finished). Returns the trades recovered."""
        before = self.counts["recovered"]
        if "trades" in self.config.streams:
            for symbol in self.config.symbols:
                await self._fill_to_latest(symbol, f"trades:{symbol}")
        return self.counts["recovered"] - before

    async def _report_ages(self) -> None:
        """Every ``health_seconds``: each stream's age, as an ``alive`` event."""
        while True:
            await asyncio.sleep(self.config.health_seconds)
            for stream in self.streams:
                self._report(stream, "alive")

    # --- the reconnect loop, shared by every stream ----------------------------------------------

    async def _loop(self, stream: str, symbol: str | None, once: Callable[[str | None, bool], Any]) -> None:
        attempt, recovering = 0, self.config.since_ms is not None
        while True:
            try:
                await once(symbol, recovering)
            except TimeoutError:
                self._report(stream, "stalled", f"silent for more than {self.config.stall_seconds}s")
                await self._close_stream(symbol)
            except Exception as exc:  # classified: temporary ones reconnect, others stop us
                fault = classify(exc, self.client)
                if not isinstance(fault, TemporaryError):
                    log.error("source.fatal", stream=stream, error=str(fault))
                    raise fault from exc
                self._report(stream, "disconnected", str(fault)[:200])
            recovering = True
            self.counts["reconnects"] += 1
            delay = self.config.backoff.delay(attempt)
            attempt = min(attempt + 1, 16)
            await asyncio.sleep(delay)

    async def _watch(self, stream: str, call: Callable[[], Any] | asyncio.Future[Any]) -> Any:
        """One watch call (or an already started one), or TimeoutError after ``stall_seconds``.

        Not ``asyncio.wait_for``: it waits for the cancelled call to finish, and a ccxt watch that is
        parked on a dead connection may not; the call is cancelled and left to unwind on its own.
        """
        task = call if isinstance(call, asyncio.Future) else asyncio.ensure_future(call())
        try:
            done, _ = await asyncio.wait({task}, timeout=self.config.stall_seconds)
        finally:
            if not task.done():  # timed out, or we are being cancelled
                task.cancel()
                task.add_done_callback(_discard)
        if not done:
            raise TimeoutError
        if task.cancelled():  # ccxt cancels a watch whose connection it closed
            raise TemporaryError(f"{stream}: the watch was cancelled by its closing connection")
        result = task.result()
        self._last_message[stream] = time.monotonic()
        return result

    async def _close_stream(self, symbol: str | None) -> None:
        """Close the WebSocket connection(s) carrying ``symbol`` (all of them when None)."""
        for client in list(getattr(self.client, "clients", {}).values()):
            subs = " ".join(map(str, getattr(client, "subscriptions", {})))
            if symbol is None or symbol in subs:
                try:
                    await client.close()
                except Exception as exc:  # already closing: the reconnect goes on regardless
                    log.debug("source.close_failed", error=repr(exc))

    def _report(self, stream: str, status: FeedStatus, detail: str = "") -> None:
        """A FeedHealth event (with the stream's age now) to the publisher, and a log line."""
        now = self.clock()
        age = round(self._age(stream), 3)
        event = FeedHealth(
            event_id=make_id("health", self.config.exchange, stream, status, now),
            ts_event=now,
            ts_init=now,
            exchange=self.config.exchange,
            stream=stream,
            status=status,
            age_seconds=age,
            detail=detail,
        )
        log_fn = log.warning if status in ("stalled", "disconnected") else log.info
        if status != "alive":  # the periodic ages are data, not news
            log_fn("source.health", exchange=self.config.exchange, stream=stream, status=status,
                   age_seconds=age, detail=detail)  # fmt: skip
        self.publisher.health(event)

    # --- trades --------------------------------------------------------------------------------

    async def _trades_once(self, symbol: str | None, recovering: bool) -> None:
        assert symbol is not None
        stream = f"trades:{symbol}"
        params = WATCH_TRADES_PARAMS.get(self.config.exchange, {})

        def watch() -> Any:
            return self.client.watch_trades(symbol, params=dict(params))

        first = asyncio.ensure_future(watch())  # subscribing
        if recovering:
            try:  # fill up to the exchange's latest trade now, not when the next trade comes
                await self._fill_to_latest(symbol, stream)
            except BaseException:
                first.cancel()
                first.add_done_callback(_discard)
                raise
        batch = await self._watch(stream, first)
        if recovering:  # trades of the moment between that fill and the subscription
            batch = await self._fill_trades(symbol, batch, stream)
            self._report(stream, "reconnected")
        else:
            self._report(stream, "connected")
        await self._publish_trades(symbol, batch)
        while True:
            batch = await self._watch(stream, watch)
            if self._has_id_gap(symbol, batch):
                batch = await self._fill_trades(symbol, batch, stream)
            await self._publish_trades(symbol, batch)

    async def _fill_to_latest(self, symbol: str, stream: str) -> None:
        """Publish what was missed since the last published trade, through the exchange's latest."""
        state = self._trades[symbol]
        since = state.last_ts if state.last_ts is not None else self.config.since_ms
        if since is None:
            return

        async def latest() -> list[dict[str, Any]]:
            result: list[dict[str, Any]] = await self.client.fetch_trades(symbol, limit=1000)
            return result

        recent = await with_retry(latest, what=f"fetch_trades {symbol}", backoff=self.config.backoff,
                                  client=self.client)  # fmt: skip
        recent = sorted((t for t in recent if t["timestamp"] >= since), key=_trade_order)
        if not recent:
            return  # nothing since: the gap is empty
        n = 0
        if recent[0]["timestamp"] > since:  # more than a page was missed: page from ``since``
            # through recent[0]'s millisecond (the page may have cut a millisecond's trades in two),
            # publishing each page as it comes
            pages = trade_pages(self.client, symbol, since, recent[0]["timestamp"] + 1,
                                backoff=self.config.backoff)  # fmt: skip
            async for page in pages:
                n += await self._publish_trades(symbol, page)
        n += await self._publish_trades(symbol, recent)
        self.counts["recovered"] += n
        if n:
            self._report(stream, "gap_filled", f"{n} trades from REST since {since}")

    async def _fill_trades(
        self, symbol: str, batch: list[dict[str, Any]], stream: str
    ) -> list[dict[str, Any]]:
        """Publish the history before and within the batch: REST from the last published trade
        through the batch's last trade (the batch may hold trades from before the break, so its
        first trade does not mark where the new subscription began), merged with the batch in time
        order, a page at a time (memory holds a page however far behind the stream was). Returns the
        batch's trades still to publish (from the last page's last millisecond on), in order."""
        state = self._trades[symbol]
        since = state.last_ts if state.last_ts is not None else self.config.since_ms
        if since is None or not batch:
            return batch
        pending = sorted(batch, key=_trade_order)
        known = {str(t["id"]) for t in batch}
        recovered = 0
        pages = trade_pages(self.client, symbol, since, int(pending[-1]["timestamp"]) + 1,
                            backoff=self.config.backoff)  # fmt: skip
        async for page in pages:
            # the batch's trades before the page's last millisecond belong with it (those at that
            # millisecond may share it with the next page's first trades)
            split = bisect.bisect_left(pending, page[-1]["timestamp"], key=lambda t: t["timestamp"])
            before, pending = pending[:split], pending[split:]
            fetched = {str(t["id"]) for t in page}
            recovered += sum(1 for i in fetched if i not in known and i not in state.seen)
            extra = [t for t in before if str(t["id"]) not in fetched]  # streamed, not in REST's answer
            await self._publish_trades(symbol, sorted(page + extra, key=_trade_order) if extra else page)
        self.counts["recovered"] += recovered
        self._report(stream, "gap_filled", f"{recovered} trades from REST since {since}")
        return pending

    def _has_id_gap(self, symbol: str, batch: list[dict[str, Any]]) -> bool:
        """Whether the ids jump (last published, then the batch's), where ids are consecutive."""
        state = self._trades[symbol]
        if self.config.exchange not in CONSECUTIVE_TRADE_IDS or state.last_id is None or not batch:
            return False
        previous = state.last_id
        for t in batch:
            tid = str(t["id"])
            if not tid.isdigit():
                return False
            if int(tid) > previous + 1:
                return True
            previous = max(previous, int(tid))
        return False

    async def _publish_trades(self, symbol: str, trades: list[dict[str, Any]]) -> int:
        """Publish the trades not published yet, in order, with each funding time they pass in line
        (after the trades before it); the number published."""
        state = self._trades[symbol]
        fresh = []
        for t in trades:
            tid = str(t["id"])
            # older than the last published: published already (the stream and the fills are
            # ordered and gapless), e.g. from ccxt's cache of what the stream last delivered, which
            # can be far behind when REST did most of the work; same millisecond: by id
            if tid in state.seen or (state.last_ts is not None and t["timestamp"] < state.last_ts):
                self.counts["duplicates"] += 1
                continue
            state.seen.add(tid)
            state.recent.append(tid)
            if len(state.recent) > self.config.dedupe_window:
                state.seen.discard(state.recent.popleft())
            fresh.append(t)
        if not fresh:
            return 0
        last = fresh[-1]
        state.last_ts = max(state.last_ts or 0, int(last["timestamp"]))
        self._last_trade_ms[symbol] = state.last_ts
        if str(last["id"]).isdigit():
            state.last_id = max(state.last_id or 0, int(last["id"]))
        n, rest = len(fresh), fresh
        while rest and (rate := await self._funding_due(symbol, int(rest[-1]["timestamp"]))) is not None:
            at = rate.ts_event // _MS
            cut = bisect.bisect_left(rest, at, key=lambda t: int(t["timestamp"]))
            if cut:
                self._emit_trades(symbol, rest[:cut])
            self._emit_funding(symbol, [rate])
            rest = rest[cut:]
        if rest:
            self._emit_trades(symbol, rest)
        return n

    def _emit_trades(self, symbol: str, trades: list[dict[str, Any]]) -> None:
        """Publish trades (in time order), each mark waiting for them in line after the trades at or
        before its time."""
        marks = self._marks[symbol]
        while trades:
            if marks and marks[0].ts_event // _MS <= int(trades[-1]["timestamp"]):
                at = marks[0].ts_event // _MS
                cut = bisect.bisect_right(trades, at, key=lambda t: int(t["timestamp"]))
            else:
                at, cut = None, len(trades)
            if cut:
                self.publisher.trades(trades_from_ccxt(self.config.exchange, trades[:cut], self.clock()))
                self.counts["trades"] += cut
                self._emitted_ms[symbol] = int(trades[cut - 1]["timestamp"])  # trades come in time order
                trades = trades[cut:]
            if at is not None:
                self._emit_marks(symbol, until_ms=at)

    def _queue_mark(self, symbol: str, mark: MarkPrice) -> None:
        """A mark frame goes in line after the trades at or before its time: now if they are out, else
        with them (:meth:`_emit_trades`)."""
        self._marks[symbol].append(mark)
        emitted = self._emitted_ms.get(symbol)  # not the last trade seen: trades can be held for funding
        if "trades" not in self.config.streams:
            self._emit_marks(symbol, 1 << 62)
        elif emitted is not None and emitted >= mark.ts_event // _MS:
            self._emit_marks(symbol, emitted)

    def _emit_marks(self, symbol: str, until_ms: int) -> None:
        """The waiting marks of ``symbol`` up to ``until_ms``, in line now."""
        marks, out = self._marks[symbol], []
        while marks and marks[0].ts_event // _MS <= until_ms:
            out.append(marks.popleft())
        if out:
            self.publisher.marks(out)
            self.counts["marks"] += len(out)

    def _emit_funding(self, symbol: str, rates: list[FundingRate]) -> None:
        last = self._last_funding_ms.get(symbol, -1)
        rates = [r for r in rates if r.ts_event // _MS > last]  # once, whichever stream got there first
        if not rates:
            return
        self.publisher.funding(rates)
        self._last_funding_ms[symbol] = rates[-1].ts_event // _MS
        self.counts["funding"] += len(rates)

    # --- mark prices and funding (perpetuals) ----------------------------------------------------

    async def _marks_once(self, symbol: str | None, recovering: bool) -> None:
        assert symbol is not None
        stream = f"marks:{symbol}"

        def watch() -> Any:
            return self.client.watch_mark_price(symbol)

        first = True
        while True:
            ticker = await self._watch(stream, watch)
            info = ticker.get("info") if isinstance(ticker.get("info"), dict) else {}
            if first:  # the funding times missed (from the start, or while disconnected) over REST
                self._report(stream, "reconnected" if recovering else "connected")
                await self._fill_funding(symbol, int(ticker.get("timestamp") or self.clock() // _MS))
                first = False
            mark = mark_from_ccxt(self.config.exchange, ticker, self.clock())
            if mark is not None:
                self._queue_mark(symbol, mark)
            if info.get("T") is not None:
                self._next_funding.setdefault(symbol, set()).add(int(info["T"]))
            if info.get("r") not in (None, "") and mark is not None:
                self._estimate[symbol] = (mark.ts_event // _MS, float(info["r"]))
            await self._publish_due_funding(symbol)

    async def _fill_funding(self, symbol: str, until_ms: int) -> None:
        """Fetch the funding times after the last one published (or from ``since_ms``) up to
        ``until_ms`` over REST: queued to go in line with the trades."""
        last = self._last_funding_ms.get(symbol)
        queued = self._funding[symbol]
        since = (
            queued[-1].ts_event // _MS + 1
            if queued
            else last + 1
            if last is not None
            else self.config.since_ms
        )
        if since is None or since > until_ms:
            return
        rows = await fetch_funding_between(
            self.client, symbol, since, until_ms + 1, backoff=self.config.backoff
        )
        queued.extend(funding_from_ccxt(self.config.exchange, symbol, r, self.clock()) for r in rows)
        if rows and last is not None:
            self._report(
                f"marks:{symbol}", "gap_filled", f"{len(rows)} funding times from REST since {since}"
            )

    async def _publish_due_funding(self, symbol: str) -> None:
        """Funding the trades have already passed goes out now (it could not go in line: fetched
        after the trades past it were published); the rest waits for the trades."""
        state = self._trades[symbol]
        if "trades" not in self.config.streams:
            state_ms = 1 << 62  # no trades to go in line with
        else:
            state_ms = state.last_ts if state.last_ts is not None else -1
        while (rate := await self._funding_due(symbol, state_ms)) is not None:
            if "trades" in self.config.streams:
                log.warning("source.funding_late", exchange=self.config.exchange, symbol=symbol,
                            funding_time=rate.ts_event // _MS, last_trade=state_ms)  # fmt: skip
            self._emit_funding(symbol, [rate])

    async def _funding_due(self, symbol: str, last_trade_ms: int) -> FundingRate | None:
        """The next funding time at or before ``last_trade_ms`` (a trade there or later exists) with
        its settled rate, or None. A time known only from the mark frames is fetched over REST now,
        asked again while the exchange has not published it (``funding_wait_seconds``; then the mark
        stream's last estimate before it stands in, with a warning)."""
        queued = self._funding[symbol]
        last = self._last_funding_ms.get(symbol, -1)
        if (ready := self._funding_due_queued(symbol, last_trade_ms)) is not None or queued:
            return ready
        times = self._next_funding.get(symbol, set())
        for t in [t for t in times if t <= last]:
            times.discard(t)
        due = min(times, default=None)
        if due is None or due > last_trade_ms:
            return None
        deadline = time.monotonic() + self.config.funding_wait_seconds
        while True:
            rows = await fetch_funding_between(self.client, symbol, due, due + 1, backoff=self.config.backoff)
            if rows:
                rate = funding_from_ccxt(self.config.exchange, symbol, rows[0], self.clock())
                break
            estimate = self._estimate.get(symbol)
            if time.monotonic() > deadline and estimate is not None:
                log.warning("source.funding_estimated", exchange=self.config.exchange, symbol=symbol,
                            funding_time=due, rate=estimate[1])  # fmt: skip
                ts = due * _MS
                rate = FundingRate(
                    event_id=make_id("funding_rate", self.config.exchange, symbol, ts), ts_event=ts,
                    ts_init=self.clock(), exchange=self.config.exchange, symbol=symbol, rate=estimate[1],
                )  # fmt: skip
                break
            await asyncio.sleep(0.2)
        if not any(q.ts_event == rate.ts_event for q in queued):  # the other stream may have fetched it
            queued.append(rate)
        return self._funding_due_queued(symbol, last_trade_ms)

    def _funding_due_queued(self, symbol: str, last_trade_ms: int) -> FundingRate | None:
        queued = self._funding[symbol]
        last = self._last_funding_ms.get(symbol, -1)
        while queued and queued[0].ts_event // _MS <= last:
            queued.popleft()
        return queued[0] if queued and queued[0].ts_event // _MS <= last_trade_ms else None

    # --- candles -------------------------------------------------------------------------------

    async def _candles_once(self, symbol: str | None, recovering: bool) -> None:
        assert symbol is not None
        stream, tf = f"candles:{symbol}", self.config.timeframe

        def watch() -> Any:
            return self.client.watch_ohlcv(symbol, tf)

        if recovering:  # the candle forming at the break may have missed updates: REST has it whole
            self._last_candle.pop(symbol, None)
        announced = False
        while True:
            rows = await self._watch(stream, watch)
            if not announced and (rows or not recovering):
                if recovering:  # REST through the first candle seen after the reconnect
                    await self._fill_candles(symbol, int(rows[-1][0]), stream)
                self._report(stream, "reconnected" if recovering else "connected")
                announced = True
            await self._on_candles(symbol, rows, stream)

    async def _fill_candles(
        self, symbol: str, forming_ms: int, stream: str, first_ms: int | None = None
    ) -> None:
        """Publish, from REST, the closed candles after the last one published (or from ``first_ms``,
        or the configured start) up to the one opening at ``forming_ms``, excluded."""
        step = timeframe_ns(self.config.timeframe) // _MS
        last = self._last_closed.get(symbol)
        since = last + step if last is not None else (self.config.since_ms or first_ms)
        if since is None or since >= forming_ms:
            return
        rows = await fetch_candles_between(
            self.client, symbol, self.config.timeframe, since, forming_ms, backoff=self.config.backoff
        )
        self._publish_candles(symbol, rows)
        if rows and last is not None and len(rows) > 1:
            self._report(stream, "gap_filled", f"{len(rows)} candles from REST since {since}")

    async def _on_candles(self, symbol: str, rows: list[list[Any]], stream: str) -> None:
        """When a candle with a later open time arrives, the ones before it are closed: they are
        published as REST gives them, the exchange's final word. The stream only says when: ccxt's
        ``newUpdates`` count only new timestamps, so a closing candle's last update can be missing
        from what a watch returns, and a candle's values from the stream cannot be trusted whole."""
        for row in rows:
            current = self._last_candle.get(symbol)
            if current is not None and row[0] > current[0]:
                await self._fill_candles(symbol, int(row[0]), stream, first_ms=int(current[0]))
            if current is None or row[0] >= current[0]:
                self._last_candle[symbol] = list(row)

    def _publish_candles(self, symbol: str, rows: list[list[Any]]) -> None:
        last = self._last_closed.get(symbol, -1)
        rows = [r for r in rows if r[0] > last]
        if not rows:
            return
        self._last_closed[symbol] = int(rows[-1][0])
        candles = candles_from_ccxt(self.config.exchange, symbol, self.config.timeframe, rows, self.clock())
        self.publisher.candles(candles)
        self.counts["candles"] += len(candles)

    # --- book top ------------------------------------------------------------------------------

    async def _quotes_once(self, symbol: str | None, recovering: bool) -> None:
        symbols = self.config.symbols

        def watch() -> Any:
            return self.client.watch_bids_asks(symbols)

        first = True
        while True:
            tickers = await self._watch("quotes", watch)
            if first:  # reported on the first message, as the other streams are
                self._report("quotes", "reconnected" if recovering else "connected")
                first = False
            if self._tops_taped:  # every top ccxt parsed since the last wake-up, in its order
                quotes = list(self._tops)
                self._tops.clear()
                if self._tops_dropped:
                    log.warning("source.quotes_dropped", exchange=self.config.exchange,
                                dropped=self._tops_dropped, buffer=self.config.quote_buffer)  # fmt: skip
                    self._tops_dropped = 0
            else:
                quotes = [q for t in tickers.values() if (q := self._quote(t["symbol"], t)) is not None]
            if quotes:
                self.publisher.quotes(quotes)
                self.counts["quotes"] += len(quotes)

    def _on_top(self, symbol: str, ticker: dict[str, Any]) -> None:
        """A book top as ccxt parsed it (from :class:`_BookTops`): queued for the quotes stream."""
        self._tops_taped = True
        quote = self._quote(symbol, ticker) if symbol in self.config.symbols else None
        if quote is None:
            return
        if len(self._tops) >= self.config.quote_buffer:
            self._tops.popleft()
            self._tops_dropped += 1
        self._tops.append(quote)

    def _quote(self, symbol: str, ticker: dict[str, Any]) -> Quote | None:
        """A ccxt ticker as a Quote (None without both sides), stamped with the exchange's clock as
        this client knows it when the ticker carries no time: the market's last trade ccxt has parsed
        (ahead of the ones published), else the last one published, else the local time."""
        if ticker.get("bid") is None or ticker.get("ask") is None:
            return None
        now = self.clock()
        cached = (getattr(self.client, "trades", None) or {}).get(symbol)
        last = int(cached[-1]["timestamp"]) if cached else self._last_trade_ms.get(symbol, now // _MS)
        return quote_from_ccxt(self.config.exchange, ticker, last, now)
