"""``mambo backtest`` with several markets: one account trades them all (a portfolio backtest), or each
its own with ``--each``. Checked against the engine's run_portfolio over the same candles."""

from __future__ import annotations

import csv
import json
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mambo.backtest.data import load_candles
from mambo.backtest.portfolio import run_portfolio
from mambo.cli import app
from mambo.connectors.markets import market_rules
from mambo.core.stages import EngineConfig

FIXTURE = Path(__file__).parents[1] / "fixtures" / "btc_perp_1m_5000.csv"
ARGS = ["--strategy", "sma_cross", "--param", "sma_cross.fast=10", "--param", "sma_cross.slow=40"]


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    """The fixture's first 2,000 bars as BTC, and a second market at a fifteenth of the price."""
    lines = FIXTURE.read_text().splitlines()[:2001]
    btc, eth = tmp_path / "btc.csv", tmp_path / "eth.csv"
    btc.write_text("\n".join(lines) + "\n")
    scaled = [lines[0]] + [
        ",".join([r[0], *(f"{float(x) / 15:.2f}" for x in r[1:5]), r[5]])
        for r in (ln.split(",") for ln in lines[1:])
    ]
    eth.write_text("\n".join(scaled) + "\n")
    return [btc, eth]


def test_several_markets_trade_from_one_account(files: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["backtest", "--data", str(files[0]), "--data", str(files[1]), "--symbols", "BTC/USDT,ETH/USDT"]
    done = CliRunner().invoke(app, [*args, *ARGS, "--out", str(out), "--data-dir", str(tmp_path / "d")])
    assert done.exit_code == 0, done.output
    assert "one account over 2 markets" in done.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["markets"]) == {"binance:BTC/USDT", "binance:ETH/USDT"}
    rows = list(csv.DictReader((out / "trades.csv").open()))
    assert len(rows) == metrics["account"]["trades"] > 0
    assert {r["symbol"] for r in rows} == {"BTC/USDT", "ETH/USDT"}
    assert (out / "report.html").read_text().count("price and fills") == 2
    # the same as the engine over the same candles and rules
    frames = [load_candles(f, s, "binance") for f, s in zip(files, ("BTC/USDT", "ETH/USDT"), strict=True)]
    config = EngineConfig(strategies=("sma_cross",), strategy_params={"sma_cross": {"fast": 10, "slow": 40}})
    rules = {f.key: market_rules(f.key, f.close, data_dir=tmp_path / "d").market for f in frames}
    result = run_portfolio(frames, config, rules)
    assert [(r["side"], Decimal(r["price"]), Decimal(r["qty"])) for r in rows] == [
        (f.side, f.price, f.qty) for f in result.fills
    ]
    assert Decimal(metrics["account"]["final_equity"]) == result.final_equity


def test_each_market_on_its_own_account(files: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["backtest", "--data", str(files[0]), "--data", str(files[1]), "--symbols", "BTC/USDT,ETH/USDT"]
    done = CliRunner().invoke(
        app, [*args, *ARGS, "--each", "--out", str(out), "--data-dir", str(tmp_path / "d")]
    )
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in out.iterdir()) == ["binance_BTC_USDT", "binance_ETH_USDT"]


def test_the_same_market_twice_is_refused(files: list[Path], tmp_path: Path) -> None:
    done = CliRunner().invoke(
        app, ["backtest", "--data", str(files[0]), "--data", str(files[0]), "--out", str(tmp_path / "o")]
    )
    assert done.exit_code == 2
    assert "binance:BTC/USDT given more than once" in done.output
