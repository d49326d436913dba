"""The records of parameter searches (``mambo optimize``), kept in ClickHouse to compare in SQL.

:class:`BacktestRun` is one search; :class:`BacktestTrial` one backtest inside it (a parameter set on
one window, in-sample ``train`` or out-of-sample ``test``). Their tables are derived from these models
like every other (:mod:`mambo.schemas.ddl`); no topic carries them.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from mambo.schemas.events import Event

__all__ = ["BacktestRun", "BacktestTrial"]


class BacktestRun(Event):
    """One ``mambo optimize`` run: what was searched, how, and what won out of sample.

    ``ts_event`` is when it started. Windows are ns since epoch; ``space`` and ``config`` are JSON.
    """

    run_id: str
    exchange: str
    symbol: str
    timeframe: str
    strategy: str
    data: str
    data_start: int
    data_end: int
    search: Literal["grid", "optuna"]
    objective: str
    folds: int
    trials: int
    space: str
    config: str
    best_params: dict[str, float]
    oos_objective: float  # mean of the test windows' objective (NaN without walk-forward)
    oos_return: float  # the test windows' returns compounded


class BacktestTrial(Event):
    """One backtest of a search: a parameter set on one window (``fold``, ``phase``) and its metrics.

    Money is exact (Decimal); a figure with no meaning (a profit factor with no losing trade) is inf.
    """

    run_id: str
    exchange: str
    symbol: str
    timeframe: str
    strategy: str
    fold: int
    phase: Literal["train", "test", "full"]
    params: dict[str, float]
    window_start: int
    window_end: int
    bars: int
    objective: float
    total_return: float
    annualized_return: float
    volatility: float
    sharpe: float
    sortino: float
    calmar: float
    max_drawdown: float
    max_drawdown_days: float
    win_rate: float
    profit_factor: float
    exposure: float
    trades: int
    round_trips: int
    fees: Decimal
    final_equity: Decimal
    buy_hold_return: float
