"""Portfolio: hand-worked fills (long, short, add, reduce, close, flip) and exact accounting invariants."""

from __future__ import annotations

import itertools
import pickle
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mambo.core.portfolio import Portfolio, held
from mambo.schemas.events import Fill, OrderSide

D = Decimal
BTC = "binance:BTC/USDT"
ETH = "binance:ETH/USDT"
_ids = itertools.count(1)


def fill(
    side: OrderSide,
    qty: str | Decimal,
    price: str | Decimal,
    fee: str | Decimal = "0",
    key: str = BTC,
    fee_currency: str = "USDT",
) -> Fill:
    exchange, symbol = key.split(":")
    n = next(_ids)
    return Fill(
        event_id=f"f{n}",
        ts_event=n,
        ts_init=n,
        exchange=exchange,
        symbol=symbol,
        fill_id=f"f{n}",
        client_order_id=f"o{n}",
        strategy="test",
        side=side,
        price=D(price),
        qty=D(qty),
        fee=D(fee),
        fee_currency=fee_currency,
        liquidity="taker",
    )


def assert_identities(pf: Portfolio) -> None:
    snap = pf.snapshot(0, 0)
    assert snap.cash + sum((p.qty * p.mark_price for p in pf.positions.values()), D(0)) == snap.equity
    assert snap.cash + snap.positions_value == snap.equity
    assert snap.realized_pnl + snap.unrealized_pnl - snap.fees == snap.equity - pf.initial_cash


def test_open_add_reduce_close_long() -> None:
    pf = Portfolio(D(10_000))
    booked, pos = pf.apply(fill("buy", "1", "100", fee="0.1"))
    assert booked.realized_pnl == 0
    assert (pos.qty, pos.avg_price, pos.fees, pos.mark_price) == (D(1), D(100), D("0.1"), D(100))
    assert pf.cash == D("9899.9")

    _, pos = pf.apply(fill("buy", "1", "110", fee="0.11"))
    assert (pos.qty, pos.avg_price) == (D(2), D(105))

    booked, pos = pf.apply(fill("sell", "0.5", "120", fee="0.06"))
    assert booked.realized_pnl == D("7.5")  # 0.5 × (120 - 105)
    assert (pos.qty, pos.avg_price, pos.realized_pnl) == (D("1.5"), D(105), D("7.5"))

    booked, pos = pf.apply(fill("sell", "1.5", "100", fee="0.15"))
    assert booked.realized_pnl == D("-7.5")  # 1.5 × (100 - 105)
    assert (pos.qty, pos.avg_price, pos.realized_pnl, pos.unrealized_pnl) == (D(0), D(0), D(0), D(0))
    assert pos.fees == D("0.42")
    assert pf.cash == D(10_000) - D("0.42")
    assert pf.positions == {}
    assert_identities(pf)


def test_short_open_and_cover() -> None:
    pf = Portfolio(D(1_000))
    _, pos = pf.apply(fill("sell", "2", "100", fee="0.2"))
    assert (pos.qty, pos.avg_price) == (D(-2), D(100))
    assert pf.cash == D("1199.8")  # the sale's proceeds are cash; the short is a negative position
    pf.mark(BTC, 95)
    assert pf.positions[BTC].unrealized_pnl == D(10)
    assert pf.equity == D("1199.8") - D(190)
    booked, pos = pf.apply(fill("buy", "1", "90", fee="0.09"))
    assert booked.realized_pnl == D(10)  # 1 × (100 - 90)
    assert (pos.qty, pos.avg_price) == (D(-1), D(100))
    assert_identities(pf)


def test_flip_long_to_short_and_back() -> None:
    pf = Portfolio(D(1_000))
    pf.apply(fill("buy", "1", "100"))
    booked, pos = pf.apply(fill("sell", "3", "110", fee="0.33"))
    assert booked.realized_pnl == D(10)  # closes the long at +10, then opens 2 short at 110
    assert (pos.qty, pos.avg_price, pos.realized_pnl) == (D(-2), D(110), D(10))
    booked, pos = pf.apply(fill("buy", "5", "100"))
    assert booked.realized_pnl == D(20)  # covers 2 at 110 -> 100, then 3 long at 100
    assert (pos.qty, pos.avg_price, pos.realized_pnl) == (D(3), D(100), D(30))
    assert_identities(pf)


def test_inexact_average_keeps_identities_exact() -> None:
    pf = Portfolio(D(100))
    pf.apply(fill("buy", "1", "1"))
    pf.apply(fill("buy", "2", "2"))  # cost 5 over 3: the average 1.666... has no exact decimal
    booked, pos = pf.apply(fill("sell", "1", "2"))
    assert booked.realized_pnl == D("0.333333333333333333")  # cost share rounded to 1e-18
    assert pos.qty == 2
    pf.mark(BTC, D("1.7"))
    assert_identities(pf)
    booked, pos = pf.apply(fill("sell", "2", "1.5"))
    assert pos.qty == 0
    assert pf.snapshot(0, 0).realized_pnl == pf.cash - pf.initial_cash  # no fees: all PnL is realized


def test_an_inexact_average_is_shown_to_1e18() -> None:
    """An exchange can fill one order at several prices: the position event's average must still fit
    the history's Decimal(38, 18), while the cost basis behind it stays exact."""
    pf = Portfolio(D(1_000_000))
    pf.apply(fill("buy", "0.3", "61660.17"))
    _, pos = pf.apply(fill("buy", "0.4", "61660.19"))
    assert pos.avg_price == D("61660.181428571428571429")  # 43162.127 / 0.7, rounded half-even
    assert pf.positions[BTC].cost == D("43162.127")
    _, pos = pf.apply(fill("buy", "0.3", "61660.16"))
    assert pos.avg_price == D("61660.175") and str(pos.avg_price) == "61660.175"  # exact stays as is


def test_marks_value_positions_and_drawdown_from_peak() -> None:
    pf = Portfolio(D(1_000))
    pf.apply(fill("buy", "1", "100"))
    pf.apply(fill("sell", "10", "50", key=ETH))
    pf.mark(BTC, 150.0)
    pf.mark(ETH, D(40))
    snap = pf.snapshot(5, 6)
    assert (snap.ts_event, snap.ts_init) == (5, 6)
    assert snap.positions_value == D(150) - D(400)
    assert snap.equity == D(1_000) - D(100) + D(500) + D(150) - D(400) == D(1_150)
    assert snap.unrealized_pnl == D(50) + D(100)
    assert snap.drawdown == 0.0
    pf.mark(BTC, 35.0)  # equity 1150 -> 1035: 10% off the peak
    assert pf.peak_equity == D(1_150)
    assert pf.snapshot(7, 7).drawdown == pytest.approx(0.1)
    assert_identities(pf)


def test_reading_and_events() -> None:
    pf = Portfolio(D(1_000), account="acct")
    assert pf.position(BTC) == 0
    pf.mark(BTC, 10.0)  # a mark before any fill creates a flat position
    assert pf.positions == {}
    with pytest.raises(TypeError):
        pf.positions[BTC] = None  # type: ignore[index]
    _, pos = pf.apply(fill("buy", "2", "11"))
    assert pos.mark_price == D(11)  # opened from flat: worth its fill, not the flat market's mark
    pf.mark(BTC, 10.0)
    assert pf.position(BTC) == D(2)
    event = pf.position_event(BTC, 9, 9)
    assert (event.qty, event.unrealized_pnl, event.key) == (D(2), D(-2), BTC)
    snap = pf.snapshot(9, 9)
    assert snap.account == "acct"
    assert snap.event_id == pf.snapshot(9, 9).event_id != pf.snapshot(10, 10).event_id


def test_bad_input_raises() -> None:
    pf = Portfolio(D(1_000))
    with pytest.raises(ValueError, match="qty and price"):
        pf.apply(fill("buy", "0", "10"))
    with pytest.raises(ValueError, match="> 0"):
        pf.mark(BTC, 0.0)
    with pytest.raises(ValueError, match="market key"):
        pf.mark("nokey", 1.0)


def test_picklable_and_comparable() -> None:
    pf = Portfolio(D(1_000))
    pf.apply(fill("buy", "1", "100"))
    copy = pickle.loads(pickle.dumps(pf))
    assert copy == pf
    copy.mark(BTC, 101.0)
    assert copy != pf


# --- invariants over random fill sequences --------------------------------------------------

prices = st.integers(1, 10**7).map(lambda n: D(n).scaleb(-2))  # 0.01 .. 100000.00 on a 0.01 tick
qtys = st.integers(1, 10**6).map(lambda n: D(n).scaleb(-5))  # 0.00001 .. 10 on a 0.00001 step
fee_rates = st.sampled_from([D(0), D("0.001"), D("0.00075"), D("-0.0001")])  # a rebate too
steps = st.one_of(
    st.tuples(
        st.just("fill"),
        st.sampled_from([BTC, ETH]),
        st.sampled_from(["buy", "sell"]),
        qtys,
        prices,
        fee_rates,
        st.booleans(),  # the fee in the base coin (Binance's spot buy) or in quote
    ),
    st.tuples(st.just("mark"), st.sampled_from([BTC, ETH]), prices),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(steps, max_size=40), st.integers(0, 10**9))
def test_accounting_identities_hold_exactly(seq: list[tuple], cash: int) -> None:
    pf = Portfolio(D(cash))
    signed: dict[str, Decimal] = {BTC: D(0), ETH: D(0)}
    realized = fees = D(0)
    for step in seq:
        if step[0] == "mark":
            pf.mark(step[1], step[2])
        else:
            _, key, side, qty, price, rate, in_base = step
            symbol = key.split(":")[1]
            fee, currency = (rate * qty, symbol.split("/")[0]) if in_base else (rate * qty * price, "USDT")
            booked, pos = pf.apply(fill(side, qty, price, fee=fee, key=key, fee_currency=currency))
            signed[key] += held(side, qty, fee, currency, symbol)
            realized += booked.realized_pnl
            fees += fee * price if in_base else fee
            assert pos.qty == signed[key]
        snap = pf.snapshot(1, 1)
        assert snap.cash + sum((p.qty * p.mark_price for p in pf.positions.values()), D(0)) == snap.equity
        assert snap.cash + snap.positions_value == snap.equity
        assert all(pf.position(k) == q for k, q in signed.items())
        assert snap.realized_pnl == realized
        assert snap.fees == fees
        assert snap.realized_pnl + snap.unrealized_pnl - snap.fees == snap.equity - D(cash)
        assert snap.drawdown >= 0.0


@pytest.mark.parametrize("side", ["buy", "sell"])
def test_a_reentry_is_valued_at_its_fill_not_the_old_mark(side: OrderSide) -> None:
    """Hand-worked: 1,000 cash; long 1 at 100, marked 200, sold at 200 (cash 1,100); bought again at
    100: equity 1,100 (the old mark gave 1,200, and a false peak the kill switch measured from)."""
    exit_side: OrderSide = "sell" if side == "buy" else "buy"
    pf = Portfolio(D(1_000))
    pf.apply(fill(side, "1", "100"))
    pf.mark(BTC, "200")
    pf.apply(fill(exit_side, "1", "200"))
    flat = pf.equity
    assert flat == D(1_100) if side == "buy" else D(900)
    pf.apply(fill(side, "1", "100"))
    assert pf.equity == flat
    assert pf.positions[BTC].mark_price == D(100)
    assert pf.peak_equity == max(D(1_100), flat) if side == "buy" else D(1_000)
    assert pf.drawdown == 0.0 if side == "buy" else pf.drawdown == pytest.approx(0.1)
    assert_identities(pf)


def test_a_fee_in_the_base_coin_is_taken_from_the_coin_not_the_cash() -> None:
    """Issue 12 #8, hand-worked: 100,000 cash; buy 1 BTC at 50,000 with a 0.001 BTC fee (Binance spot):
    0.999 BTC held and 50,000 cash, a fee worth 50; a reduce-only exit sells the 0.999 there is."""
    pf = Portfolio(D(100_000))
    _, pos = pf.apply(fill("buy", "1", "50000", fee="0.001", fee_currency="BTC"))
    assert (pos.qty, pf.cash, pos.fees, pos.avg_price) == (D("0.999"), D(50_000), D(50), D(50_000))
    assert pf.equity == D(99_950)
    assert_identities(pf)
    pf.apply(fill("sell", "0.999", "51000", fee="50.949"))  # the sell's fee in USDT, 0.1%
    assert not pf.positions
    assert pf.cash == D(50_000) + D(50_949) - D("50.949")
    assert_identities(pf)
    pf.apply(fill("sell", "1", "100", fee="0.01", fee_currency="BTC"))  # a short paying in the coin
    assert (pf.position(BTC), pf.cash) == (D("-1.01"), D("100898.051") + D(100))
    assert_identities(pf)


def test_a_fee_in_a_third_currency_is_refused_with_the_reason() -> None:
    pf = Portfolio(D(1_000))
    with pytest.raises(ValueError, match="a fee in BNB cannot be booked in an account kept in USDT"):
        pf.apply(fill("buy", "1", "100", fee="0.0001", fee_currency="BNB"))
    assert pf.cash == D(1_000) and not pf.positions
