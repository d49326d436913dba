"""IntentPolicy: which aggregated signals, given the position, become order intents."""

from __future__ import annotations

import pickle
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mambo.core.intents import IntentPolicy
from mambo.schemas.events import AggregatedSignal, SignalSide, make_id

MINUTE_NS = 60_000_000_000
FLAT, LONG, SHORT = Decimal(0), Decimal("0.25"), Decimal("-0.25")


def aggregated(
    side: SignalSide, bar: int = 0, score: float | None = None, price: float = 46_377.0
) -> AggregatedSignal:
    if score is None:
        score = {"buy": 0.4, "sell": -0.4, "hold": 0.0}[side]
    ts = (bar + 1) * MINUTE_NS
    return AggregatedSignal(
        event_id=make_id("aggregated_signal", "binance", "BTC/USDT", "1m", ts),
        ts_event=ts,
        ts_init=ts,
        exchange="binance",
        symbol="BTC/USDT",
        timeframe="1m",
        side=side,
        score=score,
        confidence=abs(score),
        price=price,
        weights={"sma_cross": 0.5, "rsi_reversion": 0.5},
        contributions={"sma_cross": score, "rsi_reversion": 0.0},
        lead_strategy="sma_cross",
        values={"sma_50": 46_380.0, "sma_200": 46_370.0},
    )


def test_buy_while_flat_opens_a_long() -> None:
    sig = aggregated("buy")
    intent = IntentPolicy(qty=Decimal("0.01")).on_signal(sig, FLAT, ts_init=123)
    assert intent is not None
    assert (intent.side, intent.qty, intent.reduce_only, intent.order_type) == (
        "buy",
        Decimal("0.01"),
        False,
        "market",
    )
    assert intent.client_order_id == make_id("order", "main", sig.event_id)
    assert intent.account == "main"
    assert (intent.strategy, intent.price, intent.ts_event, intent.ts_init) == (
        "sma_cross",
        46_377.0,
        sig.ts_event,
        123,
    )
    assert (intent.exchange, intent.symbol) == ("binance", "BTC/USDT")
    assert intent.reason == "open long: buy signal (score +0.4000, led by sma_cross)"


def test_unsized_long_is_left_to_risk() -> None:
    intent = IntentPolicy().on_signal(aggregated("buy"), FLAT, ts_init=0)
    assert intent is not None and intent.qty is None


def test_sell_while_long_closes_it() -> None:
    intent = IntentPolicy(qty=Decimal("0.01")).on_signal(aggregated("sell", score=-0.25), LONG, ts_init=0)
    assert intent is not None
    assert (intent.side, intent.qty, intent.reduce_only) == ("sell", LONG, True)
    assert intent.reason == "close long: sell signal (score -0.2500, led by sma_cross)"


@pytest.mark.parametrize("allow_short", [False, True])
@pytest.mark.parametrize(
    ("side", "position"),
    [("buy", LONG), ("hold", FLAT), ("hold", LONG), ("hold", SHORT), ("sell", SHORT)],
)
def test_nothing_to_do(side: SignalSide, position: Decimal, allow_short: bool) -> None:
    assert (
        IntentPolicy(qty=Decimal(1), allow_short=allow_short).on_signal(aggregated(side), position, 0) is None
    )


def test_no_shorts_unless_allowed() -> None:
    policy = IntentPolicy(qty=Decimal(1))
    assert policy.on_signal(aggregated("sell"), FLAT, ts_init=0) is None
    assert policy.on_signal(aggregated("buy"), SHORT, ts_init=0) is None


def test_shorts_when_allowed() -> None:
    policy = IntentPolicy(qty=Decimal("0.5"), allow_short=True)
    opening = policy.on_signal(aggregated("sell"), FLAT, ts_init=0)
    assert opening is not None
    assert (opening.side, opening.qty, opening.reduce_only) == ("sell", Decimal("0.5"), False)
    assert opening.reason.startswith("open short: sell signal")
    closing = policy.on_signal(aggregated("buy", bar=1), SHORT, ts_init=0)
    assert closing is not None
    assert (closing.side, closing.qty, closing.reduce_only) == ("buy", Decimal("0.25"), True)
    assert closing.reason.startswith("close short: buy signal")


def test_same_signal_same_order_id() -> None:
    # A restarted agent that sees the same signal asks for the same order; another bar, another one.
    policy = IntentPolicy(qty=Decimal(1))
    first = policy.on_signal(aggregated("buy", bar=3), FLAT, ts_init=1)
    again = IntentPolicy(qty=Decimal(1)).on_signal(aggregated("buy", bar=3), FLAT, ts_init=2)
    other = policy.on_signal(aggregated("buy", bar=4), FLAT, ts_init=1)
    assert first is not None and again is not None and other is not None
    assert first.client_order_id == again.client_order_id != other.client_order_id
    assert first.event_id == again.event_id != other.event_id


@pytest.mark.parametrize("qty", [Decimal(0), Decimal(-1), Decimal("NaN"), Decimal("Infinity"), 1.5])
def test_bad_qty(qty: object) -> None:
    with pytest.raises(ValueError, match="qty must be a Decimal > 0"):
        IntentPolicy(qty=qty)  # type: ignore[arg-type]


def test_policy_pickles_and_compares() -> None:
    policy = IntentPolicy(qty=Decimal("0.1"), allow_short=True)
    assert pickle.loads(pickle.dumps(policy)) == policy
    assert policy != IntentPolicy(qty=Decimal("0.1"))


@given(st.lists(st.sampled_from(["buy", "sell", "hold"]), max_size=60), st.booleans())
def test_position_stays_within_one_lot(sides: list[SignalSide], allow_short: bool) -> None:
    # Fill every intent at once and follow the position: it only ever moves between flat and one lot,
    # never reverses in one order, and closes always flatten exactly.
    lot = Decimal("0.3")
    policy = IntentPolicy(qty=lot, allow_short=allow_short)
    position = FLAT
    for i, side in enumerate(sides):
        intent = policy.on_signal(aggregated(side, bar=i), position, ts_init=0)
        if intent is None:
            continue
        assert intent.qty is not None
        assert intent.reduce_only == (position != 0)
        position += intent.qty if intent.side == "buy" else -intent.qty
        assert position in ({FLAT, lot, -lot} if allow_short else {FLAT, lot})
