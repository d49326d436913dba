"""A portfolio backtest: several markets' candle histories traded by one account, as freqtrade backtests
many pairs with one wallet.

:func:`run_portfolio` hands every market's candles to one :class:`~mambo.streams.embedded.EmbeddedRuntime`
(the event path of :mod:`mambo.backtest.engine`, the live pipeline's operators with
``fill_on="candles"``), so the account's rules bind across markets: sizing reads the equity of the whole
account, and ``max_open_positions``, ``max_total_exposure``, the drawdown kill switch and the order rate
limit count every market. The order is event time: candles by close time, and candles that close
together by market key. So the result depends on the histories alone, never on the order of the files.

All frames share one timeframe (a daily history and a minute history cannot interleave by bar). Equity
is read after each close time, when every market closing then has been handed over; the vectorized
path is single-market, so this always runs the event path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt

from mambo.backtest.data import CandleFrame
from mambo.backtest.engine import Progress, Recorder, backtest_config, frame_markets, progress_every
from mambo.backtest.metrics import curve_metrics, round_trips
from mambo.core.market import Market
from mambo.core.stages import EngineConfig
from mambo.schemas.events import AggregatedSignal, Fill, RiskRejection
from mambo.streams.embedded import EmbeddedRuntime

__all__ = ["PortfolioResult", "portfolio_metrics", "run_portfolio"]


@dataclass
class PortfolioResult:
    """What a portfolio backtest produced: every market's fills, signals and rejections, and the
    account's exact equity after each close time (``times``, ns)."""

    frames: dict[str, CandleFrame]  # by market key
    config: EngineConfig
    fills: list[Fill]
    signals: list[AggregatedSignal]
    rejections: list[RiskRejection]
    times: npt.NDArray[np.int64]
    equity: list[Decimal]

    @property
    def final_equity(self) -> Decimal:
        return self.equity[-1] if self.equity else self.config.initial_cash


def run_portfolio(
    frames: Sequence[CandleFrame],
    config: EngineConfig,
    markets: Mapping[str, Market] | None = None,
    progress: Progress | None = None,
) -> PortfolioResult:
    """Backtest ``config`` over several markets with one account (see the module docstring).

    ``markets``: rules by market key; a market without any trades on the tick its prices sit on."""
    if not frames:
        raise ValueError("a portfolio backtest needs at least one market's candles")
    keys = [f.key for f in frames]
    if len(set(keys)) != len(keys):
        twice = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"each market once: {', '.join(twice)} given more than once")
    timeframes = {f.timeframe for f in frames}
    if len(timeframes) != 1:
        raise ValueError(f"the markets must share one timeframe, got {', '.join(sorted(timeframes))}")
    config = backtest_config(config, frames[0].timeframe)
    rules: dict[str, Market] = {}
    for f in frames:
        given = (markets or {}).get(f.key)
        rules.update(frame_markets(f, given))
    runtime = EmbeddedRuntime(config, rules, metrics=False)  # a backtest exports no live metrics
    rec = Recorder()
    runtime.observe(rec)
    # every candle as (close time, market key, index): the event-time order of the module docstring
    order = sorted(
        (int(t), f.key, i, n) for n, f in enumerate(frames) for i, t in enumerate(f.ts_event.tolist())
    )
    portfolio = runtime.portfolio
    times: list[int] = []
    equity: list[Decimal] = []
    total, every = len(order), progress_every(len(order))
    for done, (t, _, i, n) in enumerate(order, start=1):
        runtime.ingest_candles([frames[n].candle(i)])
        if done == total or order[done][0] != t:  # the last market closing at t: the account at t
            runtime.close_candles(t)  # every market is as far as t (one may have no bar at t)
            times.append(t)
            equity.append(portfolio.equity)
        if progress is not None and done % every == 0:
            progress(done, total)
    if progress is not None:
        progress(total, total)
    return PortfolioResult(
        {f.key: f for f in frames},
        config,
        rec.fills,
        rec.signals,
        rec.rejections,
        np.array(times, dtype=np.int64),
        equity,
    )


def portfolio_metrics(result: PortfolioResult) -> dict[str, Any]:
    """The account's curve metrics (return, drawdown, Sharpe... over the close times) and, per market,
    its trades, round trips, win rate, realized PnL and fees."""
    curve = np.array([float(result.config.initial_cash), *map(float, result.equity)])
    start = min(int(f.open_time[0]) for f in result.frames.values() if len(f))
    account: dict[str, Any] = curve_metrics(curve, np.concatenate([[start], result.times]))
    account.update(
        {
            "trades": len(result.fills),
            "rejections": len(result.rejections),
            "initial_equity": str(result.config.initial_cash),
            "final_equity": str(result.final_equity),
        }
    )
    per_market: dict[str, dict[str, Any]] = {}
    for key in result.frames:
        fills = [f for f in result.fills if f.key == key]
        trips = round_trips(fills)
        wins = [t for t in trips if t.pnl > 0]
        per_market[key] = {
            "trades": len(fills),
            "round_trips": len(trips),
            "win_rate": len(wins) / len(trips) if trips else 0.0,
            "realized_pnl": str(sum((f.realized_pnl for f in fills), Decimal(0))),
            "fees": str(sum((f.fee for f in fills), Decimal(0))),
            "rejections": sum(1 for r in result.rejections if r.key == key),
        }
    return {"account": account, "markets": per_market}
