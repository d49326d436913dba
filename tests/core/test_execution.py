"""Paper broker: every fill path by hand, and the numpy batch path against row-by-row matching."""

from __future__ import annotations

import copy
import pickle
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mambo.core.execution import PaperBroker
from mambo.core.market import Market
from mambo.core.portfolio import Portfolio
from mambo.schemas.events import Candle, Fill, Order, OrderSide, OrderType, make_id

D = Decimal
KEY = "binance:BTC/USDT"
BTC = Market("binance", "BTC/USDT", "BTC", "USDT", tick_size=D("0.01"), step_size=D("0.001"))


def order(
    cid: str = "o1",
    side: OrderSide = "buy",
    qty: str = "1",
    limit: str | None = None,
    ts: int = 100,
    order_type: OrderType | None = None,
) -> Order:
    return Order(
        event_id=make_id("order", cid),
        ts_event=ts,
        ts_init=ts,
        exchange="binance",
        symbol="BTC/USDT",
        client_order_id=cid,
        strategy="test",
        side=side,
        order_type=order_type or ("market" if limit is None else "limit"),
        qty=D(qty),
        limit_price=None if limit is None else D(limit),
    )


def candle(open_time: int, o: float, h: float, low: float, c: float, v: float, closed: bool = True) -> Candle:
    return Candle(
        event_id=f"c{open_time}",
        ts_event=open_time + 60,
        ts_init=open_time + 61,
        exchange="binance",
        symbol="BTC/USDT",
        timeframe="1m",
        open_time=open_time,
        open=o,
        high=h,
        low=low,
        close=c,
        volume=v,
        trades=1,
        closed=closed,
    )


def broker(**kwargs: Any) -> PaperBroker:
    return PaperBroker(markets={KEY: BTC}, **kwargs)


def fills(events: list[Order | Fill]) -> list[Fill]:
    return [e for e in events if isinstance(e, Fill)]


def statuses(events: list[Order | Fill]) -> list[tuple[str, str, Decimal]]:
    return [(e.client_order_id, e.status, e.filled_qty) for e in events if isinstance(e, Order)]


# --- submit and cancel --------------------------------------------------------------------


def test_submit_acknowledges_and_ignores_a_resubmission() -> None:
    b = broker()
    (ack,) = b.submit(order(), ts_init=150)
    assert (ack.status, ack.ts_event, ack.ts_init) == ("new", 100, 150)
    assert ack.event_id == make_id("order", "o1", "new", D(0))
    assert b.open_orders(KEY) == [ack] == b.open_orders()
    assert b.submit(order(), ts_init=151) == []  # a redelivered order cannot trade twice
    assert len(b.open_orders()) == 1


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (order(qty="0"), "qty 0 must be > 0"),
        (order(qty="0.0015"), "multiple of the step"),
        (order(limit="100.005"), "multiple of the tick"),
        (order(limit="0"), "limit price 0 must be > 0"),
        (order(order_type="limit"), "limit price None"),
        (order().model_copy(update={"status": "filled"}), "status new"),
    ],
)
def test_submit_rejects_invalid_orders(bad: Order, why: str) -> None:
    b = broker()
    (rejected,) = b.submit(bad, ts_init=1)
    assert rejected.status == "rejected"
    assert why in rejected.reason
    assert b.open_orders() == []


def test_submit_enforces_market_minimums() -> None:
    market = Market("binance", "BTC/USDT", "BTC", "USDT", min_qty=D("0.01"), min_notional=D(10))
    b = PaperBroker(markets={KEY: market})
    assert "below the market minimum 0.01" in b.submit(order("a", qty="0.005"), 1)[0].reason
    assert "notional" in b.submit(order("b", qty="0.05", limit="100"), 1)[0].reason
    assert b.submit(order("c", qty="0.1", limit="100"), 1)[0].status == "new"


def test_cancel() -> None:
    b = broker()
    b.submit(order(limit="100"), 1)
    (canceled,) = b.cancel("o1", ts_init=7)
    assert (canceled.status, canceled.ts_init) == ("canceled", 7)
    assert b.cancel("o1") == [] and b.cancel("unknown") == []
    assert b.on_trade(KEY, 200, 90.0, 5.0) == []


# --- market orders ------------------------------------------------------------------------


def test_market_order_fills_whole_on_the_next_trade_with_taker_fee() -> None:
    b = broker(fee_taker=D("0.001"))
    b.submit(order(qty="2"), 100)
    assert b.on_trade("binance:ETH/USDT", 101, 5.0, 1.0) == []  # another market's data
    assert b.on_trade(KEY, 99, 100.0, 1.0) == []  # a trade from before the decision
    events = b.on_trade(KEY, 101, 20_010.5, 0.001)  # volume does not limit a market order
    (f,) = fills(events)
    assert (f.price, f.qty, f.fee, f.fee_currency, f.liquidity) == (
        D("20010.50"),
        D(2),
        D("40.021"),
        "USDT",
        "taker",
    )
    assert (f.ts_event, f.fill_id, f.event_id) == (101, make_id("fill", "o1", 1), make_id("fill", "o1", 1))
    assert statuses(events) == [("o1", "filled", D(2))]
    assert b.open_orders() == []
    assert b.on_trade(KEY, 102, 1.0, 1.0) == []


@pytest.mark.parametrize(("side", "expected"), [("buy", D("100.10")), ("sell", D("99.90"))])
def test_slippage_moves_the_price_against_the_order_on_the_tick(side: OrderSide, expected: Decimal) -> None:
    b = broker(slippage_bps=D(10))
    b.submit(order(side=side), 100)
    (f,) = fills(b.on_trade(KEY, 100, 100.0, 1.0))
    assert f.price == expected
    b.submit(order("o2", side=side), 100)
    # 123.45 × (1 ± 0.001) = 123.57345 / 123.32655: on the tick away from the trader (the nearest
    # tick, 123.57 / 123.33, gave back part of the slippage)
    (f,) = fills(b.on_trade(KEY, 100, 123.45, 1.0))
    assert f.price == (D("123.58") if side == "buy" else D("123.32"))


# --- limit orders -------------------------------------------------------------------------


def test_buy_limit_rests_then_fills_partially_at_its_price_with_maker_fee() -> None:
    b = broker(fee_maker=D("0.0002"))
    b.submit(order(qty="1", limit="100"), 100)
    assert b.on_trade(KEY, 101, 100.01, 5.0) == []  # above the limit: no cross
    events = b.on_trade(KEY, 102, 99.5, 0.4)  # crosses, but only 0.4 traded
    (f,) = fills(events)
    assert (f.price, f.qty, f.fee, f.liquidity) == (D(100), D("0.4"), D("0.008"), "maker")
    assert statuses(events) == [("o1", "partially_filled", D("0.4"))]
    events = b.on_trade(KEY, 103, 100.0, 2.0)  # at the limit: crosses; fills the remaining 0.6
    assert [x.qty for x in fills(events)] == [D("0.6")]
    assert fills(events)[0].fill_id == make_id("fill", "o1", 2)
    assert statuses(events) == [("o1", "filled", D(1))]
    assert b.open_orders() == []


def test_sell_limit_fills_when_a_trade_reaches_it() -> None:
    b = broker()
    b.submit(order(side="sell", qty="1", limit="105"), 100)
    assert b.on_trade(KEY, 101, 104.99, 5.0) == []
    (f,) = fills(b.on_trade(KEY, 102, 106.0, 5.0))
    assert (f.side, f.price, f.qty) == ("sell", D(105), D(1))


def test_trade_volume_is_shared_in_price_time_priority() -> None:
    b = broker()
    b.submit(order("low", qty="1", limit="99"), 100)
    b.submit(order("old", qty="1", limit="100"), 100)
    b.submit(order("new", qty="1", limit="100"), 100)
    b.submit(order("ask", side="sell", qty="1", limit="98"), 100)  # the sell side has its own volume
    events = b.on_trade(KEY, 101, 98.5, 1.5)
    assert [(f.client_order_id, f.qty) for f in fills(events)] == [
        ("old", D(1)),
        ("new", D("0.5")),
        ("ask", D(1)),
    ]
    events = b.on_trade(KEY, 102, 98.5, 0.0004)  # less than a step: nothing
    assert events == []


def test_a_limit_is_not_filled_by_trades_from_before_its_decision() -> None:
    b = broker()
    b.submit(order(qty="1", limit="100", ts=500), 1)
    assert b.on_trade(KEY, 499, 90.0, 5.0) == []
    assert fills(b.on_trade(KEY, 500, 90.0, 5.0))[0].price == D(90)  # marketable on arrival: it takes


@pytest.mark.parametrize(
    ("side", "limit", "slippage", "price"),
    [
        ("buy", "110", D(0), D(100)),  # issue 12 #5: not at 110, above the bar's high of 105
        ("buy", "110", D(10), D("100.10")),  # a taker pays the slippage ...
        ("buy", "100.05", D(10), D("100.05")),  # ... never beyond its limit
        ("sell", "90", D(0), D(100)),
        ("sell", "99.95", D(10), D("99.95")),
    ],
)
def test_a_marketable_limit_takes_at_the_open_as_taker(
    side: OrderSide, limit: str, slippage: Decimal, price: Decimal
) -> None:
    b = broker(fee_maker=D("0.0002"), fee_taker=D("0.001"), slippage_bps=slippage)
    t = candle(0, 100.0, 101.0, 99.0, 100.5, 10.0)
    b.submit(order(side=side, qty="1", limit=limit, ts=t.ts_event), t.ts_init)
    (f,) = fills(b.on_candle(candle(60, 100.0, 105.0, 95.0, 101.0, 10.0)))
    assert (f.price, f.liquidity, f.fee) == (price, "taker", price * D("0.001"))
    assert 95 <= f.price <= 105


def test_a_limit_left_resting_then_fills_at_its_limit_as_maker() -> None:
    b = broker(fee_maker=D("0.0002"))
    b.submit(order(qty="1", limit="99", ts=0), 0)
    (f,) = fills(b.on_candle(candle(60, 100.0, 101.0, 98.0, 100.5, 10.0)))  # open above: it rests
    assert (f.price, f.liquidity) == (D(99), "maker")  # then the bar comes down to it
    b.submit(order("o2", qty="1", limit="99", ts=0), 0)
    assert b.on_trade(KEY, 1, 99.5, 1.0) == []  # its first trade does not cross: it rests
    (f,) = fills(b.on_trade(KEY, 2, 98.0, 1.0))
    assert (f.price, f.liquidity) == (D(99), "maker")  # not the 98 a taker would get


# --- candles ------------------------------------------------------------------------------


def test_market_order_decided_on_candle_t_fills_at_candle_t_plus_1_open() -> None:
    b = broker(fee_taker=D("0.001"))
    t = candle(0, 100.0, 101.0, 99.0, 100.5, 10.0)
    b.submit(order(qty="1", ts=t.ts_event), t.ts_init)  # decided at t's close
    assert b.on_candle(t) == []  # t itself arrives late: its prices are from before the decision
    t1 = candle(60, 100.7, 102.0, 100.1, 101.0, 10.0)
    (f,) = fills(b.on_candle(t1))
    assert (f.price, f.fee, f.ts_event, f.ts_init) == (D("100.70"), D("0.1007"), 60, 121)


def test_limit_fills_when_the_candle_range_reaches_it_up_to_its_volume() -> None:
    b = broker()
    b.submit(order("bid", qty="3", limit="99", ts=0), 0)
    b.submit(order("ask", side="sell", qty="1", limit="103", ts=0), 0)
    assert b.on_candle(candle(0, 100.0, 102.0, 99.5, 101.0, 10.0)) == []
    assert b.on_candle(candle(60, 100.0, 103.0, 98.0, 99.0, 2.0, closed=False)) == []  # still forming
    events = b.on_candle(candle(60, 100.0, 103.0, 98.0, 99.0, 2.0))
    assert [(f.client_order_id, f.price, f.qty) for f in fills(events)] == [
        ("bid", D(99), D(2)),
        ("ask", D(103), D(1)),
    ]
    assert statuses(events) == [("bid", "partially_filled", D(2)), ("ask", "filled", D(1))]


def test_without_order_updates_the_fills_rejections_and_partial_fills_are_the_same() -> None:
    """``order_updates=False`` (the backtest's broker) leaves out the acknowledgements and the
    ``filled`` updates, and nothing else."""
    runs = []
    for updates in (True, False):
        b = broker(order_updates=updates)
        acks = b.submit(order("bid", qty="3", limit="99", ts=0), 0)
        acks += b.submit(order("mkt", side="sell", qty="1", ts=0), 0)
        rejected = b.submit(order("bad", qty="0.0001"), 0)  # not a multiple of the step
        events = b.on_candle(candle(60, 100.0, 103.0, 98.0, 99.0, 2.0))
        events += b.on_candle(candle(120, 99.0, 100.0, 98.5, 99.0, 5.0))
        runs.append((acks, rejected, events, b.open_orders()))
    (acks, rejected, events, left), (quiet_acks, quiet_rejected, quiet_events, quiet_left) = runs
    assert [a.status for a in acks] == ["new", "new"] and quiet_acks == []
    assert quiet_rejected == rejected and [r.status for r in rejected] == ["rejected"]
    assert [(f.client_order_id, f.qty) for f in fills(events)] == [("mkt", 1), ("bid", 2), ("bid", 1)]
    assert fills(quiet_events) == fills(events)
    assert statuses(events) == [("mkt", "filled", 1), ("bid", "partially_filled", 2), ("bid", "filled", 3)]
    assert statuses(quiet_events) == [("bid", "partially_filled", 2)]
    assert left == quiet_left == []


# --- state --------------------------------------------------------------------------------


def test_state_is_picklable_and_comparable() -> None:
    b = broker()
    b.submit(order(qty="1", limit="100"), 1)
    b.on_trade(KEY, 101, 99.0, 0.5)
    clone = pickle.loads(pickle.dumps(b))
    assert clone == b
    assert clone.on_trade(KEY, 102, 99.0, 1.0) == b.on_trade(KEY, 102, 99.0, 1.0)
    assert clone == b
    clone.cancel("o1")
    b.submit(order("o2"), 1)
    assert clone != b


def test_fills_keep_the_portfolio_exact() -> None:
    b = broker(fee_taker=D("0.00075"), fee_maker=D("0.0002"), slippage_bps=D(3))
    pf = Portfolio(D(10_000))
    b.submit(order("a", qty="0.123", ts=0), 0)
    b.submit(order("b", side="sell", qty="0.5", limit="101.37", ts=0), 0)
    for i, (p, q) in enumerate([(100.13, 1.0), (101.4, 0.2), (99.99, 3.0), (101.5, 1.0)]):
        for f in fills(b.on_trade(KEY, i, p, q)):
            pf.apply(f)
        pf.mark(KEY, p)
    snap = pf.snapshot(9, 9)
    assert pf.position(KEY) == D("0.123") - D("0.5")
    # 100.13 × 1.0003 = 100.160039, on the tick above: 100.17
    assert snap.fees == D("0.123") * D("100.17") * D("0.00075") + D("0.5") * D("101.37") * D("0.0002")
    assert snap.realized_pnl + snap.unrealized_pnl - snap.fees == snap.equity - D(10_000)


# --- the batch path -----------------------------------------------------------------------


class _Untouchable:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError("on_trades read the arrays with nothing resting")

    def __len__(self) -> int:
        raise AssertionError("on_trades read the arrays with nothing resting")


def test_on_trades_returns_at_once_when_nothing_rests() -> None:
    b = broker()
    nothing: Any = _Untouchable()
    assert b.on_trades(KEY, nothing, nothing, nothing) == []
    b.submit(order(limit="100"), 1)
    assert b.on_trades("binance:ETH/USDT", nothing, nothing, nothing) == []


def test_on_trades_only_visits_rows_that_can_fill(monkeypatch: pytest.MonkeyPatch) -> None:
    n = 1_000_000
    rng = np.random.default_rng(7)
    ts = np.arange(n, dtype=np.int64)
    price = 100.0 + rng.random(n)  # never at or below 99 ...
    price[[10, 500_000, 900_000]] = [98.0, 99.0, 98.5]  # ... except here
    qty = np.full(n, 0.4)
    b = broker()
    b.submit(order(qty="1", limit="99", ts=0), 0)
    b.submit(order("mkt", qty="1", ts=20), 0)
    calls: list[int] = []
    match = b._match

    def counting(*args: Any) -> list[Order | Fill]:
        calls.append(args[2])
        return match(*args)

    monkeypatch.setattr(b, "_match", counting)
    events = b.on_trades(KEY, ts, price, qty)
    assert calls == [0, 10, 20, 500_000, 900_000]  # row 0: the limit's first trade; it rests
    assert [(f.client_order_id, f.ts_event, f.qty) for f in fills(events)] == [
        ("o1", 10, D("0.4")),
        ("mkt", 20, D(1)),
        ("o1", 500_000, D("0.4")),
        ("o1", 900_000, D("0.2")),
    ]


order_specs = st.lists(
    st.tuples(
        st.sampled_from(["buy", "sell"]),
        st.integers(1, 3000).map(lambda n: D(n).scaleb(-3)),  # qty on the 0.001 step
        st.one_of(st.none(), st.integers(9_500, 10_500).map(lambda n: D(n).scaleb(-2))),  # limit or market
        st.integers(0, 40),  # decision time
    ),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(
    order_specs,
    st.lists(
        st.tuples(st.integers(0, 50), st.integers(9_400, 10_600), st.floats(0.0001, 2.0)),
        max_size=60,
    ),
    st.sampled_from([D(0), D(5)]),
)
def test_on_trades_equals_on_trade_row_by_row(
    specs: list[tuple[OrderSide, Decimal, Decimal | None, int]],
    rows: list[tuple[int, int, float]],
    slippage: Decimal,
) -> None:
    b = broker(slippage_bps=slippage, fee_maker=D("0.0002"))
    for i, (side, size, limit, decided) in enumerate(specs):
        limit_text = None if limit is None else str(limit)
        b.submit(order(f"o{i}", side=side, qty=str(size), limit=limit_text, ts=decided), 0)
    one_by_one = copy.deepcopy(b)
    ts = np.array([r[0] for r in rows], dtype=np.int64)  # out of order too: the result must not care
    price = np.array([r[1] / 100 for r in rows], dtype=np.float64)
    qty = np.array([r[2] for r in rows], dtype=np.float64)
    expected: list[Order | Fill] = []
    for t, p, q in zip(ts.tolist(), price.tolist(), qty.tolist(), strict=True):
        expected += one_by_one.on_trade(KEY, t, p, q)
    assert b.on_trades(KEY, ts, price, qty) == expected
    assert b == one_by_one


def test_a_market_order_below_the_minimum_notional_at_its_fill_price_is_rejected_unfilled() -> None:
    """Issue 12: the exchange checks a market order's notional at the price it would fill at."""
    rules = Market(
        "binance", "BTC/USDT", "BTC", "USDT", tick_size=D("0.01"), step_size=D("0.001"), min_notional=D(5)
    )
    b = PaperBroker(markets={KEY: rules})
    b.submit(order("small", qty="0.05"), 100)  # decided when 0.05 × 120 = 6 passed the minimum
    b.submit(order("enough", qty="0.06"), 100)
    events = b.on_trade(KEY, 101, 99.99, 1.0)  # the market fell: 4.9995 and 5.9994
    assert [(f.client_order_id, f.price) for f in fills(events)] == [("enough", D("99.99"))]
    (rejected,) = [e for e in events if isinstance(e, Order) and e.status == "rejected"]
    assert (rejected.client_order_id, rejected.filled_qty, rejected.ts_event) == ("small", D(0), 101)
    assert rejected.reason == "rejected: notional 4.9995 at 99.99 below the minimum 5"
    assert b.open_orders() == []
