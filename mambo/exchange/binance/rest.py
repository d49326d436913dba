"""Binance spot's REST API on the local exchange (``/api/v3/``, and the ``/sapi/`` and futures
``exchangeInfo`` requests a default ccxt ``binance`` client makes in ``load_markets``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import structlog
from aiohttp import web

from mambo.core.market import Market
from mambo.exchange.binance.faults import Faults
from mambo.exchange.binance.state import (
    SymbolData,
    _Handler,
    _interval_ms,
    _num,
    signed_params,
)

__all__ = ["SpotRest"]

log = structlog.get_logger(__name__)


class SpotRest(Faults):
    """The spot REST routes and the aiohttp application (:meth:`app`)."""

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

    async def _agg_trades(self, request: web.Request) -> web.Response:
        return web.json_response(agg_trades_json(self._symbol(request), request.query))

    async def _trades(self, request: web.Request) -> web.Response:
        return web.json_response(trades_json(self._symbol(request), request.query))

    async def _klines(self, request: web.Request) -> web.Response:
        return web.json_response(klines_json(self._symbol(request), request.query))

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
            params = await signed_params(request, self.api_secret)
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


def released_trades(sym: SymbolData, params: Any) -> slice:
    """The released trades a ``trades``/``aggTrades`` request asks for (``fromId``, ``startTime``,
    ``endTime``, ``limit``; the most recent ones by default)."""
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


def agg_trades_json(sym: SymbolData, query: Any) -> list[dict[str, Any]]:
    """``aggTrades``: each recorded trade is its own aggregate."""
    rows = released_trades(sym, query)
    return (
        [
            {"a": int(t), "p": _num(p), "q": _num(q), "f": int(t), "l": int(t), "T": int(ts),
             "m": bool(m), "M": True}
            for t, p, q, ts, m in zip(sym.trade_id[rows], sym.price[rows], sym.qty[rows], sym.ts[rows],
                                      sym.buyer_maker[rows], strict=True)
        ]
    )  # fmt: skip


def trades_json(sym: SymbolData, query: Any) -> list[dict[str, Any]]:
    """``trades``: the most recent released trades."""
    rows = released_trades(sym, {"limit": query.get("limit", 500)})
    return (
        [
            {"id": int(t), "price": _num(p), "qty": _num(q), "quoteQty": _num(p * q), "time": int(ts),
             "isBuyerMaker": bool(m), "isBestMatch": True}
            for t, p, q, ts, m in zip(sym.trade_id[rows], sym.price[rows], sym.qty[rows], sym.ts[rows],
                                      sym.buyer_maker[rows], strict=True)
        ]
    )  # fmt: skip


def klines_json(sym: SymbolData, query: Any) -> list[list[Any]]:
    """``klines`` of the released trades."""
    interval = query.get("interval", "")
    step = _interval_ms(interval)
    limit = min(int(query.get("limit", 500)), 1000)
    n = sym.released
    ts, price, qty = sym.ts[:n], sym.price[:n], sym.qty[:n]
    start_t, end_t = query.get("startTime"), query.get("endTime")
    # klines opening at or after startTime (a partly elapsed one included when it opens there)
    first_open = -(-int(start_t) // step) * step if start_t is not None else 0
    lo = int(np.searchsorted(ts, first_open)) if start_t is not None else 0
    hi = int(np.searchsorted(ts, int(end_t), "right")) if end_t is not None else n
    if lo >= hi:
        return []
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
    return out
