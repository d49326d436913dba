"""The margin account of USDT-margined perpetual futures (Binance USDT-M, one-way mode), kept exactly.

:class:`Brackets` are a market's leverage brackets (Binance's ``GET /fapi/v1/leverageBracket``;
:func:`load_brackets` reads the bundled ones); :class:`MarginAccount` is the state object (one per
account) with a :class:`MarginPosition` per market. Feed it fills (:meth:`MarginAccount.apply`), mark
prices (:meth:`MarginAccount.on_mark`) and funding rates (:meth:`MarginAccount.on_funding`); marks and
funding return the :class:`~mambo.schemas.events.Liquidation` events they set off.

Definitions (Binance's, one-way mode; ``q`` the signed position, ``P`` the mark price):

* notional ``|q|·P``; unrealized PnL ``q·P − cost`` (``cost`` the signed Σ qty·price still open, as in
  :mod:`mambo.core.portfolio`); entry price ``cost / q``.
* maintenance margin ``notional × maintMarginRatio − cum`` with the bracket of that notional; initial
  margin ``notional / leverage``.
* wallets: the cross wallet, and one isolated wallet per isolated position (``isolatedWalletBalance``).
  Opening or adding to an isolated position moves ``qty·price / leverage`` from the cross wallet into it;
  reducing moves the closed share back; :meth:`MarginAccount.add_margin` moves margin by hand. The wallet
  balance is the sum of all of them: moves between them change nothing.
* every money flow of a position (realized PnL, fees, funding, liquidation fee) goes to the position's
  wallet: its isolated wallet if isolated, the cross wallet if cross.
* margin balance: a wallet plus the unrealized PnL it carries (cross: of all cross positions).
  Liquidation when a margin balance is at or below its maintenance margin (margin ratio
  ``maintenance / margin balance`` ≥ 100%): isolated, the position alone; cross, every cross position.
  The venue closes them at the mark price and charges the liquidation (clearance) fee
  ``notional × rate`` (the market's own where the venue publishes it), at most what margin is left;
  a balance that would end below zero is brought back to zero by the insurance fund (Binance's
  Insurance Fund rules).
* available balance ``max(0, cross wallet + cross unrealized PnL − cross initial margin)``.
* funding at a funding time: ``−q × P × rate`` to the wallet (longs pay when the rate is positive).

Exactness: money runs in :data:`~mambo.core.portfolio.MONEY`; the only divisions are the margin moved
into or out of an isolated wallet (and the cost taken out by a partial close), rounded to 1e-18 where they
do not end, the same amount leaving one side and entering the other. So at every step, exactly:
``wallet balance + unrealized PnL == margin balance`` and ``wallet balance == initial balance + Σ ledger``,
where :attr:`MarginAccount.ledger` totals the changes by kind (realized PnL, fees, funding, liquidation
fees, insurance), and each change is also the amount of the event that made it.

The liquidation price (:func:`liquidation_price`) is Binance's published USDⓈ-M formula, one-way mode
("How to Calculate Liquidation Price of USDⓈ-M Futures Contracts", Binance FAQ ``b3c689c1f50a44ca``)::

    LP = (WB − TMM1 + UPNL1 + cumB − side × |q| × EP) / (|q| × MMR_B − side × |q|)

WB the wallet (cross: the cross wallet; isolated: the position's), TMM1 and UPNL1 the maintenance margin
and unrealized PnL of the other cross positions (0 when isolated), ``side`` 1 long, −1 short; MMR and
cum those of the bracket of the notional at the liquidation price (the formula is solved per bracket
and the bracket that holds its own solution is the answer).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, localcontext
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mambo.core.market import to_decimal
from mambo.core.portfolio import MONEY
from mambo.schemas.events import (
    DEFAULT_ACCOUNT,
    Fill,
    FundingPayment,
    FundingRate,
    Liquidation,
    MarginMode,
    MarkPrice,
    OrderSide,
    make_id,
    split_key,
)

__all__ = [
    "BUNDLED_BRACKETS",
    "LEDGER_KINDS",
    "Bracket",
    "Brackets",
    "MarginAccount",
    "MarginConfig",
    "MarginPosition",
    "is_perpetual",
    "liquidation_price",
    "load_brackets",
]

#: Binance's brackets of the bundled perpetuals (see ``mambo/data/README.md``).
BUNDLED_BRACKETS = Path(__file__).resolve().parents[1] / "data" / "binance_usdm_leverage_brackets.json"

LedgerKind = Literal["realized_pnl", "fees", "funding", "liquidation_fees", "insurance"]
#: What changes a wallet balance, the keys of :attr:`MarginAccount.ledger`.
LEDGER_KINDS: tuple[LedgerKind, ...] = ("realized_pnl", "fees", "funding", "liquidation_fees", "insurance")

_ZERO = Decimal(0)
_QUANTUM = Decimal("1e-18")


class MarginConfig(BaseModel):
    """How an account trades perpetuals (``[engine.futures]`` or ``[accounts.<id>.futures]``): its
    leverage and margin mode for every market, and the venue's liquidation (clearance) fee."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    leverage: int = Field(1, ge=1, le=125)
    margin_mode: MarginMode = "cross"
    liquidation_fee_rate: Decimal = Field(Decimal("0.0125"), ge=0, lt=1)
    #: The venue's own clearance fee by symbol (ccxt's, ``BTC/USDT:USDT``), where it publishes one
    #: (Binance: exchangeInfo's ``liquidationFee``); other symbols pay ``liquidation_fee_rate``. A
    #: mapping in the settings; kept as sorted pairs so the config stays hashable.
    liquidation_fees: tuple[tuple[str, Decimal], ...] = ()

    @field_validator("liquidation_fees", mode="before")
    @classmethod
    def _fees(cls, value: Any) -> Any:
        items = value.items() if isinstance(value, Mapping) else value
        out = tuple(sorted((str(k), to_decimal(v)) for k, v in items))
        bad = [k for k, v in out if not 0 <= v < 1]
        if bad:
            raise ValueError(f"liquidation_fees of {', '.join(bad)}: a fraction in [0, 1)")
        return out


def is_perpetual(key: str) -> bool:
    """Whether a market (``exchange:symbol`` or a symbol) is a perpetual: ccxt's unified symbol of a
    contract names its settle currency after a colon (``BTC/USDT:USDT``)."""
    return ":" in key.rpartition("/")[2]


#: The grid a liquidation's mark is put on: finer than any market's tick, coarse enough that the
#: liquidation's PnL and fee (qty to 1e-8 × price × fee rate to 1e-4) end within the history's 1e-18.
EDGE_QUANTUM = Decimal("1e-6")


def liquidation_edge(price: Decimal, long: bool) -> Decimal:
    """A liquidation price on :data:`EDGE_QUANTUM`, on its liquidating side (below for a long, above for
    a short): the mark that went through it."""
    return price.quantize(EDGE_QUANTUM, rounding=ROUND_FLOOR if long else ROUND_CEILING)


def _prorate(amount: Decimal, part: Decimal, whole: Decimal) -> Decimal:
    """``amount × part / whole``: exact when it ends by 1e-18, else rounded to 1e-18."""
    with localcontext(MONEY):
        share = amount * part / whole
        rounded = share.quantize(_QUANTUM)
    return share if share == rounded else rounded


# --- brackets -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bracket:
    """One notional tier: positions of ``notional_floor <= notional < notional_cap`` take this
    maintenance margin ratio and amount (``cum``) and at most ``initial_leverage``."""

    bracket: int
    initial_leverage: int
    notional_floor: Decimal
    notional_cap: Decimal
    maint_margin_ratio: Decimal
    cum: Decimal


@dataclass(frozen=True)
class Brackets:
    """A market's leverage brackets, checked on construction (ValueError says what is wrong): tiers
    contiguous from 0, ratios rising below 1, leverage not rising, and each ``cum`` by Binance's rule
    ``cum[n] = cum[n-1] + floor[n] × (ratio[n] − ratio[n-1])``, which makes the maintenance margin
    continuous across tiers."""

    symbol: str
    tiers: tuple[Bracket, ...]

    def __post_init__(self) -> None:
        if not self.tiers:
            raise ValueError(f"{self.symbol}: no brackets")
        if self.tiers[0].notional_floor != 0 or self.tiers[0].cum != 0:
            raise ValueError(f"{self.symbol}: the first bracket must start at notional 0 with cum 0")
        prev: Bracket | None = None
        for t in self.tiers:
            where = f"{self.symbol} bracket {t.bracket}"
            if not t.notional_cap > t.notional_floor:
                raise ValueError(f"{where}: notionalCap {t.notional_cap} <= notionalFloor {t.notional_floor}")
            if not 0 < t.maint_margin_ratio < 1 or t.initial_leverage < 1:
                raise ValueError(f"{where}: maintMarginRatio must be in (0, 1) and initialLeverage >= 1")
            if prev is not None:
                expected = MONEY.add(
                    prev.cum, MONEY.multiply(t.notional_floor, t.maint_margin_ratio - prev.maint_margin_ratio)
                )
                if t.notional_floor != prev.notional_cap:
                    raise ValueError(
                        f"{where}: notionalFloor {t.notional_floor} != previous cap {prev.notional_cap}"
                    )
                if t.maint_margin_ratio < prev.maint_margin_ratio:
                    raise ValueError(f"{where}: maintMarginRatio falls below the previous bracket's")
                if t.initial_leverage > prev.initial_leverage:
                    raise ValueError(f"{where}: initialLeverage rises above the previous bracket's")
                if t.cum != expected:
                    raise ValueError(
                        f"{where}: cum {t.cum} != {expected} (previous cum + floor × ratio step)"
                    )
            prev = t

    @classmethod
    def from_binance(cls, symbol: str, brackets: Iterable[Mapping[str, Any]]) -> Brackets:
        """From the ``brackets`` list of Binance's leverageBracket reply (numbers or strings)."""
        try:
            tiers = tuple(
                Bracket(
                    bracket=int(b["bracket"]),
                    initial_leverage=int(b["initialLeverage"]),
                    notional_floor=to_decimal(b["notionalFloor"]),
                    notional_cap=to_decimal(b["notionalCap"]),
                    maint_margin_ratio=to_decimal(b["maintMarginRatio"]),
                    cum=to_decimal(b["cum"]),
                )
                for b in sorted(brackets, key=lambda b: int(b["bracket"]))
            )
        except (KeyError, TypeError, ValueError, ArithmeticError) as e:
            raise ValueError(f"{symbol}: malformed leverage bracket ({e!r})") from e
        return cls(symbol, tiers)

    @property
    def max_notional(self) -> Decimal:
        return self.tiers[-1].notional_cap

    @property
    def max_leverage(self) -> int:
        return self.tiers[0].initial_leverage

    def at(self, notional: Decimal) -> Bracket:
        """The bracket of a notional (the last one beyond the last cap)."""
        if notional < 0:
            raise ValueError(f"{self.symbol}: notional must be >= 0, got {notional}")
        for t in self.tiers:
            if notional < t.notional_cap:
                return t
        return self.tiers[-1]

    def maintenance_margin(self, notional: Decimal) -> Decimal:
        """``notional × maintMarginRatio − cum`` with the bracket of the notional."""
        t = self.at(notional)
        return MONEY.subtract(MONEY.multiply(notional, t.maint_margin_ratio), t.cum)


def binance_usdm_symbol(market_id: str) -> str:
    """ccxt's unified symbol of a Binance USDⓈ-M perpetual id: ``BTCUSDT`` -> ``BTC/USDT:USDT``."""
    for settle in ("USDT", "USDC"):
        if market_id.endswith(settle) and len(market_id) > len(settle):
            return f"{market_id[: -len(settle)]}/{settle}:{settle}"
    raise ValueError(f"not a USDT- or USDC-margined perpetual id: {market_id!r}")


def load_brackets(path: Path | None = None) -> dict[str, Brackets]:
    """Brackets by ccxt symbol from a saved Binance leverageBracket reply (default: the bundled one)."""
    source = path or BUNDLED_BRACKETS
    try:
        reply = json.loads(source.read_text(), parse_float=Decimal, parse_int=Decimal)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read leverage brackets from {source}: {e}") from e
    if not isinstance(reply, list):
        raise ValueError(
            f"{source}: expected Binance's leverageBracket reply, a list of {{symbol, brackets}}"
        )
    out: dict[str, Brackets] = {}
    for item in reply:
        symbol = binance_usdm_symbol(str(item["symbol"]))
        out[symbol] = Brackets.from_binance(symbol, item["brackets"])
    return out


def liquidation_price(
    qty: Decimal,
    entry_price: Decimal,
    wallet_balance: Decimal,
    brackets: Brackets,
    other_maintenance: Decimal = _ZERO,
    other_unrealized: Decimal = _ZERO,
) -> Decimal | None:
    """Binance's USDⓈ-M liquidation price of a one-way position (see the module); None when flat or
    when no price above zero solves it (a long that no fall can liquidate)."""
    cost = MONEY.multiply(qty, entry_price)
    return _liquidation_price(qty, cost, wallet_balance, brackets, other_maintenance, other_unrealized)


def _liquidation_price(
    qty: Decimal,
    cost: Decimal,
    wallet_balance: Decimal,
    brackets: Brackets,
    other_maintenance: Decimal,
    other_unrealized: Decimal,
) -> Decimal | None:
    """:func:`liquidation_price` with ``side × |q| × EP`` given exactly, as the signed cost ``q × EP``."""
    if not qty:
        return None
    side = 1 if qty > 0 else -1
    size = abs(qty)
    with localcontext(MONEY):
        base = wallet_balance - other_maintenance + other_unrealized - cost
        last = brackets.tiers[-1]
        for t in brackets.tiers:
            price = (base + t.cum) / (size * t.maint_margin_ratio - side * size)
            notional = size * price
            if price > 0 and t.notional_floor <= notional and (notional < t.notional_cap or t is last):
                return price
    return None


# --- the account ----------------------------------------------------------------------------------


@dataclass
class MarginPosition:
    """One market's futures position and settings; money in the account's settlement currency."""

    exchange: str
    symbol: str
    brackets: Brackets
    leverage: int
    margin_mode: MarginMode
    mark_price: Decimal
    qty: Decimal = _ZERO
    #: Signed Σ qty·price of the open quantity; ``entry_price = cost / qty``.
    cost: Decimal = _ZERO
    #: The position's own wallet when isolated (Binance's ``isolatedWalletBalance``); 0 when cross.
    isolated_wallet: Decimal = _ZERO
    realized_pnl: Decimal = _ZERO
    fees: Decimal = _ZERO
    funding: Decimal = _ZERO

    @property
    def key(self) -> str:
        return f"{self.exchange}:{self.symbol}"

    @property
    def entry_price(self) -> Decimal:
        """Average entry price (0 when flat), to 1e-18 when the division does not end."""
        if not self.qty:
            return _ZERO
        return _prorate(self.cost, Decimal(1), self.qty)

    @property
    def notional(self) -> Decimal:
        """``|qty| × mark``."""
        return MONEY.multiply(abs(self.qty), self.mark_price)

    @property
    def unrealized_pnl(self) -> Decimal:
        return MONEY.subtract(MONEY.multiply(self.qty, self.mark_price), self.cost)

    @property
    def maintenance_margin(self) -> Decimal:
        return self.brackets.maintenance_margin(self.notional)

    @property
    def initial_margin(self) -> Decimal:
        """``notional / leverage`` at the mark."""
        return MONEY.divide(self.notional, Decimal(self.leverage))


@dataclass
class MarginAccount:
    """A USDT-M futures account: wallets, positions, margins and liquidations; see the module."""

    initial_balance: Decimal
    #: Leverage brackets by symbol (ccxt unified, e.g. ``BTC/USDT:USDT``).
    brackets: Mapping[str, Brackets]
    account: str = DEFAULT_ACCOUNT
    default_leverage: int = 1
    default_margin_mode: MarginMode = "cross"
    #: The liquidation (clearance) fee as a fraction of the notional closed. Binance sets it per symbol;
    #: 1.25% is an assumed figure (no recorded source), pass the venue's own.
    liquidation_fee_rate: Decimal = Decimal("0.0125")
    #: The venue's own clearance fee by symbol where it publishes one; the rest pay the rate above.
    liquidation_fees: Mapping[str, Decimal] = field(default_factory=dict)
    cross_wallet: Decimal = field(init=False)
    _ledger: dict[str, Decimal] = field(init=False)
    _positions: dict[str, MarginPosition] = field(init=False, default_factory=dict)
    _version: int = field(init=False, default=0)
    #: Markets whose mark comes from the venue's mark stream (:meth:`on_mark`): not from traded candles.
    venue_marks: set[str] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        self.initial_balance = to_decimal(self.initial_balance)
        self.brackets = dict(self.brackets)
        self.liquidation_fee_rate = to_decimal(self.liquidation_fee_rate)
        self.liquidation_fees = {k: to_decimal(v) for k, v in self.liquidation_fees.items()}
        rates = [self.liquidation_fee_rate, *self.liquidation_fees.values()]
        if self.initial_balance < 0 or not all(0 <= r < 1 for r in rates):
            raise ValueError("initial_balance must be >= 0 and liquidation fee rates in [0, 1)")
        self.cross_wallet = self.initial_balance
        self._ledger = dict.fromkeys(LEDGER_KINDS, _ZERO)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore pickled state (a changelog's); an account pickled before venue marks and per-symbol
        clearance fees has none."""
        state.setdefault("venue_marks", set())
        state.setdefault("liquidation_fees", {})
        self.__dict__.update(state)

    # --- settings ----------------------------------------------------------------------------------

    def position(self, key: str) -> MarginPosition:
        """The market's position (made flat, with the default settings, on first use)."""
        pos = self._positions.get(key)
        if pos is None:
            exchange, symbol = split_key(key)
            brackets = self.brackets.get(symbol)
            if brackets is None:
                raise ValueError(f"no leverage brackets for {symbol}; known: {', '.join(self.brackets)}")
            pos = MarginPosition(
                exchange, symbol, brackets, self._checked_leverage(brackets, self.default_leverage),
                self.default_margin_mode, mark_price=_ZERO,
            )  # fmt: skip
            self._positions[key] = pos
        return pos

    def set_leverage(self, key: str, leverage: int) -> None:
        """Binance's ``POST /fapi/v1/leverage``: 1 up to the first bracket's initial leverage, and no
        more than the bracket of the open position allows. An open isolated position keeps its leverage."""
        pos = self.position(key)
        self._checked_leverage(pos.brackets, leverage)
        if pos.qty and pos.margin_mode == "isolated":
            raise ValueError(f"{key}: cannot change the leverage of an open isolated position")
        if pos.qty and leverage > pos.brackets.at(pos.notional).initial_leverage:
            raise ValueError(f"{key}: leverage {leverage} exceeds the bracket of the open position")
        pos.leverage = leverage

    def set_margin_mode(self, key: str, mode: MarginMode) -> None:
        """Binance's ``POST /fapi/v1/marginType``: only while the market is flat."""
        if mode not in ("isolated", "cross"):
            raise ValueError(f"margin mode must be isolated or cross, got {mode!r}")
        pos = self.position(key)
        if pos.qty and mode != pos.margin_mode:
            raise ValueError(f"{key}: cannot change the margin mode of an open position")
        pos.margin_mode = mode

    def add_margin(self, key: str, amount: Decimal) -> None:
        """Move ``amount`` from the cross wallet into an open isolated position (negative: back out),
        Binance's ``POST /fapi/v1/positionMargin``. Refused beyond the available balance, or when taking
        out more than leaves the position its initial margin."""
        pos = self.position(key)
        amount = to_decimal(amount)
        if pos.margin_mode != "isolated" or not pos.qty:
            raise ValueError(f"{key}: margin can only be added to an open isolated position")
        if amount > self.available_balance:
            raise ValueError(f"{key}: {amount} exceeds the available balance {self.available_balance}")
        if amount < 0 and pos.isolated_wallet + pos.unrealized_pnl + amount < pos.initial_margin:
            raise ValueError(f"{key}: removing {-amount} would leave less than the initial margin")
        self.cross_wallet -= amount
        pos.isolated_wallet += amount
        self._version += 1

    @staticmethod
    def _checked_leverage(brackets: Brackets, leverage: int) -> int:
        if not (isinstance(leverage, int) and 1 <= leverage <= brackets.max_leverage):
            raise ValueError(
                f"{brackets.symbol}: leverage must be an integer in [1, {brackets.max_leverage}]"
            )
        return leverage

    # --- updates -----------------------------------------------------------------------------------

    def apply(self, fill: Fill) -> Fill:
        """Book a fill (one-way mode: a sell reduces a long, then opens a short); returns it with
        ``realized_pnl`` set. A fill is a fact: margin is checked before the order (:meth:`margin_check`)."""
        if not (fill.qty > 0 and fill.price > 0):
            raise ValueError(f"fill {fill.fill_id}: qty and price must be > 0, got {fill.qty} @ {fill.price}")
        settle = fill.symbol.partition(":")[2] or fill.symbol.partition("/")[2]
        if fill.fee and fill.fee_currency not in (settle, ""):
            raise ValueError(
                f"fill {fill.fill_id}: a futures fee is paid in {settle}, got {fill.fee_currency}"
            )
        pos = self.position(fill.key)
        if not pos.mark_price:
            pos.mark_price = fill.price
        with localcontext(MONEY):
            traded = fill.qty if fill.side == "buy" else -fill.qty
            opening, closing, realized = traded, _ZERO, _ZERO
            if pos.qty and (pos.qty > 0) != (traded > 0):
                closing = min(fill.qty, abs(pos.qty)).copy_sign(pos.qty)
                before = pos.qty
                removed = pos.cost if closing == before else _prorate(pos.cost, closing, before)
                realized = closing * fill.price - removed
                pos.cost -= removed
                pos.qty -= closing
                opening += closing
            self._book(pos, "realized_pnl", realized)
            self._book(pos, "fees", -fill.fee)
            if pos.margin_mode == "isolated" and closing:
                released = (
                    pos.isolated_wallet if not pos.qty else _prorate(pos.isolated_wallet, closing, before)
                )
                pos.isolated_wallet -= released
                self.cross_wallet += released
            pos.cost += opening * fill.price
            pos.qty += opening
            if pos.margin_mode == "isolated" and opening:
                moved = _prorate(abs(opening) * fill.price, Decimal(1), Decimal(pos.leverage))
                self.cross_wallet -= moved
                pos.isolated_wallet += moved
        self._version += 1
        return fill.model_copy(update={"realized_pnl": realized})

    def mark(self, key: str, price: float | Decimal, ts_event: int, ts_init: int) -> list[Liquidation]:
        """Value a market at its mark price; returns the liquidations it sets off."""
        mark = to_decimal(price)
        if not mark > 0:
            raise ValueError(f"mark of {key} must be > 0, got {price!r}")
        pos = self.position(key)
        pos.mark_price = mark
        self._version += 1
        return self._liquidate_if_due(pos, ts_event, ts_init)

    def mark_bar(
        self,
        key: str,
        low: float | Decimal,
        high: float | Decimal,
        close: float | Decimal,
        ts_event: int,
        ts_init: int,
        open: float | Decimal | None = None,
    ) -> list[Liquidation]:
        """A bar of the market's mark path (a mark-price candle, or the traded one standing in for it):
        a position whose liquidation price the bar's adverse extreme reaches (the low of a long, the high
        of a short) is liquidated. Where: at the bar's ``open`` when the bar opens beyond the liquidation
        price (the mark gapped over it: the first mark past it is the open, as a discrete mark frame is a
        bar of one price), else at the liquidation price, since the mark went through it. Then the
        bar's close is the mark. The liquidations, in order. Backtests and the account stage both mark
        through this."""
        out: list[Liquidation] = []
        pos = self._positions.get(key)
        if pos is not None and pos.qty:
            long = pos.qty > 0
            lp = self.liquidation_price(key)
            adverse = to_decimal(low if long else high)
            if lp is not None and lp > 0 and (adverse <= lp if long else adverse >= lp):
                first = to_decimal(open) if open is not None else None
                if first is None or (first > lp if long else first < lp):
                    first = liquidation_edge(lp, long)  # it opened short of the price: through it
                out += self.mark(key, first, ts_event, ts_init)
        return out + self.mark(key, close, ts_event, ts_init)

    def fund(
        self,
        key: str,
        rate: float | Decimal,
        ts_event: int,
        ts_init: int,
        mark_price: float | Decimal | None = None,
    ) -> tuple[FundingPayment | None, list[Liquidation]]:
        """Settle funding at a funding time: ``−qty × mark × rate`` (at ``mark_price`` if given, which
        becomes the mark). None when the market is flat; then the liquidations it sets off."""
        rate = to_decimal(rate)
        if not rate.is_finite():
            raise ValueError(f"funding rate of {key} must be finite, got {rate}")
        pos = self.position(key)
        if mark_price is not None:
            mark = to_decimal(mark_price)
            if not mark > 0:
                raise ValueError(f"mark of {key} must be > 0, got {mark_price!r}")
            pos.mark_price = mark
        if not pos.qty:
            return None, []
        amount = MONEY.minus(MONEY.multiply(MONEY.multiply(pos.qty, pos.mark_price), rate))
        self._book(pos, "funding", amount)
        self._version += 1
        payment = FundingPayment(
            event_id=make_id("funding", self.account, key, ts_event),
            ts_event=ts_event,
            ts_init=ts_init,
            exchange=pos.exchange,
            symbol=pos.symbol,
            account=self.account,
            rate=rate,
            mark_price=pos.mark_price,
            qty=pos.qty,
            amount=amount,
            margin_mode=pos.margin_mode,
        )
        return payment, self._liquidate_if_due(pos, ts_event, ts_init)

    def on_mark(self, event: MarkPrice) -> list[Liquidation]:
        """The venue's mark price of a market (a mark stream): from then on it, not the traded candles,
        is the market's mark (:attr:`venue_marks`)."""
        self.venue_marks.add(event.key)
        return self.mark(event.key, event.mark_price, event.ts_event, event.ts_init)

    def on_funding(self, event: FundingRate) -> tuple[FundingPayment | None, list[Liquidation]]:
        return self.fund(event.key, event.rate, event.ts_event, event.ts_init, event.mark_price)

    def _book(self, pos: MarginPosition, kind: LedgerKind, amount: Decimal) -> None:
        """One change of a wallet: the position's wallet (isolated) or the cross wallet."""
        if not amount:
            return
        with localcontext(MONEY):
            if pos.margin_mode == "isolated":
                pos.isolated_wallet += amount
            else:
                self.cross_wallet += amount
            self._ledger[kind] += amount
            if kind == "realized_pnl":
                pos.realized_pnl += amount
            elif kind == "funding":
                pos.funding += amount
            elif kind in ("fees", "liquidation_fees"):
                pos.fees -= amount

    # --- liquidation -------------------------------------------------------------------------------

    def _liquidate_if_due(self, pos: MarginPosition, ts_event: int, ts_init: int) -> list[Liquidation]:
        if not pos.qty:
            return []
        if pos.margin_mode == "isolated":
            balance = MONEY.add(pos.isolated_wallet, pos.unrealized_pnl)
            maintenance = pos.maintenance_margin
            if balance > maintenance:
                return []
            return self._liquidate([pos], balance, maintenance, ts_event, ts_init)
        cross = self._open("cross")
        balance, maintenance = self.cross_margin_balance, self._maintenance(cross)
        if balance > maintenance:
            return []
        return self._liquidate(cross, balance, maintenance, ts_event, ts_init)

    def _liquidate(
        self,
        positions: list[MarginPosition],
        balance: Decimal,
        maintenance: Decimal,
        ts_event: int,
        ts_init: int,
    ) -> list[Liquidation]:
        """Close ``positions`` (one isolated, or every cross one) at their marks, charge the fee out of
        what margin is left, let the insurance fund cover a deficit."""
        closed: list[tuple[MarginPosition, Decimal, Decimal]] = []
        with localcontext(MONEY):
            for pos in positions:
                qty, realized = pos.qty, pos.qty * pos.mark_price - pos.cost
                self._book(pos, "realized_pnl", realized)
                pos.qty = pos.cost = _ZERO
                closed.append((pos, qty, realized))
            events: list[Liquidation] = []
            for i, (pos, qty, realized) in enumerate(closed):
                wallet = pos.isolated_wallet if pos.margin_mode == "isolated" else self.cross_wallet
                rate = self.liquidation_fees.get(pos.symbol, self.liquidation_fee_rate)
                fee = min(abs(qty) * pos.mark_price * rate, max(wallet, _ZERO))
                self._book(pos, "liquidation_fees", -fee)
                insurance = _ZERO
                if i == len(closed) - 1:  # after the last close and fee, what is left is final
                    wallet = pos.isolated_wallet if pos.margin_mode == "isolated" else self.cross_wallet
                    insurance = max(-wallet, _ZERO)
                    self._book(pos, "insurance", insurance)
                if pos.margin_mode == "isolated":
                    self.cross_wallet += pos.isolated_wallet
                    pos.isolated_wallet = _ZERO
                self._version += 1
                events.append(
                    Liquidation(
                        event_id=make_id("liquidation", self.account, pos.key, ts_event, self._version),
                        ts_event=ts_event,
                        ts_init=ts_init,
                        exchange=pos.exchange,
                        symbol=pos.symbol,
                        account=self.account,
                        side="sell" if qty > 0 else "buy",
                        qty=abs(qty),
                        price=pos.mark_price,
                        realized_pnl=realized,
                        fee=fee,
                        insurance=insurance,
                        margin_mode=pos.margin_mode,
                        margin_balance=balance,
                        maintenance_margin=maintenance,
                    )
                )
        return events

    # --- reading -----------------------------------------------------------------------------------

    def _open(self, mode: MarginMode | None = None) -> list[MarginPosition]:
        return [p for p in self._positions.values() if p.qty and (mode is None or p.margin_mode == mode)]

    @staticmethod
    def _maintenance(positions: Iterable[MarginPosition]) -> Decimal:
        total = _ZERO
        for p in positions:
            total = MONEY.add(total, p.maintenance_margin)
        return total

    @property
    def positions(self) -> Mapping[str, MarginPosition]:
        """The open positions by market key, read-only."""
        return MappingProxyType({p.key: p for p in self._open()})

    @property
    def ledger(self) -> Mapping[str, Decimal]:
        """Every change of the wallet balance so far, totalled by kind (:data:`LEDGER_KINDS`)."""
        return MappingProxyType(dict(self._ledger))

    @property
    def wallet_balance(self) -> Decimal:
        """The cross wallet plus every isolated wallet."""
        total = self.cross_wallet
        for p in self._positions.values():
            total = MONEY.add(total, p.isolated_wallet)
        return total

    @property
    def unrealized_pnl(self) -> Decimal:
        total = _ZERO
        for p in self._positions.values():
            total = MONEY.add(total, p.unrealized_pnl)
        return total

    @property
    def cross_margin_balance(self) -> Decimal:
        """The cross wallet plus the unrealized PnL of the cross positions."""
        total = self.cross_wallet
        for p in self._open("cross"):
            total = MONEY.add(total, p.unrealized_pnl)
        return total

    @property
    def margin_balance(self) -> Decimal:
        """Each wallet with the unrealized PnL it carries, summed (equal to wallet + unrealized PnL)."""
        total = self.cross_margin_balance
        for p in self._positions.values():
            total = MONEY.add(total, p.isolated_wallet)
            if p.margin_mode == "isolated":
                total = MONEY.add(total, p.unrealized_pnl)
        return total

    @property
    def maintenance_margin(self) -> Decimal:
        """Of every open position."""
        return self._maintenance(self._open())

    @property
    def available_balance(self) -> Decimal:
        """What new orders can use: ``max(0, cross margin balance − cross initial margin)``."""
        total = self.cross_margin_balance
        for p in self._open("cross"):
            total = MONEY.subtract(total, p.initial_margin)
        return max(total, _ZERO)

    def margin_ratio(self, key: str | None = None) -> Decimal:
        """Maintenance margin / margin balance: of an isolated position given its key, else of the cross
        account; ``Infinity`` when the balance is gone; liquidation at 1."""
        pos = self._positions.get(key) if key is not None else None
        if pos is not None and pos.margin_mode == "isolated":
            maintenance, balance = pos.maintenance_margin, MONEY.add(pos.isolated_wallet, pos.unrealized_pnl)
        else:
            maintenance, balance = self._maintenance(self._open("cross")), self.cross_margin_balance
        if not maintenance:
            return _ZERO
        return MONEY.divide(maintenance, balance) if balance > 0 else Decimal("Infinity")

    def liquidation_price(self, key: str) -> Decimal | None:
        """Binance's liquidation price of the market's position now (:func:`liquidation_price`), the other
        positions' marks held."""
        pos = self._positions.get(key)
        if pos is None or not pos.qty:
            return None
        if pos.margin_mode == "isolated":
            return _liquidation_price(pos.qty, pos.cost, pos.isolated_wallet, pos.brackets, _ZERO, _ZERO)
        others = [p for p in self._open("cross") if p is not pos]
        unrealized = _ZERO
        for p in others:
            unrealized = MONEY.add(unrealized, p.unrealized_pnl)
        return _liquidation_price(
            pos.qty, pos.cost, self.cross_wallet, pos.brackets, self._maintenance(others), unrealized
        )

    def margin_check(
        self,
        key: str,
        side: str,
        qty: Decimal,
        price: Decimal,
        fee_rate: Decimal = _ZERO,
        reserved: Decimal = _ZERO,
    ) -> str | None:
        """Why an order of ``qty`` at ``price`` cannot be carried, or None: the position it would open
        must fit the brackets at this leverage, and its initial margin and fee the available balance
        less ``reserved`` (what orders sent and not yet filled will take). The part of an order that
        reduces the position needs no margin."""
        pos = self.position(key)
        qty, price = to_decimal(qty), to_decimal(price)
        if not (qty > 0 and price > 0):
            return f"qty and price must be > 0, got {qty} @ {price}"
        with localcontext(MONEY):
            signed = qty if side == "buy" else -qty
            reducing = pos.qty and (pos.qty > 0) != (signed > 0)
            opening = max(qty - abs(pos.qty), _ZERO) if reducing else qty
            if not opening:
                return None
            notional = abs(pos.qty + signed) * price
            if notional > pos.brackets.max_notional:
                return f"notional {notional} exceeds the largest bracket ({pos.brackets.max_notional})"
            allowed = pos.brackets.at(notional).initial_leverage
            if pos.leverage > allowed:
                return f"leverage {pos.leverage} exceeds {allowed}, the most a notional of {notional} allows"
            needed = opening * price / pos.leverage + qty * price * to_decimal(fee_rate)
            available = self.available_balance - reserved
        if needed > available:
            return f"initial margin and fee {needed:.8f} exceed the available balance {available:.8f}"
        return None

    def liquidation_price_after(
        self, key: str, side: OrderSide, qty: Decimal, price: Decimal, fee_rate: Decimal = _ZERO
    ) -> Decimal | None:
        """The market's liquidation price were an order of ``qty`` to fill at ``price`` (the pre-trade
        check of a minimum distance from it); the account itself does not change."""
        trial = copy.deepcopy(self)
        fee = MONEY.multiply(MONEY.multiply(to_decimal(qty), to_decimal(price)), to_decimal(fee_rate))
        exchange, symbol = split_key(key)
        trial.apply(
            Fill(
                event_id="trial",
                ts_event=0,
                ts_init=0,
                exchange=exchange,
                symbol=symbol,
                account=self.account,
                fill_id="trial",
                client_order_id="trial",
                strategy="",
                side=side,
                price=to_decimal(price),
                qty=to_decimal(qty),
                fee=fee,
                fee_currency="",
                liquidity="taker",
            )
        )
        return trial.liquidation_price(key)
