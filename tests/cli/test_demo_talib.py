"""The history a paper demo leaves, checked against TA-Lib: every stored indicator value equals TA-Lib
run over the stored candles of its market and timeframe (1e-9 relative), and each candle has exactly
one indicator row.

The demo once listed its 1s timeframe twice; every 1s candle then advanced the indicators twice, and
the stored RSI 14 was up to 92% off TA-Lib's while the unit tests, which never read the history, passed.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import talib

from mambo.schemas.events import make_id

_READ = """
import sys, pandas as pd
from mambo.connectors.clickhouse import connect, query_df
client = connect("chdb://" + sys.argv[1], "mambo")
candles = query_df(
    client,
    "SELECT exchange, symbol, timeframe, toUnixTimestamp64Nano(open_time) AS open_time, open, high, low, "
    "close, volume FROM candles FINAL ORDER BY exchange, symbol, timeframe, open_time",
)
indicators = query_df(client, "SELECT event_id, exchange, symbol, timeframe, values FROM indicators")
pd.to_pickle((candles, indicators), sys.argv[2])
"""

Reference = Callable[[pd.DataFrame], dict[str, np.ndarray]]


def _bbands(c: pd.DataFrame) -> dict[str, np.ndarray]:
    upper, middle, lower = talib.BBANDS(c.close.to_numpy(), 20, 2.0, 2.0)
    return {"bb_upper_20_2": upper, "bb_middle_20_2": middle, "bb_lower_20_2": lower}


def _macd(c: pd.DataFrame) -> dict[str, np.ndarray]:
    macd, signal, hist = talib.MACD(c.close.to_numpy(), 12, 26, 9)
    return {"macd_12_26_9": macd, "macd_signal_12_26_9": signal, "macd_hist_12_26_9": hist}


#: TA-Lib's functions for what the demo stores (its default overlays and its strategies' inputs).
TALIB: tuple[Reference, ...] = (
    lambda c: {"ema_20": talib.EMA(c.close.to_numpy(), 20)},
    lambda c: {"rsi_14": talib.RSI(c.close.to_numpy(), 14)},
    lambda c: {"atr_14": talib.ATR(c.high.to_numpy(), c.low.to_numpy(), c.close.to_numpy(), 14)},
    lambda c: {"sma_50": talib.SMA(c.close.to_numpy(), 50), "sma_200": talib.SMA(c.close.to_numpy(), 200)},
    _bbands,
    _macd,
)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.DataFrame]:
    data_dir = tmp_path_factory.mktemp("paper-demo")
    done = subprocess.run(
        [sys.executable, "-m", "mambo.cli", "demo", "--venue", "paper", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    # chdb opens one data folder per process, and the suite's process has its own: read in a child
    out = data_dir / "history.pkl"
    read = subprocess.run(
        [sys.executable, "-c", _READ, str(data_dir / "clickhouse"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert read.returncode == 0, read.stderr[-3000:]
    candles, indicators = pd.read_pickle(out)
    return candles, indicators


def test_each_candle_has_exactly_one_indicator_row(history: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    candles, indicators = history
    assert len(candles) > 1_000
    assert len(indicators) == len(candles)
    assert indicators.event_id.is_unique


def test_stored_indicators_match_talib_over_stored_candles(
    history: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    candles, indicators = history
    stored = dict(zip(indicators.event_id, indicators["values"], strict=True))
    compared = 0
    for (exchange, symbol, tf), bars in candles.groupby(["exchange", "symbol", "timeframe"], sort=False):
        ids = [make_id("indicators", f"{exchange}:{symbol}", tf, int(t)) for t in bars.open_time]
        rows = [stored[i] for i in ids]  # KeyError: a candle without its indicator row
        for reference in TALIB:
            for name, expected in reference(bars).items():
                got = np.array([r.get(name, np.nan) for r in rows])
                # the same warm-up: a value is stored exactly where TA-Lib has one
                np.testing.assert_array_equal(
                    np.isnan(got), np.isnan(expected), err_msg=f"{symbol} {tf} {name}"
                )
                ok = ~np.isnan(expected)
                np.testing.assert_allclose(
                    got[ok], expected[ok], rtol=1e-9, atol=0, err_msg=f"{symbol} {tf} {name}"
                )
                compared += int(ok.sum())
    assert compared > 10_000
