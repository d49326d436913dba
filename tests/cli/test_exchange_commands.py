"""`mambo exchange`, `mambo source`, `mambo backfill` and `mambo sql`, as a user runs them: separate
processes on loopback, a fresh data folder. About a minute on a busy 2-core machine:
four Python processes each import ccxt, two open chdb."""

from __future__ import annotations

import ast
import csv
import io
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.exchange.helpers import recording

MAMBO = [sys.executable, "-m", "mambo.cli"]


def mambo(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MAMBO, *args], capture_output=True, text=True, timeout=timeout, check=False)


def test_backfill_then_sql_holds_exactly_the_range(exchange_url: str, tmp_path: Path) -> None:
    start, end = "2024-08-08T23:55:00", "2024-08-08T23:57:00"
    done = mambo("backfill", "--base-url", exchange_url, "--symbols", "BTC/USDT", "--start", start,
                 "--end", end, "--data-dir", str(tmp_path))  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    trades, _ = recording()
    lo, hi = 1723161300000 * 1_000_000, 1723161420000 * 1_000_000
    btc = np.asarray(trades.keys)[trades.market] == "binance:BTC/USDT"
    expected = int((btc & (trades.ts >= lo) & (trades.ts < hi)).sum())
    assert f"binance BTC/USDT: 2 1m candles, {expected} trades" in done.stdout

    query = (
        "SELECT (SELECT count() FROM trades FINAL) AS trades, (SELECT count() FROM candles FINAL) AS candles"
    )
    out = mambo("sql", query, "--format", "csv", "--data-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert list(csv.DictReader(io.StringIO(out.stdout))) == [{"trades": str(expected), "candles": "2"}]


def test_source_streams_into_the_pipeline(exchange_url: str, tmp_path: Path) -> None:
    done = mambo("source", "--base-url", exchange_url, "--top", "1", "--quote", "USDT", "--timeframe", "1m",
                 "--duration", "6", "--data-dir", str(tmp_path))  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    assert "binance: BTC/USDT" in done.stdout  # the top market by 24h volume of the two
    last = [line for line in done.stdout.splitlines() if line.startswith("{'trades'")][-1]
    counts = ast.literal_eval(last.split(" | ")[0])
    assert counts["trades"] > 0 and counts["quotes"] > 0
