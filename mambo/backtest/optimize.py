"""Parameter search with walk-forward validation: :func:`optimize`.

The history is cut into ``folds + 1`` consecutive windows of equal length. Fold k searches the
parameters on window k (in sample, ``train``) and backtests the winner on window k+1 (out of sample,
``test``), which it has never seen; each window starts from a fresh state (its first bars warm the
indicators up). The out-of-sample figures, one per fold, are what to believe; the in-sample ones show
how much the search flatters. With ``folds=0`` the whole history is searched (``full``) and nothing is
out of sample.

Search: ``grid`` tries every combination of the given values; ``optuna`` runs Optuna's TPE sampler
(seeded, so a run repeats) for ``trials`` trials within the values' range (integers stay integers).
Parameter sets the strategy refuses (a fast average not shorter than the slow one) are skipped.

Backtests run in parallel in worker processes (``jobs``, default: every core), each a full
:func:`~mambo.backtest.engine.run_backtest` (vectorized when it can be) plus metrics. Workers come
from a forkserver: forked from a clean process that has imported the backtester, never from the
caller (which may hold an embedded ClickHouse). The history is handed to each worker once.

:func:`store` writes the run and every trial to ClickHouse (tables ``backtest_runs`` and
``backtest_trials``, derived from :mod:`mambo.schemas.backtests`).
"""

from __future__ import annotations

import itertools
import json
import math
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from mambo.backtest.data import CandleFrame
from mambo.backtest.engine import run_backtest
from mambo.backtest.metrics import CURVE_METRICS, compute_metrics
from mambo.core.market import Market
from mambo.core.stages import EngineConfig
from mambo.core.strategies import StrategyConfigError, load_strategy
from mambo.schemas.backtests import BacktestRun, BacktestTrial
from mambo.schemas.events import make_id

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

__all__ = ["OBJECTIVES", "OptimizeResult", "Trial", "optimize", "store"]

#: What a search can maximize (max_drawdown is minimized).
OBJECTIVES: tuple[str, ...] = (
    "sharpe",
    "sortino",
    "calmar",
    "total_return",
    "annualized_return",
    "max_drawdown",
)
Params = dict[str, int | float]
Search = Literal["grid", "optuna"]
_STORE_QUANTUM = Decimal("1e-18")


@dataclass(frozen=True)
class Trial:
    """One backtest of a search."""

    fold: int
    phase: Literal["train", "test", "full"]
    params: Params
    start: int  # first bar of the window
    stop: int  # one past its last bar
    metrics: dict[str, Any]
    objective: float


@dataclass
class OptimizeResult:
    """Every trial, the winner of each fold, and the out-of-sample summary."""

    run_id: str
    strategy: str
    search: Search
    objective: str
    folds: int
    space: dict[str, list[Any]]
    trials: list[Trial] = field(default_factory=list)
    best: list[Params] = field(default_factory=list)  # per fold (one entry with folds=0)
    started_ns: int = 0

    @property
    def out_of_sample(self) -> list[Trial]:
        return [t for t in self.trials if t.phase == "test"]

    @property
    def oos_objective(self) -> float:
        tests = self.out_of_sample
        return sum(t.objective for t in tests) / len(tests) if tests else math.nan

    @property
    def oos_return(self) -> float:
        """The out-of-sample windows' returns compounded (trading each test window in turn)."""
        growth = 1.0
        for t in self.out_of_sample:
            growth *= 1.0 + t.metrics["strategy"]["total_return"]
        return growth - 1.0 if self.out_of_sample else math.nan


# --- worker side ------------------------------------------------------------------------------

_FRAME: CandleFrame | None = None
_MARKET: Market | None = None


def _init_worker(frame: CandleFrame, market: Market | None) -> None:
    global _FRAME, _MARKET
    _FRAME, _MARKET = frame, market


def _evaluate(start: int, stop: int, config: EngineConfig) -> dict[str, Any]:
    assert _FRAME is not None, "worker not initialized"
    return compute_metrics(run_backtest(_FRAME.slice(start, stop), config, _MARKET))


# --- search -----------------------------------------------------------------------------------


def _score(metrics: dict[str, Any], objective: str) -> float:
    value = float(metrics["strategy"][objective])
    if math.isnan(value):
        return -math.inf
    return -value if objective == "max_drawdown" else value


def _with_params(config: EngineConfig, strategy: str, params: Params) -> EngineConfig:
    merged = {**config.strategy_params, strategy: {**config.strategy_params.get(strategy, {}), **params}}
    return replace(config, strategies=(strategy,), strategy_params=merged)


def _valid(strategy: str, params: Params) -> bool:
    try:
        load_strategy(strategy, **params)
    except StrategyConfigError:
        return False
    return True


def _grid(space: Mapping[str, Sequence[Any]]) -> list[Params]:
    names = list(space)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(space[n] for n in names))]


def optimize(
    frame: CandleFrame,
    config: EngineConfig,
    strategy: str,
    space: Mapping[str, Sequence[int | float]],
    search: Search = "grid",
    trials: int = 50,
    folds: int = 3,
    objective: str = "sharpe",
    jobs: int | None = None,
    seed: int = 0,
    market: Market | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> OptimizeResult:
    """Search ``strategy``'s parameters in ``space`` with walk-forward validation (module docstring)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if not space or any(not list(v) for v in space.values()):
        raise ValueError("give at least one parameter with at least one value to search")
    if folds < 0:
        raise ValueError(f"folds must be >= 0, got {folds}")
    windows = folds + 1
    size = len(frame) // windows
    if size < 2:
        raise ValueError(f"{len(frame)} bars cannot make {windows} windows")
    bounds = [(k * size, (k + 1) * size if k < windows - 1 else len(frame)) for k in range(windows)]
    started = time.time_ns()
    result = OptimizeResult(
        run_id=make_id("optimize", strategy, frame.key, started),
        strategy=strategy,
        search=search,
        objective=objective,
        folds=folds,
        space={k: list(v) for k, v in space.items()},
        started_ns=started,
    )
    per_window = sum(_valid(strategy, p) for p in _grid(space)) if search == "grid" else trials
    total = per_window * max(folds, 1) + folds
    done = 0

    workers = jobs or os.cpu_count() or 1
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["mambo.backtest.optimize"])
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(frame, market),
    ) as pool:

        def run_many(
            batch: list[Params], *, start: int, stop: int, fold: int, phase: Literal["train", "test", "full"]
        ) -> list[Trial]:
            nonlocal done
            futures = [pool.submit(_evaluate, start, stop, _with_params(config, strategy, p)) for p in batch]
            out = []
            for params, fut in zip(batch, futures, strict=True):
                metrics = fut.result()
                out.append(Trial(fold, phase, params, start, stop, metrics, _score(metrics, objective)))
                done += 1
                if progress is not None:
                    progress(done, total)
            result.trials.extend(out)
            return out

        for fold in range(max(folds, 1)):
            start, stop = bounds[fold] if folds else (0, len(frame))
            phase: Literal["train", "full"] = "train" if folds else "full"
            if search == "grid":
                valid = [p for p in _grid(space) if _valid(strategy, p)]
                tried = run_many(valid, start=start, stop=stop, fold=fold, phase=phase)
            else:
                tried = _optuna(
                    space,
                    strategy,
                    trials,
                    seed + fold,
                    workers,
                    partial(run_many, start=start, stop=stop, fold=fold, phase=phase),
                )
            if not tried:
                raise ValueError("the strategy refused every parameter set in the space")
            best = max(tried, key=lambda t: t.objective).params
            result.best.append(best)
            if folds:
                test_start, test_stop = bounds[fold + 1]
                run_many([best], start=test_start, stop=test_stop, fold=fold, phase="test")
    if progress is not None:
        progress(done, done)  # pruned Optuna trials never ran: the bar ends where the work did
    return result


def _exact(value: str) -> Decimal:
    """A money figure as ClickHouse's Decimal(38, 18) holds it (half-even at the 18th place)."""
    return Decimal(value).quantize(_STORE_QUANTUM)


def store(
    client: Client,
    database: str,
    result: OptimizeResult,
    frame: CandleFrame,
    config: EngineConfig,
    data: str,
) -> None:
    """Write the run and every trial to ``backtest_runs`` / ``backtest_trials`` (idempotent)."""
    from mambo.connectors.clickhouse import ClickHouseSink

    ts, tf = result.started_ns, frame.timeframe
    market = {
        "exchange": frame.exchange,
        "symbol": frame.symbol,
        "timeframe": tf,
        "strategy": result.strategy,
    }
    trials = []
    for n, t in enumerate(result.trials):
        s, hold = t.metrics["strategy"], t.metrics["buy_and_hold"]
        trials.append(
            BacktestTrial(
                event_id=make_id("trial", result.run_id, n),
                ts_event=ts,
                ts_init=ts,
                run_id=result.run_id,
                **market,
                fold=t.fold,
                phase=t.phase,
                params={k: float(v) for k, v in t.params.items()},
                window_start=int(frame.open_time[t.start]),
                window_end=int(frame.ts_event[t.stop - 1]),
                bars=t.stop - t.start,
                objective=float(s[result.objective]),
                **{k: float(s[k]) for k in _FLOAT_METRICS},
                trades=int(s["trades"]),
                round_trips=int(s["round_trips"]),
                fees=_exact(s["fees"]),
                final_equity=_exact(s["final_equity"]),
                buy_hold_return=float(hold["total_return"]),
            )
        )
    settings = asdict(config)
    run = BacktestRun(
        event_id=make_id("backtest_run", result.run_id),
        ts_event=ts,
        ts_init=ts,
        run_id=result.run_id,
        **market,
        data=data,
        data_start=int(frame.open_time[0]),
        data_end=int(frame.ts_event[-1]),
        search=result.search,
        objective=result.objective,
        folds=result.folds,
        trials=len(result.trials),
        space=json.dumps(result.space),
        config=json.dumps(settings, default=str, sort_keys=True),
        best_params={k: float(v) for k, v in result.best[-1].items()},
        oos_objective=result.oos_objective,
        oos_return=result.oos_return,
    )
    sink = ClickHouseSink(client, database)
    sink.write("backtest_runs", [run])
    sink.write("backtest_trials", trials)
    sink.flush()


_FLOAT_METRICS = (*CURVE_METRICS, "win_rate", "profit_factor", "exposure")


def _optuna(
    space: Mapping[str, Sequence[int | float]],
    strategy: str,
    trials: int,
    seed: int,
    batch: int,
    run_many: Callable[[list[Params]], list[Trial]],
) -> list[Trial]:
    """Optuna's TPE sampler, asked ``batch`` trials at a time so every worker has one."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    tried: list[Trial] = []
    asked = 0
    while asked < trials:
        pending, params = [], []
        for _ in range(min(batch, trials - asked)):
            trial = study.ask()
            asked += 1
            p: Params = {}
            for name, values in space.items():
                lo, hi = min(values), max(values)
                if lo == hi:
                    p[name] = lo
                elif all(isinstance(v, int) for v in values):
                    p[name] = trial.suggest_int(name, int(lo), int(hi))
                else:
                    p[name] = trial.suggest_float(name, float(lo), float(hi))
            if _valid(strategy, p):
                pending.append(trial)
                params.append(p)
            else:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        results = run_many(params) if params else []
        for trial, done in zip(pending, results, strict=True):
            study.tell(trial, done.objective if math.isfinite(done.objective) else -1e300)
        tried.extend(results)
    return tried
