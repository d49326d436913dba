"""Fixtures of the ml tests: the 5,000-bar BTC fixture as a CandleFrame, and a small model trained on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mambo.backtest.data import CandleFrame, load_candles
from mambo.core.stages import EngineConfig
from mambo.ml.train import TrainConfig, TrainResult, train

FIXTURE = Path(__file__).parents[1] / "fixtures" / "btc_perp_1m_5000.csv"
#: Small and quick (well under a second), still a real walk-forward with a purge gap.
SMALL = TrainConfig(folds=2, horizon=10, rounds=30, min_data_in_leaf=50, seed=3)


@pytest.fixture(scope="session")
def frame() -> CandleFrame:
    return load_candles(FIXTURE, "BTC/USDT:USDT", "binanceusdm")


@pytest.fixture(scope="session")
def trained(frame: CandleFrame, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return train(frame, SMALL, EngineConfig(), tmp_path_factory.mktemp("ml") / "model")
