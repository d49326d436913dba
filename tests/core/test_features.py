"""Model features: hand-worked values, the one-bar path bit-identical to the batch on real candles, and
no feature of a bar changing when later bars change."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mambo.core.features import FeatureSet
from mambo.core.indicators import compute
from mambo.ml.train import DEFAULT_FEATURES, DEFAULT_INDICATORS

FIXTURE = Path(__file__).parents[1] / "fixtures" / "btc_perp_1m_5000.csv"
NAN = math.nan


@pytest.fixture(scope="module")
def btc() -> pd.DataFrame:
    df = pd.read_csv(FIXTURE)
    df["ts"] = pd.to_datetime(df.timestamp, utc=True).dt.as_unit("ns").astype("int64")
    return df


def candles_values(df: pd.DataFrame, specs: tuple[str, ...]) -> dict[str, np.ndarray]:
    return compute(specs, df.ts, df.open, df.high, df.low, df.close, df.volume)


def test_hand_worked_values() -> None:
    fs = FeatureSet(
        [
            "ret:1",
            "ret:2",
            "dist:sma_2",
            "rel:atr_2",
            "raw:rsi_2",
            "pos:dc_upper_2:dc_lower_2",
            "width:dc_upper_2:dc_lower_2",
        ],
        ["sma:2", "atr:2", "rsi:2", "donchian:2"],
    )
    close = [100.0, 110.0, 99.0, 120.0]
    values = {
        "sma_2": [NAN, 105.0, 104.5, 109.5],
        "atr_2": [NAN, NAN, 11.0, 16.0],
        "rsi_2": [NAN, NAN, 40.0, 80.0],
        "dc_upper_2": [NAN, 110.0, 110.0, 120.0],
        "dc_lower_2": [NAN, 100.0, 110.0, 99.0],  # a channel of no width on bar 2
    }
    x = fs.matrix(close, values)
    expected = np.array(
        [
            [NAN, NAN, NAN, NAN, NAN, NAN, NAN],
            [0.1, NAN, 110 / 105 - 1, NAN, NAN, 1.0, 10 / 110],
            [99 / 110 - 1, -0.01, 99 / 104.5 - 1, 11 / 99, 40.0, 0.5, 0.0],
            [120 / 99 - 1, 120 / 110 - 1, 120 / 109.5 - 1, 16 / 120, 80.0, 1.0, 21 / 120],
        ]
    )
    np.testing.assert_allclose(x, expected, rtol=1e-15, atol=0)
    assert fs.max_lag == 2


def test_returns_match_pandas(btc: pd.DataFrame) -> None:
    fs = FeatureSet(["ret:1", "ret:15", "ret:60"], [])
    x = fs.matrix(btc.close, {})
    for j, k in enumerate((1, 15, 60)):
        np.testing.assert_allclose(x[:, j], btc.close.pct_change(k).to_numpy(), rtol=1e-12, equal_nan=True)


def test_one_bar_equals_the_matrix_bit_for_bit(btc: pd.DataFrame) -> None:
    fs = FeatureSet(DEFAULT_FEATURES, DEFAULT_INDICATORS)
    df = btc.iloc[:2500]
    values = candles_values(df, fs.indicators)
    x = fs.matrix(df.close, values)
    closes = df.close.tolist()
    for i in range(len(df)):
        # as the indicator stage hands a bar its values: NaN (warming up) left out
        bar_values = {k: float(v[i]) for k, v in values.items() if v[i] == v[i]}
        row = fs.row(closes[max(0, i - fs.max_lag) : i + 1], bar_values)
        assert np.array_equal(row, x[i], equal_nan=True), i
    assert np.isfinite(x[-1]).all()  # warm by the end: the comparison covered real numbers


def test_no_feature_reads_a_later_bar(btc: pd.DataFrame) -> None:
    fs = FeatureSet(DEFAULT_FEATURES, DEFAULT_INDICATORS)
    df = btc.iloc[:3000].reset_index(drop=True)
    x = fs.matrix(df.close, candles_values(df, fs.indicators))
    rng = np.random.default_rng(7)
    for cut in (400, 1500, 2999):
        later = df.copy()
        scale = rng.uniform(0.9, 1.1, len(df) - cut - 1)
        for col in ("open", "high", "low", "close"):
            later.loc[cut + 1 :, col] *= scale
        later.loc[cut + 1 :, "volume"] *= rng.uniform(0.5, 2.0, len(df) - cut - 1)
        y = fs.matrix(later.close, candles_values(later, fs.indicators))
        assert np.array_equal(y[: cut + 1], x[: cut + 1], equal_nan=True)
        if cut + 1 < len(df):
            assert not np.array_equal(y[cut + 1 :], x[cut + 1 :], equal_nan=True)  # the change was seen


@pytest.mark.parametrize(
    ("features", "indicators", "message"),
    [
        (["mom:5"], [], "unknown feature 'mom:5'"),
        (["ret:0"], [], "K must be a whole number"),
        (["ret"], [], "should look like 'ret:K'"),
        (["raw:rsi_14"], ["rsi:7"], "reads 'rsi_14', which no indicator spec of the set gives"),
        (["pos:bb_upper_20_2"], ["bbands:20:2"], "should look like 'pos:UPPER:LOWER'"),
        (["ret:5", "ret:5"], [], "repeated features"),
        ([], [], "at least one feature"),
        (["raw:x"], ["foo:3"], "unknown indicator 'foo'"),
    ],
)
def test_bad_feature_sets_say_why(features: list[str], indicators: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FeatureSet(features, indicators)
