"""The local exchange's Binance USDⓈ-M side, driven by ccxt's own ``binanceusdm`` client (default options,
only its URLs pointed at the local server) over a real recording that crosses the funding time of
2023-04-05 00:00 UTC. Expected figures are worked out here from the recording and Binance's published
formulas, not read back from the exchange."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from collections.abc import AsyncIterator, Coroutine
from decimal import Decimal
from pathlib import Path
from typing import Any

import ccxt
import ccxt.pro
import pytest

from mambo.connectors.ccxt_client import local_urls
from mambo.exchange import serve
from mambo.exchange.binance.futures import FuturesExchange, load_usdm_recording

FIXTURE = Path(__file__).parents[1] / "fixtures" / "binance_usdm" / "btcusdt_20230404_funding.dat.gz"
SECRET = "futures-secret"
SYMBOL = "BTC/USDT:USDT"
FUNDING_TIME = 1680652800000  # 2023-04-05 00:00 UTC
FEE = Decimal("0.0004")  # the default taker fee
# Binance's first BTCUSDT bracket (mambo/data/binance_usdm_leverage_brackets.json, its own reply)
MMR, CUM = Decimal("0.004"), Decimal(0)


def run(coro: Coroutine[Any, Any, None]) -> None:
    return asyncio.run(coro)


def messages() -> list[dict[str, Any]]:
    with gzip.open(FIXTURE, "rt") as f:
        return [json.loads(line.partition(" ")[2])["data"] for line in f]


def last_before(kind: str, ts: int) -> dict[str, Any]:
    """The recording's last message of a kind at or before ``ts`` (event time)."""
    return [m for m in messages() if m["e"] == kind and m["E"] <= ts][-1]


def funding_frame() -> dict[str, Any]:
    """The recording's first mark frame at or after the funding time: the one funding is settled with."""
    return next(m for m in messages() if m["e"] == "markPriceUpdate" and m["E"] >= FUNDING_TIME)


@contextlib.asynccontextmanager
async def running(
    events: list[tuple[int, str, dict[str, Any]]] | None = None, **kwargs: Any
) -> AsyncIterator[tuple[FuturesExchange, Any]]:
    exchange = FuturesExchange(events or load_usdm_recording(FIXTURE), api_secret=SECRET, **kwargs)
    runner, url = await serve(exchange)
    client = ccxt.pro.binanceusdm({"apiKey": "any-key", "secret": SECRET})
    client.urls["api"] = local_urls(client.urls["api"], url)
    try:
        await client.load_markets()
        yield exchange, client
    finally:
        await client.close()
        await runner.cleanup()


def test_markets_and_brackets() -> None:
    async def go() -> None:
        async with running(history_seconds=5) as (_, client):
            m = client.market(SYMBOL)
            assert m["swap"] and m["linear"] and m["settle"] == "USDT" and m["id"] == "BTCUSDT"
            assert m["precision"]["price"] == 0.1 and m["precision"]["amount"] == 0.001
            assert m["limits"]["cost"]["min"] == 5 and m["limits"]["amount"]["min"] == 0.001
            tiers = await client.fetch_leverage_tiers([SYMBOL])
            first = tiers[SYMBOL][0]
            assert (first["maxLeverage"], first["maintenanceMarginRate"], first["maxNotional"]) == (
                125,
                0.004,
                50000,
            )

    run(go())


def test_public_market_data_comes_from_the_recording() -> None:
    async def go() -> None:
        async with running(history_seconds=30) as (exchange, client):
            now = exchange.now_ms
            recorded = [m for m in messages() if m["e"] == "trade" and m["E"] <= now]
            trades = await client.fetch_trades(SYMBOL, limit=20)
            assert [t["id"] for t in trades] == [str(m["t"]) for m in recorded[-20:]]
            candles = await client.fetch_ohlcv(SYMBOL, "1m")
            first_minute = [m for m in recorded if m["T"] // 60000 == candles[0][0] // 60000]
            prices = [float(m["p"]) for m in first_minute]
            assert candles[0][1:5] == [prices[0], max(prices), min(prices), prices[-1]]
            assert candles[0][5] == pytest.approx(sum(float(m["q"]) for m in first_minute))

    run(go())


def test_trade_funding_and_reduce_only_through_ccxt() -> None:
    async def go() -> None:
        async with running(history_seconds=60, balance="100") as (exchange, client):
            await client.set_leverage(10, SYMBOL)
            rate = await client.fetch_funding_rate(SYMBOL)
            mark = last_before("markPriceUpdate", exchange.now_ms)
            assert rate["markPrice"] == float(mark["p"]) and rate["indexPrice"] == float(mark["i"])
            assert rate["fundingRate"] == float(mark["r"]) and rate["fundingTimestamp"] == FUNDING_TIME

            book = last_before("bookTicker", exchange.now_ms)
            buy = await client.create_order(SYMBOL, "market", "buy", 0.01)
            entry = Decimal(book["a"])
            assert buy["status"] == "closed" and Decimal(str(buy["average"])) == entry
            # ccxt maps Binance's futures codes by host (fapi.binance.com): on a local URL it raises the
            # base ExchangeError, with Binance's code and message
            with pytest.raises(ccxt.ExchangeError, match="-2022"):  # more than the position: refused
                await client.create_order(SYMBOL, "market", "sell", 0.02, params={"reduceOnly": True})

            (pos,) = await client.fetch_positions([SYMBOL])
            assert pos["side"] == "long" and pos["contracts"] == 0.01 and pos["leverage"] == 10
            # Binance's cross liquidation price of a lone long: (WB + cum − q·EP) / (q·MMR − q)
            q, wallet = (
                Decimal("0.01"),
                Decimal(100) - (entry * Decimal("0.01") * FEE).quantize(Decimal("1e-8")),
            )
            assert Decimal(str(pos["liquidationPrice"])) == pytest.approx(
                (wallet + CUM - q * entry) / (q * MMR - q)
            )

            # across the funding time: the long pays qty × mark × rate of the funding frame
            await exchange.advance((FUNDING_TIME + 5000 - exchange.now_ms) / 1000)
            funding = funding_frame()
            expected = -q * Decimal(funding["p"]) * Decimal(funding["r"])
            history = await client.fetch_funding_rate_history(SYMBOL)
            assert [(h["timestamp"], h["fundingRate"]) for h in history] == [
                (FUNDING_TIME, float(funding["r"]))
            ]
            fees = await client.fetch_funding_history(SYMBOL)
            assert [(f["timestamp"], Decimal(str(f["amount"]))) for f in fees] == [
                (FUNDING_TIME, expected.quantize(Decimal("1e-8")))
            ]

            book = last_before("bookTicker", exchange.now_ms)
            sell = await client.create_order(SYMBOL, "market", "sell", 0.01, params={"reduceOnly": True})
            exit_ = Decimal(book["b"])
            assert Decimal(str(sell["average"])) == exit_
            assert await client.fetch_positions([SYMBOL]) == []  # ccxt leaves out flat positions
            realized = q * (exit_ - entry)
            commissions = (entry * q * FEE).quantize(Decimal("1e-8")) + (exit_ * q * FEE).quantize(
                Decimal("1e-8")
            )
            balance = await client.fetch_balance()
            total = Decimal(100) + realized - commissions + expected
            assert Decimal(str(balance["USDT"]["total"])) == total.quantize(Decimal("1e-8"))
            income = await client.fapiPrivateGetIncome({"symbol": "BTCUSDT"})
            by_kind: dict[str, Decimal] = {}
            for row in income:
                by_kind[row["incomeType"]] = by_kind.get(row["incomeType"], Decimal(0)) + Decimal(
                    row["income"]
                )
            assert by_kind == {"COMMISSION": -commissions, "REALIZED_PNL": realized,
                               "FUNDING_FEE": expected.quantize(Decimal("1e-8"))}  # fmt: skip

    run(go())


def test_margin_type_and_refusals() -> None:
    async def go() -> None:
        async with running(history_seconds=10, balance="20") as (_, client):
            await client.set_margin_mode("isolated", SYMBOL)
            with pytest.raises(ccxt.MarginModeAlreadySet):
                await client.set_margin_mode("isolated", SYMBOL)
            await client.set_leverage(1, SYMBOL)
            with pytest.raises(ccxt.ExchangeError, match="-2019"):  # 0.01 BTC at 1x needs ~281 USDT
                await client.create_order(SYMBOL, "market", "buy", 0.01)
            with pytest.raises(ccxt.ExchangeError, match="-4061"):  # hedge mode's sides: one-way mode only
                await client.create_order(SYMBOL, "market", "buy", 0.001, params={"positionSide": "LONG"})
            with pytest.raises(ccxt.ExchangeError, match="-2022"):  # nothing to reduce
                await client.create_order(SYMBOL, "market", "sell", 0.001, params={"reduceOnly": True})

    run(go())


def test_a_leveraged_long_liquidates_when_the_mark_crosses_its_liquidation_price() -> None:
    """The recording's marks move 0.05%: marks after its end take the price down, through the
    liquidation price worked out by Binance's isolated formula."""
    events = load_usdm_recording(FIXTURE)
    end = events[-1][0]

    def mark(ts: int, price: Decimal) -> tuple[int, str, dict[str, Any]]:
        p = str(price)
        frame = {"e": "markPriceUpdate", "E": ts, "s": "BTCUSDT", "p": p, "i": p, "P": p, "r": "0.0001",
                 "T": FUNDING_TIME + 8 * 3600_000}  # fmt: skip
        return (ts, "markPrice", frame)

    async def go() -> None:
        async with running(events, history_seconds=60, balance="1000") as (exchange, client):
            await client.set_margin_mode("isolated", SYMBOL)
            await client.set_leverage(50, SYMBOL)
            entry = Decimal(last_before("bookTicker", exchange.now_ms)["a"])
            await client.create_order(SYMBOL, "market", "buy", 0.1)
            q = Decimal("0.1")
            # the isolated wallet: the initial margin moved in, less the opening fee (mambo.core.margin books
            # every money flow of an isolated position to its own wallet)
            wallet = q * entry / 50 - (q * entry * FEE).quantize(Decimal("1e-8"))
            lp = (wallet + CUM - q * entry) / (q * MMR - q)
            (pos,) = await client.fetch_positions([SYMBOL])
            assert Decimal(str(pos["liquidationPrice"])) == pytest.approx(lp)
            tail = [
                mark(end + 1000, (lp + 1).quantize(Decimal("0.1"))),
                mark(end + 2000, (lp - 1).quantize(Decimal("0.1"))),
            ]
            exchange.events += tail
            await exchange.advance((end + 1000 - exchange.now_ms) / 1000)
            assert exchange.liquidations == []
            await exchange.advance(1)
            (liq,) = exchange.liquidations
            price = (lp - 1).quantize(Decimal("0.1"))
            assert (liq.qty, liq.price, liq.realized_pnl) == (q, price, q * (price - entry))
            # the clearance fee: the market's liquidationFee of the notional, at most the margin left
            # (the long paid the funding of 00:00 on the way)
            funding = funding_frame()
            left = wallet + q * (price - entry) - q * Decimal(funding["p"]) * Decimal(funding["r"])
            assert liq.fee == min(q * price * Decimal("0.012"), left)
            assert await client.fetch_positions([SYMBOL]) == []  # ccxt leaves out flat positions

    run(go())


def test_watch_mark_price_streams_the_recorded_marks() -> None:
    async def go() -> None:
        async with running(history_seconds=10) as (exchange, client):
            task = asyncio.ensure_future(client.watch_mark_price(SYMBOL))
            for _ in range(100):
                if exchange.subscribed("btcusdt@markPrice@1s"):
                    break
                await asyncio.sleep(0.02)
            start = exchange.now_ms
            await exchange.advance(3)
            ticker = await asyncio.wait_for(task, 5)
            first = next(m for m in messages() if m["e"] == "markPriceUpdate" and m["E"] > start)
            assert ticker["markPrice"] == float(first["p"]) and ticker["timestamp"] == first["E"]

    run(go())


def test_bad_recordings_are_refused_with_the_reason(tmp_path: Path) -> None:
    broken = tmp_path / "broken.dat"
    broken.write_text('1 {"stream": "btcusdt@trade", "data": {"e": "trade"\n')
    with pytest.raises(ValueError, match=r"broken.dat:1: not a JSON message"):
        load_usdm_recording(broken)
    unknown = [
        (1, "markPrice", {"e": "markPriceUpdate", "E": 1, "s": "DOGEUSDT", "p": "1", "r": "0", "T": 2})
    ]
    with pytest.raises(ValueError, match="DOGEUSDT: no rules or leverage brackets"):
        FuturesExchange(unknown)
    with pytest.raises(ValueError, match="no trade, bookTicker or markPrice"):
        FuturesExchange([])


def test_the_replay_clock_runs_the_recording_through_its_funding_time() -> None:
    async def go() -> None:
        async with running(speed=200) as (exchange, client):
            await asyncio.wait_for(exchange.finished.wait(), 10)
            assert exchange.now_ms == max(m["E"] for m in messages())
            (rate,) = await client.fetch_funding_rate_history(SYMBOL)
            assert (rate["timestamp"], rate["fundingRate"]) == (FUNDING_TIME, float(funding_frame()["r"]))

    run(go())
