"""``mambo trade`` on a futures exchange (issue 16's Live): ccxt's ``binanceusdm`` behind the same explicit
flags as spot, here on the local exchange's Binance USD-M side replaying BTCUSDT across the funding time
of 2023-04-05 00:00 UTC, with a futures account (10x cross) in the settings.

One account, two books that share no code path but the recording: the exchange's (its userTrades,
income and balance) and Mambo's history (fills, funding payments, equity in ClickHouse). The position
a scripted strategy opens before the funding time and closes after it pays the funding both agree on,
worked from the recording's funding frame (``-qty x mark x rate``); and Mambo's wallet ends at the
exchange's balance to the cent. ``--sandbox`` with binanceusdm is refused with the reason (Binance's
futures testnet is gone). About 25 s: the replay at 4x real time, and the process starting."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from mambo.cli import app
from mambo.exchange import serve
from mambo.exchange.binance.futures import FuturesExchange, load_usdm_recording

from .test_trade import ROOT, SCRIPTED, _sql

FIXTURE = ROOT / "tests" / "fixtures" / "binance_usdm" / "btcusdt_20230404_funding.dat.gz"
FUNDING_TIME = 1680652800000  # 2023-04-05 00:00 UTC
MARKET = "binanceusdm:BTC/USDT:USDT"
FUTURES = {"leverage": 10, "margin_mode": "cross"}
FILLS = (
    "SELECT side, toString(price) AS price, toString(qty) AS qty, toString(fee) AS fee,"
    " toString(realized_pnl) AS pnl"
)


def test_sandbox_futures_is_refused_with_the_reason() -> None:
    env = {"MAMBO_EXCHANGE__API_KEY": "k", "MAMBO_EXCHANGE__SECRET": "s"}
    result = CliRunner().invoke(
        app, ["trade", "--exchange", "binanceusdm", "--symbols", "BTC/USDT:USDT", "--sandbox"], env=env
    )
    assert result.exit_code != 0
    assert "futures testnet is gone" in result.output and "demo trading" in result.output


def funding_frame() -> dict[str, Any]:
    with gzip.open(FIXTURE, "rt") as f:
        frames = [json.loads(line.partition(" ")[2])["data"] for line in f]
    return next(m for m in frames if m["e"] == "markPriceUpdate" and m["E"] >= FUNDING_TIME)


def usdm(secret: str) -> FuturesExchange:
    """The local USD-M exchange on the recording, 60 s in (40 s before the funding time), at 4x; its
    replay clock starts when a process connects (a slow start must not eat the 40 s)."""
    return FuturesExchange(load_usdm_recording(FIXTURE), api_secret=secret, balance="10000", speed=4,
                           history_seconds=60, wait_for_client=True)  # fmt: skip


async def trade(url: str, data: Path, key: str, secret: str, duration: str, params: dict[str, int]) -> bytes:
    """A ``mambo trade`` process on the local USD-M exchange at ``url``: the futures account (10x
    cross) of the settings in the environment, the scripted strategy with ``params``; its output."""
    args = ["trade", "--exchange", "binanceusdm", "--base-url", url, "--symbols", "BTC/USDT:USDT",
            "--strategies", SCRIPTED, "--timeframe", "1s", "--duration", duration,
            "--data-dir", str(data)]  # fmt: skip
    env = {**os.environ, "MAMBO_EXCHANGE__API_KEY": key, "MAMBO_EXCHANGE__SECRET": secret,
           "MAMBO_ENGINE__STRATEGY_PARAMS": json.dumps({SCRIPTED: params}),
           "MAMBO_ACCOUNTS__MAIN__MARKETS": json.dumps([MARKET]),
           "MAMBO_ACCOUNTS__MAIN__INITIAL_CASH": "10000",
           "MAMBO_ACCOUNTS__MAIN__FUTURES": json.dumps(FUTURES)}  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mambo.cli", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, out.decode()[-3000:]
    return out


def test_a_futures_account_trades_on_binanceusdm_and_books_what_the_exchange_books(tmp_path: Path) -> None:
    key, secret = f"key-{uuid.uuid4().hex}", f"secret-{uuid.uuid4().hex}"
    ex = usdm(secret)  # at 4x, the buy on the 3rd candle, the sell on the 60th

    async def main() -> bytes:
        server, url = await serve(ex)
        try:
            return await trade(url, tmp_path, key, secret, "20", {"buy_at": 3, "sell_at": 60})
        finally:
            await server.cleanup()

    output = asyncio.run(main())
    assert secret.encode() not in output and key.encode() not in output

    # the exchange's book: a buy before the funding time, a sell after it
    trades = ex.user_trades
    assert [t["side"] for t in trades] == ["BUY", "SELL"], trades
    assert trades[0]["time"] < FUNDING_TIME < trades[1]["time"]
    qty = Decimal(trades[0]["qty"])
    frame = funding_frame()
    expected_funding = -qty * Decimal(frame["p"]) * Decimal(frame["r"])
    income = {(r["incomeType"], r["time"]): Decimal(r["income"]) for r in ex.income}
    # (the exchange shows amounts to 8 decimals, as Binance does; its books hold them exact)
    assert income[("FUNDING_FEE", FUNDING_TIME)] == expected_funding.quantize(Decimal("1e-8"))

    # Mambo's book, from its history
    fills = _sql(tmp_path, FILLS + " FROM fills FINAL ORDER BY ts_event")
    assert [(f["side"], Decimal(f["price"]), Decimal(f["qty"]), Decimal(f["fee"])) for f in fills] == [
        (t["side"].lower(), Decimal(t["price"]), Decimal(t["qty"]), Decimal(t["commission"])) for t in trades
    ]
    assert Decimal(fills[1]["pnl"]) == Decimal(trades[1]["realizedPnl"])
    (payment,) = _sql(tmp_path, "SELECT toUnixTimestamp64Milli(ts_event) AS at, toString(amount) AS amount,"
                                " toString(rate) AS rate FROM funding_payments FINAL")  # fmt: skip
    assert (int(payment["at"]), Decimal(payment["amount"])) == (FUNDING_TIME, expected_funding)
    assert Decimal(payment["rate"]) == Decimal(frame["r"])
    # the wallet: Mambo's last equity (flat: the wallet balance) is the exchange's balance
    (last,) = _sql(
        tmp_path, "SELECT toString(equity) AS equity FROM equity FINAL ORDER BY ts_event DESC LIMIT 1"
    )
    balance = ex.account.wallet_balance
    assert Decimal(last["equity"]) == balance
    worked = (
        Decimal(10000)
        + Decimal(trades[1]["realizedPnl"])
        - sum((Decimal(t["commission"]) for t in trades), Decimal(0))
        + expected_funding
    )
    assert balance == worked


def test_the_usdm_exchange_command_replays_from_its_first_client_on() -> None:
    """``mambo exchange --usdm`` as the README runs it: the banner names the URL and says the replay
    waits; until a client connects the marks stand where the history ends, then they move on."""

    async def premium(session: Any, url: str) -> int:
        async with session.get(f"{url}/fapi/v1/premiumIndex", params={"symbol": "BTCUSDT"}) as r:
            return int((await r.json())["time"])

    async def main() -> None:
        import aiohttp
        import ccxt.pro

        from mambo.connectors.ccxt_client import local_urls

        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mambo.cli", "exchange", "--usdm", str(FIXTURE), "--port", "0",
            "--speed", "20", "--history-seconds", "30", cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            banner = []
            while not any("starts when the first client connects" in line for line in banner):
                line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
                assert line, "the exchange ended: " + "".join(banner)
                banner.append(line)
            url = next(w for line in banner for w in line.split() if w.startswith("http://"))
            async with aiohttp.ClientSession() as session:
                first = await premium(session, url)
                await asyncio.sleep(1.5)
                assert await premium(session, url) == first  # no client yet: the clock waits
                client = ccxt.pro.binanceusdm()
                client.urls["api"] = local_urls(client.urls["api"], url)
                try:
                    await client.load_markets()
                    mark = await asyncio.wait_for(client.watch_mark_price("BTC/USDT:USDT"), 30)
                    assert mark["markPrice"] > 0
                    await asyncio.sleep(1.5)  # at 20x: about 30 s of the recording
                    assert await premium(session, url) > first + 10_000
                finally:
                    await client.close()
        finally:
            proc.terminate()
            await proc.wait()

    asyncio.run(main())


def test_a_restart_recovers_the_futures_position_and_books_its_funding(tmp_path: Path) -> None:
    """``mambo trade`` stopped with a long open before the funding time, restarted (it recovers the
    account from its history): the restarted process pays the funding on the recovered position and
    closes it, and Mambo's books (fills, funding, wallet) are still the exchange's to the decimal."""
    key, secret = f"key-{uuid.uuid4().hex}", f"secret-{uuid.uuid4().hex}"
    ex = usdm(secret)

    async def main() -> bytes:
        server, url = await serve(ex)
        try:
            # about 16 s of the recording
            await trade(url, tmp_path, key, secret, "4", {"buy_at": 3, "sell_at": 10_000})
            await ex.stop()  # the replay waits for the next process (the funding time is still ahead)
            assert [t["side"] for t in ex.user_trades] == ["BUY"]
            assert ex.now_ms < FUNDING_TIME
            return await trade(url, tmp_path, key, secret, "20", {"buy_at": 10_000, "sell_at": 50})
        finally:
            await server.cleanup()

    output = asyncio.run(main())
    assert b"recovered: 1 past fills booked" in output
    trades = ex.user_trades
    assert [t["side"] for t in trades] == ["BUY", "SELL"], trades
    assert trades[0]["time"] < FUNDING_TIME < trades[1]["time"]
    frame = funding_frame()
    expected_funding = -Decimal(trades[0]["qty"]) * Decimal(frame["p"]) * Decimal(frame["r"])
    (payment,) = _sql(tmp_path, "SELECT toString(amount) AS amount FROM funding_payments FINAL")
    assert Decimal(payment["amount"]) == expected_funding
    fills = _sql(tmp_path, FILLS + " FROM fills FINAL ORDER BY ts_event")
    assert [(f["side"], Decimal(f["price"]), Decimal(f["qty"]), Decimal(f["fee"])) for f in fills] == [
        (t["side"].lower(), Decimal(t["price"]), Decimal(t["qty"]), Decimal(t["commission"])) for t in trades
    ]
    assert Decimal(fills[1]["pnl"]) == Decimal(trades[1]["realizedPnl"])
    (last,) = _sql(
        tmp_path, "SELECT toString(equity) AS equity FROM equity FINAL ORDER BY ts_event DESC LIMIT 1"
    )
    assert Decimal(last["equity"]) == ex.account.wallet_balance
