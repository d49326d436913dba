"""Walk-forward search: in-sample winners, out-of-sample checks, parallel workers, ClickHouse records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from mambo.backtest.data import CandleFrame, load_candles
from mambo.backtest.engine import run_backtest
from mambo.backtest.metrics import compute_metrics
from mambo.backtest.optimize import optimize, store
from mambo.core.stages import EngineConfig

FIXTURE = Path(__file__).parents[1] / "fixtures" / "btc_perp_1m_5000.csv"
SPACE = {"fast": [10, 30], "slow": [30, 60, 120]}  # fast=30, slow=30 is refused by the strategy


@pytest.fixture(scope="module")
def frame() -> CandleFrame:
    return load_candles(FIXTURE, "BTC/USDT", "binance")


def sharpe(frame: CandleFrame, start: int, stop: int, **params: int) -> float:
    config = EngineConfig(strategies=("sma_cross",), strategy_params={"sma_cross": params})
    return float(compute_metrics(run_backtest(frame.slice(start, stop), config))["strategy"]["sharpe"])


def test_grid_walk_forward_picks_the_in_sample_best_and_tests_it_on_the_next_window(
    frame: CandleFrame, clickhouse_client: Client, clickhouse_db: str
) -> None:
    config = EngineConfig()
    result = optimize(frame, config, "sma_cross", SPACE, folds=2, jobs=2)
    size = len(frame) // 3
    combos = [(f, s) for f in SPACE["fast"] for s in SPACE["slow"] if f < s]
    for fold in range(2):
        train = [t for t in result.trials if t.fold == fold and t.phase == "train"]
        assert sorted((t.params["fast"], t.params["slow"]) for t in train) == sorted(combos)
        assert {(t.start, t.stop) for t in train} == {(fold * size, (fold + 1) * size)}
        # every worker's figure is what an in-process backtest of that window gives
        for t in train:
            assert t.objective == sharpe(frame, t.start, t.stop, **t.params)  # type: ignore[arg-type]
        best = max(train, key=lambda t: t.objective)
        assert result.best[fold] == best.params
        (test,) = [t for t in result.out_of_sample if t.fold == fold]
        assert (test.start, test.stop) == ((fold + 1) * size, (fold + 2) * size if fold == 0 else len(frame))
        assert test.params == best.params
        assert test.objective == sharpe(frame, test.start, test.stop, **best.params)  # type: ignore[arg-type]
    tests = result.out_of_sample
    assert result.oos_objective == pytest.approx(sum(t.objective for t in tests) / 2)
    growth = math.prod(1 + t.metrics["strategy"]["total_return"] for t in tests)
    assert result.oos_return == pytest.approx(growth - 1)

    store(clickhouse_client, clickhouse_db, result, frame, config, str(FIXTURE))
    runs = clickhouse_client.query_df(f"SELECT * FROM {clickhouse_db}.backtest_runs FINAL")
    assert len(runs) == 1 and runs.run_id[0] == result.run_id and runs.trials[0] == len(result.trials)
    assert runs.best_params[0] == {k: float(v) for k, v in result.best[-1].items()}
    assert json.loads(runs.space[0]) == SPACE
    by_phase = clickhouse_client.query_df(
        f"SELECT phase, count() AS n, sum(trades) AS trades FROM {clickhouse_db}.backtest_trials FINAL "
        "GROUP BY phase ORDER BY phase"
    )
    assert by_phase.phase.tolist() == ["test", "train"]
    assert by_phase.n.tolist() == [2, 2 * len(combos)]
    assert int(by_phase.trades.sum()) == sum(t.metrics["strategy"]["trades"] for t in result.trials)


def test_optuna_search_stays_in_range_and_repeats_with_its_seed(frame: CandleFrame) -> None:
    space = {"fast": [5, 40], "slow": [50, 150], "half_gap": [0.0001, 0.001]}
    part = frame.slice(0, 2000)
    first = optimize(
        part, EngineConfig(), "sma_cross", space, search="optuna", trials=6, folds=0, jobs=2, seed=7
    )
    again = optimize(
        part, EngineConfig(), "sma_cross", space, search="optuna", trials=6, folds=0, jobs=2, seed=7
    )
    assert [t.params for t in first.trials] == [t.params for t in again.trials]
    assert len(first.trials) == 6 and all(t.phase == "full" for t in first.trials)
    for t in first.trials:
        assert isinstance(t.params["fast"], int) and 5 <= t.params["fast"] <= 40
        assert isinstance(t.params["slow"], int) and 50 <= t.params["slow"] <= 150
        assert 0.0001 <= t.params["half_gap"] <= 0.001
    assert first.best[0] == max(first.trials, key=lambda t: t.objective).params
    assert math.isnan(first.oos_objective)


def test_bad_searches_are_refused(frame: CandleFrame) -> None:
    with pytest.raises(ValueError, match="objective"):
        optimize(frame, EngineConfig(), "sma_cross", SPACE, objective="luck")
    with pytest.raises(ValueError, match="refused every parameter set"):
        optimize(frame, EngineConfig(), "sma_cross", {"fast": [100], "slow": [50]}, folds=0, jobs=1)
