"""`mambo import` of a freqtrade-style data folder, as a user runs it: every candle and trade lands once
however often it runs (and whichever format carries it), `mambo audit` finds nothing wrong, and
`mambo backtest --data history` trades the imported bars exactly as it trades the file."""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

FIXTURES = Path(__file__).parents[1] / "fixtures"


def mambo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mambo.cli", *args], capture_output=True, text=True, timeout=300, check=False
    )


def _row(out: str, market: str, what: str) -> list[str]:
    """The summary table's cells for one market and kind of data."""
    line = next(x for x in out.splitlines() if market in x and what in x)
    return [c.strip() for c in re.split(r"[│|]", line) if c.strip()]


def _sql(data: Path, query: str) -> list[dict[str, str]]:
    done = mambo("sql", query, "--format", "csv", "--data-dir", str(data))
    assert done.returncode == 0, done.stderr
    return list(csv.DictReader(io.StringIO(done.stdout)))


def test_import_twice_leaves_every_candle_once_and_the_audit_clean(tmp_path: Path) -> None:
    folder = tmp_path / "user_data" / "data" / "binance"
    (folder / "futures").mkdir(parents=True)
    shutil.copy(FIXTURES / "freqtrade" / "ETH_BTC-5m.feather", folder)
    shutil.copy(FIXTURES / "freqtrade" / "XRP_ETH-trades.feather", folder)
    shutil.copy(FIXTURES / "binance" / "XRPETH-aggTrades-2019-10-11.csv", folder)  # the same 200 trades
    for name in ("XRP_USDT_USDT-1h-futures.feather", "XRP_USDT_USDT-1h-mark.feather"):
        shutil.copy(FIXTURES / "freqtrade" / "futures" / name, folder / "futures")
    bars = pd.read_feather(FIXTURES / "freqtrade" / "ETH_BTC-5m.feather")
    gappy = bars.drop(index=[100, 101, 102, 2000])  # two gaps: 3 bars and 1 bar
    gappy.to_csv(folder / "other.csv", index=False)
    data = tmp_path / "data"

    first = mambo("import", str(folder.parent), "--symbols", "LTC/BTC", "--data-dir", str(data))
    assert first.returncode == 0, first.stderr + first.stdout
    assert _row(first.stdout, "binance:ETH/BTC", "5m candles") == [
        "binance:ETH/BTC",
        "5m candles",
        "5,760",
        "5,760",
        "2018-01-10 04:55:00",
        "2018-01-30 04:50:00",
        "none",
    ]
    assert _row(first.stdout, "binance:XRP/ETH", "trades")[2:4] == [
        "400",
        "200",
    ]  # two files, one set of trades
    assert _row(first.stdout, "binance:XRP/USDT:USDT", "1h candles")[2:4] == ["100", "100"]
    gap = _row(first.stdout, "binance:LTC/BTC", "5m candles")
    assert gap[2:4] == ["5,756", "5,756"]
    when = bars.date.iloc[100].strftime("%Y-%m-%d %H:%M:%S")
    assert gap[-1] == f"2 (4 bars), first at {when}"
    assert "XRP_USDT_USDT-1h-mark.feather: a mark series, not traded candles: not imported" in first.stderr
    assert "time from column 'date', datetimes (UTC)" in first.stdout

    again = mambo("import", str(folder.parent), "--symbols", "LTC/BTC", "--data-dir", str(data))
    assert again.returncode == 0, again.stderr
    assert _row(again.stdout, "binance:ETH/BTC", "5m candles")[2:4] == ["5,760", "0"]
    assert _row(again.stdout, "binance:XRP/ETH", "trades")[2:4] == ["400", "0"]

    # raw rows, before any merge or FINAL: every bar and trade once
    candles = _sql(
        data,
        "SELECT symbol, timeframe, count() AS n, uniqExact(open_time) AS bars FROM candles "
        "GROUP BY symbol, timeframe ORDER BY symbol",
    )
    assert candles == [
        {"symbol": "ETH/BTC", "timeframe": "5m", "n": "5760", "bars": "5760"},
        {"symbol": "LTC/BTC", "timeframe": "5m", "n": "5756", "bars": "5756"},
        {"symbol": "XRP/USDT:USDT", "timeframe": "1h", "n": "100", "bars": "100"},
    ]
    assert _sql(data, "SELECT count() AS n, uniqExact(trade_id) AS ids FROM trades") == [
        {"n": "200", "ids": "200"}
    ]
    stored = _sql(
        data,
        "SELECT toUnixTimestamp64Milli(open_time) AS t, open, close FROM candles "
        "WHERE symbol = 'ETH/BTC' ORDER BY open_time LIMIT 3",
    )
    assert [(int(r["t"]), float(r["open"]), float(r["close"])) for r in stored] == [
        (int(t) // 1_000_000, o, c)
        for t, o, c in zip(
            bars.date.astype("int64").head(3), bars.open.head(3), bars.close.head(3), strict=True
        )
    ]

    audit = mambo("audit", "--data-dir", str(data))
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "one candle per bar" in audit.stdout and "hold" in audit.stdout

    # the history by market name trades as the file does
    runs: dict[str, pd.DataFrame] = {}
    for source in ("history", str(FIXTURES / "freqtrade" / "ETH_BTC-5m.feather")):
        out = tmp_path / f"bt-{len(runs)}"
        done = mambo(
            "backtest",
            "--data",
            source,
            "--symbols",
            "ETH/BTC",
            "--timeframe",
            "5m",
            "--param",
            "sma_cross.fast=10",
            "--param",
            "sma_cross.slow=30",
            "--out",
            str(out),
            "--data-dir",
            str(data),
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "binance:ETH/BTC 5m: 5,760 bars" in done.stdout
        runs[source] = pd.read_csv(out / "trades.csv", dtype=str)
    history, file = runs.values()
    assert len(history) > 100
    pd.testing.assert_frame_equal(history, file)


def test_a_folder_of_nothing_and_a_bad_file_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = mambo("import", str(tmp_path / "empty"), "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 2 and "no data files in" in done.stderr
    bad = tmp_path / "ETH_BTC-5m.json"
    bad.write_text("")
    done = mambo("import", str(bad), "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 2
    assert f"skipped: {bad}: empty file (0 bytes)" in done.stderr
