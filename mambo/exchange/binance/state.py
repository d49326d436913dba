"""The local Binance exchange's state: the replayed markets, the orders and balances, Binance's wire
formats and errors."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import structlog
from aiohttp import web

from mambo.connectors.markets import market_rules
from mambo.core.execution import PaperBroker
from mambo.core.market import Market
from mambo.exchange.depth import DepthBook, RecordedDepth
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import Quote

__all__ = ["FAULTS", "ExchangeState", "SymbolData"]

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


def _paper_id(order: _ExOrder) -> str:
    return f"x{order.order_id}"


def _error(status: int, code: int, msg: str, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.json_response({"code": code, "msg": msg}, status=status, headers=headers)


async def signed_params(request: web.Request, secret: bytes) -> dict[str, str]:
    """The parameters of a signed request (query string and body), checked as Binance checks them: an
    API key header, the HMAC-SHA256 ``signature`` of the rest with ``secret``, and ``timestamp``
    within ``recvWindow`` (default 5000 ms)."""
    if not request.headers.get("X-MBX-APIKEY"):
        raise _ApiError(-2014, "API-key format invalid.", 401)
    body = (await request.text()) if request.can_read_body else ""
    payload = request.query_string + body
    head, sep, signature = payload.rpartition("&signature=")
    expected = hmac.new(secret, head.encode(), hashlib.sha256).hexdigest()
    if not sep or not hmac.compare_digest(signature, expected):
        raise _ApiError(-1022, "Signature for this request is not valid.", 400)
    params = dict(parse_qsl(head))
    stamp = int(params.get("timestamp", 0))
    window = int(params.get("recvWindow", 5000))
    if abs(time.time() * 1000 - stamp) > window:
        raise _ApiError(-1021, "Timestamp for this request is outside of the recvWindow.")
    return params


class ExchangeState:
    """The exchange's state: the markets and their replay cursor, the faults pending, the orders and
    balances. The concerns (matching, streams, faults, REST) are layered on it, each a subclass."""

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

    def _release_until(
        self, until_ms: int, emit: bool, limit: int | None = None
    ) -> list[tuple[str, str, dict[str, Any]]]:
        """Release the recording up to ``until_ms``; the replay (:class:`~.streams.Streams`) does it."""
        raise NotImplementedError

    @staticmethod
    def _market_rules(key: str, prices: np.ndarray) -> Market:
        """A market's rules: Binance's own definition (those the paper venue and backtests use), or a
        tick read off the recorded prices where there is none, as the log line says."""
        rules = market_rules(key, prices)
        log.info("exchange.market", rules=rules.note)
        return rules.market

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

    def _symbol(self, request: web.Request | dict[str, str]) -> SymbolData:
        params = request.query if isinstance(request, web.Request) else request
        sid = params.get("symbol", "")
        if not sid:
            raise _ApiError(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        found = self.symbols.get(sid)
        if found is None:
            raise _ApiError(-1121, "Invalid symbol.")
        return found
