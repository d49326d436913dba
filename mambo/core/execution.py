"""The paper broker: a matching engine that fills Mambo's own orders against market data.

:class:`PaperBroker` holds every market's resting orders in one state object (an
:class:`OrderBook` per market key). Orders come in with :meth:`PaperBroker.submit`; market data
comes in as trades (:meth:`~PaperBroker.on_trade`, or a numpy batch with
:meth:`~PaperBroker.on_trades`, which returns exactly what the rows one by one would) or as candles
(:meth:`~PaperBroker.on_candle`). Each returns the fills and the order updates (``Order`` copies with
the new status) it caused (a broker made with ``order_updates=False`` leaves out the acknowledgements
and ``filled`` updates).

Fill model:

* A **market** order fills whole, as taker, on the next trade (or candle) the broker sees for its
  market: at the trade's price, or the candle's open, moved against the order by ``slippage_bps``
  (a buy pays up, a sell receives less) and rounded to the tick. So an order decided on candle t
  fills at candle t+1's open. As on the exchange, its notional at that price must reach the market's
  minimum: below it, the order is ``rejected`` with the reason, unfilled.
* A **limit** order the market has already crossed when it arrives (the first trade, or the next
  candle's open, at or better than its limit) takes like a market order, as taker: at that price with
  the slippage, never beyond its limit. Otherwise it rests, and fills as maker at its limit price when
  a trade crosses it (buy: trade price <= limit; sell: >=) or a candle's range reaches it (buy: low <=
  limit; sell: high >=).
  It fills only up to the trade's (or candle's) volume, which our resting orders on one side share
  in price-time priority; a short volume leaves it ``partially_filled``.
* Market data stamped before an order's ``ts_event`` (its decision time) never fills it: a fill
  never uses a price from before the decision, whatever order the events arrive in.
* The fee is ``rate × price × qty``, exact, in the market's quote currency. Fills from a candle are
  stamped with the candle's ``open_time``; fills from a trade with the trade's time.

Ids are deterministic: the n-th fill of an order is ``make_id("fill", client_order_id, n)``, and an
order update's event id hashes the order id, its status and filled quantity. A client order id is
accepted once: resubmitting it (a redelivered message) returns nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field
from decimal import Decimal
from typing import Literal

import numpy as np
import numpy.typing as npt

from mambo.core.market import Market, to_decimal
from mambo.core.portfolio import MONEY
from mambo.schemas.events import Candle, Fill, Order, OrderSide, OrderStatus, make_id, split_key

__all__ = ["OrderBook", "PaperBroker", "RestingOrder"]

_ZERO = Decimal(0)
_BPS = Decimal(10_000)


@dataclass
class RestingOrder:
    """One of our orders waiting at the broker, as its latest ``Order`` state."""

    order: Order
    seq: int  # arrival number: time priority
    limit: float = math.nan  # the limit as float64, the value trade prices are compared with
    fills: int = 0
    #: a limit has met the market (market data at or after its decision time) and was left resting:
    #: from then on it is a maker; before, a limit the market has crossed already takes like a
    #: market order
    rested: bool = False

    @property
    def remaining(self) -> Decimal:
        return self.order.qty - self.order.filled_qty


@dataclass
class OrderBook:
    """Our orders on one market: market orders in arrival order, limits best price first."""

    market_orders: list[RestingOrder] = field(default_factory=list)
    bids: list[RestingOrder] = field(default_factory=list)  # buy limits, highest first, then oldest
    asks: list[RestingOrder] = field(default_factory=list)  # sell limits, lowest first, then oldest

    def __len__(self) -> int:
        return len(self.market_orders) + len(self.bids) + len(self.asks)

    def add(self, entry: RestingOrder) -> None:
        if entry.order.order_type == "market":
            self.market_orders.append(entry)
        elif entry.order.side == "buy":
            self.bids.append(entry)
            self.bids.sort(key=lambda e: (-e.limit, e.seq))
        else:
            self.asks.append(entry)
            self.asks.sort(key=lambda e: (e.limit, e.seq))

    def remove(self, client_order_id: str) -> RestingOrder | None:
        for side in (self.market_orders, self.bids, self.asks):
            for i, entry in enumerate(side):
                if entry.order.client_order_id == client_order_id:
                    return side.pop(i)
        return None

    def orders(self) -> list[Order]:
        return [e.order for e in (*self.market_orders, *self.bids, *self.asks)]


@dataclass
class PaperBroker:
    """A paper matching engine for all markets; see the module docstring for the fill model."""

    fee_maker: Decimal = Decimal("0.001")
    fee_taker: Decimal = Decimal("0.001")
    slippage_bps: Decimal = _ZERO
    markets: InitVar[Mapping[str, Market] | None] = None
    #: False: no ``new`` acknowledgement of an accepted order (it rests as submitted) and no
    #: ``filled`` update after its last fill, for a caller that learns both from what it sent and
    #: from the fills (the backtest: risk releases an order once the position moves). Rejections,
    #: partial fills and cancels are reported either way.
    order_updates: bool = True
    _markets: dict[str, Market] = field(init=False)
    _books: dict[str, OrderBook] = field(init=False, default_factory=dict)
    _open: dict[str, str] = field(init=False, default_factory=dict)  # client_order_id -> market key
    _seen: set[str] = field(init=False, default_factory=set)  # every client_order_id ever submitted
    _seq: int = field(init=False, default=0)

    def __post_init__(self, markets: Mapping[str, Market] | None) -> None:
        self.fee_maker, self.fee_taker = to_decimal(self.fee_maker), to_decimal(self.fee_taker)
        self.slippage_bps = to_decimal(self.slippage_bps)
        self._markets = dict(markets or {})  # a plain dict: picklable, comparable

    def market(self, key: str) -> Market:
        """The rules of market ``key`` (a permissive default when none were loaded)."""
        found = self._markets.get(key)
        if found is None:
            found = self._markets[key] = Market.default(*split_key(key))
        return found

    def has_pending(self, key: str) -> bool:
        """Whether any of our orders rests on market ``key`` (market data there can fill something)."""
        return key in self._books

    def open_orders(self, key: str | None = None) -> list[Order]:
        """Resting orders (of one market, or all), each as its latest state."""
        if key is None:
            return [order for book in self._books.values() for order in book.orders()]
        book = self._books.get(key)
        return book.orders() if book is not None else []

    # --- orders -------------------------------------------------------------------------------

    def submit(self, order: Order, ts_init: int) -> list[Order]:
        """Accept an order (status ``new``) or reject it (``rejected``, with the reason).

        An order whose ``client_order_id`` was seen before is ignored (returns ``[]``).
        """
        if order.client_order_id in self._seen:
            return []
        self._seen.add(order.client_order_id)
        problem = self._invalid(order, self.market(order.key))
        if problem:
            return [_update(order, "rejected", order.ts_event, ts_init, reason=f"rejected: {problem}")]
        ack = _update(order, "new", order.ts_event, ts_init) if self.order_updates else order
        limit = float(ack.limit_price) if ack.limit_price is not None else math.nan
        self._books.setdefault(order.key, OrderBook()).add(RestingOrder(ack, self._seq, limit))
        self._seq += 1
        self._open[order.client_order_id] = order.key
        return [ack] if self.order_updates else []

    @staticmethod
    def _invalid(order: Order, market: Market) -> str:
        if order.status != "new" or order.filled_qty:
            return f"a new order must have status new and nothing filled, got {order.status}"
        if not order.qty > 0 or order.qty % market.step_size:
            return f"qty {order.qty} must be > 0 and a multiple of the step {market.step_size}"
        if order.qty < market.min_qty:
            return f"qty {order.qty} below the market minimum {market.min_qty}"
        if order.order_type == "limit":
            limit = order.limit_price
            if limit is None or not limit > 0 or limit % market.tick_size:
                return f"limit price {limit} must be > 0 and a multiple of the tick {market.tick_size}"
            if order.qty * limit < market.min_notional:
                return f"notional {order.qty * limit} below the market minimum {market.min_notional}"
        return ""

    def cancel(self, client_order_id: str, ts_init: int | None = None) -> list[Order]:
        """Cancel a resting order: its ``canceled`` update, or ``[]`` when it is not resting."""
        key = self._open.get(client_order_id)
        if key is None:
            return []
        book = self._books[key]
        update = self._drop(book, client_order_id, "canceled", ts_init, ts_init)
        if not book:
            del self._books[key]
        return [update]

    def _drop(
        self,
        book: OrderBook,
        client_order_id: str,
        status: OrderStatus,
        ts_event: int | None,
        ts_init: int | None,
        reason: str = "",
    ) -> Order:
        """Take an order out of its book unfilled (the rest of it), as its final update (the times
        default to when the order was sent)."""
        entry = book.remove(client_order_id)
        assert entry is not None
        del self._open[client_order_id]
        sent = entry.order.ts_init
        event, init = sent if ts_event is None else ts_event, sent if ts_init is None else ts_init
        return _update(entry.order, status, event, init, **({"reason": reason} if reason else {}))

    # --- market data --------------------------------------------------------------------------

    def on_trade(
        self, key: str, ts: int, price: float, qty: float, ts_init: int | None = None
    ) -> list[Order | Fill]:
        """Match one public trade of market ``key`` against our resting orders.

        ``ts_init``: when the trade entered Mambo (the fills' ``ts_init``); the trade's time if None.
        """
        book = self._books.get(key)
        if book is None:
            return []
        t, p = int(ts), float(price)
        return self._match(key, book, t, t if ts_init is None else ts_init, p, p, p, float(qty))

    def on_trades(
        self,
        key: str,
        ts: npt.NDArray[np.int64],
        price: npt.NDArray[np.float64],
        qty: npt.NDArray[np.float64],
        ts_init: int | None = None,
    ) -> list[Order | Fill]:
        """Exactly what :meth:`on_trade` row by row would return, but only visiting rows that can fill.

        Returns at once when nothing rests on the market. Otherwise the rows where some resting
        order could fill are found vectorized; only those run through the matcher, and the search is
        redone only when an order leaves the book (no order ever joins it during a batch).
        """
        book = self._books.get(key)
        if book is None:
            return []
        out: list[Order | Fill] = []
        start, n = 0, len(ts)
        while start < n and book:
            rows = start + np.flatnonzero(_may_fill(book, ts[start:], price[start:]))
            resting = len(book)
            for i in rows.tolist():
                p = float(price[i])
                t = int(ts[i])
                out += self._match(key, book, t, t if ts_init is None else ts_init, p, p, p, float(qty[i]))
                if len(book) != resting:
                    start = i + 1
                    break
            else:
                break
        return out

    def on_candle(self, candle: Candle) -> list[Order | Fill]:
        """Match a closed candle: market orders at its open, limits its range reaches (see module)."""
        if not candle.closed:
            return []
        c = candle
        return self.on_bar(c.key, c.open_time, c.ts_init, c.open, c.low, c.high, c.volume)

    def on_bar(
        self, key: str, open_time: int, ts_init: int, open: float, low: float, high: float, volume: float
    ) -> list[Order | Fill]:
        """:meth:`on_candle` for a closed candle of market ``key`` given as its numbers (a backtest
        holds candles as columns and builds no event for the bars that only fill)."""
        book = self._books.get(key)
        if book is None:
            return []
        return self._match(key, book, open_time, ts_init, open, low, high, volume)

    def _match(
        self,
        key: str,
        book: OrderBook,
        ts: int,
        ts_init: int,
        price: float,
        low: float,
        high: float,
        volume: float,
    ) -> list[Order | Fill]:
        """Fill what market data at ``ts`` allows: market orders at ``price``, limits that ``low``
        (bids) or ``high`` (asks) reach, up to ``volume`` per side."""
        market = self.market(key)
        out: list[Order | Fill] = []
        for entry in [e for e in book.market_orders if ts >= e.order.ts_event]:
            fill_price = self._slipped(market, entry.order.side, price)
            notional = entry.remaining * fill_price
            if notional < market.min_notional:  # as the exchange does, at the price it would fill at
                why = f"rejected: notional {notional} at {fill_price} below the minimum {market.min_notional}"
                out.append(self._drop(book, entry.order.client_order_id, "rejected", ts, ts_init, why))
                continue
            out += self._fill(book, entry, market, ts, ts_init, fill_price, entry.remaining, "taker")
        for side, reached, crossed in (
            (book.bids, lambda lim: low <= lim, lambda lim: price <= lim),
            (book.asks, lambda lim: high >= lim, lambda lim: price >= lim),
        ):
            available = market.round_qty(volume) if side else _ZERO
            for entry in list(side):
                if available <= 0 or not reached(entry.limit):
                    break  # sorted best first: once one is not reached, none further is
                if ts < entry.order.ts_event:
                    continue
                qty = min(entry.remaining, available)
                available -= qty
                limit = entry.order.limit_price
                assert limit is not None
                if not entry.rested and crossed(entry.limit):  # marketable on arrival: it takes
                    taken = self._slipped(market, entry.order.side, price)
                    taken = min(taken, limit) if entry.order.side == "buy" else max(taken, limit)
                    out += self._fill(book, entry, market, ts, ts_init, taken, qty, "taker")
                else:
                    out += self._fill(book, entry, market, ts, ts_init, limit, qty, "maker")
            for entry in side:
                entry.rested = entry.rested or ts >= entry.order.ts_event
        if not book:
            del self._books[key]
        return out

    def _slipped(self, market: Market, side: OrderSide, price: float) -> Decimal:
        """The market order's price: ``price`` moved against it by the slippage, on the tick."""
        p = to_decimal(price)
        if self.slippage_bps:
            move = self.slippage_bps / _BPS
            p = p * (1 + move if side == "buy" else 1 - move)
        return market.round_fill(side, p)

    def _fill(
        self,
        book: OrderBook,
        entry: RestingOrder,
        market: Market,
        ts: int,
        ts_init: int,
        price: Decimal,
        qty: Decimal,
        liquidity: Literal["maker", "taker"],
    ) -> list[Order | Fill]:
        order = entry.order
        # in MONEY, operation by operation (what the operators do under localcontext(MONEY), without
        # entering a context on every fill)
        fee = MONEY.multiply(
            MONEY.multiply(self.fee_maker if liquidity == "maker" else self.fee_taker, price), qty
        )
        filled = MONEY.add(order.filled_qty, qty)
        entry.fills += 1
        fill_id = make_id("fill", order.client_order_id, entry.fills)
        fill = Fill(
            event_id=fill_id,
            account=order.account,
            ts_event=ts,
            ts_init=ts_init,
            exchange=order.exchange,
            symbol=order.symbol,
            fill_id=fill_id,
            client_order_id=order.client_order_id,
            strategy=order.strategy,
            side=order.side,
            price=price,
            qty=qty,
            fee=fee,
            fee_currency=market.quote,
            liquidity=liquidity,
        )
        if filled < order.qty:
            entry.order = _update(order, "partially_filled", ts, ts_init, filled_qty=filled)
            return [fill, entry.order]
        book.remove(order.client_order_id)
        del self._open[order.client_order_id]
        if not self.order_updates:
            return [fill]
        return [fill, _update(order, "filled", ts, ts_init, filled_qty=filled)]


def _update(order: Order, status: OrderStatus, ts_event: int, ts_init: int, **changes: object) -> Order:
    """The order in a new state, as its own event (the id hashes the order, status and filled qty)."""
    filled = changes.get("filled_qty", order.filled_qty)
    event_id = make_id("order", order.client_order_id, status, filled)
    return order.model_copy(
        update={"event_id": event_id, "ts_event": ts_event, "ts_init": ts_init, "status": status, **changes}
    )


def _may_fill(
    book: OrderBook, ts: npt.NDArray[np.int64], price: npt.NDArray[np.float64]
) -> npt.NDArray[np.bool_]:
    """Rows where at least one resting order could fill (a superset: the matcher decides)."""
    mask = np.zeros(len(ts), dtype=bool)
    if book.market_orders:
        mask |= ts >= min(e.order.ts_event for e in book.market_orders)
    if book.bids:
        mask |= (price <= book.bids[0].limit) & (ts >= min(e.order.ts_event for e in book.bids))
    if book.asks:
        mask |= (price >= book.asks[0].limit) & (ts >= min(e.order.ts_event for e in book.asks))
    for entry in (*book.bids, *book.asks):  # a limit's first trade decides whether it takes or rests
        if not entry.rested:
            after = ts >= entry.order.ts_event
            if after.any():
                mask[int(np.argmax(after))] = True
    return mask
