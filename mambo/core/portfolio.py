"""The portfolio: cash, positions and equity of one account, kept exactly from fills and marks.

:class:`Portfolio` is the state object (one per account); :class:`PositionState` is one market's
position inside it. Feed it every :class:`~mambo.schemas.events.Fill` with :meth:`Portfolio.apply`
and the latest prices with :meth:`Portfolio.mark`; read :meth:`Portfolio.snapshot` for the account.

Exactness. Each position keeps its *cost basis* (the signed Σ qty·price of the fills still open)
rather than an average price, and all money arithmetic runs in :data:`MONEY`, a decimal context wide
enough that sums and products never round. So, to the last unit and at every step:

* ``cash + Σ qty·mark == equity``
* ``Σ signed fill qty == position qty``
* ``realized + unrealized - fees + funding == equity - initial cash``

A perpetual's funding payments and the venue's liquidations (:meth:`Portfolio.apply_funding`,
:meth:`Portfolio.apply_liquidation`, from :class:`~mambo.core.margin.MarginAccount`) are booked here too,
so an account of perpetuals has the same equity as its margin account's margin balance, exactly.

The one division, the cost taken out when part of a position closes, is exact when it can be and
otherwise rounded to 1e-18; because realized PnL and the remaining cost basis take the same rounded
amount, the identities still hold exactly. The average price is derived (cost / qty) for display.

Conventions: a fill's ``realized_pnl`` is the price PnL of the quantity it closed, before fees;
fees are counted in the account's (quote) currency. A fee an exchange charges in the market's base
coin (Binance takes a spot buy's fee out of the coin bought) changes what is held instead of the
cash (:func:`held`): buying 1 BTC at 50,000 with a 0.001 BTC fee holds 0.999 BTC for 50,000 of cash,
a lot of 0.999 at 50,000 and a fee worth 0.001 × 50,000 = 50. A fee in any third currency (BNB)
cannot be booked in an account of one currency and is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext
from types import MappingProxyType

from mambo.core.market import to_decimal
from mambo.schemas.events import (
    DEFAULT_ACCOUNT,
    EquitySnapshot,
    Fill,
    FundingPayment,
    Liquidation,
    Position,
    make_id,
    split_key,
)

__all__ = ["MONEY", "Portfolio", "PositionState", "booked_qty_and_fee", "held"]

#: The decimal context of money: wide enough that sums and products of prices, quantities, fee
#: rates and cash never round (60 significant digits).
MONEY = Context(prec=60, rounding=ROUND_HALF_EVEN)

_ZERO = Decimal(0)
_COST_QUANTUM = Decimal("1e-18")


def _cost_share(cost: Decimal, closing: Decimal, qty: Decimal) -> Decimal:
    """The part of ``cost`` that ``closing`` of ``qty`` carries: exact, or rounded to 1e-18."""
    with localcontext(MONEY):
        share = cost * closing / qty
        rounded = share.quantize(_COST_QUANTUM)
    return share if share == rounded else rounded


def held(side: str, qty: Decimal, fee: Decimal, fee_currency: str, symbol: str) -> Decimal:
    """How much a fill changes the quantity held: ``±qty``, less a fee paid in the base currency."""
    base = symbol.split("/")[0]
    change = qty if side == "buy" else -qty
    return MONEY.subtract(change, fee) if fee_currency == base else change


def booked_qty_and_fee(fill: Fill) -> tuple[Decimal, Decimal]:
    """The signed qty a fill books and its fee in quote. A fee in the base coin is a part of the lot
    the account never gets (a buy) or gives on top (a sell), valued at the fill's price; booking it
    as that lot traded with that fee keeps the cash exact (see the module)."""
    base, _, rest = fill.symbol.partition("/")
    quote = rest.partition(":")[0]
    if fill.fee_currency in (quote, "") or not fill.fee:
        return (fill.qty if fill.side == "buy" else -fill.qty), fill.fee
    if fill.fee_currency == base:
        return held(fill.side, fill.qty, fill.fee, base, fill.symbol), MONEY.multiply(fill.fee, fill.price)
    raise ValueError(
        f"fill {fill.fill_id}: a fee in {fill.fee_currency} cannot be booked in an account kept in"
        f" {quote} (convert it to {quote} first)"
    )


@dataclass
class PositionState:
    """One market's position: signed quantity, cost basis, realized PnL and fees so far, last mark."""

    exchange: str
    symbol: str
    mark_price: Decimal
    qty: Decimal = _ZERO
    #: Signed Σ qty·price of the open quantity (negative for a short); ``avg_price = cost / qty``.
    cost: Decimal = _ZERO
    realized_pnl: Decimal = _ZERO
    fees: Decimal = _ZERO
    #: perpetuals: funding received (negative: paid), and what an insurance fund covered of a
    #: liquidation that would have left less than nothing
    funding: Decimal = _ZERO

    @property
    def key(self) -> str:
        return f"{self.exchange}:{self.symbol}"

    @property
    def avg_price(self) -> Decimal:
        """Average entry price of the open quantity (0 when flat); to 1e-18 when the division does not
        end there (fills at several prices), so it fits the history's Decimal(38, 18)."""
        if not self.qty:
            return _ZERO
        avg = MONEY.divide(self.cost, self.qty)
        rounded = MONEY.quantize(avg, _COST_QUANTUM)
        return avg if avg == rounded else rounded

    @property
    def market_value(self) -> Decimal:
        """Signed value at the mark: ``qty · mark``."""
        return MONEY.multiply(self.qty, self.mark_price)

    @property
    def unrealized_pnl(self) -> Decimal:
        return MONEY.subtract(self.market_value, self.cost)


@dataclass
class Portfolio:
    """Cash, positions and equity of one account, long and short, updated fill by fill."""

    initial_cash: Decimal
    account: str = DEFAULT_ACCOUNT
    cash: Decimal = field(init=False)
    #: Highest equity seen after any fill or mark; drawdown is measured from it.
    peak_equity: Decimal = field(init=False)
    _books: dict[str, PositionState] = field(init=False, default_factory=dict)
    #: Count of fills and marks applied; makes snapshot ids unique and deterministic.
    _version: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.initial_cash = to_decimal(self.initial_cash)
        self.cash = self.initial_cash
        self.peak_equity = self.initial_cash

    # --- updates -------------------------------------------------------------------------------

    def apply(self, fill: Fill) -> tuple[Fill, Position]:
        """Book a fill: returns it with ``realized_pnl`` set, and the market's position after it.

        Handles opening, adding to, reducing, closing and flipping longs and shorts; the fee
        reduces cash. A fill that opens a position from flat marks it at the fill's price.
        """
        booked = self.book(fill)
        pos = self._books[fill.key]
        return booked, self._position_event(pos, fill.ts_event, fill.ts_init, fill.fill_id)

    def book(self, fill: Fill) -> Fill:
        """:meth:`apply` without the position event (for callers that do not publish it)."""
        if not (fill.qty > 0 and fill.price > 0):
            raise ValueError(f"fill {fill.fill_id}: qty and price must be > 0, got {fill.qty} @ {fill.price}")
        with localcontext(MONEY):
            traded, fee = booked_qty_and_fee(fill)
            pos = self._books.get(fill.key)
            if pos is None:
                pos = self._books[fill.key] = PositionState(fill.exchange, fill.symbol, fill.price)
            elif not pos.qty:
                # A position opened from flat is worth its fill price: the old mark belongs to a
                # position that no longer exists (a re-entry valued at it gave false equity and peaks)
                pos.mark_price = fill.price
            opening, realized = traded, _ZERO
            if pos.qty and (pos.qty > 0) != (traded > 0):
                # The fill first closes (part of) the position at its cost basis; the rest opens.
                closing = min(fill.qty, abs(pos.qty)).copy_sign(pos.qty)
                removed = pos.cost if closing == pos.qty else _cost_share(pos.cost, closing, pos.qty)
                realized = closing * fill.price - removed
                pos.cost -= removed
                pos.qty -= closing
                opening += closing
            pos.cost += opening * fill.price
            pos.qty += opening
            pos.realized_pnl += realized
            pos.fees += fee
            self.cash -= traded * fill.price + fee
        self._touch()
        return fill.model_copy(update={"realized_pnl": realized})

    def apply_liquidation(self, liq: Liquidation) -> Position:
        """Book a venue's liquidation of a perpetual (:class:`~mambo.core.margin.MarginAccount`): its
        quantity closed at its price, the liquidation fee as a fee, and what the insurance fund covered
        as money received. The market's position after it."""
        with localcontext(MONEY):
            pos = self._books.get(liq.key)
            if pos is None or abs(pos.qty) < liq.qty or (pos.qty > 0) != (liq.side == "sell"):
                held = pos.qty if pos is not None else _ZERO
                raise ValueError(f"liquidation {liq.event_id}: {liq.side} {liq.qty} of a position of {held}")
            closing = liq.qty if liq.side == "sell" else -liq.qty
            removed = pos.cost if closing == pos.qty else _cost_share(pos.cost, closing, pos.qty)
            pos.realized_pnl += closing * liq.price - removed
            pos.cost -= removed
            pos.qty -= closing
            pos.fees += liq.fee
            pos.funding += liq.insurance
            self.cash += closing * liq.price - liq.fee + liq.insurance
            pos.mark_price = liq.price
        self._touch()
        return self._position_event(pos, liq.ts_event, liq.ts_init, liq.event_id)

    def apply_funding(self, payment: FundingPayment) -> None:
        """Book a perpetual's funding payment: money received (negative: paid)."""
        with localcontext(MONEY):
            pos = self._books.get(payment.key)
            if pos is None:
                pos = self._books[payment.key] = PositionState(
                    payment.exchange, payment.symbol, payment.mark_price
                )
            pos.funding += payment.amount
            self.cash += payment.amount
        self._touch()

    def mark(self, key: str, price: float | Decimal) -> None:
        """Value the market ``key`` at ``price`` from now on (a float is taken at its shortest repr)."""
        mark = to_decimal(price)
        if not mark > 0:
            raise ValueError(f"mark of {key} must be > 0, got {price!r}")
        pos = self._books.get(key)
        if pos is None:
            pos = self._books[key] = PositionState(*split_key(key), mark_price=mark)
        pos.mark_price = mark
        self._touch()

    def _touch(self) -> None:
        self._version += 1
        self.peak_equity = max(self.peak_equity, self.equity)

    # --- reading ------------------------------------------------------------------------------

    def position(self, key: str) -> Decimal:
        """Signed quantity held in market ``key`` (0 when flat or unknown)."""
        pos = self._books.get(key)
        return pos.qty if pos is not None else _ZERO

    @property
    def positions(self) -> Mapping[str, PositionState]:
        """The open (non-flat) positions by market key, read-only."""
        return MappingProxyType({k: p for k, p in self._books.items() if p.qty})

    @property
    def positions_value(self) -> Decimal:
        """Σ qty·mark over all positions (shorts count negative)."""
        # MONEY.add step by step is what sum() does under localcontext(MONEY), without entering a
        # context on every call (this runs on every mark and fill)
        total = _ZERO
        for p in self._books.values():
            total = MONEY.add(total, MONEY.multiply(p.qty, p.mark_price))
        return total

    @property
    def equity(self) -> Decimal:
        """Cash plus positions at market."""
        return MONEY.add(self.cash, self.positions_value)

    @property
    def drawdown(self) -> float:
        """Fall of equity from its peak, as a fraction of the peak (0 when at the peak)."""
        if self.peak_equity <= 0:
            return 0.0
        return max(0.0, float((self.peak_equity - self.equity) / self.peak_equity))

    def position_event(self, key: str, ts_event: int, ts_init: int) -> Position:
        """The market's position as an event (e.g. after a mark)."""
        pos = self._books.get(key) or PositionState(*split_key(key), mark_price=_ZERO)
        return self._position_event(pos, ts_event, ts_init, f"v{self._version}")

    def snapshot(self, ts_event: int, ts_init: int) -> EquitySnapshot:
        """The account now: cash + positions at market = equity, exactly."""
        with localcontext(MONEY):
            books = self._books.values()
            value = sum((p.market_value for p in books), _ZERO)
            return EquitySnapshot(
                event_id=make_id("equity", self.account, ts_event, self._version),
                ts_event=ts_event,
                ts_init=ts_init,
                account=self.account,
                cash=self.cash,
                positions_value=value,
                equity=self.cash + value,
                realized_pnl=sum((p.realized_pnl for p in books), _ZERO),
                unrealized_pnl=sum((p.unrealized_pnl for p in books), _ZERO),
                fees=sum((p.fees for p in books), _ZERO),
                funding=sum((p.funding for p in books), _ZERO),
                drawdown=self.drawdown,
            )

    def _position_event(self, pos: PositionState, ts_event: int, ts_init: int, source: str) -> Position:
        return Position(
            event_id=make_id("position", self.account, pos.key, source),
            account=self.account,
            ts_event=ts_event,
            ts_init=ts_init,
            exchange=pos.exchange,
            symbol=pos.symbol,
            qty=pos.qty,
            avg_price=pos.avg_price,
            realized_pnl=pos.realized_pnl,
            unrealized_pnl=pos.unrealized_pnl,
            fees=pos.fees,
            mark_price=pos.mark_price,
        )
