"""Backtest metrics against hand-worked figures."""

from __future__ import annotations

import math
import statistics
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
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
    m = curve_metrics(equity, ts, "1d")
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
    """The one-pass kernel gives what the whole-array formulas give, bit for bit (plateaus included)."""
    equity = np.cumprod(np.round(steps, 1) if flat else steps) * 100.0
    ts = np.cumsum(np.arange(1, len(equity) + 1, dtype=np.int64)) * DAY  # uneven gaps
    peak = np.maximum.accumulate(equity)
    drawdown = 1.0 - equity / peak
    at_peak = np.flatnonzero(drawdown == 0.0)
    spans = ts[np.append(at_peak[1:], len(ts) - 1)] - ts[at_peak]
    m = curve_metrics(equity, ts, "1d") if len(equity) > 1 else None
    max_dd, underwater = _drawdowns(equity, ts)
    assert (max_dd, underwater) == (float(drawdown.max()), int(spans.max()))
    if m is not None:
        assert (m["max_drawdown"], m["max_drawdown_days"]) == (max_dd, underwater / 86400e9)


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
