"""A training run of ``ml_signal``: :func:`train`, what ``mambo train`` and the benchmark call.

1. The indicators over the whole history (causal), the features of every bar
   (:meth:`~mambo.core.features.FeatureSet.matrix`) and the labels (:func:`~mambo.ml.walkforward.labels`).
2. Walk-forward (:func:`~mambo.ml.walkforward.walk_forward`): each fold's model is trained on the
   bars before its test window less the purge gap, written as an artifact under ``folds/<k>`` of the
   output, and judged on its test window, which it never saw: the AUC and accuracy of its
   probabilities against the labels, and a backtest of ``ml_signal`` with it through the backtester
   (:func:`~mambo.backtest.engine.run_backtest`: fees, fills at the next open), beside buy and hold
   of the same window. Each test window is backtested from a fresh state, as ``mambo optimize``
   does, so its first bars warm the indicators up.
3. The model to use: trained the same way on all the history (``expanding``) or on its last window
   (``rolling``), up to the last bar with a label, written to the output folder.

The out-of-sample figures, one per fold and compounded, are what to believe; they go in the manifest.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mambo.backtest.data import CandleFrame
from mambo.backtest.engine import run_backtest
from mambo.backtest.metrics import compute_metrics
from mambo.core.features import FeatureSet
from mambo.core.indicators import compute
from mambo.core.market import Market
from mambo.core.stages import EngineConfig
from mambo.ml.artifact import MANIFEST, check_output, lightgbm_names, read_manifest, save_artifact
from mambo.ml.walkforward import Fold, Window, auc, fit, labels, lightgbm_params, trainable, walk_forward

__all__ = ["DEFAULT_FEATURES", "DEFAULT_INDICATORS", "FoldResult", "TrainConfig", "TrainResult", "train"]

#: The indicator specs the default features read.
DEFAULT_INDICATORS: tuple[str, ...] = (
    "sma:20",
    "sma:50",
    "sma:200",
    "rsi:14",
    "macd:12:26:9",
    "bbands:20:2",
    "atr:14",
    "stoch:14:3:3",
    "willr:14",
    "cci:20",
    "adx:14",
    "mfi:14",
    "stddev:20",
    "donchian:60",
    "vwap",
    "supertrend:10:3",
)
#: The default features: momentum over several lags, distances to averages and channels, oscillators,
#: volatility relative to price.
DEFAULT_FEATURES: tuple[str, ...] = (
    "ret:1",
    "ret:5",
    "ret:15",
    "ret:60",
    "dist:sma_20",
    "dist:sma_50",
    "dist:sma_200",
    "dist:vwap",
    "dist:supertrend_10_3",
    "raw:supertrend_dir_10_3",
    "raw:rsi_14",
    "raw:stoch_k_14_3_3",
    "raw:stoch_d_14_3_3",
    "raw:willr_14",
    "raw:cci_20",
    "raw:adx_14",
    "raw:plus_di_14",
    "raw:minus_di_14",
    "raw:mfi_14",
    "rel:macd_12_26_9",
    "rel:macd_hist_12_26_9",
    "rel:atr_14",
    "rel:stddev_20",
    "pos:bb_upper_20_2:bb_lower_20_2",
    "width:bb_upper_20_2:bb_lower_20_2",
    "pos:dc_upper_60:dc_lower_60",
)

#: Called with (steps done, steps in all, what is being done).
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class TrainConfig:
    """What to train and how; ``buy_above``/``sell_below`` are the thresholds the out-of-sample
    backtests run ``ml_signal`` with."""

    indicators: tuple[str, ...] = DEFAULT_INDICATORS
    features: tuple[str, ...] = DEFAULT_FEATURES
    horizon: int = 15
    label_threshold: float = 0.0
    folds: int = 4
    window: Window = "expanding"
    rounds: int = 200
    learning_rate: float = 0.05
    num_leaves: int = 15
    min_data_in_leaf: int = 200
    seed: int = 0
    buy_above: float = 0.55
    sell_below: float = 0.45

    def __post_init__(self) -> None:
        for name in ("rounds", "num_leaves", "min_data_in_leaf"):
            x = getattr(self, name)
            if isinstance(x, bool) or not isinstance(x, int) or x < (2 if name == "num_leaves" else 1):
                raise ValueError(
                    f"{name} must be a whole number >= {2 if name == 'num_leaves' else 1}, got {x!r}"
                )
        if not 0.0 < self.learning_rate <= 1.0:
            raise ValueError(f"learning_rate must be in (0, 1], got {self.learning_rate!r}")
        if not -1.0 < self.label_threshold < 1.0:
            raise ValueError(f"label_threshold is a return, in (-1, 1); got {self.label_threshold!r}")

    def params(self) -> dict[str, Any]:
        return lightgbm_params(self.seed, self.learning_rate, self.num_leaves, self.min_data_in_leaf)


@dataclass(frozen=True)
class FoldResult:
    """One fold's out-of-sample figures."""

    fold: Fold
    content_hash: str
    auc: float
    accuracy: float
    up_share: float  # of the test window's labels: the accuracy of always saying "up"
    metrics: dict[str, Any]  # compute_metrics of the test window's backtest


@dataclass
class TrainResult:
    """The model written, and how its walk-forward went."""

    path: Path
    content_hash: str
    manifest: dict[str, Any]
    folds: list[FoldResult] = field(default_factory=list)

    @property
    def oos_return(self) -> float:
        """The strategy's returns over the test windows, compounded."""
        return _compound(f.metrics["strategy"]["total_return"] for f in self.folds)

    @property
    def buy_hold_return(self) -> float:
        """Buy and hold's returns over the same windows, compounded."""
        return _compound(f.metrics["buy_and_hold"]["total_return"] for f in self.folds)


def _compound(returns: Any) -> float:
    growth = 1.0
    for r in returns:
        growth *= 1.0 + float(r)
    return growth - 1.0


def _iso(ns: int) -> str:
    return pd.Timestamp(int(ns), unit="ns", tz="UTC").isoformat()


def data_hash(frame: CandleFrame) -> str:
    """SHA-256 of the candles (market, timeframe and every column's bytes)."""
    h = hashlib.sha256(f"{frame.key}|{frame.timeframe}".encode())
    for col in (frame.open_time, frame.open, frame.high, frame.low, frame.close, frame.volume):
        h.update(np.ascontiguousarray(col).tobytes())
    return h.hexdigest()


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The figures of a backtest the manifest keeps (JSON-safe: NaN becomes null)."""
    s, b = metrics["strategy"], metrics["buy_and_hold"]
    keys = ("total_return", "sharpe", "max_drawdown")
    return {
        "strategy": {**{k: _finite(s[k]) for k in keys}, "trades": s["trades"], "exposure": s["exposure"]},
        "buy_and_hold": {k: _finite(b[k]) for k in keys},
    }


def train(
    frame: CandleFrame,
    config: TrainConfig,
    engine: EngineConfig,
    out: str | Path,
    market: Market | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train ``ml_signal``'s model walk-forward over ``frame`` and write it to ``out`` (see the module
    docstring); ``engine`` is the account the out-of-sample backtests run with (its strategies are
    replaced by ``ml_signal``). ValueError for settings the history cannot serve."""
    out = Path(out)
    check_output(out)
    features = FeatureSet(config.features, config.indicators)
    names = lightgbm_names(features)
    n = len(frame)
    folds = walk_forward(n, config.folds, config.horizon, config.window)
    steps, done = 2 * len(folds) + 1, 0

    def step(what: str) -> None:
        nonlocal done
        if progress is not None:
            progress(done, steps, what)
        done += 1

    step("indicators and features")
    values = compute(
        features.indicators, frame.open_time, frame.open, frame.high, frame.low, frame.close, frame.volume
    )
    x = features.matrix(frame.close, values)
    y = labels(frame.close, config.horizon, config.label_threshold)
    params = config.params()
    common = {
        "label": {
            "horizon": config.horizon,
            "threshold": config.label_threshold,
            "target": "close[t+h]/close[t]-1",
        },
        "market": frame.key,
        "timeframe": frame.timeframe,
        "data_sha256": data_hash(frame),
        "lightgbm_params": params,
        "rounds": config.rounds,
        "seed": config.seed,
        "walk_forward": {"window": config.window, "folds": config.folds, "purge_bars": config.horizon},
        "evaluated_with": {"buy_above": config.buy_above, "sell_below": config.sell_below},
    }

    def window(start: int, stop: int) -> dict[str, Any]:
        rows = trainable(x[start:stop], y[start:stop])
        return {
            "first_bar": start,
            "stop_bar": stop,
            "rows": int(rows.sum()),
            "start": _iso(frame.open_time[start]),
            "end": _iso(frame.ts_event[stop - 1]),
            # the last close a training label reads: before the test window by construction
            "labels_read_until": _iso(frame.ts_event[min(stop - 1 + config.horizon, n - 1)]),
        }

    # the folds of an earlier training into this folder go: they would not match this one's
    for old in sorted((out / "folds").glob("*/" + MANIFEST)):
        shutil.rmtree(old.parent)
    results = []
    for fold in folds:
        step(f"fold {fold.index}/{len(folds)}: train")
        booster = fit(
            x[fold.train_start : fold.train_stop],
            y[fold.train_start : fold.train_stop],
            names,
            params,
            config.rounds,
        )
        folder = out / "folds" / str(fold.index)
        meta = {
            **common,
            "training": window(fold.train_start, fold.train_stop),
            "test": {
                "first_bar": fold.test_start,
                "stop_bar": fold.test_stop,
                "start": _iso(frame.open_time[fold.test_start]),
                "end": _iso(frame.ts_event[fold.test_stop - 1]),
            },
        }
        fold_hash = save_artifact(folder, booster.model_to_string(), features, meta)
        step(f"fold {fold.index}/{len(folds)}: out-of-sample backtest")
        xt, yt = x[fold.test_start : fold.test_stop], y[fold.test_start : fold.test_stop]
        ok = trainable(xt, yt)
        p = np.asarray(booster.predict(xt[ok]), dtype=np.float64) if ok.any() else np.empty(0)
        accuracy = float(((p > 0.5) == (yt[ok] == 1)).mean()) if ok.any() else float("nan")
        strategy_params = {
            "model": str(folder),
            "buy_above": config.buy_above,
            "sell_below": config.sell_below,
        }
        run = replace(engine, strategies=("ml_signal",), strategy_params={"ml_signal": strategy_params})
        result = run_backtest(frame.slice(fold.test_start, fold.test_stop), run, market)
        results.append(
            FoldResult(
                fold,
                fold_hash,
                auc(yt[ok], p),
                accuracy,
                float(yt[ok].mean()) if ok.any() else float("nan"),
                compute_metrics(result),
            )
        )

    step("final model")
    size = n // (config.folds + 1)
    start = 0 if config.window == "expanding" else max(0, n - config.horizon - size)
    booster = fit(x[start:], y[start:], names, params, config.rounds)
    fold_meta = [
        {
            "fold": r.fold.index,
            "train": [r.fold.train_start, r.fold.train_stop],
            "test": [r.fold.test_start, r.fold.test_stop],
            "content_hash": r.content_hash,
            "auc": _finite(r.auc),
            "accuracy": _finite(r.accuracy),
            "up_share": _finite(r.up_share),
            **_summary(r.metrics),
        }
        for r in results
    ]
    partial = TrainResult(out, "", {}, results)
    meta = {
        **common,
        "training": window(start, n),
        "folds": fold_meta,
        "out_of_sample": {
            "compounded_return": _finite(partial.oos_return),
            "buy_and_hold_compounded_return": _finite(partial.buy_hold_return),
        },
    }
    digest = save_artifact(out, booster.model_to_string(), features, meta)
    if progress is not None:
        progress(steps, steps, "done")
    return TrainResult(out, digest, read_manifest(out), results)
