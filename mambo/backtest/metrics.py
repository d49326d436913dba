"""What a backtest is judged by: :func:`compute_metrics` over a :class:`BacktestResult`, with buy-and-hold
of the same market beside it, and :func:`round_trips`, the closed trades the trade statistics count.

Conventions: returns are per sample of the equity curve (each bar's close); the risk-free rate is 0;
a year is 365 days (crypto trades every day). Everything is annualized from the time the curve spans,
never from its bar count: candles skip intervals without trades, so bars are not evenly spaced.

* The annualized return is ``(end / start) ** (year / elapsed) - 1``, worked in logarithms so that it
  never overflows: a growth too large for a float is ``inf``. Under :data:`MIN_ANNUALIZED_SPAN` (one
  day) it is NaN, shown as ``nan`` and written as null: raising ten minutes of noise to the power
  52,560 says nothing a trader can use (2% in ten minutes "annualizes" to 10^452). The total return
  is the figure to read then. Calmar, the annualized return over the maximum drawdown, follows it.
* Volatility, Sharpe and Sortino scale per-sample figures by √(samples per year), where samples per
  year is the curve's sample count over the years it spans (the average sampling frequency; for bars
  without gaps, bars per year). Sharpe is mean / standard deviation (ddof 1) of the returns; Sortino
  divides the mean by the downside deviation √mean(min(r, 0)²). These scale as the square root of
  time, so they stay finite on a short curve (a noisy estimate, not a meaningless one).
* The maximum drawdown's duration is the longest time equity spent below a previous peak, from the
  last sample at the peak to the first back at it (or to the end): zero for a curve never under water.

A round trip runs from a fill that opens a position from flat to the fill that makes it flat again;
its PnL is the realized PnL of its fills less all their fees. Money (fees, PnL, equity) is exact:
Decimal, written as a string.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

from mambo.backtest.engine import BacktestResult
from mambo.schemas.events import Fill

__all__ = [
    "CURVE_METRICS",
    "MIN_ANNUALIZED_SPAN",
    "RoundTrip",
    "annualized_return",
    "compute_metrics",
    "curve_metrics",
    "round_trips",
]

_DAY_NS = 86400 * 10**9
_YEAR_NS = 365 * _DAY_NS
#: The shortest span (ns) whose return is annualized (see the module docstring).
MIN_ANNUALIZED_SPAN = _DAY_NS
#: The largest x with a finite e**x.
_MAX_EXPONENT = math.log(sys.float_info.max)


@dataclass(frozen=True)
class RoundTrip:
    """One closed trade: from a flat position back to flat."""

    entry_ts: int
    exit_ts: int
    side: str  # "long" or "short"
    pnl: Decimal  # realized PnL less fees


def round_trips(fills: list[Fill]) -> list[RoundTrip]:
    """The closed round trips in a sequence of one market's fills (booked, with realized PnL)."""
    out: list[RoundTrip] = []
    qty, pnl, entry, side = Decimal(0), Decimal(0), 0, "long"
    for f in fills:
        if not qty:
            entry, pnl, side = f.ts_event, Decimal(0), "long" if f.side == "buy" else "short"
        qty += f.qty if f.side == "buy" else -f.qty
        pnl += f.realized_pnl - f.fee
        if not qty:
            out.append(RoundTrip(entry, f.ts_event, side, pnl))
    return out


#: The figures :func:`curve_metrics` returns.
CURVE_METRICS: tuple[str, ...] = (
    "total_return",
    "annualized_return",
    "volatility",
    "sharpe",
    "sortino",
    "calmar",
    "max_drawdown",
    "max_drawdown_days",
)


def annualized_return(growth: float, elapsed_ns: int) -> float:
    """The yearly rate that compounds to ``growth`` (end / start) over ``elapsed_ns``: NaN under
    :data:`MIN_ANNUALIZED_SPAN`, ``inf`` beyond a float, -1 when everything was lost."""
    if elapsed_ns < MIN_ANNUALIZED_SPAN:
        return math.nan
    if growth <= 0.0:
        return -1.0
    exponent = math.log(growth) * (_YEAR_NS / elapsed_ns)
    return math.expm1(exponent) if exponent <= _MAX_EXPONENT else math.inf


def curve_metrics(equity: npt.NDArray[np.float64], ts: npt.NDArray[np.int64]) -> dict[str, float]:
    """Return and risk figures of an equity curve sampled at the increasing times ``ts`` (ns)."""
    n = len(equity)
    if n < 2 or not equity[0] > 0:
        return dict.fromkeys(CURVE_METRICS, 0.0)
    elapsed = int(ts[-1] - ts[0])
    per_year = math.sqrt((n - 1) * _YEAR_NS / elapsed) if elapsed > 0 else math.nan
    returns = np.diff(equity) / equity[:-1]
    growth = float(equity[-1] / equity[0])
    annualized = annualized_return(growth, elapsed)
    std = float(returns.std(ddof=1)) if len(returns) > 1 else 0.0
    mean = float(returns.mean())
    downside = math.sqrt(float(np.mean(np.minimum(returns, 0.0) ** 2)))
    max_dd, underwater = _drawdowns(equity, ts)
    calmar = annualized / max_dd if max_dd > 0 else math.nan if math.isnan(annualized) else 0.0
    return {
        "total_return": growth - 1.0,
        "annualized_return": annualized,
        "volatility": std * per_year,
        "sharpe": mean / std * per_year if std > 0 else 0.0,
        "sortino": mean / downside * per_year if downside > 0 else 0.0,
        "calmar": calmar,
        "max_drawdown": max_dd,
        "max_drawdown_days": underwater / _DAY_NS,
    }


@njit(cache=True)
def _drawdowns(equity: npt.NDArray[np.float64], ts: npt.NDArray[np.int64]) -> tuple[float, int]:
    """The maximum drawdown ``1 - equity / peak`` and the longest time (ns) from the last sample at a
    peak until equity is back at it (or the end of the data), in one pass (equity[0] > 0)."""
    peak, max_dd, at_peak, longest = equity[0], 0.0, 0, 0
    for i in range(len(equity)):
        peak = max(peak, equity[i])
        drawdown = 1.0 - equity[i] / peak
        max_dd = max(max_dd, drawdown)
        if drawdown == 0.0:
            if i > at_peak + 1:  # the samples since the previous peak were under water
                longest = max(longest, ts[i] - ts[at_peak])
            at_peak = i
    if at_peak < len(ts) - 1:  # under water at the end
        longest = max(longest, ts[len(ts) - 1] - ts[at_peak])
    return max_dd, longest


def compute_metrics(result: BacktestResult) -> dict[str, Any]:
    """Every figure of a backtest, the strategy's and buy-and-hold's (see the module docstring)."""
    frame, equity = result.frame, result.equity
    ts = frame.ts_event
    strategy: dict[str, Any] = dict(curve_metrics(equity, ts))
    trips = round_trips(result.fills)
    wins = [t.pnl for t in trips if t.pnl > 0]
    losses = [t.pnl for t in trips if t.pnl <= 0]
    gross_win, gross_loss = sum(wins, Decimal(0)), -sum(losses, Decimal(0))
    fees = sum((f.fee for f in result.fills), Decimal(0))
    bars = len(frame)
    strategy.update(
        {
            "trades": len(result.fills),
            "round_trips": len(trips),
            "win_rate": len(wins) / len(trips) if trips else 0.0,
            "profit_factor": float(gross_win / gross_loss) if gross_loss else (math.inf if wins else 0.0),
            "expectancy": float(sum((t.pnl for t in trips), Decimal(0)) / len(trips)) if trips else 0.0,
            "exposure": result.ledger.held_bars(bars) / bars if bars else 0.0,
            "fees": str(fees),
            "initial_equity": str(result.ledger.initial_cash),
            "final_equity": str(result.final_equity),
        }
    )
    # buy and hold: all in at the first bar's open (its open time), marked at every close, no fees
    hold = frame.close / frame.open[0] if len(frame) else frame.close
    start = frame.open_time[:1] if len(frame) else ts[:1]
    buy_hold = curve_metrics(np.concatenate([[1.0], hold]), np.concatenate([start, ts]))
    return {
        "market": frame.key,
        "timeframe": frame.timeframe,
        "bars": len(frame),
        "start": int(frame.open_time[0]) if len(frame) else 0,
        "end": int(ts[-1]) if len(frame) else 0,
        "mode": result.mode,
        "fallback": result.fallback,
        "strategy": strategy,
        "buy_and_hold": buy_hold,
    }
