"""Labels read only their horizon, the walk-forward folds keep the purge gap, a fold's model never
depends on its test window, and training is deterministic."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mambo.backtest.data import CandleFrame
from mambo.core.features import FeatureSet
from mambo.core.indicators import compute
from mambo.ml.artifact import lightgbm_names
from mambo.ml.walkforward import auc, fit, forward_returns, labels, walk_forward
from tests.ml.conftest import SMALL


def test_labels_match_pandas(frame: CandleFrame) -> None:
    close = pd.Series(frame.close)
    for h, threshold in ((1, 0.0), (15, 0.0), (60, 0.001)):
        forward = close.shift(-h) / close - 1
        expected = np.where(forward.isna(), np.nan, (forward > threshold).astype(float))
        assert np.array_equal(labels(frame.close, h, threshold), expected, equal_nan=True)
        assert np.isnan(labels(frame.close, h, threshold)[-h:]).all()
        assert not np.isnan(labels(frame.close, h, threshold)[:-h]).any()
    np.testing.assert_allclose(
        forward_returns(frame.close, 15), close.pct_change(15).shift(-15), equal_nan=True
    )


def test_the_label_of_bar_t_reads_only_bars_t_to_t_plus_h() -> None:
    rng = np.random.default_rng(1)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 300)))
    h = 7
    base = labels(close, h)
    for t in (0, 50, 150, 291):
        for j in range(len(close)):
            changed = close.copy()
            up = (base[t] == 0) != (j == t)  # the move that would flip the label if bar j counts
            changed[j] *= 1.5 if up else 0.5
            flipped = labels(changed, h)[t] != base[t]
            assert flipped == (j in (t, t + h)), (t, j)


@given(
    n=st.integers(50, 5000),
    folds=st.integers(1, 8),
    horizon=st.integers(1, 60),
    window=st.sampled_from(["expanding", "rolling"]),
)
def test_folds_purge_the_label_horizon(n: int, folds: int, horizon: int, window: str) -> None:
    size = n // (folds + 1)
    if size <= horizon:
        with pytest.raises(ValueError, match="purge gap"):
            walk_forward(n, folds, horizon, window)  # type: ignore[arg-type]
        return
    out = walk_forward(n, folds, horizon, window)  # type: ignore[arg-type]
    assert [f.index for f in out] == list(range(1, folds + 1))
    assert out[0].test_start == size and out[-1].test_stop == n
    for f, g in itertools.pairwise(out):
        assert f.test_stop == g.test_start  # the test windows tile the history after the first window
    for f in out:
        assert 0 <= f.train_start < f.train_stop
        # the purge: the last training bar's label reads close[train_stop - 1 + horizon], before the test
        assert f.train_stop - 1 + horizon == f.test_start - 1
        assert f.train_start == (0 if window == "expanding" else f.test_start - size)


def test_a_folds_model_never_sees_its_test_window(frame: CandleFrame) -> None:
    fs = FeatureSet(SMALL.features, SMALL.indicators)
    params = SMALL.params()
    (fold, _) = walk_forward(len(frame), 2, SMALL.horizon)

    def fold_model(close_scale: np.ndarray) -> str:
        close = frame.close * close_scale
        high, low = np.maximum(frame.high * close_scale, close), np.minimum(frame.low * close_scale, close)
        values = compute(
            fs.indicators, frame.open_time, frame.open * close_scale, high, low, close, frame.volume
        )
        x, y = fs.matrix(close, values), labels(close, SMALL.horizon)
        s = slice(fold.train_start, fold.train_stop)
        return str(fit(x[s], y[s], lightgbm_names(fs), params, SMALL.rounds).model_to_string())

    base = fold_model(np.ones(len(frame)))
    rng = np.random.default_rng(5)
    future = np.ones(len(frame))
    future[fold.test_start :] = rng.uniform(0.8, 1.2, len(frame) - fold.test_start)
    assert fold_model(future) == base  # the whole test window rewritten: the same model
    # the purge gap is not wider than needed: the bar just before the test window is read (by labels)
    y = labels(frame.close, SMALL.horizon)
    last = fold.train_stop - 1
    just_before = np.ones(len(frame))
    just_before[fold.test_start - 1] = 1.2 if y[last] == 0 else 0.8
    assert labels(frame.close * just_before, SMALL.horizon)[last] != y[last]


def test_auc_matches_counting_pairs() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200).astype(float)
    score = np.round(rng.normal(y * 0.5, 1.0), 1)  # rounded: ties
    pos, neg = score[y == 1], score[y == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert auc(y, score) == pytest.approx(pairs / (len(pos) * len(neg)), rel=1e-12)
    assert auc(np.array([1.0, 0.0, 1.0]), np.array([0.9, 0.1, 0.8])) == 1.0
    assert np.isnan(auc(np.ones(5), np.arange(5.0)))
