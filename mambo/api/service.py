"""The one service behind the REST routes, the WebSocket hub and the CLI.

History comes from ClickHouse (exact reads: ``FINAL``), the live view from the event stream:
:meth:`SignalService.on_event` is a bus observer (embedded runtime) or is fed by a Kafka consumer
(distributed mode); it keeps the latest combined signal per market and the feed's health, and
publishes to the :class:`~mambo.api.hub.Hub`.

ClickHouse calls are serialized by one lock: a chdb engine, or one HTTP session, runs one query at a
time per client.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Generic, Literal, TypeVar

from clickhouse_connect.driver.client import Client
from pydantic import BaseModel

from mambo.api.analytics import REPORTS, QueryError, QueryResult, run_query
from mambo.api.control import Controller
from mambo.api.hub import Hub
from mambo.connectors.clickhouse import read_events
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import (
    AggregatedSignal,
    Candle,
    ControlResult,
    EquitySnapshot,
    Event,
    FeedHealth,
    Fill,
    IndicatorValues,
    Order,
    Position,
)
from mambo.schemas.topics import CONTROL_RESULTS, FEED_HEALTH, SIGNALS
from mambo.settings import ApiSettings

__all__ = [
    "BadRequest",
    "NotFound",
    "Page",
    "PageRequest",
    "PnlReport",
    "SignalService",
    "StrategyInfo",
    "StrategyPnl",
    "SymbolInfo",
    "TimeRange",
    "TopicActivity",
    "iso",
    "market_filter",
    "to_ns",
]

E = TypeVar("E", bound=Event)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class NotFound(LookupError):
    """Nothing matches (404); the message says what was looked for."""


class BadRequest(ValueError):
    """A request the caller must fix (400); the message says how."""


class Page(BaseModel, Generic[E]):
    """One page of events in ``ts_event`` order; pass ``next_cursor`` as ``cursor`` for the next."""

    items: list[E]
    next_cursor: str | None = None


class SymbolInfo(BaseModel):
    key: str
    exchange: str
    symbol: str
    candles: int
    last_price: float
    last_ts: int


class StrategyInfo(BaseModel):
    """A strategy, its raw signal counts, its current aggregation weight in each market, the markets
    it runs in, and the parameters its class declares with their defaults (what ``set_params`` takes;
    empty for a strategy the API cannot load by its name)."""

    name: str
    signals: int
    buys: int
    sells: int
    weights: dict[str, float]
    markets: list[str] = []
    parameters: dict[str, float | int | str | bool] = {}
    #: each parameter's type: "int", "float", "str" or "bool" (JSON cannot tell 30.0 from 30)
    parameter_types: dict[str, str] = {}


def declared_parameters(name: str) -> dict[str, float | int | str | bool]:
    """The parameters the strategy called ``name`` declares (its dataclass fields set at construction)
    with their defaults, where they are plain values; {} when no registered strategy is called so.
    Their types: ``type(default).__name__``."""
    import dataclasses

    from mambo.core.strategies import StrategyConfigError, strategy_class

    try:
        cls = strategy_class(name)
    except StrategyConfigError:
        return {}
    if not dataclasses.is_dataclass(cls):
        return {}
    out: dict[str, float | int | str | bool] = {}
    for f in dataclasses.fields(cls):
        if f.init and not f.name.startswith("_") and isinstance(f.default, float | int | str | bool):
            out[f.name] = f.default
    return out


class StrategyPnl(BaseModel):
    strategy: str
    fills: int
    realized_pnl: Decimal
    fees: Decimal
    net_pnl: Decimal


class PnlReport(BaseModel):
    equity: list[EquitySnapshot]
    by_strategy: list[StrategyPnl]
    next_cursor: str | None = None


class TopicActivity(BaseModel):
    """What the API has heard on one topic (GET /health's ``feed``), not a source's feed health."""

    messages: int
    last_event_ts: int
    last_seen_ts: int
    age_seconds: float


@dataclass(frozen=True)
class PageRequest:
    """How many rows, from where (a previous page's ``next_cursor``), oldest or latest first."""

    limit: int = 100
    cursor: str | None = None
    order: Literal["asc", "desc"] = "asc"


@dataclass(frozen=True)
class TimeRange:
    start: int | None = None  # ns, inclusive
    end: int | None = None  # ns, exclusive


@dataclass
class _Where:
    """A WHERE clause for :func:`~mambo.connectors.clickhouse.read_events`, which selects ``ts_event``
    as integer nanoseconds under its own name; ClickHouse lets WHERE see that alias, so times here
    compare as Int64 ns."""

    clauses: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def add(self, clause: str, **params: Any) -> None:
        self.clauses.append(clause)
        self.params.update(params)

    def account(self, account: str | None) -> None:
        if account:
            self.add("account = {account:String}", account=account)

    def market(self, symbol: str | None) -> None:
        if not symbol:
            return
        exchange, sym = market_filter(symbol)
        if exchange:
            self.add("exchange = {ex:String} AND symbol = {sym:String}", ex=exchange, sym=sym)
        else:
            self.add("symbol = {sym:String}", sym=sym)

    def time(self, when: TimeRange, column: str = "ts_event") -> None:
        """``column``: the integer-ns time (``toUnixTimestamp64Nano(ts_event)`` outside read_events)."""
        if when.start is not None:
            self.add(f"{column} >= {{t0:Int64}}", t0=when.start)
        if when.end is not None:
            self.add(f"{column} < {{t1:Int64}}", t1=when.end)

    def cursor(self, cursor: str | None, descending: bool) -> None:
        if not cursor:
            return
        ts, sep, event_id = cursor.partition(":")
        if not sep or not ts.isdigit() or not event_id:
            raise BadRequest(f"bad cursor {cursor!r}: pass back the next_cursor of a previous page")
        self.add(
            f"(ts_event, event_id) {'<' if descending else '>'} ({{cts:Int64}}, {{cid:String}})",
            cts=min(int(ts), 2**63 - 1),  # past the end of time: nothing is later
            cid=event_id,
        )

    def sql(self) -> str:
        return " AND ".join(f"({c})" for c in self.clauses)


def market_filter(symbol: str) -> tuple[str, str]:
    """``(exchange, symbol)`` of an ``exchange:symbol`` key, ``("", symbol)`` for a bare symbol.

    A bare symbol may hold a colon itself (``BTC/USDT:USDT``, a linear perpetual); exchange ids never
    hold a slash, so a slash before the first colon means there is no exchange."""
    head, _, tail = symbol.partition(":")
    if head and tail and "/" not in head:
        return head, tail
    return "", symbol


def _matches(key: str, symbol: str | None) -> bool:
    if not symbol:
        return True
    exchange, sym = market_filter(symbol)
    return key == f"{exchange}:{sym}" if exchange else key.partition(":")[2] == sym


def _cursor(event: Event) -> str:
    return f"{event.ts_event}:{event.event_id}"


class SignalService:
    """Reads for the API and the CLI, and the live state the event stream keeps up to date."""

    def __init__(
        self,
        client: Client,
        database: str,
        settings: ApiSettings | None = None,
        hub: Hub | None = None,
        analytics: Client | None = None,
    ) -> None:
        self.client = client
        self.analytics = analytics  # a readonly_client; None: analytics answer 503
        self.analytics_lock = threading.Lock()
        self.database = database
        self.settings = settings or ApiSettings()
        self.hub = hub or Hub(self.settings.ws_buffer, self.settings.ws_queue)
        self.lock = threading.Lock()
        self.latest: dict[str, AggregatedSignal] = {}
        self.live = False  # whether a live feed calls on_event
        self.feed: dict[str, TopicActivity] = {}
        #: where POST /control sends commands (mambo.api.control); None: nothing to control
        self.controller: Controller | None = None
        self._control_results: deque[ControlResult] = deque(maxlen=1_000)

    # --- the live stream -----------------------------------------------------------------------------

    def control_results(self) -> list[ControlResult]:
        """The latest answers to control commands the live feed brought, oldest first."""
        with self.lock:
            return list(self._control_results)

    def on_event(self, topic: str, payload: Any) -> None:
        """A bus observer: keep the live view and fan the event out to WebSocket clients."""
        if topic == CONTROL_RESULTS.name:
            with self.lock:
                self._control_results.append(payload)
        if not self.live:
            for stored in self._stored_latest(None):  # what was there before the feed started
                self.latest.setdefault(stored.key, stored)
            self.live = True
        now = time.time_ns()
        if isinstance(payload, TradeBatch):
            n, last_ts = len(payload), int(payload.ts[-1]) if len(payload) else 0
        elif isinstance(payload, Event):
            n, last_ts = 1, payload.ts_event
        else:
            return
        stat = self.feed.get(topic)
        self.feed[topic] = TopicActivity(
            messages=(stat.messages if stat else 0) + n,
            last_event_ts=max(last_ts, stat.last_event_ts if stat else 0),
            last_seen_ts=now,
            age_seconds=0.0,
        )
        if isinstance(payload, Event):
            if topic == SIGNALS.name and isinstance(payload, AggregatedSignal):
                prev = self.latest.get(payload.key)
                if prev is None or payload.ts_event >= prev.ts_event:
                    self.latest[payload.key] = payload
            self.hub.publish(topic, payload)

    def on_event_threadsafe(self, topic: str, payload: Any) -> None:
        """:meth:`on_event` from another thread (a Kafka consumer), run on the hub's loop."""
        loop = self.hub.loop
        if loop is None:
            raise RuntimeError("the API is not serving yet: its hub has no event loop")
        loop.call_soon_threadsafe(self.on_event, topic, payload)

    def feed_health(self) -> dict[str, TopicActivity]:
        now = time.time_ns()
        return {
            t: s.model_copy(update={"age_seconds": (now - s.last_seen_ts) / 1e9})
            for t, s in sorted(self.feed.items())
        }

    # --- reads ---------------------------------------------------------------------------------------

    def _events(
        self, table: str, where: _Where, limit: int | None = None, descending: bool = False
    ) -> list[Any]:
        with self.lock:
            return read_events(
                self.client, table, self.database, where.sql(), where.params, limit, descending
            )

    def _page(self, table: str, where: _Where, page: PageRequest) -> Page[Any]:
        descending = page.order == "desc"
        where.cursor(page.cursor, descending)
        limit = page.limit
        rows = self._events(table, where, limit + 1, descending)
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(items=rows, next_cursor=_cursor(rows[-1]) if more else None)

    def _query(self, sql: str, **params: Any) -> list[Sequence[Any]]:
        with self.lock:
            return list(self.client.query(sql, parameters=params).result_rows)

    def _latest_where(self, table: str, symbol: str | None, account: str | None = None) -> _Where:
        """The rows at each market's latest time (each account's, for a table of accounts)."""
        where = _Where()
        where.market(symbol)
        where.account(account)
        inner = f" WHERE {where.sql()}" if where.clauses else ""
        group = "account, exchange, symbol" if table == "positions" else "exchange, symbol"
        where.add(
            f"({group}, ts_event) IN (SELECT {group}, toUnixTimestamp64Nano(max(ts_event)) "
            f"FROM `{self.database}`.`{table}`{inner} GROUP BY {group})"
        )
        return where

    def latest_signals(self, symbol: str | None = None) -> list[AggregatedSignal]:
        """The latest combined signal of each market (or of ``symbol``), by market key.

        Without a live feed (an API reading what other processes wrote), from ClickHouse every time.
        With one, from memory: the stored latest signals are loaded once, when the feed delivers its
        first event, and every live signal then replaces its market's (no query per request)."""
        if not self.live:
            return self._stored_latest(symbol)
        return [s for k, s in sorted(self.latest.items()) if _matches(k, symbol)]

    def _stored_latest(self, symbol: str | None) -> list[AggregatedSignal]:
        rows: list[AggregatedSignal] = self._events("signals", self._latest_where("signals", symbol))
        return [s for _, s in sorted({r.key: r for r in rows}.items())]

    def latest_signal(self, symbol: str | None = None) -> AggregatedSignal:
        """The latest combined signal of ``symbol``, the configured default, or the first market."""
        wanted = symbol or self.settings.default_symbol or None
        found = self.latest_signals(wanted)
        if not found:
            raise NotFound(f"no signal yet for {wanted}" if wanted else "no signal yet")
        return found[0]

    def signals(
        self,
        symbol: str | None,
        strategy: str | None,
        when: TimeRange,
        page: PageRequest,
    ) -> Page[Any]:
        """Combined signals; with ``strategy``, that strategy's own (raw) signals."""
        where = _Where()
        where.market(symbol)
        where.time(when)
        if strategy:
            where.add("strategy = {strategy:String}", strategy=strategy)
        return self._page("signals_raw" if strategy else "signals", where, page)

    def candles(
        self, symbol: str | None, timeframe: str | None, when: TimeRange, page: PageRequest
    ) -> Page[Candle]:
        where = _Where()
        where.market(symbol)
        where.time(when)
        if timeframe:
            where.add("timeframe = {tf:String}", tf=timeframe)
        return self._page("candles", where, page)

    def indicators(
        self, symbol: str | None, timeframe: str | None, when: TimeRange, page: PageRequest
    ) -> Page[IndicatorValues]:
        where = _Where()
        where.market(symbol)
        where.time(when)
        if timeframe:
            where.add("timeframe = {tf:String}", tf=timeframe)
        return self._page("indicators", where, page)

    def orders(
        self,
        symbol: str | None,
        strategy: str | None,
        status: str | None,
        when: TimeRange,
        page: PageRequest,
        account: str | None = None,
    ) -> Page[Order]:
        where = _Where()
        where.account(account)
        where.market(symbol)
        where.time(when)
        if strategy:
            where.add("strategy = {strategy:String}", strategy=strategy)
        if status:
            where.add("status = {status:String}", status=status)
        return self._page("orders", where, page)

    def fills(
        self,
        symbol: str | None,
        strategy: str | None,
        when: TimeRange,
        page: PageRequest,
        account: str | None = None,
    ) -> Page[Fill]:
        where = _Where()
        where.account(account)
        where.market(symbol)
        where.time(when)
        if strategy:
            where.add("strategy = {strategy:String}", strategy=strategy)
        return self._page("fills", where, page)

    def positions(self, symbol: str | None = None, account: str | None = None) -> list[Position]:
        """Each account's latest position in each market (after its last fill or mark)."""
        rows: list[Position] = self._events("positions", self._latest_where("positions", symbol, account))
        return [p for _, p in sorted({(r.account, r.key): r for r in rows}.items())]

    def pnl(self, when: TimeRange, page: PageRequest, account: str | None = None) -> PnlReport:
        """The equity curve (a page of snapshots) and realized PnL and fees per strategy (of one
        account, or of all)."""
        where = _Where()
        where.account(account)
        where.time(when)
        equity: Page[EquitySnapshot] = self._page("equity", where, page)
        fills = _Where()
        fills.account(account)
        fills.time(when, "toUnixTimestamp64Nano(ts_event)")
        cond = f" WHERE {fills.sql()}" if fills.clauses else ""
        rows = self._query(
            f"SELECT strategy, count(), sum(realized_pnl), sum(fee) FROM `{self.database}`.fills FINAL"
            f"{cond} GROUP BY strategy ORDER BY strategy",
            **fills.params,
        )
        by_strategy = [
            StrategyPnl(strategy=s, fills=n, realized_pnl=r, fees=f, net_pnl=r - f) for s, n, r, f in rows
        ]
        return PnlReport(equity=equity.items, by_strategy=by_strategy, next_cursor=equity.next_cursor)

    def stream_health(self) -> list[FeedHealth]:
        """The latest health report of every stream of every source (``feed_health``), by exchange
        and stream: its status and the age of its last message when reported."""
        table = f"`{self.database}`.`{FEED_HEALTH.table}`"
        where = _Where()
        where.add(
            f"(exchange, stream, ts_event) IN (SELECT exchange, stream, "
            f"toUnixTimestamp64Nano(max(ts_event)) FROM {table} GROUP BY exchange, stream)"
        )
        rows: list[FeedHealth] = self._events(FEED_HEALTH.table, where)
        latest = {(r.exchange, r.stream): r for r in sorted(rows, key=lambda r: (r.ts_event, r.event_id))}
        return [latest[k] for k in sorted(latest)]

    def symbols(self) -> list[SymbolInfo]:
        rows = self._query(
            f"SELECT exchange, symbol, count(), argMax(close, ts_event), "
            f"toUnixTimestamp64Nano(max(ts_event)) FROM `{self.database}`.candles FINAL "
            f"GROUP BY exchange, symbol ORDER BY exchange, symbol"
        )
        return [
            SymbolInfo(key=f"{e}:{s}", exchange=e, symbol=s, candles=n, last_price=p, last_ts=t)
            for e, s, n, p, t in rows
        ]

    def strategies(self) -> list[StrategyInfo]:
        counts: dict[str, tuple[int, int, int]] = {}
        markets: dict[str, list[str]] = {}
        for name, exchange, symbol, n, b, s in self._query(
            f"SELECT strategy, exchange, symbol, count(), countIf(side = 'buy'), countIf(side = 'sell') "
            f"FROM `{self.database}`.signals_raw FINAL GROUP BY strategy, exchange, symbol "
            "ORDER BY strategy, exchange, symbol"
        ):
            n0, b0, s0 = counts.get(name, (0, 0, 0))
            counts[name] = (n0 + n, b0 + b, s0 + s)
            markets.setdefault(name, []).append(f"{exchange}:{symbol}")
        weights: dict[str, dict[str, float]] = {}
        for sig in self.latest_signals():
            for name, w in sig.weights.items():
                weights.setdefault(name, {})[sig.key] = w
        names = sorted(set(counts) | set(weights))
        return [
            StrategyInfo(
                name=n,
                signals=counts.get(n, (0, 0, 0))[0],
                buys=counts.get(n, (0, 0, 0))[1],
                sells=counts.get(n, (0, 0, 0))[2],
                weights=weights.get(n, {}),
                markets=markets.get(n, sorted(weights.get(n, {}))),
                parameters=(params := declared_parameters(n)),
                parameter_types={k: type(v).__name__ for k, v in params.items()},
            )
            for n in names
        ]

    def ready(self) -> bool:
        try:
            return [tuple(r) for r in self._query("SELECT 1")] == [(1,)]
        except Exception:
            return False

    # --- analytics -----------------------------------------------------------------------------------

    def _analytics(self) -> Client:
        if self.analytics is None:
            raise QueryError("SQL analytics are not configured on this server", 503)
        return self.analytics

    def query(self, sql: str) -> QueryResult:
        """Run read-only SQL over Mambo's tables (:mod:`mambo.api.analytics`)."""
        return run_query(self._analytics(), sql, self.database, self.analytics_lock)

    def report(self, name: str) -> QueryResult:
        report = REPORTS.get(name)
        if report is None:
            raise QueryError(f"unknown report {name!r}; reports: {', '.join(REPORTS)}", 404)
        return run_query(self._analytics(), report.sql, self.database, self.analytics_lock, checked=True)


def iso(ts_ns: int) -> str:
    """ISO-8601 UTC of integer nanoseconds, exact to the microsecond (no float on the way)."""
    seconds, ns = divmod(ts_ns, 1_000_000_000)
    when = _EPOCH + timedelta(seconds=seconds, microseconds=ns // 1000)
    return when.isoformat().replace("+00:00", "Z")


def to_ns(value: datetime | None) -> int | None:
    """Integer nanoseconds of a datetime (naive means UTC), clamped to what ClickHouse's Int64 holds."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    ns = (value - _EPOCH) // timedelta(microseconds=1) * 1000
    return min(max(ns, 0), 2**63 - 1)
