"""Risk engine: sizing and rounding, every rejection rule, exits, and the stops on candles."""

from __future__ import annotations

import pickle
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from mambo.core.market import Market
from mambo.core.portfolio import Portfolio
from mambo.core.risk import RiskConfig, RiskEngine
from mambo.schemas.events import Candle, Fill, Order, OrderIntent, OrderSide, RiskRejection, make_id

D = Decimal
KEY = "binance:BTC/USDT"
ETH = "binance:ETH/USDT"
BTC = Market(
    "binance", "BTC/USDT", "BTC", "USDT", tick_size=D("0.1"), step_size=D("0.001"), min_notional=D(5)
)
MINUTE = 60_000_000_000


def intent(
    cid: str = "i1",
    side: OrderSide = "buy",
    qty: str | None = None,
    price: float = 100.0,
    key: str = KEY,
    ts: int = 1_000,
    **extra: Any,
) -> OrderIntent:
    exchange, symbol = key.split(":")
    return OrderIntent(
        event_id=make_id("intent", cid),
        ts_event=ts,
        ts_init=ts,
        exchange=exchange,
        symbol=symbol,
        client_order_id=cid,
        strategy="sma",
        side=side,
        qty=None if qty is None else D(qty),
        price=price,
        **extra,
    )


def fill(side: OrderSide, qty: str, price: str, key: str = KEY, n: int = 1, cid: str = "") -> Fill:
    exchange, symbol = key.split(":")
    return Fill(
        event_id=f"f{key}{n}",
        ts_event=n,
        ts_init=n,
        exchange=exchange,
        symbol=symbol,
        fill_id=f"f{key}{n}",
        client_order_id=cid or f"o{n}",
        strategy="sma",
        side=side,
        price=D(price),
        qty=D(qty),
        fee=D(0),
        fee_currency="USDT",
        liquidity="taker",
    )


def candle(close: float, ts: int = 60_000, closed: bool = True, key: str = KEY) -> Candle:
    exchange, symbol = key.split(":")
    return Candle(
        event_id=f"c{ts}",
        ts_event=ts,
        ts_init=ts + 1,
        exchange=exchange,
        symbol=symbol,
        timeframe="1m",
        open_time=max(ts - 60_000, 0),
        open=close,
        high=close,
        low=close,
        close=close,
        volume=1.0,
        trades=1,
        closed=closed,
    )


def engine(**config: Any) -> RiskEngine:
    return RiskEngine(RiskConfig(**config), {KEY: BTC})


def accepted(result: Order | RiskRejection) -> Order:
    assert isinstance(result, Order), result
    return result


def rejected(result: Order | RiskRejection, rule: str) -> RiskRejection:
    assert isinstance(result, RiskRejection), result
    assert result.rule == rule, result.reason
    assert result.reason
    return result


def done(risk: RiskEngine, order: Order) -> None:
    risk.on_order(order.model_copy(update={"status": "filled", "filled_qty": order.qty}))


# --- sizing and rounding ------------------------------------------------------------------


def test_unsized_entry_is_a_fraction_of_equity_rounded_down_to_the_step() -> None:
    risk = engine(position_fraction=D("0.1"))
    order = accepted(risk.check(intent(price=300.0), Portfolio(D(10_000)), ts_init=1_005))
    assert order.qty == D("3.333")  # 0.1 × 10000 / 300 = 3.3333.. down to the 0.001 step
    assert (order.order_type, order.limit_price, order.status, order.ts_event, order.ts_init) == (
        "market",
        None,
        "new",
        1_000,
        1_005,
    )
    assert (order.event_id, order.client_order_id) == (make_id("order", "i1"), "i1")


def test_limit_price_rounds_to_the_tick_and_sizes_the_order() -> None:
    risk = engine()
    # a buy limit rounds down: the order never pays more than the trader allowed (half-even gave 100.0)
    order = accepted(
        risk.check(intent(order_type="limit", limit_price=D("99.96"), price=101.0), Portfolio(D(1_000)), 1)
    )
    assert (order.limit_price, order.qty) == (D("99.9"), D("1.001"))
    # a sell limit rounds up: it never takes less (half-even gave 100.0)
    held = Portfolio(D(1_000))
    held.apply(fill("buy", "1", "100"))
    sell = accepted(
        risk.check(intent("s", side="sell", qty="1", order_type="limit", limit_price=D("100.04")), held, 1)
    )
    assert sell.limit_price == D("100.1")
    order = accepted(risk.check(intent("i2", qty="0.0529", price=101.0), Portfolio(D(1_000)), 1))
    assert order.qty == D("0.052")


def test_a_market_without_loaded_rules_gets_the_default() -> None:
    order = accepted(engine().check(intent(key="kraken:SOL/EUR", qty="1.123456"), Portfolio(D(1_000)), 1))
    assert order.qty == D("1.12345")  # Market.default's 0.00001 step
    assert engine().market("kraken:SOL/EUR").quote == "EUR"


# --- every rejection ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        (intent(price=float("nan")), "finite"),
        (intent(price=0.0), "finite number > 0"),
        (intent(qty="0"), "qty must be > 0"),
        (intent(qty="-1"), "qty must be > 0"),
        (intent(order_type="limit"), "needs a limit price"),
        (intent(order_type="limit", limit_price=D("0.04")), "rounds to 0"),
    ],
)
def test_invalid(bad: OrderIntent, fragment: str) -> None:
    rejection = rejected(engine().check(bad, Portfolio(D(1_000)), 7), "invalid")
    assert fragment in rejection.reason
    assert rejection.event_id == make_id("rejection", bad.client_order_id)
    assert (rejection.ts_event, rejection.ts_init, rejection.side, rejection.strategy) == (
        1_000,
        7,
        "buy",
        "sma",
    )


def test_min_qty_and_min_notional_apply_to_entries_and_exits() -> None:
    risk = RiskEngine(RiskConfig(), {KEY: Market("binance", "BTC/USDT", "BTC", "USDT", min_qty=D("0.01"))})
    rejected(risk.check(intent(qty="0.009"), Portfolio(D(1_000)), 1), "min_qty")
    rejected(engine().check(intent(qty="0.0009"), Portfolio(D(1_000)), 1), "min_qty")  # rounds to 0
    rejected(engine().check(intent(qty="0.049"), Portfolio(D(1_000)), 1), "min_notional")  # 4.9 < 5
    pf = Portfolio(D(1_000))
    pf.apply(fill("buy", "0.04", "100"))
    rejected(engine().check(intent(side="sell", reduce_only=True), pf, 1), "min_notional")


def test_no_equity() -> None:
    rejected(engine().check(intent(), Portfolio(D(0)), 1), "no_equity")
    # sized by the strategy, on margin: no equity to size from is no reason to refuse
    assert isinstance(engine(cash_only=False).check(intent(qty="1"), Portfolio(D(0)), 1), Order)


def test_a_spot_buy_needs_the_cash_that_open_buys_have_not_spoken_for() -> None:
    """Issue 12: a fixed order qty drove spot cash negative; now a buy must be paid for, fee included."""
    risk = RiskEngine(RiskConfig(), {KEY: BTC}, fee_rate=D("0.001"))
    pf = Portfolio(D(1_000))
    accepted(risk.check(intent("a", qty="6"), pf, 1))  # 600.6 of 1000
    rejection = rejected(risk.check(intent("b", qty="4"), pf, 1), "buying_power")
    assert rejection.reason == "a buy costing 400.4 with fees, 399.4 cash free"
    accepted(risk.check(intent("c", qty="3.99"), pf, 1))  # 399.3999: fits
    accepted(risk.check(intent("x", side="sell", qty="6"), pf, 1))  # a sale needs no cash
    accepted(engine(cash_only=False).check(intent("d", qty="40"), pf, 1))  # on margin, no cash rule


def test_max_open_positions_counts_open_orders_too() -> None:
    risk = engine(max_open_positions=2)
    pf = Portfolio(D(10_000))
    pf.apply(fill("buy", "1", "100"))
    accepted(risk.check(intent("a", key=ETH, qty="1"), pf, 1))  # a second market, still only an order
    rejection = rejected(
        risk.check(intent("b", key="binance:SOL/USDT", qty="1"), pf, 1), "max_open_positions"
    )
    assert "3 positions would be open, max 2" in rejection.reason
    accepted(risk.check(intent("c", qty="1"), pf, 1))  # adding to an open position opens nothing new


def test_max_exposure_per_symbol() -> None:
    risk = engine(max_exposure_per_symbol=D("0.25"))
    pf = Portfolio(D(1_000))
    accepted(risk.check(intent("a", qty="2"), pf, 1))  # 200 of 1000
    rejection = rejected(risk.check(intent("b", qty="1"), pf, 1), "max_exposure_per_symbol")
    assert rejection.reason == "exposure 300 would exceed 25% of equity 1000"
    accepted(risk.check(intent("c", qty="0.5"), pf, 1))  # 250: at the limit is fine


def test_max_total_exposure_and_shrinking_entries_pass() -> None:
    risk = engine(max_total_exposure=D("1"))
    pf = Portfolio(D(1_000))
    pf.apply(fill("buy", "6", "100"))
    pf.mark(KEY, 150.0)  # 900 of equity 1300
    rejected(risk.check(intent("a", key=ETH, qty="5", price=100.0), pf, 1), "max_total_exposure")
    accepted(risk.check(intent("b", key=ETH, qty="4", price=100.0), pf, 1))  # 1300 of 1300
    pf.mark(KEY, 100.0)  # equity falls to 1000: now over the limit at 1000 exposure + 400 pending
    accepted(risk.check(intent("c", side="sell", qty="1"), pf, 1))  # not reduce-only, but it shrinks


def test_max_drawdown_halts_entries_until_resumed_while_exits_pass() -> None:
    risk = engine(max_drawdown=0.2)
    pf = Portfolio(D(1_000))
    pf.apply(fill("buy", "5", "100"))
    pf.mark(KEY, 59.0)  # equity 795: 20.5% below the peak of 1000
    rejection = rejected(risk.check(intent("a", qty="1"), pf, 1), "max_drawdown")
    assert "20.50%" in rejection.reason
    pf.mark(KEY, 100.0)  # recovered, but the kill switch holds
    rejected(risk.check(intent("b", qty="1"), pf, 1), "max_drawdown")
    assert accepted(risk.check(intent("c", side="sell", reduce_only=True), pf, 1)).qty == D(5)
    risk.resume()
    accepted(risk.check(intent("d", qty="1"), pf, 1))


def test_rate_limit_in_event_time_counts_exits_but_never_blocks_them() -> None:
    risk = engine(max_orders_per_minute=2)
    pf = Portfolio(D(10_000))
    pf.apply(fill("buy", "5", "100"))
    accepted(risk.check(intent("a", qty="1", ts=0), pf, 0))
    accepted(risk.check(intent("x", side="sell", qty="1", reduce_only=True, ts=1), pf, 1))
    rejection = rejected(risk.check(intent("b", qty="1", ts=MINUTE - 1), pf, 9), "rate_limit")
    assert rejection.reason == "2 orders in the last minute, max 2"
    accepted(risk.check(intent("y", side="sell", qty="1", reduce_only=True, ts=MINUTE - 1), pf, 1))
    rejected(risk.check(intent("c", qty="1", ts=MINUTE), pf, 9), "rate_limit")  # 'x' and 'y' are recent
    accepted(risk.check(intent("d", qty="1", ts=2 * MINUTE), pf, 9))


def test_reduce_only_is_capped_to_the_position_and_to_what_earlier_exits_leave() -> None:
    risk = engine()
    pf = Portfolio(D(10_000))
    rejected(risk.check(intent("a", side="sell", reduce_only=True), pf, 1), "no_position")
    pf.apply(fill("buy", "2", "100"))
    rejected(risk.check(intent("b", side="buy", reduce_only=True), pf, 1), "no_position")  # adds to a long
    first = accepted(risk.check(intent("c", side="sell", qty="1.5", reduce_only=True), pf, 1))
    second = accepted(risk.check(intent("d", side="sell", qty="5", reduce_only=True), pf, 1))
    assert (first.qty, second.qty, second.reduce_only) == (D("1.5"), D("0.5"), True)
    rejection = rejected(risk.check(intent("e", side="sell", reduce_only=True), pf, 1), "no_position")
    assert "(0 counting open orders)" in rejection.reason
    risk.on_order(first.model_copy(update={"status": "canceled"}))  # the first exit never happened
    assert accepted(risk.check(intent("f", side="sell", reduce_only=True), pf, 1)).qty == D("1.5")


def test_a_resting_limit_exit_does_not_block_a_stop() -> None:
    risk = engine(stop_loss=D("0.05"))
    pf = Portfolio(D(10_000))
    pf.apply(fill("buy", "2", "100"))
    take = intent("tp", side="sell", order_type="limit", limit_price=D(120), reduce_only=True)
    assert accepted(risk.check(take, pf, 1)).qty == D(2)
    (stop,) = risk.on_candle(candle(94.0), pf, 2)
    assert stop.qty == D(2)


def test_an_open_order_counts_until_its_own_fills_or_the_broker_say_it_is_done() -> None:
    risk = engine()
    pf = Portfolio(D(10_000))
    pf.apply(fill("buy", "2", "100"))
    x = accepted(risk.check(intent("x", side="sell", reduce_only=True), pf, 1))
    rejected(risk.check(intent("y", side="sell", reduce_only=True), pf, 1), "no_position")
    pf.apply(fill("buy", "1", "100", n=2))  # another order's fill moves the position: 'x' still counts
    assert accepted(risk.check(intent("z", side="sell", reduce_only=True), pf, 1)).qty == D(1)
    x_fill = fill("sell", "2", "101", n=3, cid=x.client_order_id)
    pf.apply(x_fill)
    risk.on_fill(x_fill)  # filled whole: done, and the portfolio holds what it did
    assert risk._projected(KEY, pf) == D(0)  # 3 - 2 filled - 1 for 'z'
    limit_buy = accepted(risk.check(intent("l", qty="1", order_type="limit", limit_price=D(90)), pf, 1))
    risk.on_order(limit_buy.model_copy(update={"status": "partially_filled", "filled_qty": D("0.4")}))
    assert risk._projected(KEY, pf) == D("0.6")  # what the limit still holds, above the 0 that 'z' leaves
    risk.on_order(limit_buy.model_copy(update={"status": "canceled"}))
    assert risk._projected(KEY, pf) == D(0)
    risk.on_order(limit_buy.model_copy(update={"status": "canceled"}))  # unknown by now: ignored


def test_a_partial_fill_keeps_the_rest_of_the_order_under_the_exposure_limits() -> None:
    """Issue 12 #4: one lot of a resting 4-lot limit filled, its other 3 lots still count."""
    risk = engine(max_total_exposure=D("0.5"))
    pf = Portfolio(D(1_000))
    order = accepted(risk.check(intent("l", qty="4", order_type="limit", limit_price=D(100)), pf, 1))
    first = fill("buy", "1", "100", cid=order.client_order_id)
    pf.apply(first)
    risk.on_fill(first)
    risk.on_order(order.model_copy(update={"status": "partially_filled", "filled_qty": D(1)}))
    assert risk._projected(KEY, pf) == D(4)  # 1 held + 3 resting, counted once though told twice
    rejection = rejected(risk.check(intent("e", key=ETH, qty="3", price=100.0), pf, 1), "max_total_exposure")
    assert rejection.reason == "exposure 700 would exceed 50% of equity 1000"
    accepted(risk.check(intent("f", key=ETH, qty="1", price=100.0), pf, 1))  # 500: at the limit


@pytest.mark.parametrize("update_first", [False, True])
def test_fills_and_order_updates_in_either_order_free_an_order_once(update_first: bool) -> None:
    risk = engine()
    pf = Portfolio(D(10_000))
    order = accepted(risk.check(intent("l", qty="4", order_type="limit", limit_price=D(100)), pf, 1))
    reports: list[Any] = []
    for n, filled in ((1, "1"), (2, "3")):
        f = fill("buy", "1" if n == 1 else "2", "100", n=n, cid=order.client_order_id)
        update = order.model_copy(update={"status": "partially_filled", "filled_qty": D(filled)})
        reports += (
            [(risk.on_order, update), (risk.on_fill, f)]
            if update_first
            else [
                (risk.on_fill, f),
                (risk.on_order, update),
            ]
        )
    for call, report in reports:
        call(report)
    assert [r.open_qty for r in risk._reserved.values()] == [D(1)]
    last = fill("buy", "1", "100", n=3, cid=order.client_order_id)
    risk.on_fill(last)
    assert not risk._reserved


def test_cooldown_after_a_stop_out() -> None:
    risk = engine(stop_loss=D("0.05"), cooldown_ns=10 * MINUTE)
    pf = Portfolio(D(10_000))
    pf.apply(fill("buy", "1", "100"))
    (stop,) = risk.on_candle(candle(95.0, ts=MINUTE), pf, 2)
    done(risk, accepted(risk.check(stop, pf, 3)))
    pf.apply(fill("sell", "1", "95.5", n=2))
    rejection = rejected(risk.check(intent("a", qty="1", ts=11 * MINUTE - 1), pf, 4), "cooldown")
    assert str(11 * MINUTE) in rejection.reason
    accepted(risk.check(intent("b", qty="1", key=ETH, ts=2 * MINUTE), pf, 4))  # other markets trade on
    accepted(risk.check(intent("c", qty="1", ts=11 * MINUTE), pf, 4))


# --- stops on candles ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "close", "rule", "reason"),
    [
        ("buy", 95.0, "stop_loss", "stop_loss: close 95.0 reached 95 (5% from entry 100)"),
        ("buy", 110.0, "take_profit", "take_profit: close 110.0 reached 110 (10% from entry 100)"),
        ("sell", 105.0, "stop_loss", "stop_loss: close 105.0 reached 105 (5% from entry 100)"),
        ("sell", 90.0, "take_profit", "take_profit: close 90.0 reached 90 (10% from entry 100)"),
    ],
)
def test_stop_loss_and_take_profit_long_and_short(
    side: OrderSide, close: float, rule: str, reason: str
) -> None:
    risk = engine(stop_loss=D("0.05"), take_profit=D("0.1"), cooldown_ns=5)
    pf = Portfolio(D(10_000))
    pf.apply(fill(side, "2", "100"))
    nudge = 0.1 if (side == "buy") == (rule == "stop_loss") else -0.1  # just short of the level
    assert risk.on_candle(candle(close + nudge, ts=60), pf, 61) == []
    (exit_,) = risk.on_candle(candle(close, ts=120), pf, 121)
    assert (exit_.side, exit_.qty, exit_.reduce_only, exit_.order_type) == (
        "sell" if side == "buy" else "buy",
        D(2),
        True,
        "market",
    )
    assert exit_.client_order_id == make_id("stop", "main", KEY, 120, rule)
    assert (exit_.reason, exit_.strategy, exit_.price, exit_.ts_event, exit_.ts_init) == (
        reason,
        "risk",
        close,
        120,
        121,
    )
    cooling = risk.check(intent("again", side=side, qty="1", ts=124), pf, 124)
    assert isinstance(cooling, RiskRejection) == (rule == "stop_loss")  # take-profit is no stop-out


def test_trailing_stop_follows_the_best_close_since_entry() -> None:
    risk = engine(trailing_stop=D("0.1"))
    pf = Portfolio(D(10_000))
    pf.apply(fill("buy", "1", "100"))
    for ts, close in enumerate([95.0, 120.0, 130.0, 117.1], start=1):
        assert risk.on_candle(candle(close, ts=ts), pf, ts) == []
    (exit_,) = risk.on_candle(candle(117.0, ts=5), pf, 5)  # 10% below the best close, 130
    assert exit_.reason == "trailing_stop: close 117.0 reached 117 (10% from best close 130)"
    exit_order = accepted(risk.check(exit_, pf, 5))
    assert risk.on_candle(candle(110.0, ts=6), pf, 6) == []  # the exit is on its way: no second one
    pf.apply(fill("sell", "1", "117", n=2))
    done(risk, exit_order)
    pf.apply(fill("sell", "1", "100", n=3))  # a new short: its own mark starts at its entry
    assert risk.on_candle(candle(95.0, ts=7), pf, 7) == []
    (cover,) = risk.on_candle(candle(104.5, ts=8), pf, 8)  # 10% above the best (lowest) close, 95
    assert (cover.side, cover.qty) == ("buy", D(1))


def test_stop_loss_comes_before_trailing_and_unclosed_or_flat_candles_do_nothing() -> None:
    risk = engine(stop_loss=D("0.05"), trailing_stop=D("0.01"))
    pf = Portfolio(D(10_000))
    assert risk.on_candle(candle(10.0), pf, 1) == []  # flat
    pf.apply(fill("buy", "1", "100"))
    assert risk.on_candle(candle(50.0, closed=False), pf, 1) == []
    (exit_,) = risk.on_candle(candle(50.0), pf, 1)
    assert exit_.reason.startswith("stop_loss")
    assert risk.on_candle(candle(50.0, key=ETH), pf, 1) == []  # another market's candle


def test_config_validates() -> None:
    with pytest.raises(ValidationError):
        RiskConfig(stop_loss=D("1.5"))
    with pytest.raises(ValidationError):
        RiskConfig(position_fraction=D(0))
    with pytest.raises(ValidationError):
        RiskConfig(unknown=1)  # type: ignore[call-arg]
    assert RiskConfig(stop_loss=0.05).stop_loss == D("0.05")


def test_state_is_picklable_and_comparable() -> None:
    risk = engine(stop_loss=D("0.05"), max_orders_per_minute=5, cooldown_ns=9)
    pf = Portfolio(D(10_000))
    pf.apply(fill("buy", "1", "100"))
    risk.check(intent("a", qty="1"), pf, 1)
    risk.on_candle(candle(90.0), pf, 2)
    clone = pickle.loads(pickle.dumps(risk))
    assert clone == risk
    clone.resume()
    clone.check(intent("b", qty="1", key=ETH), pf, 3)
    assert clone != risk
