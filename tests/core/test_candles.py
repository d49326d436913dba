"""Candles from trades: hand-worked cases, the late-trade policy, pandas on real trades, batch parity."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mambo.connectors.replay import DEMO_TRADES, load_trades
from mambo.core.candles import CandleBuilder

S = 1_000_000_000


def feed(b: CandleBuilder, trades: list[tuple[float, float, float]]) -> list:
    out = []
    for t, p, q in trades:
        out += b.update(int(t * S), p, q)
    return out


def test_hand_worked_one_second_and_one_minute() -> None:
    b = CandleBuilder("x", "A/B", ("1m", "1s"))
    assert b.timeframes == ("1s", "1m")
    out = feed(b, [(0.1, 10, 1), (0.5, 12, 2), (0.9, 9, 1), (1.2, 11, 1), (3.0, 13, 0.5), (60.0, 14, 1)])
    got = [
        (c.timeframe, c.open_time // S, c.ts_event // S, c.open, c.high, c.low, c.close, c.volume, c.trades)
        for c in out
    ]
    assert got == [
        ("1s", 0, 1, 10, 12, 9, 9, 4, 3),
        ("1s", 1, 2, 11, 11, 11, 11, 1, 1),
        ("1s", 3, 4, 13, 13, 13, 13, 0.5, 1),  # no candle for the empty second 2
        ("1m", 0, 60, 10, 13, 9, 13, 5.5, 5),
    ]
    assert all(c.closed for c in out)
    assert [c.timeframe for c in b.open_candles()] == ["1s", "1m"]


def test_late_trade_is_counted_and_changes_nothing() -> None:
    b = CandleBuilder("x", "A/B", ("1s",))
    feed(b, [(0.5, 10, 1), (1.5, 11, 1)])  # the 0s candle closed
    assert feed(b, [(0.7, 99, 1)]) == []
    assert b.late_trades == {"1s": 1}
    (c,) = feed(b, [(2.0, 12, 1)])
    assert (c.open, c.high, c.close, c.volume) == (11, 11, 11, 1)


def test_out_of_order_inside_the_open_candle_is_fine() -> None:
    b = CandleBuilder("x", "A/B", ("1s",))
    (c,) = feed(b, [(0.9, 10, 1), (0.1, 8, 1), (1.0, 1, 1)])
    assert (c.open, c.low, c.close, c.trades) == (10, 8, 8, 2)


def test_watermark_closes_idle_candles() -> None:
    b = CandleBuilder("x", "A/B", ("1s", "1m"))
    feed(b, [(0.5, 10, 1)])
    assert [c.timeframe for c in b.advance(1 * S)] == ["1s"]
    assert [c.timeframe for c in b.advance(60 * S)] == ["1m"]
    assert b.advance(10**6 * S) == []


def test_unknown_timeframe_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown timeframe"):
        CandleBuilder("x", "A/B", ("7x",))


@pytest.fixture(scope="module")
def btc_trades() -> pd.DataFrame:
    batch, dead = load_trades(DEMO_TRADES, {"binance:BTC/USDT"})
    assert not dead and len(batch) > 15_000
    return pd.DataFrame({"ts": batch.ts, "price": batch.price, "qty": batch.qty})


@pytest.mark.parametrize("tf,secs", [("1s", 1), ("1m", 60)])
def test_matches_pandas_on_real_binance_trades(btc_trades: pd.DataFrame, tf: str, secs: int) -> None:
    b = CandleBuilder("binance", "BTC/USDT", (tf,))
    ours = [
        c
        for _, c in b.update_batch(
            btc_trades.ts.to_numpy(), btc_trades.price.to_numpy(), btc_trades.qty.to_numpy()
        )
    ]
    bucket = btc_trades.ts // (secs * S) * (secs * S)
    ref = (
        btc_trades.groupby(bucket, sort=True)
        .agg(
            open=("price", "first"),
            high=("price", "max"),
            low=("price", "min"),
            close=("price", "last"),
            volume=("qty", lambda q: float(np.cumsum(q.to_numpy())[-1])),
            trades=("price", "size"),
        )
        .iloc[:-1]
    )  # the last candle is still open
    assert len(ours) == len(ref) > 5
    got = pd.DataFrame([c.model_dump() for c in ours]).set_index("open_time")
    pd.testing.assert_frame_equal(
        got[["open", "high", "low", "close", "volume", "trades"]],
        ref,
        check_names=False,
        check_index_type=False,
    )


def test_batch_slices_equal_one_at_a_time(btc_trades: pd.DataFrame) -> None:
    ts, p, q = (btc_trades[c].to_numpy() for c in ("ts", "price", "qty"))
    whole = CandleBuilder("binance", "BTC/USDT", ("1s", "1m", "5m"))
    ref = [c for _, c in whole.update_batch(ts, p, q)]
    sliced = CandleBuilder("binance", "BTC/USDT", ("1s", "1m", "5m"))
    got = []
    for start in range(0, len(ts), 997):
        got += [
            c
            for _, c in sliced.update_batch(
                ts[start : start + 997], p[start : start + 997], q[start : start + 997]
            )
        ]
    single = CandleBuilder("binance", "BTC/USDT", ("1s", "1m", "5m"))
    one = [c for i in range(3000) for c in single.update(int(ts[i]), float(p[i]), float(q[i]))]
    assert got == ref
    assert one == [c for c in ref if c.ts_event <= ts[2999]]
    assert sliced == whole
    assert pickle.loads(pickle.dumps(whole)) == whole


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 200), st.floats(1, 100), st.floats(0.001, 5)), min_size=1, max_size=80),
    st.integers(1, 10),
)
def test_any_split_gives_the_same_candles(rows: list[tuple[int, float, float]], cut: int) -> None:
    ts = np.array([r[0] * S // 10 for r in rows], np.int64)
    p = np.array([r[1] for r in rows])
    q = np.array([r[2] for r in rows])
    a, b = CandleBuilder("x", "A/B", ("1s", "1m")), CandleBuilder("x", "A/B", ("1s", "1m"))
    whole = [c for _, c in a.update_batch(ts, p, q)]
    parts = [
        c
        for i in range(0, len(ts), cut)
        for _, c in b.update_batch(ts[i : i + cut], p[i : i + cut], q[i : i + cut])
    ]
    assert whole == parts and a == b


def test_a_trade_after_the_watermark_closed_its_bar_is_late() -> None:
    """Issue 12 #7: a trade for a bar the watermark closed opened a second candle with the same
    event_id (O=C=90, V=5) that replaced the real one downstream."""
    b = CandleBuilder("x", "A/B", ("1s",))
    feed(b, [(0.5, 100, 1)])
    (closed,) = b.advance(1 * S)
    assert (closed.open_time, closed.open, closed.volume) == (0, 100, 1)
    assert feed(b, [(0.7, 90, 5)]) == []
    assert b.late_trades == {"1s": 1}
    later = feed(b, [(2.0, 101, 1)]) + b.advance(10 * S)
    assert [(c.open_time // S, c.open, c.volume) for c in later] == [(2, 101, 1)]
    assert closed.event_id not in {c.event_id for c in later}


def test_the_watermark_closes_empty_bars_too() -> None:
    """Bars that had no trade before the watermark passed them are closed (a gap): a trade for one is
    late, a trade for the bar holding the watermark is not."""
    b = CandleBuilder("x", "A/B", ("1s", "1m"))
    feed(b, [(0.5, 10, 1)])
    assert [c.timeframe for c in b.advance(5 * S + S // 2)] == ["1s"]
    assert feed(b, [(3.2, 11, 1)]) == []  # 1s bar 3 ended before the watermark; the 1m bar is open
    assert b.late_trades == {"1s": 1, "1m": 0}
    out = feed(b, [(5.7, 12, 1), (6.0, 13, 1)])
    assert [(c.timeframe, c.open_time // S, c.open) for c in out] == [("1s", 5, 12)]
    second, minute = b.advance(60 * S)
    assert (second.open_time // S, minute.timeframe) == (6, "1m")
    assert (minute.open, minute.close, minute.volume, minute.trades) == (10, 13, 4, 4)


def test_closed_bars_survive_the_changelog() -> None:
    """The builder's state is pickled into the workers' changelogs: the closed bars come back with it,
    and state pickled before they were kept (no ``_closed_until``) still restores."""
    b = CandleBuilder("x", "A/B", ("1s",))
    feed(b, [(0.5, 100, 1)])
    b.advance(1 * S)
    restored = pickle.loads(pickle.dumps(b))
    assert restored == b
    assert feed(restored, [(0.7, 90, 5)]) == [] and restored.late_trades == {"1s": 1}

    old = CandleBuilder("x", "A/B", ("1s",))
    feed(old, [(0.5, 100, 1), (1.5, 101, 1)])
    state = dict(old.__dict__)
    del state["_closed_until"]
    migrated = CandleBuilder.__new__(CandleBuilder)
    migrated.__setstate__(state)
    assert migrated == old
    assert feed(migrated, [(0.7, 90, 5)]) == [] and migrated.late_trades == {"1s": 1}


# a stream of trades (second in tenths, price, qty) and watermarks (None, second in tenths)
_trades = st.tuples(st.integers(0, 1500), st.floats(1, 100), st.floats(0.001, 5))
_marks = st.tuples(st.none(), st.integers(0, 1500))


def _reference(
    steps: list[tuple[int | None, ...]], timeframes: tuple[str, ...]
) -> tuple[set[tuple[str, int, tuple[float, ...], int]], dict[str, int]]:
    """The policy written as a group-by: a trade is late when a bar at or after its own has taken a
    trade, or a watermark has passed its bar's end; every other trade is in its bar's candle."""
    tf_ns = {"1s": S, "1m": 60 * S}
    candles, late = set(), {}
    for tf in timeframes:
        n, taken, closed_before = tf_ns[tf], {}, -1
        late[tf] = 0
        for step in steps:
            if step[0] is None:
                closed_before = max(closed_before, (step[1] * S // 10) // n * n)  # type: ignore[operator]
                continue
            t = step[0] * S // 10  # type: ignore[operator]
            bar = t // n * n
            if bar < closed_before:
                late[tf] += 1
                continue
            closed_before = bar
            taken.setdefault(bar, []).append(step[1:])
        for bar, rows in taken.items():
            prices = [p for p, _ in rows]
            volume = float(np.cumsum([q for _, q in rows])[-1])
            ohlcv = (prices[0], max(prices), min(prices), prices[-1], volume)
            candles.add((tf, bar, ohlcv, len(rows)))
    return candles, late


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(_trades, _marks), max_size=60), st.integers(1, 7))
def test_trades_and_watermarks_give_each_bar_once(steps: list[tuple[int | None, ...]], cut: int) -> None:
    """Random trades interleaved with random watermarks: no two candles share an event_id, each
    (market, timeframe, open time) comes once, the candles are the policy's group-by, and the batch
    path (trades between watermarks in slices of ``cut``) equals one trade at a time, bit for bit."""
    timeframes = ("1s", "1m")
    single, batch = CandleBuilder("x", "A/B", timeframes), CandleBuilder("x", "A/B", timeframes)
    one: list = []
    many: list = []
    pending: list[tuple[int, float, float]] = []

    def run_pending() -> None:
        for i in range(0, len(pending), cut):
            part = pending[i : i + cut]
            ts = np.array([r[0] for r in part], np.int64)
            many.extend(
                c
                for _, c in batch.update_batch(
                    ts, np.array([r[1] for r in part]), np.array([r[2] for r in part])
                )
            )
        pending.clear()

    for step in [*steps, (None, 10**6)]:  # the last watermark closes every bar
        if step[0] is None:
            run_pending()
            mark = step[1] * S // 10  # type: ignore[operator]
            one += single.advance(mark)
            many += batch.advance(mark)
        else:
            t, p, q = step[0] * S // 10, float(step[1]), float(step[2])  # type: ignore[operator,arg-type]
            one += single.update(t, p, q)
            pending.append((t, p, q))
    assert one == many and single == batch
    assert len({c.event_id for c in one}) == len(one)
    assert len({(c.symbol, c.timeframe, c.open_time) for c in one}) == len(one)
    expected, late = _reference(steps, timeframes)
    got = {(c.timeframe, c.open_time, (c.open, c.high, c.low, c.close, c.volume), c.trades) for c in one}
    assert got == expected and single.late_trades == late
