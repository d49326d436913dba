"""Binance USDⓈ-M futures (``/fapi``) on the local exchange: a recorded perpetual replayed, with
leverage, margin, funding and liquidation kept by :class:`mambo.core.margin.MarginAccount`.

What it answers (what ccxt's ``binanceusdm`` and ``pro.binanceusdm`` ask with default options):

* public REST ``/fapi/v1/``: ``ping``, ``time``, ``exchangeInfo`` (PERPETUAL contracts with Binance's
  filters), ``klines``, ``aggTrades``, ``trades``, ``ticker/bookTicker``, ``premiumIndex`` (mark,
  index, last funding rate, next funding time) and ``fundingRate`` (the funding settled so far);
* signed REST (HMAC-SHA256 as on the spot side, :func:`~.state.signed_params`): ``leverageBracket``,
  ``leverage``, ``marginType``, ``positionSide/dual`` (one-way mode only: ``BOTH``), ``order`` (new,
  query, cancel; ``MARKET`` and ``LIMIT`` with ``reduceOnly``), ``openOrders``, ``userTrades``, ``/fapi/v2|v3/
  positionRisk``, ``/fapi/v2|v3/account``, ``/fapi/v2/balance``, ``income`` (``COMMISSION``,
  ``REALIZED_PNL``, ``FUNDING_FEE``, ``INSURANCE_CLEAR`` for the liquidation fee); and the wallet
  requests ccxt makes in ``load_markets`` (``/sapi/v1/capital/config/getall``, ``margin/allPairs``);
* WebSocket ``/ws/<stream>``, ``/stream?streams=`` and ``SUBSCRIBE``: ``<sym>@trade``, ``@aggTrade``,
  ``@bookTicker``, ``@markPrice`` and ``@markPrice@1s`` (every recorded mark frame, on both).

Replay: a recording of Binance's combined streams (hftbacktest's format, :func:`load_usdm_recording`)
is released in event-time (``E``) order, by :meth:`FuturesExchange.advance` or at ``speed`` × real time.

Accounting, all by :class:`~mambo.core.margin.MarginAccount` (the same core as backtests and paper
trading): each fill is booked at once; each mark frame values the positions and liquidates one whose
margin balance reaches its maintenance margin, at that mark, with the clearance fee of the market
(``liquidationFee``); funding is settled at the first mark frame at or after its funding time ``T``,
with that frame's rate ``r`` and mark ``p`` (``−qty × p × r``, longs pay a positive rate).

Simplifications, stated: one-way mode, USDT the only margin asset; orders fill at the recorded book
top (taker), a resting ``LIMIT`` fills whole at its price (maker) once a replayed trade goes through
it, and holds no margin while it rests (margin is checked when it is placed and again when it fills);
a ``reduceOnly`` order larger than the position, or on the position's own side, is refused (-2022).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from aiohttp import WSMsgType, web

from mambo.core.margin import BUNDLED_BRACKETS, Brackets, MarginAccount, binance_usdm_symbol, load_brackets
from mambo.core.market import Market
from mambo.exchange.binance.rest import agg_trades_json, klines_json, trades_json
from mambo.exchange.binance.state import SymbolData, _ApiError, _Conn, _error, _num, signed_params
from mambo.schemas.events import Fill, Liquidation, MarginMode, make_id

__all__ = ["PERPETUALS", "FuturesExchange", "Perpetual", "load_usdm_recording"]

log = structlog.get_logger(__name__)

EXCHANGE = "binanceusdm"
_MS = 1_000_000
_COMMISSION = Decimal("1e-8")
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_Frame = tuple[str, dict[str, Any]]  # (stream, payload)


@dataclass(frozen=True)
class Perpetual:
    """A perpetual's exchangeInfo rules (Binance's filters) and its liquidation (clearance) fee."""

    symbol_id: str
    tick_size: Decimal
    min_price: Decimal
    max_price: Decimal
    step_size: Decimal
    min_qty: Decimal
    max_qty: Decimal
    market_max_qty: Decimal
    min_notional: Decimal
    liquidation_fee: Decimal
    price_precision: int
    qty_precision: int

    @property
    def symbol(self) -> str:
        """ccxt's unified symbol, ``BTC/USDT:USDT``."""
        return binance_usdm_symbol(self.symbol_id)

    @property
    def base(self) -> str:
        return self.symbol.split("/")[0]


#: The perpetuals the local exchange knows. BTCUSDT: Binance's exchangeInfo (as recorded by cryptofeed's
#: sample data: steps, quantities, notional, liquidation fee 1.2%), with the tick of 0.10 that the
#: recorded 2023 prices show.
PERPETUALS = {
    "BTCUSDT": Perpetual("BTCUSDT", Decimal("0.10"), Decimal("556.80"), Decimal("4529764"),
                         Decimal("0.001"), Decimal("0.001"), Decimal("1000"), Decimal("1000"), Decimal("5"),
                         Decimal("0.012"), 2, 3),
}  # fmt: skip


def load_usdm_recording(path: Path) -> list[tuple[int, str, dict[str, Any]]]:
    """A recording of Binance USDⓈ-M combined streams, one ``<local time> <json>`` message a line
    (hftbacktest's format, gzipped or not): (event time ms, stream, payload) of its trade, bookTicker
    and markPrice messages, in event-time order (stable); other streams are left out."""
    opener = gzip.open if path.suffix == ".gz" else open
    out: list[tuple[int, str, dict[str, Any]]] = []
    with opener(path, "rt") as f:
        for n, line in enumerate(f, 1):
            _, _, raw = line.partition(" ")
            try:
                msg = json.loads(raw)
            except ValueError as e:
                raise ValueError(f"{path}:{n}: not a JSON message ({e})") from e
            if not isinstance(msg, dict) or "stream" not in msg:
                continue  # a REST snapshot line
            stream, data = msg["stream"], msg["data"]
            if stream.endswith(("@trade", "@bookTicker")) or "@markPrice" in stream:
                out.append((int(data["E"]), stream.split("@", 1)[1].split("@")[0], data))
    out.sort(key=lambda e: e[0])
    return out


@dataclass
class _Order:
    order_id: int
    symbol_id: str
    client_id: str
    side: str
    type: str
    qty: Decimal
    price: Decimal
    reduce_only: bool
    time: int
    status: str = "NEW"
    executed: Decimal = Decimal(0)
    quote: Decimal = Decimal(0)
    update_time: int = 0

    def json(self) -> dict[str, Any]:
        avg = self.quote / self.executed if self.executed else Decimal(0)
        return {
            "orderId": self.order_id, "symbol": self.symbol_id, "status": self.status,
            "clientOrderId": self.client_id, "price": _num(self.price), "avgPrice": _num(avg),
            "origQty": _num(self.qty), "executedQty": _num(self.executed), "cumQty": _num(self.executed),
            "cumQuote": _num(self.quote), "timeInForce": "GTC", "type": self.type, "origType": self.type,
            "reduceOnly": self.reduce_only, "closePosition": False, "side": self.side, "positionSide": "BOTH",
            "stopPrice": "0", "workingType": "CONTRACT_PRICE", "priceProtect": False, "priceMatch": "NONE",
            "selfTradePreventionMode": "NONE", "goodTillDate": 0, "time": self.time,
            "updateTime": self.update_time or self.time,
        }  # fmt: skip


@dataclass
class _Market:
    rules: Perpetual
    trades: SymbolData
    book: dict[str, Any] | None = None
    mark: dict[str, Any] | None = None
    settled: set[int] = field(default_factory=set)  # funding times settled

    @property
    def key(self) -> str:
        return f"{EXCHANGE}:{self.rules.symbol}"


class FuturesExchange:
    """The USDⓈ-M exchange's state and its aiohttp application (:meth:`app`); run it with
    :func:`mambo.exchange.serve`. ``balance`` is the USDT wallet; ``leverage`` the default of every
    market (Binance's is 20); ``history_seconds`` of the recording are released at start."""

    def __init__(
        self,
        events: list[tuple[int, str, dict[str, Any]]],
        *,
        api_secret: str = "mambo-local-secret",
        balance: str = "10000",
        leverage: int = 20,
        fee_taker: str = "0.0004",
        fee_maker: str = "0.0002",
        speed: float = 0.0,
        history_seconds: float = 0.0,
        wait_for_client: bool = False,
        brackets_path: Path = BUNDLED_BRACKETS,
        account: str = "local",
    ) -> None:
        if not events:
            raise ValueError("the recording has no trade, bookTicker or markPrice message")
        self.events = sorted(events, key=lambda e: e[0])
        self.api_secret = api_secret.encode()
        self.fee_taker, self.fee_maker = Decimal(fee_taker), Decimal(fee_maker)
        self.speed = speed
        #: the replay clock starts at the first WebSocket connection, not when the server starts (a
        #: client that takes a while to start misses none of the recording's timeline)
        self.wait_for_client = wait_for_client
        self._brackets_path = brackets_path
        brackets = load_brackets(brackets_path)
        self.markets: dict[str, _Market] = {}
        for sid in sorted({e[2]["s"] for e in self.events}):
            rules = PERPETUALS.get(sid)
            if rules is None or rules.symbol not in brackets:
                raise ValueError(
                    f"{sid}: no rules or leverage brackets for this perpetual; known: {list(PERPETUALS)}"
                )
            trades = [e[2] for e in self.events if e[1] == "trade" and e[2]["s"] == sid]
            market = Market(EXCHANGE, rules.symbol, rules.base, "USDT", rules.tick_size,
                            rules.step_size, rules.min_qty, rules.min_notional)  # fmt: skip
            data = SymbolData(
                market=market,
                ts=np.array([t["T"] for t in trades], dtype=np.int64),
                price=np.array([float(t["p"]) for t in trades]),
                qty=np.array([float(t["q"]) for t in trades]),
                buyer_maker=np.array([bool(t["m"]) for t in trades], dtype=bool),
                trade_id=np.array([t["t"] for t in trades], dtype=np.int64),
                quotes=[],
            )
            self.markets[sid] = _Market(rules, data)
        self.account = MarginAccount(
            Decimal(balance), {m.rules.symbol: brackets[m.rules.symbol] for m in self.markets.values()},
            account=account, default_leverage=leverage,
            liquidation_fees={m.rules.symbol: m.rules.liquidation_fee for m in self.markets.values()},
        )  # fmt: skip
        self.orders: dict[int, _Order] = {}
        self.income: list[dict[str, Any]] = []
        self.funding_history: list[dict[str, Any]] = []
        self.liquidations: list[Liquidation] = []
        self._next_order_id = self._next_trade_id = self._next_tran_id = 1
        self.user_trades: list[dict[str, Any]] = []  # /fapi/v1/userTrades: this account's fills
        self._cursor = 0
        self._conns: list[_Conn] = []
        self._replay_task: asyncio.Task[None] | None = None
        self.finished = asyncio.Event()
        if history_seconds > 0:
            self._release_until(self.events[0][0] + int(history_seconds * 1000))

    # --- replay -------------------------------------------------------------------------------------

    @property
    def now_ms(self) -> int:
        return self.events[max(self._cursor - 1, 0)][0]

    def start(self, client: bool = False) -> None:
        """Release events at ``speed`` × real time (``speed <= 0``: only :meth:`advance` moves time);
        with ``wait_for_client``, from the first WebSocket connection (``client``) on."""
        if self.wait_for_client and not client:
            return
        if self._replay_task is None and self.speed > 0:
            self._replay_task = asyncio.get_running_loop().create_task(self._replay())

    async def stop(self) -> None:
        if self._replay_task is not None:
            self._replay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replay_task
            self._replay_task = None
        for conn in list(self._conns):
            await conn.ws.close()

    async def advance(self, seconds: float) -> int:
        """Release (and stream) the next ``seconds`` of the recording now; returns the events released."""
        before = self._cursor
        await self._broadcast(self._release_until(self.now_ms + int(seconds * 1000)))
        if self._cursor >= len(self.events):
            self.finished.set()
        return self._cursor - before

    async def _replay(self) -> None:
        wall0, event0 = time.monotonic(), self.now_ms
        while self._cursor < len(self.events):
            due = event0 + int((time.monotonic() - wall0) * self.speed * 1000)
            await self._broadcast(self._release_until(due))
            await asyncio.sleep(0.05)
        self.finished.set()

    def _release_until(self, until_ms: int) -> list[_Frame]:
        frames: list[_Frame] = []
        while self._cursor < len(self.events) and self.events[self._cursor][0] <= until_ms:
            _, kind, data = self.events[self._cursor]
            self._cursor += 1
            m = self.markets[data["s"]]
            low = m.rules.symbol_id.lower()
            if kind == "trade":
                m.trades.released += 1
                self._match(m, Decimal(data["p"]))
                agg = {"e": "aggTrade", "E": data["E"], "s": data["s"], "a": data["t"], "p": data["p"],
                       "q": data["q"], "f": data["t"], "l": data["t"], "T": data["T"],
                       "m": data["m"]}  # fmt: skip
                frames += [(f"{low}@trade", data), (f"{low}@aggTrade", agg)]
            elif kind == "bookTicker":
                m.book = data
                frames.append((f"{low}@bookTicker", data))
            else:
                self._on_mark(m, data)
                frames += [(f"{low}@markPrice", data), (f"{low}@markPrice@1s", data)]
        return frames

    def _on_mark(self, m: _Market, frame: dict[str, Any]) -> None:
        """A mark frame: funding first when its funding time has come, then the mark (and what it
        liquidates)."""
        ts, funding_time = int(frame["E"]), int(frame["T"])
        if ts >= funding_time and funding_time not in m.settled and m.mark is not None:
            m.settled.add(funding_time)
            payment, liquidated = self.account.fund(
                m.key, Decimal(frame["r"]), funding_time * _MS, ts * _MS, mark_price=Decimal(frame["p"])
            )
            self.funding_history.append({"symbol": m.rules.symbol_id, "fundingTime": funding_time,
                                         "fundingRate": frame["r"], "markPrice": frame["p"]})  # fmt: skip
            if payment is not None:
                self._income(m, "FUNDING_FEE", payment.amount, funding_time)
                log.info("exchange.futures.funding", symbol=m.rules.symbol_id, amount=str(payment.amount))
            self._liquidated(m, liquidated)
        m.mark = frame
        self._liquidated(m, self.account.mark(m.key, Decimal(frame["p"]), ts * _MS, ts * _MS))

    def _liquidated(self, m: _Market, events: list[Liquidation]) -> None:
        for liq in events:
            self.liquidations.append(liq)
            self._income(m, "REALIZED_PNL", liq.realized_pnl, liq.ts_event // _MS)
            self._income(m, "INSURANCE_CLEAR", -liq.fee, liq.ts_event // _MS)
            log.warning("exchange.futures.liquidation", symbol=m.rules.symbol_id, qty=str(liq.qty),
                        price=str(liq.price), fee=str(liq.fee))  # fmt: skip

    def _income(self, m: _Market, kind: str, amount: Decimal, ts: int, trade_id: int | None = None) -> None:
        if not amount:
            return
        self.income.append({"symbol": m.rules.symbol_id, "incomeType": kind, "income": _num(amount),
                            "asset": "USDT", "info": kind, "time": ts, "tranId": self._next_tran_id,
                            "tradeId": "" if trade_id is None else str(trade_id)})  # fmt: skip
        self._next_tran_id += 1

    # --- orders -------------------------------------------------------------------------------------

    def _market(self, params: Any) -> _Market:
        sid = params.get("symbol", "")
        if not sid:
            raise _ApiError(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        m = self.markets.get(sid)
        if m is None:
            raise _ApiError(-1121, "Invalid symbol.")
        return m

    def _new_order(self, params: dict[str, str]) -> dict[str, Any]:
        m = self._market(params)
        side, otype = params.get("side", ""), params.get("type", "")
        if side not in ("BUY", "SELL"):
            raise _ApiError(-1102, "Mandatory parameter 'side' was not sent, was empty/null, or malformed.")
        if otype not in ("MARKET", "LIMIT"):
            raise _ApiError(-1116, "Invalid orderType.")
        if params.get("positionSide", "BOTH") != "BOTH":
            raise _ApiError(-4061, "Order's position side does not match user's setting.")
        reduce_only = params.get("reduceOnly", "false").lower() == "true"
        r = m.rules
        try:
            qty = Decimal(params["quantity"])
            price = Decimal(params.get("price", "0"))
        except (KeyError, ArithmeticError):
            raise _ApiError(-1102, "Parameter 'quantity' or 'price' was not sent or malformed.") from None
        max_qty = r.market_max_qty if otype == "MARKET" else r.max_qty
        if qty <= 0 or qty % r.step_size or qty < r.min_qty or qty > max_qty:
            raise _ApiError(-1013, "Filter failure: LOT_SIZE")
        if otype == "LIMIT" and (price < r.min_price or price > r.max_price or price % r.tick_size):
            raise _ApiError(-1013, "Filter failure: PRICE_FILTER")
        if m.book is None:
            raise _ApiError(-1013, "Market is closed.")
        top = Decimal(m.book["a"] if side == "BUY" else m.book["b"])
        crosses = otype == "MARKET" or (price >= top if side == "BUY" else price <= top)
        reference = top if otype == "MARKET" else price
        if reduce_only:
            self._check_reduce(m, side, qty)
        elif qty * reference < r.min_notional:
            raise _ApiError(
                -4164,
                f"Order's notional must be no smaller than {r.min_notional} (unless you choose reduce only).",
            )
        reason = self.account.margin_check(m.key, side.lower(), qty, reference, self.fee_taker)
        if reason is not None:
            log.info("exchange.futures.rejected", symbol=r.symbol_id, reason=reason)
            raise _ApiError(-2019, "Margin is insufficient.")
        client_id = params.get("newClientOrderId") or f"local-{self._next_order_id}"
        order = _Order(self._next_order_id, r.symbol_id, client_id, side, otype, qty,
                       price if otype == "LIMIT" else Decimal(0), reduce_only, self.now_ms)  # fmt: skip
        self._next_order_id += 1
        self.orders[order.order_id] = order
        if crosses:
            self._fill(m, order, top, maker=False)
        log.info("exchange.futures.order", symbol=r.symbol_id, side=side, type=otype, qty=str(qty),
                 reduce_only=reduce_only, status=order.status)  # fmt: skip
        return order.json()

    def _check_reduce(self, m: _Market, side: str, qty: Decimal) -> None:
        pos = self.account.positions.get(m.key)
        if pos is None or (pos.qty > 0) == (side == "BUY") or qty > abs(pos.qty):
            raise _ApiError(-2022, "ReduceOnly Order is rejected.")

    def _fill(self, m: _Market, order: _Order, price: Decimal, maker: bool) -> None:
        rate = self.fee_maker if maker else self.fee_taker
        fee = (price * order.qty * rate).quantize(_COMMISSION)
        trade_id = self._next_trade_id
        self._next_trade_id += 1
        now = self.now_ms
        fill = Fill(
            event_id=make_id("usdm-fill", self.account.account, trade_id), ts_event=now * _MS,
            ts_init=now * _MS, exchange=EXCHANGE, symbol=m.rules.symbol, account=self.account.account,
            fill_id=str(trade_id), client_order_id=order.client_id, strategy="exchange",
            side="buy" if order.side == "BUY" else "sell", price=price, qty=order.qty, fee=fee,
            fee_currency="USDT", liquidity="maker" if maker else "taker",
        )  # fmt: skip
        booked = self.account.apply(fill)
        order.executed, order.quote = order.qty, price * order.qty
        order.status, order.update_time = "FILLED", now
        self._income(m, "REALIZED_PNL", booked.realized_pnl, now, trade_id)
        self._income(m, "COMMISSION", -fee, now, trade_id)
        self.user_trades.append({
            "symbol": m.rules.symbol_id, "id": trade_id, "orderId": order.order_id, "side": order.side,
            "price": _num(price), "qty": _num(order.qty), "realizedPnl": _num(booked.realized_pnl),
            "marginAsset": "USDT", "quoteQty": _num(price * order.qty), "commission": _num(fee),
            "commissionAsset": "USDT", "time": now, "positionSide": "BOTH", "buyer": order.side == "BUY",
            "maker": maker,
        })  # fmt: skip

    def _match(self, m: _Market, trade_price: Decimal) -> None:
        """Resting limits the trade went through fill whole at their price, as makers; one that can no
        longer be carried (margin, or reduce-only with nothing to reduce) expires."""
        for order in [
            o for o in self.orders.values() if o.status == "NEW" and o.symbol_id == m.rules.symbol_id
        ]:
            through = trade_price < order.price if order.side == "BUY" else trade_price > order.price
            if not through:
                continue
            try:
                if order.reduce_only:
                    self._check_reduce(m, order.side, order.qty)
                elif self.account.margin_check(
                    m.key, order.side.lower(), order.qty, order.price, self.fee_maker
                ):
                    raise _ApiError(-2019, "Margin is insufficient.")
            except _ApiError:
                order.status, order.update_time = "EXPIRED", self.now_ms
                continue
            self._fill(m, order, order.price, maker=True)

    def _find_order(self, params: dict[str, str]) -> _Order:
        m = self._market(params)
        found: _Order | None = None
        if "orderId" in params:
            found = self.orders.get(int(params["orderId"]))
        elif "origClientOrderId" in params:
            found = next(
                (o for o in self.orders.values() if o.client_id == params["origClientOrderId"]), None
            )
        if found is None or found.symbol_id != m.rules.symbol_id:
            raise _ApiError(-2013, "Order does not exist.")
        return found

    def _cancel_order(self, params: dict[str, str]) -> dict[str, Any]:
        order = self._find_order(params)
        if order.status != "NEW":
            raise _ApiError(-2011, "Unknown order sent.")
        order.status, order.update_time = "CANCELED", self.now_ms
        return order.json()

    def _open_orders(self, params: dict[str, str]) -> list[Any]:
        sid = params.get("symbol")
        return [o.json() for o in self.orders.values() if o.status == "NEW" and sid in (None, o.symbol_id)]

    # --- settings and account -----------------------------------------------------------------------

    def _brackets(self, params: dict[str, str]) -> list[Any]:
        """Binance's own reply, read from the bundled file the margin account uses."""
        sid = params.get("symbol")
        reply = json.loads(self._brackets_path.read_text())
        return [b for b in reply if b["symbol"] in self.markets and sid in (None, b["symbol"])]

    @staticmethod
    def _max_notional(brackets: Brackets, leverage: int) -> Decimal:
        return max(t.notional_cap for t in brackets.tiers if t.initial_leverage >= leverage)

    def _leverage(self, params: dict[str, str]) -> dict[str, Any]:
        m = self._market(params)
        try:
            leverage = int(params["leverage"])
            self.account.set_leverage(m.key, leverage)
        except (KeyError, ValueError) as e:
            raise _ApiError(-4028, f"Leverage {params.get('leverage')} is not valid ({e})") from None
        pos = self.account.position(m.key)
        return {"leverage": leverage, "maxNotionalValue": _num(self._max_notional(pos.brackets, leverage)),
                "symbol": m.rules.symbol_id}  # fmt: skip

    def _margin_type(self, params: dict[str, str]) -> dict[str, Any]:
        m = self._market(params)
        modes: dict[str, MarginMode] = {"ISOLATED": "isolated", "CROSSED": "cross"}
        mode = modes.get(params.get("marginType", "").upper())
        if mode is None:
            raise _ApiError(
                -1102, "Mandatory parameter 'marginType' was not sent, was empty/null, or malformed."
            )
        pos = self.account.position(m.key)
        if pos.margin_mode == mode:
            raise _ApiError(-4046, "No need to change margin type.")
        if pos.qty:
            raise _ApiError(-4048, "Margin type cannot be changed if there exists position.")
        self.account.set_margin_mode(m.key, mode)
        return {"code": 200, "msg": "success"}

    def _position_json(self, m: _Market) -> dict[str, Any]:
        pos = self.account.position(m.key)
        if not pos.mark_price and m.mark is not None:
            pos.mark_price = Decimal(m.mark["p"])
        liq = self.account.liquidation_price(m.key) or Decimal(0)
        isolated = pos.margin_mode == "isolated"
        signed_notional = pos.qty * pos.mark_price
        return {
            "symbol": m.rules.symbol_id, "positionSide": "BOTH", "positionAmt": _num(pos.qty),
            "entryPrice": _num(pos.entry_price), "breakEvenPrice": "0", "markPrice": _num(pos.mark_price),
            "unRealizedProfit": _num(pos.unrealized_pnl), "liquidationPrice": _num(liq),
            "isolatedMargin": _num(pos.isolated_wallet + pos.unrealized_pnl if isolated else 0),
            "notional": _num(signed_notional), "marginAsset": "USDT",
            "isolatedWallet": _num(pos.isolated_wallet),
            "initialMargin": _num(pos.initial_margin), "maintMargin": _num(pos.maintenance_margin),
            "positionInitialMargin": _num(pos.initial_margin), "openOrderInitialMargin": "0", "adl": 0,
            "bidNotional": "0", "askNotional": "0", "updateTime": self.now_ms, "leverage": str(pos.leverage),
            "marginType": "isolated" if isolated else "cross", "isolated": isolated,
            "isAutoAddMargin": "false",
            "maxNotionalValue": _num(self._max_notional(pos.brackets, pos.leverage)),
            "maxNotional": _num(self._max_notional(pos.brackets, pos.leverage)),
        }  # fmt: skip

    def _position_risk(self, params: dict[str, str]) -> list[Any]:
        sid = params.get("symbol")
        return [self._position_json(m) for m in self.markets.values() if sid in (None, m.rules.symbol_id)]

    def _totals(self) -> dict[str, str]:
        a = self.account
        initial = sum((p.initial_margin for p in a.positions.values()), Decimal(0))
        return {
            "walletBalance": _num(a.wallet_balance), "unrealizedProfit": _num(a.unrealized_pnl),
            "marginBalance": _num(a.margin_balance), "maintMargin": _num(a.maintenance_margin),
            "initialMargin": _num(initial), "positionInitialMargin": _num(initial),
            "openOrderInitialMargin": "0", "crossWalletBalance": _num(a.cross_wallet),
            "crossUnPnl": _num(a.cross_margin_balance - a.cross_wallet),
            "availableBalance": _num(a.available_balance), "maxWithdrawAmount": _num(a.available_balance),
        }  # fmt: skip

    def _account_route(self, params: dict[str, str]) -> dict[str, Any]:
        t = self._totals()
        return {
            "feeTier": 0, "canTrade": True, "canDeposit": True, "canWithdraw": True, "updateTime": 0,
            "multiAssetsMargin": False, "tradeGroupId": -1,
            **{f"total{k[0].upper()}{k[1:]}": v for k, v in t.items()
               if k not in ("availableBalance", "maxWithdrawAmount")},
            "totalCrossUnPnl": t["crossUnPnl"], "availableBalance": t["availableBalance"],
            "maxWithdrawAmount": t["maxWithdrawAmount"],
            "assets": [{"asset": "USDT", **t, "marginAvailable": True, "updateTime": self.now_ms}],
            "positions": self._position_risk({}),
        }  # fmt: skip

    def _balance(self, params: dict[str, str]) -> list[Any]:
        t = self._totals()
        return [{"accountAlias": "local", "asset": "USDT", "balance": t["walletBalance"],
                 "crossWalletBalance": t["crossWalletBalance"], "crossUnPnl": t["crossUnPnl"],
                 "availableBalance": t["availableBalance"], "maxWithdrawAmount": t["maxWithdrawAmount"],
                 "marginAvailable": True, "updateTime": self.now_ms}]  # fmt: skip

    def _user_trades(self, params: dict[str, str]) -> list[Any]:
        """The account's fills of a symbol (Binance requires it), by order, time and id as asked."""
        sid = self._market(params).rules.symbol_id  # -1102 without a symbol, -1121 for an unknown one
        rows = [r for r in self.user_trades if r["symbol"] == sid]
        for name, keep in (
            ("orderId", lambda r, v: r["orderId"] == int(v)),
            ("fromId", lambda r, v: r["id"] >= int(v)),
            ("startTime", lambda r, v: r["time"] >= int(v)),
            ("endTime", lambda r, v: r["time"] <= int(v)),
        ):
            if name in params:
                rows = [r for r in rows if keep(r, params[name])]
        return rows[: min(int(params.get("limit", 500)), 1000)]

    def _income_route(self, params: dict[str, str]) -> list[Any]:
        rows = self.income
        for name, keep in (
            ("symbol", lambda r, v: r["symbol"] == v),
            ("incomeType", lambda r, v: r["incomeType"] == v),
            ("startTime", lambda r, v: r["time"] >= int(v)),
            ("endTime", lambda r, v: r["time"] <= int(v)),
        ):
            if name in params:
                rows = [r for r in rows if keep(r, params[name])]
        return rows[: min(int(params.get("limit", 100)), 1000)]

    def _coins(self, params: dict[str, str]) -> list[Any]:
        assets = sorted({m.trades.market.base for m in self.markets.values()} | {"USDT"})
        return [{"coin": a, "name": a, "depositAllEnable": False, "withdrawAllEnable": False, "free": "0",
                 "locked": "0", "freeze": "0", "withdrawing": "0", "ipoing": "0", "ipoable": "0",
                 "storage": "0",
                 "isLegalMoney": False, "trading": True, "networkList": []} for a in assets]  # fmt: skip

    # --- public REST --------------------------------------------------------------------------------

    def _symbol_info(self, r: Perpetual) -> dict[str, Any]:
        return {
            "symbol": r.symbol_id, "pair": r.symbol_id, "contractType": "PERPETUAL",
            "deliveryDate": 4133404800000,
            "onboardDate": 1569398400000, "status": "TRADING", "maintMarginPercent": "2.5000",
            "requiredMarginPercent": "5.0000", "baseAsset": r.base, "quoteAsset": "USDT",
            "marginAsset": "USDT", "pricePrecision": r.price_precision, "quantityPrecision": r.qty_precision,
            "baseAssetPrecision": 8, "quotePrecision": 8, "underlyingType": "COIN", "underlyingSubType": [],
            "settlePlan": 0, "triggerProtect": "0.0500", "liquidationFee": str(r.liquidation_fee),
            "marketTakeBound": "0.30", "maxMoveOrderLimit": 10000,
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": str(r.min_price), "maxPrice": str(r.max_price),
                 "tickSize": str(r.tick_size)},
                {"filterType": "LOT_SIZE", "minQty": str(r.min_qty), "maxQty": str(r.max_qty),
                 "stepSize": str(r.step_size)},
                {"filterType": "MARKET_LOT_SIZE", "minQty": str(r.min_qty), "maxQty": str(r.market_max_qty),
                 "stepSize": str(r.step_size)},
                {"filterType": "MAX_NUM_ORDERS", "limit": 200},
                {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": 10},
                {"filterType": "MIN_NOTIONAL", "notional": str(r.min_notional)},
                {"filterType": "PERCENT_PRICE", "multiplierUp": "1.1500", "multiplierDown": "0.8500",
                 "multiplierDecimal": "4"},
            ],
            "orderTypes": ["LIMIT", "MARKET"], "timeInForce": ["GTC"],
        }  # fmt: skip

    def _premium(self, m: _Market) -> dict[str, Any]:
        f = m.mark or {}
        return {
            "symbol": m.rules.symbol_id, "markPrice": f.get("p", "0"), "indexPrice": f.get("i", "0"),
            "estimatedSettlePrice": f.get("P", "0"), "lastFundingRate": f.get("r", "0"),
            "interestRate": "0.00010000", "nextFundingTime": f.get("T", 0), "time": f.get("E", self.now_ms),
        }  # fmt: skip

    async def _public(self, request: web.Request) -> web.Response:
        """The public GET routes, by their last path part."""
        q, name = request.query, request.match_info["name"]
        if name == "ping":
            return web.json_response({})
        if name == "time":
            return web.json_response({"serverTime": int(time.time() * 1000)})
        if name == "exchangeInfo":
            return web.json_response(
                {"timezone": "UTC", "serverTime": int(time.time() * 1000), "futuresType": "U_MARGINED",
                 "rateLimits": [], "exchangeFilters": [],
                 "assets": [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "0"}],
                 "symbols": [self._symbol_info(m.rules) for m in self.markets.values()]}
            )  # fmt: skip
        if name == "premiumIndex":
            if "symbol" in q:
                return web.json_response(self._premium(self._market(q)))
            return web.json_response([self._premium(m) for m in self.markets.values()])
        if name == "fundingRate":
            rows = [r for r in self.funding_history if q.get("symbol") in (None, r["symbol"])]
            rows = [
                r
                for r in rows
                if int(q.get("startTime", 0)) <= r["fundingTime"] <= int(q.get("endTime", 2**62))
            ]
            return web.json_response(rows[: min(int(q.get("limit", 100)), 1000)])
        if name == "ticker/bookTicker":
            wanted = [m for m in self.markets.values() if q.get("symbol") in (None, m.rules.symbol_id)]
            books = [(m.rules.symbol_id, m.book) for m in wanted if m.book is not None]
            out = [{"symbol": sid, "bidPrice": b["b"], "bidQty": b["B"], "askPrice": b["a"], "askQty": b["A"],
                    "time": b["E"]} for sid, b in books]  # fmt: skip
            return web.json_response(out[0] if "symbol" in q and out else out)
        table = {"klines": klines_json, "aggTrades": agg_trades_json, "trades": trades_json}
        if name in table:
            return web.json_response(table[name](self._market(q).trades, q))
        raise _ApiError(-1000, f"Unknown request: {request.path}", 404)

    # --- HTTP and WebSocket -------------------------------------------------------------------------

    def _signed(self, handler: Callable[[dict[str, str]], Any]) -> _Handler:
        async def route(request: web.Request) -> web.Response:
            return web.json_response(handler(await signed_params(request, self.api_secret)))

        return route

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        get, post, delete = r.add_get, r.add_post, r.add_delete
        get("/fapi/v1/leverageBracket", self._signed(self._brackets))
        post("/fapi/v1/leverage", self._signed(self._leverage))
        post("/fapi/v1/marginType", self._signed(self._margin_type))
        get("/fapi/v1/positionSide/dual", self._signed(lambda params: {"dualSidePosition": False}))
        post("/fapi/v1/order", self._signed(self._new_order))
        get("/fapi/v1/order", self._signed(lambda params: self._find_order(params).json()))
        delete("/fapi/v1/order", self._signed(self._cancel_order))
        get("/fapi/v1/openOrders", self._signed(self._open_orders))
        get("/fapi/v1/income", self._signed(self._income_route))
        get("/fapi/v1/userTrades", self._signed(self._user_trades))
        for version in ("v2", "v3"):
            get(f"/fapi/{version}/positionRisk", self._signed(self._position_risk))
            get(f"/fapi/{version}/account", self._signed(self._account_route))
            get(f"/fapi/{version}/balance", self._signed(self._balance))
        get("/sapi/v1/capital/config/getall", self._signed(self._coins))
        get("/sapi/v1/margin/allPairs", self._signed(lambda params: []))
        get("/fapi/v1/{name:.*}", self._public)
        # Binance splits its futures streams by category (``/public``, ``/market``, ``/private``); ccxt.pro
        # connects to each as ``<category>/ws/<n>``: here they all carry every stream
        for prefix in ("", "/public", "/market", "/private"):
            get(f"{prefix}/ws", self._ws)
            get(f"{prefix}/ws/{{stream:.*}}", self._ws)
            get(f"{prefix}/stream", self._ws)
        app.on_shutdown.append(lambda _app: self.stop())
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except _ApiError as exc:
            return _error(exc.status, exc.code, exc.msg)

    async def _broadcast(self, frames: Iterable[_Frame]) -> None:
        for stream, payload in frames:
            for conn in list(self._conns):
                if stream in conn.streams:
                    await self._send(
                        conn, json.dumps({"stream": stream, "data": payload} if conn.combined else payload)
                    )

    async def _send(self, conn: _Conn, text: str) -> None:
        try:
            await conn.ws.send_str(text)
        except (ConnectionError, RuntimeError):
            if conn in self._conns:
                self._conns.remove(conn)

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True, heartbeat=None, compress=False)
        await ws.prepare(request)
        conn = _Conn(ws, combined=request.path.endswith("/stream"))
        streams = request.query.get("streams", "") if conn.combined else request.match_info.get("stream", "")
        conn.streams = {s for s in streams.split("/") if "@" in s}
        self._conns.append(conn)
        self.start(client=True)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._control(conn, msg.data)
        finally:
            if conn in self._conns:
                self._conns.remove(conn)
        return ws

    async def _control(self, conn: _Conn, text: str) -> None:
        try:
            req = json.loads(text)
            method, params, rid = req["method"], set(req.get("params", [])), req.get("id")
        except (ValueError, KeyError, TypeError):
            await self._send(conn, json.dumps({"error": {"code": 3, "msg": "Invalid JSON"}, "id": None}))
            return
        if method == "SUBSCRIBE":
            conn.streams |= params
            reply: dict[str, Any] = {"result": None, "id": rid}
        elif method == "UNSUBSCRIBE":
            conn.streams -= params
            reply = {"result": None, "id": rid}
        elif method == "LIST_SUBSCRIPTIONS":
            reply = {"result": sorted(conn.streams), "id": rid}
        else:
            reply = {"error": {"code": 2, "msg": f"Invalid request: {method}"}, "id": rid}
        await self._send(conn, json.dumps(reply))

    def subscribed(self, stream: str) -> bool:
        """Whether some connection listens to ``stream`` (e.g. ``btcusdt@markPrice@1s``)."""
        return any(stream in conn.streams for conn in self._conns)
