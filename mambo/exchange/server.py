"""A Binance-spot-speaking exchange that replays a recording: REST, WebSocket streams, orders, faults.

What it answers (the requests and streams ccxt's ``binance`` and ``pro.binance`` use for spot):

* REST ``/api/v3/``: ``ping``, ``time``, ``exchangeInfo``, ``klines``, ``trades``, ``aggTrades``,
  ``depth``, ``ticker/24hr``, ``ticker/bookTicker``; signed (HMAC-SHA256 of the query string and
  body with the configured secret, any API key): ``order`` (new, cancel, query, by ``orderId`` or
  ``origClientOrderId``), ``openOrders``, ``myTrades``, ``account``.
* What a ccxt ``binance`` client with default options asks besides, in Binance's shapes: the wallet's
  coins (``/sapi/v1/capital/config/getall``, signed: the recording's assets with the account's
  balances, no deposit or withdrawal network), the margin pairs (``/sapi/v1/margin/allPairs`` and
  ``isolated/allPairs``: none, this is a spot exchange) and the futures markets
  (``/fapi/v1/exchangeInfo``, ``/dapi/v1/exchangeInfo``: none).
* WebSocket ``/ws/<stream>`` and ``/stream?streams=a/b`` (combined frames), plus ``SUBSCRIBE`` /
  ``UNSUBSCRIBE`` / ``LIST_SUBSCRIPTIONS`` messages: ``<sym>@trade``, ``@aggTrade``,
  ``@kline_<interval>``, ``@bookTicker``, ``@depth`` (``@depth@100ms``).

Replay: events (trades and book tops of the recording's ``binance`` spot markets) are released in
event-time order at ``speed`` × real time. REST answers from what has been released so far, so every
trade a REST call returns was already streamed (unless a fault dropped the frame). ``history_seconds``
of the recording are released at start, as the exchange's past.

Simplifications, stated: each recorded trade is its own aggregate trade (``aggTrades`` id = trade id,
so REST and ``@aggTrade``/``@trade`` ids agree); the book is one level deep (the recorded best bid
and ask) unless a recorded multi-level book is given (``depth``, :mod:`mambo.exchange.depth`: REST
``depth`` and the ``@depth`` streams then replay it, with Binance's update ids); commissions are
charged in the quote asset; a ``newClientOrderId`` is refused only while an open order holds it (as
Binance does). One addition: a ``@bookTicker`` frame carries its recorded time as ``E``, as Binance's
futures frames do (its spot frames carry no time), so a client (ccxt reads it) stamps each book top
with the time it held on the exchange, the time its fills are stamped with.

Matching: a market order, or a limit order that crosses the book top, fills at once as taker at the
book top; a resting limit order fills as maker when a replayed trade crosses it, through
:class:`mambo.core.execution.PaperBroker` (price-time priority, volume-limited).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import math
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import structlog
from aiohttp import WSMsgType, web

from mambo.connectors.markets import market_rules
from mambo.core.execution import PaperBroker
from mambo.core.market import Market
from mambo.exchange.depth import DepthBook, RecordedDepth
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import Fill, Order, Quote, make_id

__all__ = ["FAULTS", "LocalExchange", "SymbolData", "serve"]

log = structlog.get_logger(__name__)

#: The faults :meth:`LocalExchange.inject` knows.
FAULTS = ("disconnect", "stall", "gap", "duplicate", "malformed", "429", "418")
_MS = 1_000_000
_COMMISSION = Decimal("1e-8")  # commissions are charged in the asset's 8 decimal places
_INTERVAL_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_REST = ("/api/", "/sapi/", "/fapi/", "/dapi/")  # REST paths: logged, and subject to 429/418 faults
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _interval_ms(interval: str) -> int:
    try:
        return int(interval[:-1]) * _INTERVAL_MS[interval[-1]]
    except (KeyError, ValueError, IndexError):
        raise _ApiError(-1120, "Invalid interval.") from None


def _num(x: float | Decimal) -> str:
    return f"{x:.8f}"


class _ApiError(Exception):
    """A Binance error answer: HTTP status, code and message (ccxt maps the code to its exception)."""

    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.code, self.msg, self.status = code, msg, status


@dataclass
class SymbolData:
    """One market's recording as columns (ms times), and how much of it has been released."""

    market: Market
    ts: np.ndarray  # int64 ms
    price: np.ndarray
    qty: np.ndarray
    buyer_maker: np.ndarray  # bool: the aggressor sold
    trade_id: np.ndarray  # int64
    quotes: list[Quote]
    released: int = 0  # trades released so far
    quotes_released: int = 0
    book: DepthBook | None = None  # a recorded multi-level book, when given (else the quotes' one level)
    depth: list[dict[str, Any]] = field(default_factory=list)  # its recorded updates

    @property
    def id(self) -> str:
        return self.market.symbol.replace("/", "")

    def last_quote(self) -> Quote | None:
        return self.quotes[self.quotes_released - 1] if self.quotes_released else None


@dataclass
class _Conn:
    ws: web.WebSocketResponse
    combined: bool
    streams: set[str] = field(default_factory=set)


@dataclass
class _ExOrder:
    """An order as the exchange keeps it (Binance's fields)."""

    order_id: int
    symbol: SymbolData
    client_id: str
    side: str  # BUY / SELL
    type: str  # MARKET / LIMIT
    qty: Decimal
    price: Decimal  # 0 for market
    time: int
    status: str = "NEW"
    executed: Decimal = Decimal(0)
    quote_qty: Decimal = Decimal(0)
    update_time: int = 0
    fills: list[dict[str, Any]] = field(default_factory=list)

    def json(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol.id,
            "orderId": self.order_id,
            "orderListId": -1,
            "clientOrderId": self.client_id,
            "price": _num(self.price),
            "origQty": _num(self.qty),
            "executedQty": _num(self.executed),
            "cummulativeQuoteQty": _num(self.quote_qty),
            "status": self.status,
            "timeInForce": "GTC",
            "type": self.type,
            "side": self.side,
            "stopPrice": "0.00000000",
            "icebergQty": "0.00000000",
            "time": self.time,
            "updateTime": self.update_time or self.time,
            "isWorking": True,
            "workingTime": self.time,
            "origQuoteOrderQty": "0.00000000",
            "selfTradePreventionMode": "NONE",
        }


class LocalExchange:
    """The exchange's state and its aiohttp application (:meth:`app`); run it with :func:`serve`."""

    def __init__(
        self,
        trades: TradeBatch,
        quotes: list[Quote],
        *,
        speed: float = 1.0,
        history_seconds: float = 0.0,
        api_secret: str = "mambo-local-secret",
        balances: dict[str, str] | None = None,
        fee_rate: str = "0.001",
        markets: dict[str, Market] | None = None,
        depth: RecordedDepth | None = None,
    ) -> None:
        self.speed = speed
        self.api_secret = api_secret.encode()
        self.fee_rate = Decimal(fee_rate)
        self.symbols: dict[str, SymbolData] = {}
        markets = markets or {}
        for code, key in enumerate(trades.keys):
            exchange, symbol = key.split(":", 1)
            if exchange != "binance" or ":" in symbol:
                continue  # spot markets of the recording only: this exchange speaks Binance spot
            rows = trades.market == code
            market = markets.get(key) or self._market_rules(key, trades.price[rows])
            sym = SymbolData(
                market=market,
                ts=trades.ts[rows] // _MS,
                price=trades.price[rows],
                qty=trades.qty[rows],
                buyer_maker=trades.side[rows] == -1,
                trade_id=trades.trade_id[rows].astype(np.int64),
                quotes=[q for q in quotes if q.key == key],
            )
            if depth and sym.id in depth:
                snapshot, sym.depth = depth[sym.id]
                sym.book = DepthBook(snapshot)
            self.symbols[sym.id] = sym
        if not self.symbols:
            raise ValueError("the recording has no binance spot market to replay")
        self._events = self._merge()
        self._start_ms = int(self._events[0][0]) if len(self._events) else 0
        self._cursor = 0
        self._conns: list[_Conn] = []
        self._replay_task: asyncio.Task[None] | None = None
        self.finished = asyncio.Event()
        # faults
        self._stall_until = 0.0
        self._gap = 0
        self._dup = 0
        self._http_faults: list[tuple[int, float]] = []
        self._banned_until = 0.0
        self.request_log: list[tuple[float, str, int]] = []  # (monotonic time, path, status)
        # orders
        self.broker = PaperBroker(fee_maker=self.fee_rate, fee_taker=self.fee_rate)
        self.orders: dict[int, _ExOrder] = {}
        self._by_client: dict[tuple[str, str], _ExOrder] = {}
        self._by_paper: dict[str, _ExOrder] = {}
        self._my_trades: list[dict[str, Any]] = []
        self._next_order_id = 1
        self._next_trade_id = 1
        start = balances or {"USDT": "100000"}
        self.free: dict[str, Decimal] = defaultdict(Decimal, {k: Decimal(v) for k, v in start.items()})
        self.locked: dict[str, Decimal] = defaultdict(Decimal)
        self._kline_state: dict[tuple[str, str], list[Any]] = {}
        if history_seconds > 0:
            self._release_until(self._start_ms + int(history_seconds * 1000), emit=False)

    @staticmethod
    def _market_rules(key: str, prices: np.ndarray) -> Market:
        """A market's rules: Binance's own definition (those the paper venue and backtests use), or a
        tick read off the recorded prices where there is none, as the log line says."""
        rules = market_rules(key, prices)
        log.info("exchange.market", rules=rules.note)
        return rules.market

    # --- replay ---------------------------------------------------------------------------------

    def _merge(self) -> list[tuple[int, int, str, int]]:
        """Every event of every market, (ts ms, kind 0 quote / 1 trade, symbol id, index), in time order."""
        events: list[tuple[int, int, str, int]] = []
        for sid, sym in self.symbols.items():
            events += [(int(t), 1, sid, i) for i, t in enumerate(sym.ts)]
            events += [(q.ts_event // _MS, 0, sid, i) for i, q in enumerate(sym.quotes)]
            events += [(int(u["E"]), 2, sid, i) for i, u in enumerate(sym.depth)]
        events.sort()
        return events

    @property
    def now_ms(self) -> int:
        """The exchange's clock: the time of the last released event."""
        if self._cursor == 0:
            return self._start_ms
        return self._events[self._cursor - 1][0]

    def start(self) -> None:
        """Start releasing events at ``speed`` × real time (call inside the running loop).

        ``speed <= 0`` keeps the exchange paused: time moves only by :meth:`advance`.
        """
        if self._replay_task is None and self.speed > 0:
            self._replay_task = asyncio.get_running_loop().create_task(self._replay())

    async def pause(self) -> None:
        """Stop the replay clock; connections stay open (:meth:`advance` still moves time)."""
        if self._replay_task is not None:
            self._replay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replay_task
            self._replay_task = None

    async def stop(self) -> None:
        await self.pause()
        for conn in list(self._conns):
            await conn.ws.close()

    async def advance(self, seconds: float) -> int:
        """Release (and stream) the next ``seconds`` of the recording now; returns the events released."""
        before = self._cursor
        await self._broadcast(self._release_until(self.now_ms + int(seconds * 1000), emit=True))
        if self._cursor >= len(self._events):
            self.finished.set()
        return self._cursor - before

    async def _replay(self) -> None:
        if self._cursor >= len(self._events):
            self.finished.set()
            return
        wall0, event0 = time.monotonic(), self._events[self._cursor][0]
        while self._cursor < len(self._events):
            due_ms = event0 + (time.monotonic() - wall0) * self.speed * 1000
            nxt = self._events[self._cursor][0]
            if nxt > due_ms:
                await asyncio.sleep(min((nxt - due_ms) / self.speed / 1000, 0.5))
                continue
            # a bounded slice, then yield: a replay running behind must not starve the clients
            frames = self._release_until(int(due_ms), emit=True, limit=500)
            await self._broadcast(frames)
            await asyncio.sleep(0)
        self.finished.set()

    def _release_until(
        self, until_ms: int, emit: bool, limit: int | None = None
    ) -> list[tuple[str, str, dict[str, Any]]]:
        """Release events up to ``until_ms`` (at most ``limit``): (stream, kind, payload) frames to
        send; resting orders are matched on the way."""
        frames: list[tuple[str, str, dict[str, Any]]] = []
        stop = len(self._events) if limit is None else min(len(self._events), self._cursor + limit)
        while self._cursor < stop and self._events[self._cursor][0] <= until_ms:
            _, kind, sid, i = self._events[self._cursor]
            self._cursor += 1
            sym = self.symbols[sid]
            if kind == 1:
                sym.released = i + 1
                self._match_trade(sym, i)
                if emit:
                    frames += self._trade_frames(sym, i)
            elif kind == 2:
                assert sym.book is not None
                update = sym.depth[i]
                sym.book.apply(update)
                if emit:
                    low = sym.id.lower()
                    frames += [(f"{low}@depth", "depth", update), (f"{low}@depth@100ms", "depth", update)]
            else:
                sym.quotes_released = i + 1
                if emit:
                    frames += self._quote_frames(sym, i)
        return frames

    def _trade_frames(self, sym: SymbolData, i: int) -> list[tuple[str, str, dict[str, Any]]]:
        low = sym.id.lower()
        ts, tid = int(sym.ts[i]), int(sym.trade_id[i])
        p, q, m = _num(sym.price[i]), _num(sym.qty[i]), bool(sym.buyer_maker[i])
        out: list[tuple[str, str, dict[str, Any]]] = [
            (
                f"{low}@trade",
                "trade",
                {"e": "trade", "E": ts, "s": sym.id, "t": tid, "p": p, "q": q, "T": ts, "m": m, "M": True},
            ),
            (
                f"{low}@aggTrade",
                "aggTrade",
                {
                    "e": "aggTrade",
                    "E": ts,
                    "s": sym.id,
                    "a": tid,
                    "p": p,
                    "q": q,
                    "f": tid,
                    "l": tid,
                    "T": ts,
                    "m": m,
                    "M": True,
                },
            ),
        ]
        for (sid, interval), state in list(self._kline_state.items()):
            if sid != sym.id:
                continue
            out += self._kline_update(sym, interval, state, i)
        return out

    def _kline_update(
        self, sym: SymbolData, interval: str, state: list[Any], i: int
    ) -> list[tuple[str, str, dict[str, Any]]]:
        step = _interval_ms(interval)
        ts, price, qty = int(sym.ts[i]), float(sym.price[i]), float(sym.qty[i])
        start = ts - ts % step
        out = []
        stream = f"{sym.id.lower()}@kline_{interval}"
        if state and state[0] != start:
            out.append((stream, "kline", self._kline_frame(sym, interval, state, ts, closed=True)))
            state.clear()
        if not state:  # a new candle, or a first subscriber: the candle as it stands, like Binance's
            lo = int(np.searchsorted(sym.ts[: i + 1], start))
            p, q = sym.price[lo : i + 1], sym.qty[lo : i + 1]
            state += [start, float(p[0]), float(p.max()), float(p.min()), price, float(q.sum()), i + 1 - lo,
                      float((p * q).sum())]  # fmt: skip
        else:
            state[2], state[3], state[4] = max(state[2], price), min(state[3], price), price
            state[5] += qty
            state[6] += 1
            state[7] += qty * price
        out.append((stream, "kline", self._kline_frame(sym, interval, state, ts, closed=False)))
        return out

    @staticmethod
    def _kline_frame(sym: SymbolData, interval: str, s: list[Any], ts: int, closed: bool) -> dict[str, Any]:
        step = _interval_ms(interval)
        return {
            "e": "kline", "E": ts, "s": sym.id,
            "k": {"t": s[0], "T": s[0] + step - 1, "s": sym.id, "i": interval, "f": -1, "L": -1,
                  "o": _num(s[1]), "c": _num(s[4]), "h": _num(s[2]), "l": _num(s[3]), "v": _num(s[5]),
                  "n": s[6], "x": closed, "q": _num(s[7]), "V": "0", "Q": "0", "B": "0"},
        }  # fmt: skip

    def _quote_frames(self, sym: SymbolData, i: int) -> list[tuple[str, str, dict[str, Any]]]:
        q = sym.quotes[i]
        low, u, ts = sym.id.lower(), i + 1, q.ts_event // _MS
        bid, ask = _num(q.bid), _num(q.ask)
        book = {"u": u, "s": sym.id, "b": bid, "B": _num(q.bid_qty), "a": ask, "A": _num(q.ask_qty), "E": ts}
        bids, asks = [[_num(q.bid), _num(q.bid_qty)]], [[_num(q.ask), _num(q.ask_qty)]]
        if i:  # a one-level book: a moved level empties the old one
            prev = sym.quotes[i - 1]
            if prev.bid != q.bid:
                bids.append([_num(prev.bid), "0.00000000"])
            if prev.ask != q.ask:
                asks.append([_num(prev.ask), "0.00000000"])
        if sym.book is not None:  # the recorded book has depth streams of its own
            return [(f"{low}@bookTicker", "quote", book)]
        depth = {"e": "depthUpdate", "E": ts, "s": sym.id, "U": u, "u": u, "b": bids, "a": asks}
        return [(f"{low}@bookTicker", "quote", book), (f"{low}@depth", "quote", depth),
                (f"{low}@depth@100ms", "quote", depth)]  # fmt: skip

    async def _broadcast(self, frames: list[tuple[str, str, dict[str, Any]]]) -> None:
        if not frames or not self._conns or time.monotonic() < self._stall_until:
            return  # a stall: the connections stay open and nothing is sent
        for stream, kind, payload in frames:
            copies = 1
            if kind in ("trade", "aggTrade"):
                if self._gap:
                    if kind == "aggTrade":  # the last of a trade's two frames
                        self._gap -= 1
                    continue
                if self._dup:
                    copies = 2
                    if kind == "aggTrade":
                        self._dup -= 1
            for conn in list(self._conns):
                if stream in conn.streams:
                    text = json.dumps({"stream": stream, "data": payload} if conn.combined else payload)
                    for _ in range(copies):
                        await self._send(conn, text)

    async def _send(self, conn: _Conn, text: str) -> None:
        try:
            await conn.ws.send_str(text)
        except (ConnectionError, RuntimeError):
            if conn in self._conns:
                self._conns.remove(conn)

    # --- faults ---------------------------------------------------------------------------------

    async def inject(self, kind: str, count: int = 1, seconds: float = 1.0) -> None:
        """Inject a fault now: ``disconnect`` (close every WebSocket), ``stall`` (send nothing for
        ``seconds``, connections stay open), ``gap`` (drop the next ``count`` trades from the streams),
        ``duplicate`` (send the next ``count`` trades twice), ``malformed`` (send ``count`` frames that
        are not JSON), ``429`` / ``418`` (answer the next ``count`` REST requests with that status and
        ``Retry-After: seconds``; a 418 bans every request for ``seconds``)."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; one of {', '.join(FAULTS)}")
        log.warning("exchange.fault", kind=kind, count=count, seconds=seconds)
        if kind == "disconnect":
            for conn in list(self._conns):
                await conn.ws.close()
            self._conns.clear()
        elif kind == "stall":
            self._stall_until = time.monotonic() + seconds
        elif kind == "gap":
            self._gap += count
        elif kind == "duplicate":
            self._dup += count
        elif kind == "malformed":
            for conn in list(self._conns):
                for _ in range(count):
                    await self._send(conn, '{"e": "trade", "s": BROKEN')
        else:
            self._http_faults += [(int(kind), seconds)] * count

    # --- HTTP plumbing --------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        get, post, delete = r.add_get, r.add_post, r.add_delete
        get("/api/v3/ping", self._ping)
        get("/api/v3/time", self._time)
        get("/api/v3/exchangeInfo", self._exchange_info)
        get("/api/v3/klines", self._klines)
        get("/api/v3/trades", self._trades)
        get("/api/v3/aggTrades", self._agg_trades)
        get("/api/v3/depth", self._depth)
        get("/api/v3/ticker/24hr", self._ticker)
        get("/api/v3/ticker/bookTicker", self._book_ticker)
        post("/api/v3/order", self._signed(self._new_order))
        delete("/api/v3/order", self._signed(self._cancel_order))
        get("/api/v3/order", self._signed(self._query_order))
        get("/api/v3/openOrders", self._signed(self._open_orders))
        get("/api/v3/myTrades", self._signed(self._my_trades_route))
        get("/api/v3/account", self._signed(self._account))
        # the rest of what a default ccxt binance client asks in load_markets: a spot exchange has
        # no margin pairs and no futures markets, and says so as Binance would
        get("/sapi/v1/capital/config/getall", self._signed(self._coins))
        get("/sapi/v1/margin/allPairs", self._signed(lambda params: []))
        get("/sapi/v1/margin/isolated/allPairs", self._signed(lambda params: []))
        get("/fapi/v1/exchangeInfo", self._futures_info("U_MARGINED"))
        get("/dapi/v1/exchangeInfo", self._futures_info("COIN_MARGINED"))
        post("/mambo/faults", self._fault_route)
        get("/ws", self._ws)
        get("/ws/{stream:.*}", self._ws)
        get("/stream", self._ws)
        app.on_shutdown.append(lambda _app: self.stop())
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        now = time.monotonic()
        path = request.path
        if path.startswith(_REST):
            if now < self._banned_until:
                retry = math.ceil(self._banned_until - now)
                return self._log(now, path, _error(418, -1003, "Way too many requests; IP banned.", retry))
            if self._http_faults:
                status, seconds = self._http_faults.pop(0)
                if status == 418:
                    self._banned_until = now + seconds
                msg = "Too many requests." if status == 429 else "Way too many requests; IP banned."
                return self._log(now, path, _error(status, -1003, msg, math.ceil(seconds)))
        try:
            response = await handler(request)
        except _ApiError as exc:
            response = _error(exc.status, exc.code, exc.msg)
        return self._log(now, path, response)

    def _log(self, now: float, path: str, response: web.StreamResponse) -> web.StreamResponse:
        if path.startswith(_REST):
            self.request_log.append((now, path, response.status))
            del self.request_log[:-1000]
        return response

    def _symbol(self, request: web.Request | dict[str, str]) -> SymbolData:
        params = request.query if isinstance(request, web.Request) else request
        sid = params.get("symbol", "")
        if not sid:
            raise _ApiError(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        found = self.symbols.get(sid)
        if found is None:
            raise _ApiError(-1121, "Invalid symbol.")
        return found

    # --- public REST ----------------------------------------------------------------------------

    async def _ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _time(self, request: web.Request) -> web.Response:
        return web.json_response({"serverTime": int(time.time() * 1000)})

    async def _exchange_info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "timezone": "UTC",
                "serverTime": int(time.time() * 1000),
                "rateLimits": [
                    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000}
                ],
                "exchangeFilters": [],
                "symbols": [_symbol_info(s.market) for s in self.symbols.values()],
            }
        )

    def _released_trades(self, sym: SymbolData, params: Any) -> slice:
        n = sym.released
        start_t, end_t, from_id = params.get("startTime"), params.get("endTime"), params.get("fromId")
        limit = min(int(params.get("limit", 500)), 1000)
        lo, hi = 0, n
        if from_id is not None:
            lo = int(np.searchsorted(sym.trade_id[:n], int(from_id)))
        if start_t is not None:
            lo = max(lo, int(np.searchsorted(sym.ts[:n], int(start_t), "left")))
        if end_t is not None:
            hi = int(np.searchsorted(sym.ts[:n], int(end_t), "right"))
        if start_t is None and from_id is None:  # the most recent ones
            return slice(max(lo, hi - limit), hi)
        return slice(lo, min(hi, lo + limit))

    async def _agg_trades(self, request: web.Request) -> web.Response:
        sym = self._symbol(request)
        rows = self._released_trades(sym, request.query)
        return web.json_response(
            [
                {"a": int(t), "p": _num(p), "q": _num(q), "f": int(t), "l": int(t), "T": int(ts),
                 "m": bool(m), "M": True}
                for t, p, q, ts, m in zip(sym.trade_id[rows], sym.price[rows], sym.qty[rows], sym.ts[rows],
                                          sym.buyer_maker[rows], strict=True)
            ]
        )  # fmt: skip

    async def _trades(self, request: web.Request) -> web.Response:
        sym = self._symbol(request)
        rows = self._released_trades(sym, {"limit": request.query.get("limit", 500)})
        return web.json_response(
            [
                {"id": int(t), "price": _num(p), "qty": _num(q), "quoteQty": _num(p * q), "time": int(ts),
                 "isBuyerMaker": bool(m), "isBestMatch": True}
                for t, p, q, ts, m in zip(sym.trade_id[rows], sym.price[rows], sym.qty[rows], sym.ts[rows],
                                          sym.buyer_maker[rows], strict=True)
            ]
        )  # fmt: skip

    async def _klines(self, request: web.Request) -> web.Response:
        sym = self._symbol(request)
        interval = request.query.get("interval", "")
        step = _interval_ms(interval)
        limit = min(int(request.query.get("limit", 500)), 1000)
        n = sym.released
        ts, price, qty = sym.ts[:n], sym.price[:n], sym.qty[:n]
        start_t, end_t = request.query.get("startTime"), request.query.get("endTime")
        # klines opening at or after startTime (a partly elapsed one included when it opens there)
        first_open = -(-int(start_t) // step) * step if start_t is not None else 0
        lo = int(np.searchsorted(ts, first_open)) if start_t is not None else 0
        hi = int(np.searchsorted(ts, int(end_t), "right")) if end_t is not None else n
        if lo >= hi:
            return web.json_response([])
        bucket = ts[lo:hi] - ts[lo:hi] % step
        starts, first = np.unique(bucket, return_index=True)
        last = np.append(first[1:], hi - lo) - 1
        if start_t is None:
            starts, first, last = starts[-limit:], first[-limit:], last[-limit:]
        else:
            starts, first, last = starts[:limit], first[:limit], last[:limit]
        p, q = price[lo:hi], qty[lo:hi]
        out = []
        for t, a, b in zip(starts, first, last, strict=True):
            seg, vol = p[a : b + 1], q[a : b + 1]
            out.append([int(t), _num(seg[0]), _num(seg.max()), _num(seg.min()), _num(seg[-1]),
                        _num(vol.sum()), int(t) + step - 1, _num((seg * vol).sum()), int(b - a + 1),
                        "0", "0", "0"])  # fmt: skip
        return web.json_response(out)

    async def _depth(self, request: web.Request) -> web.Response:
        sym = self._symbol(request)
        if sym.book is not None:
            return web.json_response(sym.book.top(min(int(request.query.get("limit", 100)), 5000)))
        q = sym.last_quote()
        if q is None:
            return web.json_response({"lastUpdateId": 0, "bids": [], "asks": []})
        return web.json_response(
            {
                "lastUpdateId": sym.quotes_released,
                "bids": [[_num(q.bid), _num(q.bid_qty)]],
                "asks": [[_num(q.ask), _num(q.ask_qty)]],
            }
        )

    def _ticker_json(self, sym: SymbolData) -> dict[str, Any]:
        n = sym.released
        lo = int(np.searchsorted(sym.ts[:n], self.now_ms - 86_400_000, "right"))
        p, q = sym.price[lo:n], sym.qty[lo:n]
        quote = sym.last_quote()
        if not len(p):
            p = q = np.zeros(1)
        vol, qvol = float(q.sum()), float((p * q).sum())
        return {
            "symbol": sym.id, "priceChange": _num(p[-1] - p[0]),
            "priceChangePercent": f"{(p[-1] - p[0]) / p[0] * 100 if p[0] else 0:.3f}",
            "weightedAvgPrice": _num(qvol / vol if vol else 0), "prevClosePrice": _num(p[0]),
            "lastPrice": _num(p[-1]), "lastQty": _num(q[-1]),
            "bidPrice": _num(quote.bid if quote else 0), "bidQty": _num(quote.bid_qty if quote else 0),
            "askPrice": _num(quote.ask if quote else 0), "askQty": _num(quote.ask_qty if quote else 0),
            "openPrice": _num(p[0]), "highPrice": _num(p.max()), "lowPrice": _num(p.min()),
            "volume": _num(vol), "quoteVolume": _num(qvol),
            "openTime": int(sym.ts[lo]) if n > lo else 0, "closeTime": self.now_ms,
            "firstId": int(sym.trade_id[lo]) if n > lo else -1,
            "lastId": int(sym.trade_id[n - 1]) if n else -1,
            "count": n - lo,
        }  # fmt: skip

    async def _ticker(self, request: web.Request) -> web.Response:
        if "symbol" in request.query:
            return web.json_response(self._ticker_json(self._symbol(request)))
        return web.json_response([self._ticker_json(s) for s in self.symbols.values()])

    async def _book_ticker(self, request: web.Request) -> web.Response:
        syms = [self._symbol(request)] if "symbol" in request.query else list(self.symbols.values())
        out = []
        for s in syms:
            q = s.last_quote()
            if q is not None:
                out.append({"symbol": s.id, "bidPrice": _num(q.bid), "bidQty": _num(q.bid_qty),
                            "askPrice": _num(q.ask), "askQty": _num(q.ask_qty)})  # fmt: skip
        return web.json_response(out[0] if "symbol" in request.query and out else out)

    # --- signed REST ----------------------------------------------------------------------------

    def _signed(self, handler: Callable[[dict[str, str]], dict[str, Any] | list[Any]]) -> _Handler:
        async def route(request: web.Request) -> web.Response:
            if not request.headers.get("X-MBX-APIKEY"):
                raise _ApiError(-2014, "API-key format invalid.", 401)
            body = (await request.text()) if request.can_read_body else ""
            payload = request.query_string + body
            head, sep, signature = payload.rpartition("&signature=")
            expected = hmac.new(self.api_secret, head.encode(), hashlib.sha256).hexdigest()
            if not sep or not hmac.compare_digest(signature, expected):
                raise _ApiError(-1022, "Signature for this request is not valid.", 400)
            params = dict(parse_qsl(head))
            stamp = int(params.get("timestamp", 0))
            window = int(params.get("recvWindow", 5000))
            if abs(time.time() * 1000 - stamp) > window:
                raise _ApiError(-1021, "Timestamp for this request is outside of the recvWindow.")
            return web.json_response(handler(params))

        return route

    def _account(self, params: dict[str, str]) -> dict[str, Any]:
        assets = sorted(set(self.free) | set(self.locked))
        return {
            "makerCommission": 10, "takerCommission": 10, "buyerCommission": 0, "sellerCommission": 0,
            "canTrade": True, "canWithdraw": False, "canDeposit": False, "brokered": False,
            "requireSelfTradePrevention": False, "preventSor": False, "updateTime": self.now_ms,
            "accountType": "SPOT", "permissions": ["SPOT"],
            "balances": [
                {"asset": a, "free": _num(self.free[a]), "locked": _num(self.locked[a])} for a in assets
            ],
        }  # fmt: skip

    def _coins(self, params: dict[str, str]) -> list[dict[str, Any]]:
        """The wallet's coins (``capital/config/getall``): every asset of the markets and the account,
        with its balance; no network, since nothing is deposited or withdrawn here."""
        markets = [s.market for s in self.symbols.values()]
        assets = sorted({m.base for m in markets} | {m.quote for m in markets} | set(self.free))
        return [
            {"coin": a, "depositAllEnable": False, "withdrawAllEnable": False, "name": a,
             "free": _num(self.free[a]), "locked": _num(self.locked[a]), "freeze": _num(0),
             "withdrawing": _num(0), "ipoing": _num(0), "ipoable": _num(0), "storage": _num(0),
             "isLegalMoney": False, "trading": True, "networkList": []}
            for a in assets
        ]  # fmt: skip

    def _futures_info(self, futures_type: str) -> _Handler:
        """A futures ``exchangeInfo`` with no market: the local exchange trades spot only."""

        async def route(request: web.Request) -> web.Response:
            return web.json_response(
                {"timezone": "UTC", "serverTime": int(time.time() * 1000), "futuresType": futures_type,
                 "rateLimits": [], "exchangeFilters": [], "assets": [], "symbols": []}
            )  # fmt: skip

        return route

    def _find_order(self, params: dict[str, str]) -> _ExOrder:
        sym = self._symbol(params)
        found: _ExOrder | None = None
        if "orderId" in params:
            found = self.orders.get(int(params["orderId"]))
        elif "origClientOrderId" in params:
            found = self._by_client.get((sym.id, params["origClientOrderId"]))
        if found is None or found.symbol is not sym:
            raise _ApiError(-2013, "Order does not exist.")
        return found

    def _query_order(self, params: dict[str, str]) -> dict[str, Any]:
        return self._find_order(params).json()

    def _open_orders(self, params: dict[str, str]) -> list[Any]:
        sid = params.get("symbol")
        return [
            o.json()
            for o in self.orders.values()
            if o.status in ("NEW", "PARTIALLY_FILLED") and (sid is None or o.symbol.id == sid)
        ]

    def _my_trades_route(self, params: dict[str, str]) -> list[Any]:
        sym = self._symbol(params)
        rows = [t for t in self._my_trades if t["symbol"] == sym.id]
        if "orderId" in params:
            rows = [t for t in rows if t["orderId"] == int(params["orderId"])]
        if "startTime" in params:
            rows = [t for t in rows if t["time"] >= int(params["startTime"])]
        return rows[: int(params.get("limit", 500))]

    def _cancel_order(self, params: dict[str, str]) -> dict[str, Any]:
        order = self._find_order(params)
        if order.status not in ("NEW", "PARTIALLY_FILLED"):
            raise _ApiError(-2011, "Unknown order sent.")
        self.broker.cancel(_paper_id(order))
        self._unlock(order)
        order.status, order.update_time = "CANCELED", self.now_ms
        return order.json()

    def _new_order(self, params: dict[str, str]) -> dict[str, Any]:
        sym = self._symbol(params)
        side, otype = params.get("side", ""), params.get("type", "")
        if side not in ("BUY", "SELL"):
            raise _ApiError(-1102, "Mandatory parameter 'side' was not sent, was empty/null, or malformed.")
        if otype not in ("MARKET", "LIMIT"):
            raise _ApiError(-1116, "Invalid orderType.")
        client_id = params.get("newClientOrderId") or f"local-{self._next_order_id}"
        if len(client_id) > 36:
            raise _ApiError(-1100, "Illegal characters found in parameter 'newClientOrderId'.")
        held = self._by_client.get((sym.id, client_id))
        if held is not None and held.status in ("NEW", "PARTIALLY_FILLED"):
            raise _ApiError(-2010, "Duplicate order sent.")
        m = sym.market
        try:
            qty = Decimal(params["quantity"])
            price = Decimal(params.get("price", "0"))
        except (KeyError, ArithmeticError):
            raise _ApiError(-1102, "Parameter 'quantity' or 'price' was not sent or malformed.") from None
        if qty <= 0 or qty % m.step_size or qty < m.min_qty:
            raise _ApiError(-1013, "Filter failure: LOT_SIZE")
        if otype == "LIMIT" and (price <= 0 or price % m.tick_size):
            raise _ApiError(-1013, "Filter failure: PRICE_FILTER")
        quote = sym.last_quote()
        if quote is None:
            raise _ApiError(-1013, "Market is closed.")
        top = Decimal(repr(quote.ask if side == "BUY" else quote.bid))
        crosses = otype == "MARKET" or (price >= top if side == "BUY" else price <= top)
        reference = top if otype == "MARKET" else price
        if qty * reference < m.min_notional:
            raise _ApiError(-1013, "Filter failure: NOTIONAL")
        # funds: a buy holds quote (with the fee), a sell holds base
        need_asset = m.quote if side == "BUY" else m.base
        need = qty * reference * (1 + self.fee_rate) if side == "BUY" else qty
        if self.free[need_asset] < need:
            raise _ApiError(-2010, "Account has insufficient balance for requested action.")
        order = _ExOrder(self._next_order_id, sym, client_id, side, otype, qty,
                         price if otype == "LIMIT" else Decimal(0), self.now_ms)  # fmt: skip
        self._next_order_id += 1
        self.orders[order.order_id] = order
        self._by_client[(sym.id, client_id)] = order
        self.free[need_asset] -= need
        self.locked[need_asset] += need
        if crosses:
            self._execute(order, top, qty, maker=False)
        else:
            paper = Order(
                event_id=make_id("exchange-order", order.order_id), ts_event=self.now_ms * _MS,
                ts_init=self.now_ms * _MS, exchange=m.exchange, symbol=m.symbol,
                client_order_id=_paper_id(order), strategy="exchange", side=side.lower(),
                order_type="limit", qty=qty, limit_price=price,
            )  # fmt: skip
            self.broker.submit(paper, self.now_ms * _MS)
            self._by_paper[_paper_id(order)] = order
        log.info("exchange.order", symbol=sym.id, side=side, type=otype, qty=str(qty), status=order.status,
                 client_order_id=client_id)  # fmt: skip
        return {**order.json(), "transactTime": order.time, "fills": order.fills}

    def _match_trade(self, sym: SymbolData, i: int) -> None:
        if not self.broker.has_pending(sym.market.key):
            return
        ts = int(sym.ts[i]) * _MS
        for event in self.broker.on_trade(sym.market.key, ts, float(sym.price[i]), float(sym.qty[i])):
            if isinstance(event, Fill):
                order = self._by_paper[event.client_order_id]
                self._execute(order, event.price, event.qty, maker=True)

    def _execute(self, order: _ExOrder, price: Decimal, qty: Decimal, maker: bool) -> None:
        m = order.symbol.market
        notional = price * qty
        fee = (notional * self.fee_rate).quantize(_COMMISSION)  # charged as reported: 8 places, like Binance
        if order.side == "BUY":
            held = (order.price if order.type == "LIMIT" else price) * qty * (1 + self.fee_rate)
            self.locked[m.quote] -= held
            self.free[m.quote] += held - notional - fee
            self.free[m.base] += qty
        else:
            self.locked[m.base] -= qty
            self.free[m.quote] += notional - fee
        order.executed += qty
        order.quote_qty += notional
        order.status = "FILLED" if order.executed >= order.qty else "PARTIALLY_FILLED"
        order.update_time = self.now_ms
        trade_id = self._next_trade_id
        self._next_trade_id += 1
        fill = {"price": _num(price), "qty": _num(qty), "commission": _num(fee), "commissionAsset": m.quote,
                "tradeId": trade_id}  # fmt: skip
        order.fills.append(fill)
        self._my_trades.append(
            {"symbol": order.symbol.id, "id": trade_id, "orderId": order.order_id, "orderListId": -1,
             "price": _num(price), "qty": _num(qty), "quoteQty": _num(notional), "commission": _num(fee),
             "commissionAsset": m.quote, "time": self.now_ms, "isBuyer": order.side == "BUY",
             "isMaker": maker, "isBestMatch": True}
        )  # fmt: skip

    def _unlock(self, order: _ExOrder) -> None:
        m = order.symbol.market
        rest = order.qty - order.executed
        if order.side == "BUY":
            held = order.price * rest * (1 + self.fee_rate)
            self.locked[m.quote] -= held
            self.free[m.quote] += held
        else:
            self.locked[m.base] -= rest
            self.free[m.base] += rest

    # --- control and WebSocket ------------------------------------------------------------------

    async def _fault_route(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            await self.inject(str(body["kind"]), int(body.get("count", 1)), float(body.get("seconds", 1.0)))
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True})

    def subscribed(self, channels: Iterable[str]) -> bool:
        """Whether every market has a subscriber on each of ``channels`` (``aggTrade``, ``bookTicker``):
        a replay started then loses no frame to a client still subscribing."""
        streams = set().union(*(conn.streams for conn in self._conns))
        return all(f"{sid.lower()}@{channel}" in streams for sid in self.symbols for channel in channels)

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        # no permessage-deflate: on loopback it only spends CPU at both ends (in a profile of the
        # exchange demo, three quarters of the server's time sending frames went to compressing them)
        ws = web.WebSocketResponse(autoping=True, heartbeat=None, compress=False)
        await ws.prepare(request)
        conn = _Conn(ws, combined=request.path == "/stream")
        streams = request.query.get("streams", "") if conn.combined else request.match_info.get("stream", "")
        conn.streams = {s for s in streams.split("/") if "@" in s}
        self._subscribe_klines(conn.streams)
        self._conns.append(conn)
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                await self._control(conn, msg.data)
        finally:
            if conn in self._conns:
                self._conns.remove(conn)
        return ws

    async def _control(self, conn: _Conn, text: str) -> None:
        try:
            req = json.loads(text)
            method, params, rid = req["method"], req.get("params", []), req.get("id")
        except (ValueError, KeyError, TypeError):
            await self._send(conn, json.dumps({"error": {"code": 3, "msg": "Invalid JSON"}, "id": None}))
            return
        if method == "SUBSCRIBE":
            conn.streams |= set(params)
            self._subscribe_klines(set(params))
            await self._send(conn, json.dumps({"result": None, "id": rid}))
        elif method == "UNSUBSCRIBE":
            conn.streams -= set(params)
            await self._send(conn, json.dumps({"result": None, "id": rid}))
        elif method == "LIST_SUBSCRIPTIONS":
            await self._send(conn, json.dumps({"result": sorted(conn.streams), "id": rid}))
        else:
            error = {"code": 2, "msg": f"Invalid request: {method}"}
            await self._send(conn, json.dumps({"error": error, "id": rid}))

    def _subscribe_klines(self, streams: set[str]) -> None:
        for s in streams:
            name, _, channel = s.partition("@")
            if channel.startswith("kline_"):
                interval = channel[len("kline_") :]
                _interval_ms(interval)
                sid = name.upper()
                if sid in self.symbols:
                    self._kline_state.setdefault((sid, interval), [])


def _paper_id(order: _ExOrder) -> str:
    return f"x{order.order_id}"


def _error(status: int, code: int, msg: str, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.json_response({"code": code, "msg": msg}, status=status, headers=headers)


def _symbol_info(m: Market) -> dict[str, Any]:
    return {
        "symbol": m.symbol.replace("/", ""), "status": "TRADING", "baseAsset": m.base,
        "baseAssetPrecision": 8, "quoteAsset": m.quote, "quotePrecision": 8, "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8, "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET"], "icebergAllowed": True, "ocoAllowed": True,
        "quoteOrderQtyMarketAllowed": True, "allowTrailingStop": True, "cancelReplaceAllowed": True,
        "isSpotTradingAllowed": True, "isMarginTradingAllowed": False,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": _num(m.tick_size), "maxPrice": "1000000.00000000",
             "tickSize": _num(m.tick_size)},
            {"filterType": "LOT_SIZE", "minQty": _num(m.min_qty or m.step_size), "maxQty": "9000.00000000",
             "stepSize": _num(m.step_size)},
            {"filterType": "NOTIONAL", "minNotional": _num(m.min_notional), "applyMinToMarket": True,
             "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
        ],
        "permissions": [], "permissionSets": [["SPOT"]], "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }  # fmt: skip


async def serve(exchange: LocalExchange, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Start the exchange's server and its replay; returns the runner and the base URL."""
    runner = web.AppRunner(exchange.app())
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # the port the OS chose
    exchange.start()
    return runner, f"http://{host}:{bound}"
