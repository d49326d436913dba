"""Orders on the local Binance spot exchange: placed, cancelled, queried, and matched against the
replayed book top and trades (:class:`mambo.core.execution.PaperBroker` for resting orders)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import structlog

from mambo.exchange.binance.state import (
    _COMMISSION,
    _MS,
    ExchangeState,
    SymbolData,
    _ApiError,
    _ExOrder,
    _num,
    _paper_id,
)
from mambo.schemas.events import Fill, Order, make_id

__all__ = ["Matching"]

log = structlog.get_logger(__name__)


class Matching(ExchangeState):
    """Spot orders: the signed ``order``/``openOrders``/``myTrades`` handlers and the matching."""

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
