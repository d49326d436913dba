"""``mambo audit`` as a user runs it: a table, a one-line summary, exit 0 when every invariant holds, 1 on
a violation, 2 when there is no history to audit. In this process on the session's chdb (one database
per test), and as a subprocess after ``mambo demo``."""

from __future__ import annotations

import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest
from clickhouse_connect.driver.client import Client
from rich.console import Console
from typer.testing import CliRunner

from mambo.audit.sql import fills_in_range
from mambo.backtest.data import load_candles
from mambo.cli import app
from mambo.connectors.clickhouse import ClickHouseSink
from mambo.runner import report_audit
from mambo.schemas.events import Candle, Fill, make_id

FIXTURES = Path(__file__).parents[1] / "fixtures"

MINUTE = 60 * 10**9
T0 = 1_723_161_600 * 10**9  # 2024-08-09 00:00 UTC


def candle(event_id: str, close: float) -> Candle:
    return Candle(
        event_id=event_id, ts_event=T0 + MINUTE, ts_init=0, exchange="binance", symbol="BTC/USDT",
        timeframe="1m", open_time=T0, open=100.0, high=101.0, low=99.0, close=close, volume=1.0, trades=0,
    )  # fmt: skip


@pytest.fixture
def audit_cli(clickhouse_dsn: str, clickhouse_db: str, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("MAMBO_CLICKHOUSE__DSN", clickhouse_dsn)
    monkeypatch.setenv("MAMBO_CLICKHOUSE__DATABASE", clickhouse_db)
    return CliRunner()


def test_a_clean_history_exits_0_with_a_one_line_summary(
    audit_cli: CliRunner, clickhouse_client: Client, clickhouse_db: str
) -> None:
    sink = ClickHouseSink(clickhouse_client, clickhouse_db)
    sink.write("candles", [candle(make_id("md.candles", "a"), 100.5)])
    sink.flush()
    done = audit_cli.invoke(app, ["audit"])
    assert done.exit_code == 0, done.output
    assert "one candle per bar" in done.output  # the table
    assert re.search(rf"audit of {clickhouse_db}: 10 invariants over \d+ rows hold", done.output)


def test_a_violation_exits_1_and_shows_an_example(
    audit_cli: CliRunner, clickhouse_client: Client, clickhouse_db: str
) -> None:
    sink = ClickHouseSink(clickhouse_client, clickhouse_db)
    sink.write(
        "candles", [candle(make_id("md.candles", "a"), 100.5), candle(make_id("md.candles", "b"), 100.7)]
    )
    sink.flush()
    done = audit_cli.invoke(app, ["audit"])
    assert done.exit_code == 1, done.output
    row = next(line for line in done.output.splitlines() if "one candle per bar" in line)
    assert "binance:BTC/USDT 1m 2024-08-09 00:00:00.000: 2 candles" in row
    assert "1 of 10 invariants" in done.output and "broken: one candle per bar (1)" in done.output


def test_the_demo_exits_1_when_its_audit_finds_a_violation(
    clickhouse_client: Client, clickhouse_db: str
) -> None:
    """The demo's last step: the audit line, and its status as the demo's exit status."""
    sink = ClickHouseSink(clickhouse_client, clickhouse_db)
    sink.write("candles", [candle(make_id("md.candles", "a"), 100.5)])
    sink.flush()
    console = Console(record=True, width=200)
    assert report_audit(console, clickhouse_client, clickhouse_db) == 0
    sink.write("candles", [candle(make_id("md.candles", "b"), 100.7)])  # a second candle for the bar
    sink.flush()
    assert report_audit(console, clickhouse_client, clickhouse_db) == 1
    text = console.export_text()
    assert "broken: one candle per bar (1)" in text and "`mambo audit` shows which" in text


def test_no_history_exits_2_with_the_reason(
    clickhouse_dsn: str, clickhouse_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAMBO_CLICKHOUSE__DSN", clickhouse_dsn)
    monkeypatch.setenv("MAMBO_CLICKHOUSE__DATABASE", "no_history_here")
    done = CliRunner().invoke(app, ["audit"])
    assert done.exit_code == 2
    assert "holds no Mambo history" in done.output


def mambo(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mambo.cli", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module", params=["paper", "exchange"])
def demo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A demo run on each venue: its data folder and what it printed."""
    data_dir = tmp_path_factory.mktemp(f"demo-{request.param}")
    done = mambo("demo", "--venue", request.param, data_dir=data_dir)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    return data_dir, done.stdout


def test_the_demo_ends_with_the_audit_line(demo: tuple[Path, str]) -> None:
    _, out = demo
    last = out.strip().splitlines()[-2:]  # the line may wrap
    assert re.search(r"audit of mambo: .*invariants over [\d,]+ rows", " ".join(last)), out[-2000:]


def test_a_demo_history_passes_the_audit(demo: tuple[Path, str]) -> None:
    data_dir, _ = demo
    done = mambo("audit", data_dir=data_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "10 invariants over" in done.stdout and "hold" in done.stdout


def test_a_sub_dollar_backtests_fills_lie_within_its_bars(
    tmp_path: Path, clickhouse_client: Client, clickhouse_db: str
) -> None:
    """The audit's fill check over a backtest's output. A backtest keeps no history of its own (only
    trades.csv: its fills), so its candles and fills are written to a history here and audited; the
    other invariants need the orders, positions and equity a backtest does not record.

    The market: the fixture's BTC bars scaled by 1e-5 (prices around 0.46, on a 1e-5 tick)."""
    bars = pd.read_csv(FIXTURES / "btc_perp_1m_5000.csv").head(2_000)
    for col in ("open", "high", "low", "close"):
        bars[col] = (bars[col] * 1e-5).round(7)
    data = tmp_path / "xyz.csv"
    bars.to_csv(data, index=False)
    done = subprocess.run(
        [sys.executable, "-m", "mambo.cli", "backtest", "--data", str(data), "--symbols", "XYZ/USDT",
         "--param", "sma_cross.fast=10", "--param", "sma_cross.slow=30", "--out", str(tmp_path / "out"),
         "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    fills = pd.read_csv(tmp_path / "out" / "trades.csv", dtype=str)
    assert len(fills) > 10
    frame = load_candles(data, "XYZ/USDT", "binance")
    sink = ClickHouseSink(clickhouse_client, clickhouse_db)
    sink.write("candles", frame.candles())
    sink.write("fills", [
        Fill(event_id=make_id("fill", i), ts_event=int(pd.Timestamp(f.ts).value), ts_init=0,
             exchange="binance", symbol=f.symbol, fill_id=make_id("fill", i), client_order_id=str(i),
             strategy="sma_cross", side=f.side, price=Decimal(f.price), qty=Decimal(f.qty),
             fee=Decimal(f.fee), fee_currency="USDT", liquidity="taker")
        for i, f in enumerate(fills.itertuples())
    ])  # fmt: skip
    sink.flush()
    finding = fills_in_range(clickhouse_client, clickhouse_db)
    assert finding.checked == len(fills)
    assert finding.ok, (
        f"{finding.violations} of {finding.checked} fills outside their bars, e.g. {finding.example}"
    )
