"""The ml_signal strategy: the backtester's signals equal a bar-by-bar replay (with the strategy
pickled and restored on the way, as a Kafka worker's changelog does), both backtest paths fill
alike, and its parameters and state are checked."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from mambo.backtest.data import CandleFrame
from mambo.backtest.engine import run_events, run_vectorized
from mambo.core.indicators import IndicatorSet, compute
from mambo.core.stages import EngineConfig
from mambo.core.strategies import Bar, MlSignal, StrategyConfigError, load_strategy
from mambo.ml.artifact import ModelArtifactError
from mambo.ml.train import TrainResult


def replay(strategy: MlSignal, frame: CandleFrame, pickle_at: set[int]) -> list[tuple[str, float]]:
    """Each candle through a live indicator set and the strategy, one at a time; at the bars in
    ``pickle_at`` the strategy is replaced by a copy restored from its pickle."""
    indicators = IndicatorSet(strategy.indicators())
    out = []
    for i in range(len(frame)):
        c = frame.candle(i)
        values = indicators.update(c.open_time, c.open, c.high, c.low, c.close, c.volume)
        decision = strategy.on_bar(Bar(c, {k: v for k, v in values.items() if v == v}))
        out.append((decision.side, decision.confidence))
        if i in pickle_at:
            restored = pickle.loads(pickle.dumps(strategy))
            assert restored == strategy
            strategy = restored
    return out


def test_backtest_and_bar_by_bar_replay_give_the_same_signals(
    trained: TrainResult, frame: CandleFrame
) -> None:
    window = frame.slice(3000, 5000)
    params = {"model": str(trained.path), "buy_above": 0.54, "sell_below": 0.46}
    strategy = load_strategy("ml_signal", **params)
    assert isinstance(strategy, MlSignal)

    # the batch decisions the backtester makes, against the replay
    values = compute(
        strategy.indicators(),
        window.open_time,
        window.open,
        window.high,
        window.low,
        window.close,
        window.volume,
    )
    sides, confidence = strategy.decide_batch(window.close, values)
    replayed = replay(strategy, window, pickle_at={300, 1200, 1900})
    side_of = {1: "buy", -1: "sell", 0: "hold"}
    assert [(side_of[int(s)], float(c)) for s, c in zip(sides, confidence, strict=True)] == replayed
    assert (sides == 1).sum() >= 10 and (sides == -1).sum() >= 10  # the comparison covered real calls

    # the backtester's aggregated signals are those calls, and both of its paths fill alike
    config = EngineConfig(strategies=("ml_signal",), strategy_params={"ml_signal": params})
    fast, slow = run_vectorized(window, config), run_events(window, config)
    calls = [(int(window.ts_event[i]), replayed[i][0]) for i in np.flatnonzero(sides)]
    assert [(s.ts_event, s.side) for s in fast.signals] == calls
    assert [(s.ts_event, s.side) for s in slow.signals] == calls
    assert [(s.side, s.confidence) for s in fast.signals] == [(s.side, s.confidence) for s in slow.signals]
    assert fast.fills == slow.fills and len(fast.fills) >= 4
    assert fast.final_equity == slow.final_equity


def test_state_is_small_and_carries_on(trained: TrainResult, frame: CandleFrame) -> None:
    strategy = MlSignal(model=str(trained.path))
    replay(strategy, frame.slice(0, 300), set())
    blob = pickle.dumps(strategy)
    assert len(blob) < 5_000  # the closes looked back over, not the model
    restored = pickle.loads(blob)
    assert restored == strategy and restored != MlSignal(model=str(trained.path))
    rest = frame.slice(300, 600)
    assert replay(restored, rest, set()) == replay(strategy, rest, set())


def test_a_restored_state_refuses_a_changed_model(trained: TrainResult, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(trained.path, model, ignore=shutil.ignore_patterns("folds"))
    blob = pickle.dumps(MlSignal(model=str(model)))
    for name in ("manifest.json", "model.txt"):  # another training's model in its place
        shutil.copy(trained.path / "folds" / "1" / name, model / name)
    restored = pickle.loads(blob)
    with pytest.raises(ModelArtifactError, match="changed since this strategy's state was saved"):
        restored.indicators()


def test_holds_while_the_features_warm_up(trained: TrainResult, frame: CandleFrame) -> None:
    strategy = MlSignal(model=str(trained.path))
    decisions = replay(strategy, frame.slice(0, 250), set())
    assert decisions[:199] == [("hold", 0.0)] * 199  # sma:200 needs 200 bars


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "ml_signal needs model="),
        ({"model": "no/such/model"}, "no such folder; train one with mambo train"),
        ({"buy_above": 1.0}, "buy_above must be a probability strictly between 0 and 1"),
        ({"buy_above": 0.5, "sell_below": 0.6}, "must not be above buy_above"),
    ],
)
def test_bad_parameters_say_why(params: dict[str, object], message: str, trained: TrainResult) -> None:
    if "model" not in params and params:
        params = {"model": str(trained.path), **params}
    with pytest.raises(StrategyConfigError, match=message):
        load_strategy("ml_signal", **params)


def test_indicators_come_from_the_artifact(trained: TrainResult) -> None:
    strategy = MlSignal(model=str(trained.path))
    assert strategy.indicators() == tuple(trained.manifest["indicators"])
    assert strategy.artifact.features.features == tuple(trained.manifest["features"])
