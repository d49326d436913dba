"""Labels, walk-forward splits and model fitting for ``ml_signal`` (no file I/O; see
:mod:`mambo.ml.train` for the whole run).

* :func:`labels`: bar t is labelled 1 when the return from its close to the close ``horizon`` bars
  later beats ``threshold``, else 0; NaN for the last ``horizon`` bars, whose future is unknown. The
  label of bar t reads the closes of bars t and t+horizon only: it is the one place that looks ahead,
  and only training reads it.
* :func:`walk_forward`: the history is cut into ``folds + 1`` consecutive windows of equal length
  (the last takes the remainder), as ``mambo optimize`` cuts it. Fold k (1..folds) tests on window k
  and trains on the windows before it (``expanding``) or on window k-1 alone (``rolling``), less the
  last ``horizon`` bars before the test window: the purge gap. The last training bar's label then
  reads the close just before the test window at the latest, so nothing of the test window (nor
  its labels) reaches the model.
* :func:`fit`: a LightGBM binary classifier over the rows whose features and label are all finite,
  trained single-threaded and deterministically, so the same rows and seed give the same model text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import lightgbm

__all__ = [
    "Fold",
    "Window",
    "auc",
    "fit",
    "forward_returns",
    "labels",
    "lightgbm_params",
    "trainable",
    "walk_forward",
]

Window = Literal["expanding", "rolling"]
Array = npt.NDArray[np.float64]


def forward_returns(close: npt.ArrayLike, horizon: int) -> Array:
    """``close[t + horizon] / close[t] - 1`` for each bar t; NaN where t + horizon is past the end."""
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"horizon must be an integer >= 1 (bars), got {horizon!r}")
    c = np.asarray(close, dtype=np.float64)
    out = np.full(len(c), np.nan)
    if len(c) > horizon:
        out[: len(c) - horizon] = c[horizon:] / c[: len(c) - horizon] - 1.0
    return out


def labels(close: npt.ArrayLike, horizon: int, threshold: float = 0.0) -> Array:
    """1.0 where the forward return over ``horizon`` bars is above ``threshold``, 0.0 where it is
    not, NaN for the last ``horizon`` bars."""
    r = forward_returns(close, horizon)
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(r), np.nan, (r > threshold).astype(np.float64))


@dataclass(frozen=True)
class Fold:
    """One walk-forward step: train on bars ``[train_start, train_stop)``, test on
    ``[test_start, test_stop)``; ``test_start - train_stop`` is the purge gap (the label horizon)."""

    index: int
    train_start: int
    train_stop: int
    test_start: int
    test_stop: int


def walk_forward(n: int, folds: int, horizon: int, window: Window = "expanding") -> list[Fold]:
    """The folds over ``n`` bars (see the module docstring); ValueError when the windows are too short
    to leave any training bar after the purge gap."""
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 1:
        raise ValueError(f"folds must be an integer >= 1, got {folds!r}")
    if window not in ("expanding", "rolling"):
        raise ValueError(f"window must be expanding or rolling, got {window!r}")
    size = n // (folds + 1)
    if size <= horizon:
        raise ValueError(
            f"{n} bars in {folds + 1} windows of {size} bars leave nothing to train on after the purge gap "
            f"of {horizon} bars: give more bars, fewer folds or a shorter horizon"
        )
    out = []
    for k in range(1, folds + 1):
        test_start = k * size
        test_stop = n if k == folds else (k + 1) * size
        train_start = 0 if window == "expanding" else (k - 1) * size
        out.append(Fold(k, train_start, test_start - horizon, test_start, test_stop))
    return out


def lightgbm_params(
    seed: int, learning_rate: float = 0.05, num_leaves: int = 15, min_data_in_leaf: int = 200
) -> dict[str, Any]:
    """LightGBM's parameters for a deterministic binary classifier (one thread, seeded bagging)."""
    return {
        "objective": "binary",
        "learning_rate": learning_rate,
        "num_leaves": num_leaves,
        "min_data_in_leaf": min_data_in_leaf,
        "feature_fraction": 0.8,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 1,
        "verbose": -1,
    }


def trainable(x: Array, y: Array) -> npt.NDArray[np.bool_]:
    """The rows with every feature finite and a label."""
    ok: npt.NDArray[np.bool_] = np.isfinite(x).all(axis=1) & np.isfinite(y)
    return ok


def fit(x: Array, y: Array, names: list[str], params: Mapping[str, Any], rounds: int) -> lightgbm.Booster:
    """A booster trained on the rows of ``x`` (features) and ``y`` (labels) that :func:`trainable` keeps."""
    import lightgbm

    ok = trainable(x, y)
    rows = int(ok.sum())
    if rows < 2 * int(params.get("min_data_in_leaf", 20)):
        raise ValueError(f"only {rows} bars with every feature and a label to train on; give more history")
    if len(np.unique(y[ok])) < 2:
        raise ValueError("every training label is the same; nothing to learn (more history, another horizon)")
    data = lightgbm.Dataset(x[ok], y[ok], feature_name=names, free_raw_data=True)
    return lightgbm.train(dict(params), data, num_boost_round=rounds)


def auc(y: Array, score: Array) -> float:
    """The area under the ROC curve of ``score`` for the 0/1 labels ``y`` (ties count half; rows with
    a NaN are left out): the chance a random positive scores above a random negative. NaN with one class."""
    ok = np.isfinite(y) & np.isfinite(score)
    y, score = y[ok], score[ok]
    pos = int((y == 1).sum())
    neg = len(y) - pos
    if not pos or not neg:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    # average ranks over ties (1-based)
    starts = np.flatnonzero(np.concatenate(([True], sorted_scores[1:] != sorted_scores[:-1])))
    ends = np.concatenate((starts[1:], [len(score)]))
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))
