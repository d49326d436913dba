"""`mambo backtest` reads traders' own files as they are: freqtrade's ETH/BTC 5m feather file runs with no
conversion, on Binance's ETH/BTC rules, and its SMA fills are those an independent pandas computation
gives, at the bars' opens (the issue's run filled at 0.10 and 0.09 on a market trading near 0.098)."""

from __future__ import annotations

import subprocess
import sys
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path

import numpy as np
import pandas as pd

from mambo.backtest.data import load_candles

FIXTURES = Path(__file__).parents[1] / "fixtures"
ETH_BTC = FIXTURES / "freqtrade" / "ETH_BTC-5m.feather"
TICK = Decimal("0.000001")  # Binance's ETH/BTC tick (mambo/data/markets.json)


def mambo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mambo.cli", *args], capture_output=True, text=True, timeout=300, check=False
    )


def _on_tick(price: float, side: str) -> Decimal:
    """The open put on the tick, away from the trader's favour (the file's prices have 8 decimals)."""
    rounding = ROUND_CEILING if side == "buy" else ROUND_FLOOR
    return (Decimal(repr(price)) / TICK).quantize(Decimal(1), rounding=rounding) * TICK


def _expected_fills(bars: pd.DataFrame, fast: int, slow: int) -> list[tuple[pd.Timestamp, str, Decimal]]:
    """Long-only SMA crossover, by pandas alone: a cross of the averages of closes on bar t (the sign of
    fast - slow changes; equal averages keep the side) buys or sells at bar t+1's open, on the tick."""
    diff = bars.close.rolling(fast).mean() - bars.close.rolling(slow).mean()
    side = pd.Series(np.sign(diff), index=diff.index).replace(0.0, np.nan).ffill()
    cross = side.where(side.ne(side.shift()) & side.shift().notna(), 0.0).fillna(0.0)
    fills, long = [], False
    for t in np.flatnonzero(cross.to_numpy()):
        if t + 1 == len(bars):
            break  # a cross on the last bar has no next open to fill at
        if (cross.iloc[t] > 0) != long:
            long = not long
            at = t + 1
            action = "buy" if long else "sell"
            fills.append((bars.date.iloc[at], action, _on_tick(float(bars.open.iloc[at]), action)))
    return fills


def test_freqtrade_feather_backtests_unconverted_with_fills_at_bar_opens(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = mambo(
        "backtest",
        "--data",
        str(ETH_BTC),
        "--param",
        "sma_cross.fast=10",
        "--param",
        "sma_cross.slow=30",
        "--out",
        str(out),
        "--data-dir",
        str(tmp_path / "data"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ETH_BTC-5m.feather: freqtrade feather candles, ETH/BTC 5m, 5,760 candles" in done.stdout
    assert "time from column 'date', datetimes (UTC)" in done.stdout
    assert "market binance:ETH/BTC: tick 0.000001, step 0.0001" in done.stdout
    assert "binance:ETH/BTC 5m: 5,760 bars" in done.stdout

    bars = pd.read_feather(ETH_BTC)
    expected = _expected_fills(bars, 10, 30)
    got = pd.read_csv(out / "trades.csv", dtype=str)
    assert len(expected) > 100
    fills = zip(got.ts, got.side, got.price, strict=True)
    assert [(pd.Timestamp(t), side, Decimal(price)) for t, side, price in fills] == expected
    assert set(got.symbol) == {"ETH/BTC"}
    # within a tick of its bar's open (the run filled at 0.10 and 0.09 on a market near 0.098)
    opens = bars.set_index("date").open
    for t, price in zip(got.ts, got.price, strict=True):
        assert abs(Decimal(price) - Decimal(repr(float(opens[pd.Timestamp(t)])))) < TICK


def test_symbols_given_override_the_files_name_and_say_so(tmp_path: Path) -> None:
    """freqtrade's UNITTEST_BTC-5m.feather is its ETH_BTC file under an alias: the trader names the market."""
    out, data = str(tmp_path / "o"), str(tmp_path / "d")
    done = mambo(
        "backtest", "--data", str(ETH_BTC), "--symbols", "kraken:ETH/XBT", "--out", out, "--data-dir", data
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "note: ETH_BTC-5m.feather names ETH/BTC; run as ETH/XBT, as --symbols says" in done.stderr
    assert "market kraken:ETH/XBT: no definition found; tick 0.00000001 inferred" in done.stdout
    assert "kraken:ETH/XBT 5m: 5,760 bars" in done.stdout


def test_a_malformed_file_is_refused_naming_file_format_and_fault(tmp_path: Path) -> None:
    bad = tmp_path / "bars.csv"
    pd.read_feather(ETH_BTC).head(50).rename(columns={"date": "when"}).to_csv(bad, index=False)
    done = mambo(
        "backtest", "--data", str(bad), "--out", str(tmp_path / "o"), "--data-dir", str(tmp_path / "d")
    )
    assert done.returncode == 2
    assert f"error: {bad}: read as CSV: no time column" in done.stderr
    assert "columns found: when, open, high, low, close, volume" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_trades_file_backtests_on_candles_built_from_its_trades(tmp_path: Path) -> None:
    """freqtrade's XRP/ETH trades (its feather trades file) become 5m candles; here pandas builds them."""
    trades = FIXTURES / "freqtrade" / "XRP_ETH-trades.feather"
    frame = load_candles(trades, "XRP/ETH", "binance", "5m")
    raw = pd.read_feather(trades)
    raw["ts"] = pd.to_datetime(raw.timestamp, unit="ms", utc=True)
    bars = (
        raw.set_index("ts").resample("5min").agg({"price": ["first", "max", "min", "last"], "amount": "sum"})
    )
    bars = bars.dropna()
    assert len(frame) == len(bars) > 10
    np.testing.assert_array_equal(frame.open_time, pd.DatetimeIndex(bars.index).as_unit("ns").asi8)
    for mine, theirs in zip(("open", "high", "low", "close"), ("first", "max", "min", "last"), strict=True):
        np.testing.assert_array_equal(getattr(frame, mine), bars["price", theirs].to_numpy(), err_msg=mine)
    np.testing.assert_allclose(frame.volume, bars["amount", "sum"].to_numpy(), rtol=1e-12)

    done = mambo(
        "backtest",
        "--data",
        str(trades),
        "--param",
        "sma_cross.fast=2",
        "--param",
        "sma_cross.slow=4",
        "--timeframe",
        "5m",
        "--out",
        str(tmp_path / "o"),
        "--data-dir",
        str(tmp_path / "d"),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "XRP_ETH-trades.feather: freqtrade feather trades, XRP/ETH, 200 trades" in done.stdout
    assert "built 5m candles from the trades" in done.stdout
    assert f"binance:XRP/ETH 5m: {len(bars)} bars" in done.stdout
