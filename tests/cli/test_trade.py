"""``mambo trade`` as a user runs it: where it may trade, keys from the environment and never shown,
and a process killed right after its order went out that restarts without sending it again.

The kill-and-restart test runs two real processes against a local exchange in this process (about
30 s: most of it two interpreters starting); the rest runs in process in well under a second.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from mambo.cli import app
from mambo.connectors.ccxt_client import make_exchange
from mambo.connectors.exchange_broker import exchange_client_id
from mambo.exchange import LocalExchange, serve
from tests.exchange.helpers import recording

ROOT = Path(__file__).resolve().parents[2]
SCRIPTED = "tests.streams.scripted:Scripted"


@pytest.fixture
def no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAMBO_EXCHANGE__API_KEY", raising=False)
    monkeypatch.delenv("MAMBO_EXCHANGE__SECRET", raising=False)


@pytest.mark.parametrize(
    "args",
    [[], ["--sandbox", "--live"], ["--base-url", "http://127.0.0.1:9", "--live"]],
    ids=["nowhere", "sandbox-and-live", "local-and-live"],
)
def test_trade_needs_exactly_one_place_to_trade(args: list[str], no_keys: None) -> None:
    result = CliRunner().invoke(app, ["trade", "--symbols", "BTC/USDT", *args])
    assert result.exit_code == 2
    assert "choose where to trade" in result.output and "--live (real money" in result.output


@pytest.mark.parametrize("where", ["--sandbox", "--live"])
def test_trade_needs_keys_from_the_environment(where: str, no_keys: None) -> None:
    result = CliRunner().invoke(app, ["trade", "--symbols", "BTC/USDT", where])
    assert result.exit_code == 2 and "MAMBO_EXCHANGE__API_KEY and MAMBO_EXCHANGE__SECRET" in result.output


def test_sandbox_mode_pointed_at_the_local_exchange_talks_to_it_alone() -> None:
    """``--sandbox`` is ccxt's sandbox mode; checked against the local exchange, so nothing leaves
    the machine: a sandbox client given a base URL sends every request, signed ones too, there."""

    async def main() -> None:
        trades, quotes = recording()
        runner, url = await serve(LocalExchange(trades, quotes, api_secret="sandbox-secret"))
        client = make_exchange(
            "binance", base_url=url, api_key=SecretStr("k"), secret=SecretStr("sandbox-secret"), sandbox=True
        )
        try:
            assert client.isSandboxModeEnabled
            local = urlsplit(url).netloc
            hosts = {urlsplit(u).netloc for u in client.urls["api"].values() if isinstance(u, str)}
            hosts |= {urlsplit(u).netloc for u in client.urls["api"]["ws"].values() if isinstance(u, str)}
            assert hosts == {local}
            await client.load_markets()
            assert "BTC/USDT" in client.markets
            balance = await client.fetch_balance()  # a signed request
            assert "USDT" in balance["total"]
        finally:
            await client.close()
            await runner.cleanup()

    asyncio.run(main())


def _sql(data_dir: Path, query: str) -> list[dict[str, str]]:
    done = subprocess.run(
        [sys.executable, "-m", "mambo.cli", "sql", query, "--format", "csv", "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return list(csv.DictReader(io.StringIO(done.stdout)))


def test_killed_after_the_order_went_out_restarts_without_sending_it_again(tmp_path: Path) -> None:
    """Run 1 decides a buy and is SIGKILLed by the exchange while the order is placed, before any
    answer. Run 2 (same data, same folder) reconciles the order it left open, books its fill from the
    exchange, then trades on (the scripted sell), and the buy is on the exchange once."""
    key, secret = f"fake-key-{uuid.uuid4().hex}", f"fake-secret-{uuid.uuid4().hex}"
    trades, quotes = recording()
    ex = LocalExchange(trades, quotes, speed=0, history_seconds=30, api_secret=secret)
    since = datetime.fromtimestamp(int(ex.symbols["BTCUSDT"].ts[0]) / 1000, UTC).isoformat()
    runs: list[asyncio.subprocess.Process] = []
    place = ex._new_order

    def place_then_kill_run_1(params: dict[str, str]) -> dict[str, Any]:
        answer = place(params)
        if len(runs) == 1 and runs[0].returncode is None:
            os.kill(runs[0].pid, signal.SIGKILL)  # the order is on the exchange, its answer unsent
        return answer

    ex._new_order = place_then_kill_run_1  # type: ignore[method-assign]  # before serve() builds the routes

    async def run(url: str, duration: str | None) -> asyncio.subprocess.Process:
        args = ["trade", "--base-url", url, "--symbols", "BTC/USDT", "--strategies", SCRIPTED,
                "--timeframe", "1s", "--since", since, "--data-dir", str(tmp_path)]  # fmt: skip
        args += ["--duration", duration] if duration else []
        params = f'{{"{SCRIPTED}": {{"buy_at": 3, "sell_at": 8}}}}'
        env = {**os.environ, "MAMBO_EXCHANGE__API_KEY": key, "MAMBO_EXCHANGE__SECRET": secret,
               "MAMBO_ENGINE__STRATEGY_PARAMS": params}  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mambo.cli", *args, cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        runs.append(proc)
        return proc

    async def main() -> tuple[bytes, bytes]:
        server, url = await serve(ex)
        try:
            first = await run(url, None)
            out1, err1 = await asyncio.wait_for(first.communicate(), 120)
            assert first.returncode == -signal.SIGKILL, err1.decode()[-2000:]
            assert len(ex.orders) == 1
            second = await run(url, "6")
            out2, err2 = await asyncio.wait_for(second.communicate(), 120)
            assert second.returncode == 0, err2.decode()[-2000:]
            return out1 + err1, out2 + err2
        finally:
            await server.cleanup()

    output1, output2 = asyncio.run(main())
    assert b"recovered: 0 past fills booked, 1 open orders reconciled" in output2
    orders = list(ex.orders.values())
    assert [(o.side, o.status) for o in orders] == [("BUY", "FILLED"), ("SELL", "FILLED")]
    assert len({o.client_id for o in orders}) == 2  # the buy once: run 2 asked, found it, sent nothing

    rows = _sql(  # one query: every process start costs seconds
        tmp_path,
        "SELECT 'fill' AS kind, side AS what, toString(price) AS price, toString(qty) AS qty, client_order_id"
        " FROM fills FINAL UNION ALL SELECT 'order', status, '', '', client_order_id FROM orders FINAL",
    )
    fills = sorted((r for r in rows if r["kind"] == "fill"), key=lambda r: r["what"])
    assert [f["what"] for f in fills] == ["buy", "sell"]
    buy = fills[0]
    assert exchange_client_id(buy["client_order_id"]) == orders[0].client_id
    assert Decimal(buy["qty"]) == orders[0].executed
    assert Decimal(buy["price"]) == Decimal(orders[0].fills[0]["price"])
    states = [
        r["what"] for r in rows if r["kind"] == "order" and r["client_order_id"] == buy["client_order_id"]
    ]
    assert sorted(states) == ["filled", "new"]  # written ahead by run 1, filled by run 2

    for output in (output1, output2):  # keys from the environment, in no log line
        assert secret.encode() not in output and key.encode() not in output
