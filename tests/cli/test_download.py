"""`mambo download` against the local exchange, as a user runs it: it fills the history a page at a time,
a run killed midway resumes where the history ends without a duplicate, and what it stored are the
candles of the recorded trades (built here by pandas, independently of the exchange's klines)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from tests.exchange.helpers import recording

MAMBO = [sys.executable, "-m", "mambo.cli"]
SINCE, UNTIL = "2024-08-08T23:54:00", "2024-08-08T23:58:00"  # the recording starts at 23:54:15
ARGS = ("download", "--symbols", "BTC/USDT", "--timeframes", "1s,1m", "--since", SINCE, "--until", UNTIL,
        "--page", "20")  # fmt: skip


def mambo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MAMBO, *args], capture_output=True, text=True, timeout=300, check=False)


def _candles(data: Path) -> pd.DataFrame:
    done = mambo(
        "sql",
        "SELECT timeframe, toUnixTimestamp64Milli(open_time) AS t, open, high, low, close, volume "
        "FROM candles ORDER BY timeframe, t",
        "--format",
        "csv",
        "--data-dir",
        str(data),
    )
    assert done.returncode == 0, done.stderr
    return pd.read_csv(io.StringIO(done.stdout))


def _from_trades(step: str) -> pd.DataFrame:
    """OHLCV bars of the recorded BTC/USDT trades in [SINCE, UNTIL), by pandas."""
    trades, _ = recording()
    btc = np.asarray(trades.keys)[trades.market] == "binance:BTC/USDT"
    df = pd.DataFrame(
        {"ts": pd.to_datetime(trades.ts[btc], utc=True), "price": trades.price[btc], "qty": trades.qty[btc]}
    )
    df = df[(df.ts >= pd.Timestamp(SINCE, tz="UTC")) & (df.ts < pd.Timestamp(UNTIL, tz="UTC"))]
    bars = (
        df.set_index("ts")
        .resample(step.replace("m", "min"))
        .agg({"price": ["first", "max", "min", "last"], "qty": "sum"})
        .dropna()
    )
    bars.columns = ["open", "high", "low", "close", "volume"]
    return bars.reset_index()


def test_download_resumes_after_a_kill_without_duplicates(exchange_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    cmd = [*MAMBO, *ARGS, "--base-url", exchange_url, "--data-dir", str(data)]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    pages = 0
    for line in proc.stdout:
        if "BTC/USDT 1s: stored up to" in line:
            pages += 1
            if pages == 3:
                proc.send_signal(signal.SIGKILL)  # midway: 60 of the ~225 one-second bars are in
                break
    proc.wait(timeout=60)
    assert pages == 3 and proc.returncode == -signal.SIGKILL

    resumed = mambo(*ARGS, "--base-url", exchange_url, "--data-dir", str(data))
    assert resumed.returncode == 0, resumed.stderr
    assert "binance BTC/USDT 1s: resuming after 2024-08-08 23:55:" in resumed.stdout

    got = _candles(data)
    for tf in ("1s", "1m"):
        mine = got[got.timeframe == tf].reset_index(drop=True)
        expected = _from_trades(tf)
        assert len(expected) > (200 if tf == "1s" else 3)
        assert mine.t.tolist() == (expected.ts.astype("int64") // 1_000_000).tolist()  # each bar once
        for col in ("open", "high", "low", "close"):
            np.testing.assert_array_equal(
                mine[col].to_numpy(), expected[col].to_numpy(), err_msg=f"{tf} {col}"
            )
        np.testing.assert_allclose(mine.volume, expected.volume, rtol=1e-9)

    again = mambo(*ARGS, "--base-url", exchange_url, "--data-dir", str(data))
    assert again.returncode == 0, again.stderr
    assert "binance BTC/USDT 1m: 0 new candles; history 4 candles" in again.stdout
    assert _candles(data).equals(got)
    audit = mambo("audit", "--data-dir", str(data))
    assert audit.returncode == 0, audit.stdout + audit.stderr
    # the exchange's market definitions are kept for backtests of this history
    assert (data / "markets" / "binance.json").is_file()


def test_an_unknown_market_is_refused(exchange_url: str, tmp_path: Path) -> None:
    done = mambo(
        "download", "--symbols", "NOPE/USDT", "--base-url", exchange_url, "--data-dir", str(tmp_path)
    )
    assert done.returncode == 1
    assert "binance has no market NOPE/USDT" in done.stderr
