"""`mambo backtest` and `mambo optimize` run as a user runs them: separate processes, fresh folders."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pandas as pd

from mambo.backtest.data import load_candles, parse_time
from mambo.backtest.engine import run_events
from mambo.core.stages import EngineConfig

MAMBO = [sys.executable, "-m", "mambo.cli"]
FIXTURE = Path(__file__).parents[1] / "fixtures" / "btc_perp_1m_5000.csv"


def mambo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MAMBO, *args], capture_output=True, text=True, timeout=300, check=False)


def test_backtest_writes_trades_metrics_and_an_offline_report(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = mambo(
        "backtest",
        "--data",
        str(FIXTURE),
        "--strategy",
        "sma_cross",
        "--param",
        "sma_cross.fast=20",
        "--symbols",
        "binanceusdm:BTC/USDT:USDT",
        "--from",
        "2022-01-01T00:00:00Z",
        "--to",
        "2022-01-03",
        "--fee-taker",
        "0.0004",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert "buy and hold" in done.stdout and "sharpe" in done.stdout

    # the trades are the event path's fills on the same range, written exactly
    frame = load_candles(
        FIXTURE, "BTC/USDT:USDT", "binanceusdm", None, parse_time("2022-01-01"), parse_time("2022-01-03")
    )
    config = EngineConfig(strategy_params={"sma_cross": {"fast": 20}}, fee_taker=Decimal("0.0004"))
    fills = run_events(frame, config).fills
    with (out / "trades.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["ts", "symbol", "side", "price", "qty", "fee"]
    assert len(rows) == len(fills) >= 10
    for row, fill in zip(rows, fills, strict=True):
        assert pd.Timestamp(row["ts"]).value == fill.ts_event and row["ts"].endswith("Z")
        assert (row["symbol"], row["side"]) == ("BTC/USDT:USDT", fill.side)
        assert (Decimal(row["price"]), Decimal(row["qty"]), Decimal(row["fee"])) == (
            fill.price,
            fill.qty,
            fill.fee,
        )

    metrics = json.loads((out / "metrics.json").read_text())
    named = {
        "total_return",
        "annualized_return",
        "volatility",
        "sharpe",
        "sortino",
        "calmar",
        "max_drawdown",
        "max_drawdown_days",
        "win_rate",
        "profit_factor",
        "expectancy",
        "exposure",
        "trades",
        "fees",
    }
    assert named <= set(metrics["strategy"])
    assert {"total_return", "sharpe", "max_drawdown"} <= set(metrics["buy_and_hold"])
    assert metrics["strategy"]["trades"] == len(fills) and metrics["mode"] == "vectorized"
    assert Decimal(metrics["strategy"]["fees"]) == sum(f.fee for f in fills)

    report = (out / "report.html").read_text()
    for title in ("Price and fills", "Equity", "Drawdown", "Monthly returns", "Trade distribution"):
        assert title in report
    assert report.count('class="plotly-graph-div"') == 5
    # plotly.js is inside the page: nothing is fetched from the network
    assert not re.search(r"<script[^>]+src=", report)
    assert "Plotly.newPlot" in report and len(report) > 1_000_000


def test_bad_input_is_refused_with_the_reason_and_no_traceback(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mambo.cli import app

    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,open,high,low,close,volume\n2022-01-01,1,2,0.5,1,3\n2022-01-01,1,2,0.5,1,3\n")
    runner = CliRunner()
    for args, reason in (
        (["--data", str(bad)], "row 2: timestamps must increase"),
        (["--data", str(tmp_path / "none.csv")], "no such file"),
        (["--data", str(FIXTURE), "--strategy", "nope"], "unknown strategy 'nope'"),
        (["--data", str(FIXTURE), "--param", "sma_cross.fast=300"], "must be shorter than slow"),
        (["--data", str(FIXTURE), "--from", "someday"], "bad time 'someday'"),
        (["--data", str(FIXTURE), "--mode", "fastest"], "--mode must be"),
    ):
        done = runner.invoke(app, ["backtest", *args, "--out", str(tmp_path / "out")])
        assert done.exit_code == 2, done.output
        assert reason in done.output and isinstance(done.exception, SystemExit)
    assert not (tmp_path / "out").exists()  # nothing written for a refused run


def test_optimize_stores_its_trials_where_mambo_sql_finds_them(tmp_path: Path) -> None:
    data_dir = tmp_path / "mambo"
    done = mambo(
        "optimize",
        "--data",
        str(FIXTURE),
        "--grid",
        "fast=10,25",
        "--grid",
        "slow=50,100",
        "--folds",
        "1",
        "--jobs",
        "2",
        "--data-dir",
        str(data_dir),
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert "out of sample" in done.stdout
    run_id = re.search(r"stored run ([0-9a-f]{32})", done.stdout)
    assert run_id is not None
    query = (
        "SELECT phase, count() AS n FROM backtest_trials FINAL "
        f"WHERE run_id = '{run_id[1]}' GROUP BY phase ORDER BY phase"
    )
    sql = mambo("sql", query, "--format", "csv", "--data-dir", str(data_dir))
    assert sql.returncode == 0, sql.stderr
    assert list(csv.reader(sql.stdout.splitlines())) == [["phase", "n"], ["test", "1"], ["train", "4"]]
