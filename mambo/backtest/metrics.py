"""What a backtest is judged by: :func:`compute_metrics` over a :class:`BacktestResult`, with buy-and-hold
of the same market beside it, and :func:`round_trips`, the closed trades the trade statistics count.

Conventions: returns are per bar of the equity at each close; annualizing uses 365 days a year
(crypto trades every day); the risk-free rate is 0. Sharpe is mean / standard deviation (ddof 1) of
bar returns × √(bars per year); Sortino divides by the downside deviation √mean(min(r, 0)²); Calmar is
the annualized return over the maximum drawdown. The maximum drawdown's duration is the longest time
equity spent below a previous peak (peak to recovery, or to the end). A round trip runs from a fill
that opens a position from flat to the fill that makes it flat again; its PnL is the realized PnL of
its fills less all their fees. Money (fees, PnL, equity) is exact: Decimal, written as a string.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

from mambo.backtest.engine import BacktestResult
from mambo.schemas.events import Fill, timeframe_ns

__all__ = ["CURVE_METRICS", "RoundTrip", "compute_metrics", "curve_metrics", "round_trips"]

_YEAR_NS = 365 * 86400 * 10**9


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


def curve_metrics(
    equity: npt.NDArray[np.float64], ts: npt.NDArray[np.int64], timeframe: str
) -> dict[str, float]:
    """Return and risk figures of an equity curve sampled once per bar (``ts``: each bar's time)."""
    n = len(equity)
    if n < 2 or not equity[0] > 0:
        return dict.fromkeys(CURVE_METRICS, 0.0)
    bars_per_year = _YEAR_NS / timeframe_ns(timeframe)
    returns = np.diff(equity) / equity[:-1]
    total = float(equity[-1] / equity[0] - 1.0)
    years = (n - 1) / bars_per_year
    annualized = (1.0 + total) ** (1.0 / years) - 1.0 if total > -1.0 else -1.0
    std = float(returns.std(ddof=1)) if len(returns) > 1 else 0.0
    mean = float(returns.mean())
    downside = math.sqrt(float(np.mean(np.minimum(returns, 0.0) ** 2)))
    max_dd, underwater = _drawdowns(equity, ts)
    return {
        "total_return": total,
        "annualized_return": annualized,
        "volatility": std * math.sqrt(bars_per_year),
        "sharpe": mean / std * math.sqrt(bars_per_year) if std > 0 else 0.0,
        "sortino": mean / downside * math.sqrt(bars_per_year) if downside > 0 else 0.0,
        "calmar": annualized / max_dd if max_dd > 0 else 0.0,
        "max_drawdown": max_dd,
        "max_drawdown_days": underwater / 86400e9,
    }


@njit(cache=True)
def _drawdowns(equity: npt.NDArray[np.float64], ts: npt.NDArray[np.int64]) -> tuple[float, int]:
    """The maximum drawdown ``1 - equity / peak`` and the longest time (ns) from a peak until equity
    is back at it (or the end of the data), in one pass (equity[0] > 0)."""
    peak, max_dd, at_peak, longest = equity[0], 0.0, 0, 0
    for i in range(len(equity)):
        peak = max(peak, equity[i])
        drawdown = 1.0 - equity[i] / peak
        max_dd = max(max_dd, drawdown)
        if drawdown == 0.0:  # at a peak: the stretch under water since the previous one ends here
            longest = max(longest, ts[i] - ts[at_peak])
            at_peak = i
    return max_dd, max(longest, ts[len(ts) - 1] - ts[at_peak])


def compute_metrics(result: BacktestResult) -> dict[str, Any]:
    """Every figure of a backtest, the strategy's and buy-and-hold's (see the module docstring)."""
    frame, equity = result.frame, result.equity
    ts = frame.ts_event
    strategy: dict[str, Any] = dict(curve_metrics(equity, ts, frame.timeframe))
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
    # buy and hold: all in at the first bar's open, marked at every close, no fees
    hold = frame.close / frame.open[0] if len(frame) else frame.close
    buy_hold = curve_metrics(
        np.concatenate([[1.0], hold]), np.concatenate([[ts[0] - 1], ts]), frame.timeframe
    )
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
