"""Backtest metrics against hand-worked figures."""

from __future__ import annotations

import math
import statistics
import sys
from decimal import Decimal, localcontext
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mambo.backtest.data import load_candles
from mambo.backtest.engine import run_vectorized
from mambo.backtest.metrics import _drawdowns, compute_metrics, curve_metrics, round_trips
from mambo.core.stages import EngineConfig
from mambo.schemas.events import Fill

DAY = 86_400 * 10**9
FIXTURE = Path(__file__).parents[1] / "fixtures" / "btc_perp_1m_5000.csv"


def test_curve_metrics_of_a_hand_worked_curve() -> None:
    equity = np.array([100.0, 110.0, 99.0, 121.0, 115.0])
    ts = np.arange(5, dtype=np.int64) * DAY
    m = curve_metrics(equity, ts)
    r = [0.1, -0.1, 121 / 99 - 1, 115 / 121 - 1]
    assert m["total_return"] == pytest.approx(0.15, rel=1e-12)
    assert m["annualized_return"] == pytest.approx(1.15 ** (365 / 4) - 1, rel=1e-12)
    assert m["volatility"] == pytest.approx(statistics.stdev(r) * math.sqrt(365), rel=1e-12)
    assert m["sharpe"] == pytest.approx(statistics.mean(r) / statistics.stdev(r) * math.sqrt(365), rel=1e-12)
    downside = math.sqrt((0.1**2 + (115 / 121 - 1) ** 2) / 4)
    assert m["sortino"] == pytest.approx(statistics.mean(r) / downside * math.sqrt(365), rel=1e-12)
    assert m["max_drawdown"] == pytest.approx(0.1, rel=1e-12)  # 110 -> 99
    assert m["calmar"] == pytest.approx(m["annualized_return"] / 0.1, rel=1e-12)
    # under water from day 1 (peak 110) to day 3 (121, a new peak), and again from day 3 to the end
    assert m["max_drawdown_days"] == pytest.approx(2.0)


@given(st.lists(st.floats(0.5, 2.0), min_size=1, max_size=60), st.booleans())
def test_drawdown_figures_are_numpys_whole_array_formulas(steps: list[float], flat: bool) -> None:
    """The one-pass kernel gives what the whole-array formulas give, bit for bit (plateaus included):
    a stretch under water runs from the last sample at its peak to the next at a peak, or the end."""
    equity = np.cumprod(np.round(steps, 1) if flat else steps) * 100.0
    ts = np.cumsum(np.arange(1, len(equity) + 1, dtype=np.int64)) * DAY  # uneven gaps
    peak = np.maximum.accumulate(equity)
    drawdown = 1.0 - equity / peak
    at_peak = np.flatnonzero(drawdown == 0.0)
    under = np.flatnonzero(drawdown > 0.0)
    since = at_peak[np.searchsorted(at_peak, under) - 1]  # each under-water sample's peak
    back = np.append(at_peak, len(ts) - 1)[np.searchsorted(at_peak, under)]  # and its recovery
    underwater_ns = int((ts[back] - ts[since]).max()) if len(under) else 0
    m = curve_metrics(equity, ts) if len(equity) > 1 else None
    assert _drawdowns(equity, ts) == (float(drawdown.max()), underwater_ns)
    if m is not None:
        assert (m["max_drawdown"], m["max_drawdown_days"]) == (drawdown.max(), underwater_ns / DAY)


def test_a_gapped_year_annualizes_over_the_year() -> None:
    """Issue 12 #6: 100 to 110 over 365 days on 3 daily bars (candles skip intervals without trades)
    reported an annualized return of 35,823,253; it is 10%. Sharpe and volatility scale by the 2
    samples the year holds."""
    equity = np.array([100.0, 104.0, 110.0])
    ts = np.array([0, 1, 365], np.int64) * DAY
    m = curve_metrics(equity, ts)
    r = [0.04, 110 / 104 - 1]
    assert m["annualized_return"] == pytest.approx(0.10, rel=1e-12)
    assert m["volatility"] == pytest.approx(statistics.stdev(r) * math.sqrt(2), rel=1e-12)
    assert m["sharpe"] == pytest.approx(statistics.mean(r) / statistics.stdev(r) * math.sqrt(2), rel=1e-12)
    assert m["calmar"] == 0.0 and m["max_drawdown"] == 0.0
    # two years, a gap in the middle, a drawdown: 1.21 over 730 days is 10% a year
    m = curve_metrics(np.array([100.0, 80.0, 121.0]), np.array([0, 400, 730], np.int64) * DAY)
    assert m["annualized_return"] == pytest.approx(0.10, rel=1e-12)
    assert m["calmar"] == pytest.approx(0.10 / 0.2, rel=1e-12)
    assert m["max_drawdown_days"] == 730.0


def test_a_curve_never_under_water_has_no_drawdown_time() -> None:
    """Issue 12 #6: a rising curve reported one day of drawdown (the time between two peaks)."""
    m = curve_metrics(np.array([100.0, 101.0, 101.0, 102.0]), np.arange(4, dtype=np.int64) * DAY)
    assert (m["max_drawdown"], m["max_drawdown_days"]) == (0.0, 0.0)


def test_short_curves_do_not_annualize_and_never_overflow() -> None:
    """Issue 12 #6: 600 one-second bars gaining 2% raised OverflowError ((1.02) ** 52,650). Under a
    day the annualized return and Calmar are NaN (not meaningful); the rest stays finite. A growth
    too large for a float is inf: 7x in a day is e**710 a year."""
    equity = 100.0 * np.linspace(1.0, 1.02, 600) * (1 + 0.001 * np.sin(np.arange(600)))
    m = curve_metrics(equity, np.arange(600, dtype=np.int64) * 10**9)
    assert math.isnan(m["annualized_return"]) and math.isnan(m["calmar"])
    finite = {k: v for k, v in m.items() if k not in ("annualized_return", "calmar")}
    assert all(math.isfinite(v) for v in finite.values()), finite
    assert m["total_return"] == pytest.approx(equity[-1] / 100 - 1, rel=1e-12)
    # 599 samples in 599 s: 31,536,000 samples a year
    r = np.diff(equity) / equity[:-1]
    assert m["volatility"] == pytest.approx(statistics.stdev(r.tolist()) * math.sqrt(365 * 86400), rel=1e-9)
    assert (
        curve_metrics(np.array([1.0, 7.0]), np.array([0, DAY]))["annualized_return"] == math.inf
    )  # e**710.3
    just = curve_metrics(np.array([1.0, 6.9]), np.array([0, DAY]))["annualized_return"]  # e**705.0
    assert math.isfinite(just) and just == pytest.approx(float(Decimal("6.9") ** 365 - 1), rel=1e-9)


def _annualized_reference(start: float, end: float, elapsed_ns: int) -> Decimal:
    """(end / start) ** (year / elapsed) - 1 in 50-digit decimals (no float range to leave)."""
    with localcontext() as ctx:
        ctx.prec, ctx.Emax = 50, 10**9
        growth = Decimal(end) / Decimal(start)
        return (growth.ln() * Decimal(365 * DAY) / Decimal(elapsed_ns)).exp() - 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.2, 5.0), st.integers(1, 3 * DAY // 10**9)),  # a step and the gap (s) before it
        min_size=1,
        max_size=80,
    ),
)
def test_any_gapped_curve_has_defined_consistent_figures(steps: list[tuple[float, int]]) -> None:
    """Random curves on random gaps (a second to three days between samples): every figure is a
    number (NaN only where annualizing is not meaningful, inf only where a float cannot hold it), and
    the annualized return is (end / start) ** (year / elapsed) - 1."""
    equity = 100.0 * np.cumprod([1.0] + [g for g, _ in steps])
    ts = np.cumsum([0] + [s for _, s in steps]).astype(np.int64) * 10**9
    elapsed = int(ts[-1] - ts[0])
    m = curve_metrics(equity, ts)
    per_year = math.sqrt(len(steps) * 365 * DAY / elapsed)
    r = (np.diff(equity) / equity[:-1]).tolist()
    for name in ("total_return", "volatility", "sharpe", "sortino", "max_drawdown", "max_drawdown_days"):
        assert math.isfinite(m[name]), name
    if len(r) > 1:
        assert m["volatility"] == pytest.approx(statistics.stdev(r) * per_year, rel=1e-9)
    assert (m["max_drawdown"] > 0) == (m["max_drawdown_days"] > 0)
    if elapsed < DAY:
        assert math.isnan(m["annualized_return"]) and math.isnan(m["calmar"])
        return
    ref = _annualized_reference(equity[0], equity[-1], elapsed)
    if ref > Decimal(sys.float_info.max):
        assert m["annualized_return"] == math.inf
    else:
        assert m["annualized_return"] == pytest.approx(float(ref), rel=1e-9, abs=1e-12)
    assert not math.isnan(m["calmar"])


def fill(side: str, ts: int, price: str, qty: str, fee: str, realized: str) -> Fill:
    return Fill(
        event_id=f"f{ts}",
        ts_event=ts,
        ts_init=ts,
        exchange="binance",
        symbol="BTC/USDT",
        fill_id=f"f{ts}",
        client_order_id=f"o{ts}",
        strategy="sma_cross",
        side=side,  # type: ignore[arg-type]
        price=Decimal(price),
        qty=Decimal(qty),
        fee=Decimal(fee),
        fee_currency="USDT",
        liquidity="taker",
        realized_pnl=Decimal(realized),
    )


def test_round_trips_run_from_flat_to_flat_and_count_fees() -> None:
    fills = [
        fill("buy", 1, "100", "2", "0.2", "0"),
        fill("sell", 2, "110", "1", "0.11", "10"),  # partly closed: still one round trip
        fill("sell", 3, "90", "1", "0.09", "-10"),
        fill("sell", 4, "95", "1", "0.095", "0"),  # a short
        fill("buy", 5, "85", "1", "0.085", "10"),
        fill("buy", 6, "80", "1", "0.08", "0"),  # still open: not counted
    ]
    trips = round_trips(fills)
    assert [(t.entry_ts, t.exit_ts, t.side) for t in trips] == [(1, 3, "long"), (4, 5, "short")]
    assert [t.pnl for t in trips] == [Decimal("-0.40"), Decimal("9.820")]


def test_compute_metrics_on_a_real_run_adds_up() -> None:
    frame = load_candles(FIXTURE)
    result = run_vectorized(frame, EngineConfig(strategies=("sma_cross",)))
    m = compute_metrics(result)
    s, hold = m["strategy"], m["buy_and_hold"]
    assert s["trades"] == len(result.fills) > 0
    assert Decimal(s["fees"]) == sum(f.fee for f in result.fills)
    assert Decimal(s["final_equity"]) == result.final_equity
    # exact final equity: initial cash + realized PnL - fees when flat at the end, else + the open PnL
    assert s["total_return"] == pytest.approx(float(result.final_equity) / 100_000 - 1, rel=1e-12)
    assert 0 < s["exposure"] < 1 and 0 <= s["win_rate"] <= 1
    assert hold["total_return"] == pytest.approx(frame.close[-1] / frame.open[0] - 1, rel=1e-12)
    assert m["mode"] == "vectorized" and m["bars"] == len(frame)
