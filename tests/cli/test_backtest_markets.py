"""`mambo backtest` trades on real market rules, never a silent 0.01 tick.

A coin around 0.46 (the fixture's BTC bars scaled by 1e-5) once had every fill rounded to 0.01, outside
its bar; and half-even rounding cancelled slippage (a 5 bps buy and sell at 10.00 both filled at 10.00).
The prices here are worked out by hand from the bars: a market order decided on bar t fills at bar t+1's
open, moved by the slippage against the trader and put on the tick away from the trader's favour."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path

import pandas as pd
import pytest

FIXTURES = Path(__file__).parents[1] / "fixtures"


def _coin(tmp_path: Path) -> tuple[Path, dict[pd.Timestamp, Decimal]]:
    bars = pd.read_csv(FIXTURES / "btc_perp_1m_5000.csv").head(2_000)
    for col in ("open", "high", "low", "close"):
        bars[col] = (bars[col] * 1e-5).round(7)
    path = tmp_path / "xyz.csv"
    bars.to_csv(path, index=False)
    opens = {
        pd.Timestamp(t, tz="UTC"): Decimal(repr(o)) for t, o in zip(bars.timestamp, bars.open, strict=True)
    }
    return path, opens


def _backtest(data: Path, out: Path, *extra: str) -> tuple[str, pd.DataFrame]:
    done = subprocess.run(
        [sys.executable, "-m", "mambo.cli", "backtest", "--data", str(data), "--symbols", "XYZ/USDT",
         "--param", "sma_cross.fast=10", "--param", "sma_cross.slow=30", "--out", str(out),
         "--data-dir", str(out / "data"), *extra],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    fills = pd.read_csv(out / "trades.csv", dtype=str)
    assert len(fills) > 10
    return done.stdout, fills


def _on(price: Decimal, tick: Decimal, side: str) -> Decimal:
    rounding = ROUND_CEILING if side == "buy" else ROUND_FLOOR
    return (price / tick).quantize(Decimal(1), rounding=rounding) * tick


@pytest.mark.parametrize("bps", ["0", "5"])
def test_a_coin_without_definitions_trades_on_the_tick_of_its_prices(tmp_path: Path, bps: str) -> None:
    data, opens = _coin(tmp_path)
    out, fills = _backtest(data, tmp_path / "out", "--slippage-bps", bps)
    # the fixture's prices are on a 0.25 grid, scaled by 1e-5: the tick they were quoted on
    assert "market binance:XYZ/USDT: no definition found; tick 0.0000025 inferred" in out
    tick, move = Decimal("0.0000025"), Decimal(bps) / 10_000
    for f in fills.itertuples():
        bar_open = opens[pd.Timestamp(f.ts)]
        expected = _on(bar_open * (1 + move if f.side == "buy" else 1 - move), tick, f.side)
        assert Decimal(f.price) == expected, f
        if bps == "0":
            assert Decimal(f.price) == bar_open  # at the open, inside its bar
        else:  # slippage always moves the price against the trader
            assert Decimal(f.price) > bar_open if f.side == "buy" else Decimal(f.price) < bar_open


def test_a_markets_file_gives_the_rules(tmp_path: Path) -> None:
    """ccxt's markets as `exchange.load_markets()` returns them (TICK_SIZE mode), named with --markets."""
    data, opens = _coin(tmp_path)
    markets = tmp_path / "markets.json"
    market = {
        "symbol": "XYZ/USDT",
        "base": "XYZ",
        "quote": "USDT",
        "precision": {"price": 0.0001, "amount": 0.1},
        "limits": {"amount": {"min": 0.1}, "cost": {"min": 5}},
    }
    markets.write_text(json.dumps({"XYZ/USDT": market}))
    out, fills = _backtest(data, tmp_path / "out", "--markets", str(markets), "--slippage-bps", "5")
    assert f"tick 0.0001, step 0.1, min qty 0.1, min notional 5 (from {markets})" in out
    for f in fills.itertuples():
        bar_open = opens[pd.Timestamp(f.ts)]
        move = Decimal("1.0005") if f.side == "buy" else Decimal("0.9995")
        assert Decimal(f.price) == _on(bar_open * move, Decimal("0.0001"), f.side)
        assert Decimal(f.qty) % Decimal("0.1") == 0


def test_a_markets_file_without_the_market_is_refused(tmp_path: Path) -> None:
    data, _ = _coin(tmp_path)
    markets = tmp_path / "markets.json"
    markets.write_text(json.dumps({"exchange": "binance", "markets": {}}))
    done = subprocess.run(
        [sys.executable, "-m", "mambo.cli", "backtest", "--data", str(data), "--symbols", "XYZ/USDT",
         "--markets", str(markets), "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"{markets} has no market binance:XYZ/USDT" in done.stderr
