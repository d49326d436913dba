"""``mambo demo --venue paper`` with two accounts from a settings file: each trades its own markets, the
history carries the account on every trading row, and the audit holds."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from tests.cli.test_audit_cli import mambo

SETTINGS = """
[accounts.spot]
markets = ["binance:BTC/USDT", "binance:ETH/USDT"]

[accounts.small]
markets = ["binanceusdm:BTC/USDT:USDT", "binanceusdm:ETH/USDT:USDT"]
initial_cash = "5000"
strategies = ["rsi_reversion"]
"""


def test_a_demo_of_two_accounts(tmp_path: Path) -> None:
    config = tmp_path / "mambo.toml"
    config.write_text(SETTINGS)
    data = tmp_path / "data"
    done = mambo("demo", "--venue", "paper", "--config", str(config), data_dir=data)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "(start 105,000.00) = spot" in done.stdout and "+ small" in done.stdout
    assert "invariants over" in done.stdout and "hold" in done.stdout.splitlines()[-1]
    query = (
        "SELECT account, exchange, count() FROM fills GROUP BY account, exchange ORDER BY account, exchange"
    )
    out = mambo("sql", query, "--format", "csv", data_dir=data)
    assert out.returncode == 0, out.stderr
    rows = [r for r in csv.reader(io.StringIO(out.stdout)) if r][1:]  # after the header
    assert {(r[0], r[1]) for r in rows} == {("small", "binanceusdm"), ("spot", "binance")}
    for table in ("orders", "positions", "equity"):
        out = mambo(
            "sql", f"SELECT DISTINCT account FROM {table} ORDER BY account", "--format", "csv", data_dir=data
        )
        assert [r[0] for r in csv.reader(io.StringIO(out.stdout)) if r][1:] == ["small", "spot"], table
