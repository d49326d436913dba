"""`mambo demo` then `mambo sql`, run as a user runs them: separate processes, a fresh data folder.

The demo runs on its default venue: the local exchange in process, market data through ccxt.pro and
orders through ccxt (about 35 s on the loaded machine; `mambo api --demo`'s tests run the paper one)."""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from mambo.connectors.replay import DEMO_QUOTES, DEMO_TRADES, load_quotes, load_trades

MAMBO = [sys.executable, "-m", "mambo.cli"]
STRATEGIES = ("sma_cross", "rsi_reversion", "macd_cross", "bollinger_breakout")


def mambo(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MAMBO, *args, "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=300, check=False
    )


def rows(out: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(out)))


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("demo")
    done = mambo("demo", "--symbols", "BTC/USDT,ETH/USDT", data_dir=data_dir)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "mambo demo: summary" in done.stdout
    assert "binance:BTC/USDT" in done.stdout
    # the default venue: every order went to the local exchange through ccxt, and each filled there
    sent = re.search(r"(\d+) orders reached the exchange, (\d+) fills came back;", done.stdout)
    assert sent is not None and int(sent[1]) == int(sent[2]) > 0, done.stdout[-2000:]
    return data_dir


def test_help_lists_every_command() -> None:
    out = subprocess.run([*MAMBO, "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("demo", "sql"):
        assert command in out


def test_history_holds_the_run(demo_dir: Path) -> None:
    batch, _ = load_trades(DEMO_TRADES, {"BTC/USDT", "ETH/USDT"})
    tables = ("trades", "candles", "indicators", "signals", "orders", "fills")
    query = "SELECT " + ", ".join(f"(SELECT count() FROM {t} FINAL) AS {t}" for t in tables)
    done = mambo("sql", query, "--format", "csv", data_dir=demo_dir)
    assert done.returncode == 0, done.stderr
    (counts,) = rows(done.stdout)
    assert int(counts["trades"]) == len(batch)
    for table in ("candles", "indicators", "signals", "orders", "fills"):
        assert int(counts[table]) > 0, table


def test_pnl_by_strategy_adds_up_to_the_fills(demo_dir: Path) -> None:
    by_strategy = mambo(
        "sql",
        "SELECT strategy, sum(realized_pnl) AS pnl, sum(fee) AS fees FROM fills FINAL GROUP BY 1 ORDER BY 1",
        "--format",
        "csv",
        data_dir=demo_dir,
    )
    total = mambo(
        "sql", "SELECT sum(realized_pnl) AS pnl FROM fills FINAL", "--format", "csv", data_dir=demo_dir
    )
    assert by_strategy.returncode == 0 and total.returncode == 0, by_strategy.stderr + total.stderr
    parts = rows(by_strategy.stdout)
    assert parts and {p["strategy"] for p in parts} <= {
        "sma_cross",
        "rsi_reversion",
        "macd_cross",
        "bollinger_breakout",
    }

    assert sum(Decimal(p["pnl"]) for p in parts) == Decimal(rows(total.stdout)[0]["pnl"])


def test_table_output_and_bad_sql(demo_dir: Path) -> None:
    ok = mambo(
        "sql", "SELECT symbol, count() AS n FROM trades GROUP BY symbol ORDER BY symbol", data_dir=demo_dir
    )
    assert ok.returncode == 0 and "BTC/USDT" in ok.stdout
    bad = mambo("sql", "SELEC nonsense", data_dir=demo_dir)
    assert bad.returncode == 1 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr


def test_every_book_top_reaches_the_history_and_nothing_stalls(demo_dir: Path) -> None:
    """The exchange demo's history holds every book top of the recording's spot markets (ccxt.pro's
    watch_bids_asks gave the source 1 to 212 of the 9,077 before, as the machine's load went), and a
    clean run reports no stream stalled or disconnected (the demo's 3 s stall threshold closed the
    streams that fell quiet when the replay ended)."""
    quotes, _ = load_quotes(DEMO_QUOTES, {"BTC/USDT", "ETH/USDT"})
    recorded = sum(q.exchange == "binance" for q in quotes)
    query = (
        "SELECT (SELECT count() FROM quotes) AS quotes, (SELECT uniqExact(event_id) FROM quotes) AS ids, "
        "(SELECT count() FROM feed_health WHERE status IN ('stalled', 'disconnected')) AS faults"
    )
    done = mambo("sql", query, "--format", "csv", data_dir=demo_dir)
    assert done.returncode == 0, done.stderr
    (counts,) = rows(done.stdout)
    assert int(counts["quotes"]) == int(counts["ids"]) == recorded == 9_077
    assert int(counts["faults"]) == 0
