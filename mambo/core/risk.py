"""Pre-trade risk: turns an OrderIntent into a sized, rounded Order or a RiskRejection event.

:class:`RiskConfig` holds the limits; :class:`RiskEngine` is the state object (one per account) that
applies them. Start with :meth:`RiskEngine.check`; :meth:`RiskEngine.on_candle` watches open
positions for stop-loss, take-profit and trailing stops and emits exit intents;
:meth:`RiskEngine.on_order` learns what became of the orders it let through.

Rules, by their ``rule`` name in a :class:`~mambo.schemas.events.RiskRejection`:

* ``invalid``: a malformed intent (no usable price, qty <= 0, a limit order without a limit).
* ``no_position``: a reduce-only intent with nothing (left) to reduce.
* ``max_drawdown``: the kill switch. Once equity falls ``max_drawdown`` below its peak (or a ``halt``
  control command came), new entries are refused until :meth:`RiskEngine.resume`; exits still pass.
* ``reduce_only``: in reduce-only mode (a control command), every entry is refused.
* ``cooldown``: no new entry in a market for ``cooldown_ns`` (event time) after a stop-out there.
* ``rate_limit``: at most ``max_orders_per_minute`` orders in any minute of event time.
* ``no_equity``: nothing to size an order from.
* ``min_qty`` / ``min_notional``: the market's minimums (after rounding the qty down to the step).
* ``buying_power``: with ``cash_only`` (spot, the default), a buy entry's cost at its reference price,
  with the fee, must fit in the cash not yet spoken for by the open buys let through. A market buy
  fills at a later price, so this is the pre-trade check an exchange's balance check backs up.
* ``max_open_positions``, ``max_exposure_per_symbol``, ``max_total_exposure``: limits on the
  positions an entry would leave, exposures as fractions of equity.

Perpetuals in an account with margin (:attr:`RiskEngine.margin`, a
:class:`~mambo.core.margin.MarginAccount`) are sized and checked on margin instead of cash: an unsized
entry's initial margin is ``position_fraction`` of equity (its notional that times the leverage), and

* ``margin``: the position an entry opens must fit the leverage brackets, and its initial margin and
  fee the available balance less what the entries let through and not yet filled will take (the
  exchange's own pre-trade check);
* ``max_leverage``: the open positions' notional an entry leaves, over the margin balance, at most this;
* ``liquidation_distance``: an entry whose liquidation price would be within
  ``min_liquidation_distance`` of its price (a fraction of it) is refused.

Exits (``reduce_only``) pass every rule but the validity ones (``invalid``, ``no_position``,
``min_qty``, ``min_notional``) and are capped to the position. Orders let through and not yet
filled count as if filled: an exit is capped to what earlier market exits leave, and the limits see
the position the open orders would make. So a stop and a strategy's exit on the same candle do not
sell the position twice (pass :meth:`RiskEngine.on_candle`'s exits through :meth:`RiskEngine.check`
like any intent). An order counts for what is left of it until it is done: :meth:`RiskEngine.on_fill`
hears its fills (what filled is in the portfolio from then on) and :meth:`RiskEngine.on_order` its
states (canceled, rejected, expired or filled release the rest). A partly filled limit order keeps
its unfilled lots under the limits.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field
from decimal import Decimal, localcontext

from pydantic import BaseModel, ConfigDict, Field

from mambo.core.margin import MarginAccount, is_perpetual
from mambo.core.market import Market, to_decimal
from mambo.core.portfolio import MONEY, Portfolio
from mambo.schemas.events import (
    DEFAULT_ACCOUNT,
    FINAL_STATUSES,
    Candle,
    Fill,
    Order,
    OrderIntent,
    OrderSide,
    RiskRejection,
    make_id,
    split_key,
)

__all__ = ["RiskConfig", "RiskEngine"]

_ZERO = Decimal(0)
_MINUTE_NS = 60_000_000_000


class RiskConfig(BaseModel):
    """Risk limits. Fractions are of equity (exposures) or of the entry price (stops); None is off."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    position_fraction: Decimal = Field(Decimal("0.1"), gt=0, description="size of an unsized entry")
    max_open_positions: int | None = Field(None, ge=1)
    max_exposure_per_symbol: Decimal | None = Field(None, gt=0)
    max_total_exposure: Decimal | None = Field(None, gt=0)
    stop_loss: Decimal | None = Field(None, gt=0, lt=1)
    take_profit: Decimal | None = Field(None, gt=0)
    trailing_stop: Decimal | None = Field(None, gt=0, lt=1)
    max_drawdown: float | None = Field(None, gt=0, le=1, description="kill switch: halts new entries")
    cooldown_ns: int = Field(0, ge=0, description="no entry in a market this long after a stop-out")
    max_orders_per_minute: int | None = Field(None, ge=1, description="event time, all markets")
    cash_only: bool = Field(True, description="spot: a buy is paid with free cash, never borrowed")
    max_leverage: Decimal | None = Field(
        None, gt=0, description="perpetuals: the positions' notional an entry leaves, over the margin balance"
    )
    min_liquidation_distance: Decimal | None = Field(
        None, gt=0, lt=1, description="perpetuals: an entry's liquidation price this far from its price"
    )


@dataclass
class _Reserved:
    """An order let through and not yet done: its size, what of it has filled, its reference price.

    Two reports say how much has filled: the fills themselves (summed) and the broker's order
    updates (``filled_qty``). They tell the same story, at times in either order, so the larger of
    the two is what has filled: counting both would free a partly filled order twice over.
    """

    key: str
    qty: Decimal  # signed: > 0 buys
    price: Decimal
    market_order: bool
    reduce_only: bool
    fills: Decimal = _ZERO  # the sum of its fills seen
    reported: Decimal = _ZERO  # the filled qty of its latest order update

    @property
    def open_qty(self) -> Decimal:
        """The signed qty still to fill."""
        left = abs(self.qty) - max(self.fills, self.reported)
        return _ZERO if left <= 0 else left.copy_sign(self.qty)


@dataclass
class _Watermark:
    """Best close since a position's entry (highest for a long, lowest for a short)."""

    qty: Decimal  # the position when last seen: a larger one is a new entry
    best: Decimal


def _show(value: Decimal) -> str:
    """A decimal for a human: no exponent, no trailing zeros."""
    return f"{value.normalize():f}"


class _Denied(Exception):
    """A broken rule, raised inside :meth:`RiskEngine._accept` and turned into a rejection event."""

    def __init__(self, rule: str, reason: str) -> None:
        self.rule, self.reason = rule, reason


@dataclass
class RiskEngine:
    """Applies a :class:`RiskConfig` to intents and watches open positions; see the module docstring."""

    config: RiskConfig
    markets: InitVar[Mapping[str, Market] | None] = None
    #: the fee a buy's cash must also cover (the venue's taker rate)
    fee_rate: Decimal = _ZERO
    #: the account whose stops this engine places (its orders and rejections take their intent's)
    account: str = DEFAULT_ACCOUNT
    #: True once the drawdown kill switch fired (or a halt command came); only :meth:`resume` clears it.
    halted: bool = field(init=False, default=False)
    #: reduce-only mode (a control command): entries are refused, exits pass
    reduce_only: bool = field(init=False, default=False)
    _markets: dict[str, Market] = field(init=False)
    _cooldown_until: dict[str, int] = field(init=False, default_factory=dict)
    _recent: deque[int] = field(init=False, default_factory=deque)  # ts_event of orders let through
    _reserved: dict[str, _Reserved] = field(init=False, default_factory=dict)  # by client_order_id
    _watermarks: dict[str, _Watermark] = field(init=False, default_factory=dict)
    #: the account's perpetuals, on margin (None: a spot account); see the module docstring
    margin: MarginAccount | None = None

    def __post_init__(self, markets: Mapping[str, Market] | None) -> None:
        self._markets = dict(markets or {})

    def market(self, key: str) -> Market:
        """The rules of market ``key`` (a permissive default when none were loaded)."""
        found = self._markets.get(key)
        if found is None:
            found = self._markets[key] = Market.default(*split_key(key))
        return found

    def resume(self) -> None:
        """Clear the drawdown kill switch (an operator's decision)."""
        self.halted = False

    # --- intents ------------------------------------------------------------------------------

    def check(self, intent: OrderIntent, portfolio: Portfolio, ts_init: int) -> Order | RiskRejection:
        """The intent as a sized, rounded Order, or the RiskRejection of the first rule it breaks."""
        try:
            return self._accept(intent, portfolio, ts_init)
        except _Denied as denied:
            return RiskRejection(
                event_id=make_id("rejection", intent.client_order_id),
                account=intent.account,
                ts_event=intent.ts_event,
                ts_init=ts_init,
                exchange=intent.exchange,
                symbol=intent.symbol,
                client_order_id=intent.client_order_id,
                strategy=intent.strategy,
                side=intent.side,
                rule=denied.rule,
                reason=denied.reason,
            )

    def _accept(self, intent: OrderIntent, portfolio: Portfolio, ts_init: int) -> Order:
        key = intent.key
        market = self.market(key)
        limit, price = self._prices(intent, market)
        if intent.qty is not None and not intent.qty > 0:
            raise _Denied("invalid", f"qty must be > 0, got {intent.qty}")
        sign = 1 if intent.side == "buy" else -1
        projected = self._projected(key, portfolio, exits=intent.reduce_only)
        if intent.reduce_only:
            if projected * sign >= 0:
                raise _Denied(
                    "no_position",
                    f"reduce-only {intent.side} but the position is {_show(portfolio.position(key))}"
                    f" ({_show(projected)} counting open orders)",
                )
            wanted = abs(projected) if intent.qty is None else min(intent.qty, abs(projected))
        else:
            self._check_entry_gates(intent, portfolio)
            if intent.qty is not None:
                wanted = intent.qty
            else:
                equity = portfolio.equity
                if equity <= 0:
                    raise _Denied("no_equity", f"cannot size from equity {_show(equity)}")
                wanted = self.config.position_fraction * equity / price
                if self._on_margin(key):
                    assert self.margin is not None
                    wanted *= self.margin.position(key).leverage
        qty = market.round_qty(wanted)
        if qty <= 0 or qty < market.min_qty:
            raise _Denied(
                "min_qty",
                f"qty {_show(wanted)} rounds to {_show(qty)} at step {market.step_size},"
                f" min {market.min_qty}",
            )
        if qty * price < market.min_notional:
            raise _Denied(
                "min_notional", f"notional {_show(qty * price)} below the minimum {market.min_notional}"
            )
        if not intent.reduce_only:
            self._check_exposure(key, projected + sign * qty, price, portfolio)
            if self._on_margin(key):
                self._check_margin(key, intent.side, projected + sign * qty, qty, price)
            elif sign > 0 and self.config.cash_only:
                self._check_cash(qty, price, portfolio)
        self._note_order(intent.ts_event)
        self._reserved[intent.client_order_id] = _Reserved(
            key, sign * qty, price, intent.order_type == "market", intent.reduce_only
        )
        return Order(
            event_id=make_id("order", intent.client_order_id),
            account=intent.account,
            ts_event=intent.ts_event,
            ts_init=ts_init,
            exchange=intent.exchange,
            symbol=intent.symbol,
            client_order_id=intent.client_order_id,
            strategy=intent.strategy,
            side=intent.side,
            order_type=intent.order_type,
            qty=qty,
            limit_price=limit,
            reduce_only=intent.reduce_only,
            reason=intent.reason,
        )

    @staticmethod
    def _prices(intent: OrderIntent, market: Market) -> tuple[Decimal | None, Decimal]:
        """The rounded limit (None for a market order) and the price to size and value it at."""
        if intent.order_type == "limit":
            if intent.limit_price is None or not intent.limit_price > 0:
                raise _Denied("invalid", f"a limit order needs a limit price > 0, got {intent.limit_price}")
            limit = market.round_limit(intent.side, intent.limit_price)
            if not limit > 0:
                raise _Denied("invalid", f"limit {intent.limit_price} rounds to {limit} at the tick")
            return limit, limit
        if not (math.isfinite(intent.price) and intent.price > 0):
            raise _Denied("invalid", f"the reference price must be a finite number > 0, got {intent.price}")
        return None, to_decimal(intent.price)

    def _check_entry_gates(self, intent: OrderIntent, portfolio: Portfolio) -> None:
        """The rules that stop entries whatever their size: kill switch, cooldown, rate limit."""
        cfg, ts = self.config, intent.ts_event
        if self.reduce_only:
            raise _Denied("reduce_only", "reduce-only mode (a control command): entries are refused")
        self._update_halt(portfolio)
        if self.halted:
            limit = f"{cfg.max_drawdown:.2%}" if cfg.max_drawdown is not None else "none"
            raise _Denied(
                "max_drawdown",
                f"trading halted (drawdown {portfolio.drawdown:.2%}, limit {limit}; or a halt command)",
            )
        until = self._cooldown_until.get(intent.key, 0)
        if ts < until:
            raise _Denied("cooldown", f"{intent.key} is cooling down after a stop-out until {until}")
        if cfg.max_orders_per_minute is not None:
            recent = sum(1 for t in self._recent if t > ts - _MINUTE_NS)
            if recent >= cfg.max_orders_per_minute:
                raise _Denied(
                    "rate_limit", f"{recent} orders in the last minute, max {cfg.max_orders_per_minute}"
                )

    def _note_order(self, ts: int) -> None:
        """Remember an order's time for the rate limit, forgetting those over a minute old."""
        if self.config.max_orders_per_minute is None:
            return
        self._recent.append(ts)
        while self._recent and self._recent[0] <= ts - _MINUTE_NS:
            self._recent.popleft()

    def _check_cash(self, qty: Decimal, price: Decimal, portfolio: Portfolio) -> None:
        """A spot buy must be paid for: its cost with the fee within the cash that the open buys
        let through have not spoken for yet."""
        with localcontext(MONEY):
            cost = 1 + self.fee_rate
            spoken = sum(
                (r.open_qty * r.price * cost for r in self._reserved.values() if r.open_qty > 0), _ZERO
            )
            free, need = portfolio.cash - spoken, qty * price * cost
        if need > free:
            raise _Denied("buying_power", f"a buy costing {_show(need)} with fees, {_show(free)} cash free")

    def _on_margin(self, key: str) -> bool:
        return self.margin is not None and is_perpetual(key)

    def _check_margin(self, key: str, side: OrderSide, after: Decimal, qty: Decimal, price: Decimal) -> None:
        """An entry on margin: the exchange's check, then leverage and the liquidation distance."""
        margin, cfg = self.margin, self.config
        assert margin is not None
        with localcontext(MONEY):
            reserved = sum(
                (
                    abs(r.open_qty) * r.price / margin.position(r.key).leverage
                    for r in self._reserved.values()
                    if not r.reduce_only and is_perpetual(r.key)
                ),
                _ZERO,
            )
        reason = margin.margin_check(key, side, qty, price, self.fee_rate, reserved)
        if reason is not None:
            raise _Denied("margin", reason)
        if cfg.max_leverage is not None:
            with localcontext(MONEY):
                notional = abs(after) * price + sum(
                    (abs(p.qty) * p.mark_price for k, p in margin.positions.items() if k != key), _ZERO
                )
                balance = margin.margin_balance
                if balance <= 0 or notional > cfg.max_leverage * balance:
                    raise _Denied(
                        "max_leverage",
                        f"notional {_show(notional)} over the margin balance {_show(balance)}"
                        f" would exceed {cfg.max_leverage}x",
                    )
        if cfg.min_liquidation_distance is not None:
            lp = margin.liquidation_price_after(key, side, qty, price, self.fee_rate)
            if lp is not None and lp > 0 and abs(price - lp) < cfg.min_liquidation_distance * price:
                raise _Denied(
                    "liquidation_distance",
                    f"the liquidation price {_show(lp)} would be within {cfg.min_liquidation_distance:%}"
                    f" of {_show(price)}",
                )

    def _check_exposure(self, key: str, after: Decimal, price: Decimal, portfolio: Portfolio) -> None:
        """Limits on the positions an entry leaves: count, per-symbol and total exposure.

        An entry is refused only when it makes a limit's figure worse, so an entry that shrinks
        an oversized position always passes.
        """
        cfg = self.config
        if (
            cfg.max_open_positions is None
            and cfg.max_exposure_per_symbol is None
            and cfg.max_total_exposure is None
        ):
            return  # no limit to check: skip valuing every exposure
        equity = portfolio.equity
        before = self._exposures(portfolio)
        after_all = {**before, key: abs(after) * price}
        if cfg.max_open_positions is not None and after and not before.get(key):
            count = sum(1 for v in after_all.values() if v)
            if count > cfg.max_open_positions:
                raise _Denied(
                    "max_open_positions", f"{count} positions would be open, max {cfg.max_open_positions}"
                )
        for rule, limit, was, will in (
            ("max_exposure_per_symbol", cfg.max_exposure_per_symbol, before.get(key, _ZERO), after_all[key]),
            (
                "max_total_exposure",
                cfg.max_total_exposure,
                sum(before.values(), _ZERO),
                sum(after_all.values(), _ZERO),
            ),
        ):
            if limit is not None and will > limit * equity and will > was:
                raise _Denied(
                    rule, f"exposure {_show(will)} would exceed {limit:%} of equity {_show(equity)}"
                )

    # --- positions ----------------------------------------------------------------------------

    def _projected(self, key: str, portfolio: Portfolio, exits: bool = False) -> Decimal:
        """The position in ``key`` once the open orders let through fill.

        For sizing an exit (``exits``) only market orders count: they fill on the next market
        data, while a resting limit may never fill, and a resting take-profit must not block a
        stop-loss. For entry limits, every open order counts but resting limit exits, so the
        figure is never smaller than what may really be held.
        """
        pending = sum(
            (
                r.open_qty
                for r in self._reserved.values()
                if r.key == key and (r.market_order if exits else r.market_order or not r.reduce_only)
            ),
            _ZERO,
        )
        return portfolio.position(key) + pending

    def _exposures(self, portfolio: Portfolio) -> dict[str, Decimal]:
        """|projected qty| × price of every market with a position or an open order (mark first)."""
        prices = {r.key: r.price for r in self._reserved.values()}
        prices.update({k: p.mark_price for k, p in portfolio.positions.items()})
        return {k: abs(self._projected(k, portfolio)) * price for k, price in prices.items()}

    def on_order(self, order: Order) -> None:
        """Learn an order's new state from the broker: a done order (filled, canceled, rejected,
        expired) stops counting as open; a partly filled one counts what is left of it."""
        reserved = self._reserved.get(order.client_order_id)
        if reserved is None:
            return
        if order.status in FINAL_STATUSES:
            del self._reserved[order.client_order_id]
        else:
            reserved.reported = max(reserved.reported, order.filled_qty)

    def on_fill(self, fill: Fill) -> None:
        """Learn a fill of an order let through: what it filled no longer counts as open (the
        portfolio holds it now), and an order filled whole is done."""
        reserved = self._reserved.get(fill.client_order_id)
        if reserved is None:
            return
        reserved.fills += fill.qty
        if not reserved.open_qty:
            del self._reserved[fill.client_order_id]

    def _update_halt(self, portfolio: Portfolio) -> None:
        limit = self.config.max_drawdown
        if limit is not None and portfolio.drawdown >= limit:
            self.halted = True

    # --- stops --------------------------------------------------------------------------------

    def on_candle(self, candle: Candle, portfolio: Portfolio, ts_init: int) -> list[OrderIntent]:
        """Check the market's position against its stops at a closed candle's close.

        Returns at most one reduce-only market exit for the whole position (stop-loss first, then
        trailing stop, then take-profit); a stop-loss or trailing stop starts the market's cooldown.
        A position whose exit is already on its way is left alone. The trailing stop's high-water
        mark (the best close since entry) starts again when the position grows or flips.
        """
        key = candle.key
        self._update_halt(portfolio)
        pos = portfolio.positions.get(key)
        if pos is None:
            self._watermarks.pop(key, None)
            return []
        if not candle.closed:
            return []
        close, avg, long = to_decimal(candle.close), pos.avg_price, pos.qty > 0
        mark = self._watermarks.get(key)
        if mark is None or (mark.qty > 0) != long or abs(pos.qty) > abs(mark.qty):
            mark = self._watermarks[key] = _Watermark(pos.qty, avg)
        mark.qty = pos.qty
        mark.best = max(mark.best, close) if long else min(mark.best, close)
        fired = self._stop_fired(close, avg, mark.best, long)
        projected = self._projected(key, portfolio, exits=True)
        if fired is None or (projected > 0) != long or not projected:
            return []
        rule, reason = fired
        if rule != "take_profit":
            self._cooldown_until[key] = candle.ts_event + self.config.cooldown_ns
        client_order_id = make_id("stop", self.account, key, candle.ts_event, rule)
        return [
            OrderIntent(
                event_id=make_id("intent", client_order_id),
                account=self.account,
                ts_event=candle.ts_event,
                ts_init=ts_init,
                exchange=candle.exchange,
                symbol=candle.symbol,
                client_order_id=client_order_id,
                strategy="risk",
                side="sell" if long else "buy",
                qty=abs(projected),
                reduce_only=True,
                reason=reason,
                price=candle.close,
            )
        ]

    def _stop_fired(self, close: Decimal, avg: Decimal, best: Decimal, long: bool) -> tuple[str, str] | None:
        """The first stop ``close`` reaches, as (rule, reason); None when none does."""
        cfg = self.config
        down = -1 if long else 1  # the sign of an adverse move

        def reached(level: Decimal, adverse: bool) -> bool:
            return close <= level if long == adverse else close >= level

        stops = (
            ("stop_loss", cfg.stop_loss, avg, "entry", True),
            ("trailing_stop", cfg.trailing_stop, best, "best close", True),
            ("take_profit", cfg.take_profit, avg, "entry", False),
        )
        for rule, fraction, base, name, adverse in stops:
            if fraction is None:
                continue
            level = base * (1 + (down if adverse else -down) * fraction)
            if reached(level, adverse):
                return (
                    rule,
                    f"{rule}: close {close} reached {_show(level)} ({fraction:%} from {name} {_show(base)})",
                )
        return None
