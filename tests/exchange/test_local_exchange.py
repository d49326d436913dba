"""The local exchange through ccxt and raw WebSocket clients: data agrees with the recording, the
protocol is Binance's, orders match with exact money, and every fault does what it says.

Paused exchanges (``speed=0``) moved by ``advance`` keep these deterministic. About 6 s in all.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import ccxt
import ccxt.async_support as ccxt_async
import numpy as np
import pandas as pd
import pytest
from pydantic import SecretStr

import mambo
from mambo.connectors.ccxt_client import make_exchange
from mambo.connectors.errors import Backoff, RateLimited, with_retry
from mambo.connectors.markets import market_from_ccxt
from mambo.exchange import LocalExchange, serve
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import Quote
from tests.exchange.helpers import recording, released_trade_ids, running_exchange


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_rest_answers_agree_with_the_recording() -> None:
    async def main() -> None:
        async with running_exchange(speed=0, history_seconds=180) as (ex, client):
            sym = ex.symbols["BTCUSDT"]
            n = sym.released
            assert 0 < n < len(sym.ts)
            trades = await client.fetch_trades("BTC/USDT", since=int(sym.ts[0]), limit=1000)
            assert [t["id"] for t in trades] == [str(i) for i in sym.trade_id[:1000]]
            assert [t["price"] for t in trades] == sym.price[:1000].tolist()
            assert [t["amount"] for t in trades] == sym.qty[:1000].tolist()
            assert [t["side"] for t in trades] == ["sell" if m else "buy" for m in sym.buyer_maker[:1000]]
            # the latest trades, the default when no start is given
            latest = await client.fetch_trades("BTC/USDT", limit=5)
            assert [t["id"] for t in latest] == released_trade_ids(ex, "BTCUSDT", n - 5)

            # klines: the released trades resampled independently with pandas
            df = pd.DataFrame({"ts": sym.ts[:n], "p": sym.price[:n], "q": sym.qty[:n]})
            df["t"] = df.ts - df.ts % 60_000
            expected = df.groupby("t").agg(o=("p", "first"), h=("p", "max"), l=("p", "min"), c=("p", "last"),
                                           v=("q", "sum"))  # fmt: skip
            since = int(expected.index[0])
            ohlcv = await client.fetch_ohlcv("BTC/USDT", "1m", since=since, limit=10)
            got = pd.DataFrame(ohlcv, columns=["t", "o", "h", "l", "c", "v"]).set_index("t")
            pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-12)

            book = await client.fetch_order_book("BTC/USDT")
            quote = sym.last_quote()
            assert quote is not None
            assert book["bids"][0] == [quote.bid, quote.bid_qty]
            assert book["asks"][0] == [quote.ask, quote.ask_qty]
            ticker = await client.fetch_ticker("BTC/USDT")
            assert ticker["last"] == sym.price[n - 1]
            assert ticker["baseVolume"] == pytest.approx(float(sym.qty[:n].sum()))

    run(main())


def test_signed_requests_need_the_right_secret() -> None:
    async def main() -> None:
        async with running_exchange(speed=0, history_seconds=10) as (_, client):
            balance = await client.fetch_balance()
            assert balance["USDT"]["free"] == 100_000
            wrong = make_exchange("binance", base_url=client.base_url, api_key=SecretStr("k"),
                                  secret=SecretStr("not-the-secret"))  # fmt: skip
            try:
                await wrong.load_markets()
                with pytest.raises(ccxt.AuthenticationError):
                    await wrong.fetch_balance()
            finally:
                await wrong.close()
            url = f"{client.base_url}/api/v3/account?timestamp=1&signature=x"
            async with aiohttp.ClientSession() as http, http.get(url) as resp:
                assert resp.status == 401
                assert (await resp.json())["code"] == -2014

    run(main())


@pytest.mark.parametrize("status", ["429", "418"])
def test_rate_limit_answers_are_respected(status: str) -> None:
    async def main() -> None:
        async with running_exchange(speed=0, history_seconds=10) as (ex, client):
            await ex.inject(status, count=1, seconds=1.0)
            ticker = await with_retry(
                lambda: client.fetch_ticker("BTC/USDT"),
                what="ticker",
                backoff=Backoff(base=0.01),
                client=client,
            )
            assert ticker["last"] > 0
            log = [(t, code) for t, path, code in ex.request_log if path.endswith("/ticker/24hr")]
            assert log[0][1] == int(status)
            assert log[-1][1] == 200
            # the retry came no sooner than Retry-After, and (418) nothing got through during the ban
            assert log[-1][0] - log[0][0] >= 1.0
            assert all(code == int(status) for _, code in log[:-1])

    run(main())


def test_rate_limited_error_carries_retry_after() -> None:
    async def main() -> None:
        async with running_exchange(speed=0, history_seconds=10) as (ex, client):
            await ex.inject("429", count=1, seconds=3.0)
            with pytest.raises(RateLimited) as info:
                await with_retry(lambda: client.fetch_ticker("BTC/USDT"), what="t", client=client,
                                 backoff=Backoff(attempts=1))  # fmt: skip
            assert info.value.retry_after == 3.0
            assert isinstance(info.value.__cause__, ccxt.DDoSProtection)

    run(main())


async def _frames(ws: aiohttp.ClientWebSocketResponse, timeout: float = 0.3) -> list[str]:
    out = []
    while True:
        try:
            msg = await ws.receive(timeout=timeout)
        except TimeoutError:
            return out
        if msg.type != aiohttp.WSMsgType.TEXT:
            return out
        out.append(msg.data)


def test_websocket_streams_single_and_combined() -> None:
    async def main() -> None:
        async with running_exchange(speed=0, history_seconds=5) as (ex, client):
            ws_url = client.base_url.replace("http", "ws")
            sym = ex.symbols["BTCUSDT"]
            start = sym.released
            async with aiohttp.ClientSession() as http:
                combined = await http.ws_connect(f"{ws_url}/stream?streams=btcusdt@trade/btcusdt@bookTicker")
                single = await http.ws_connect(f"{ws_url}/ws/btcusdt@aggTrade")
                ctl = await http.ws_connect(f"{ws_url}/ws")
                await ctl.send_str(
                    json.dumps({"method": "SUBSCRIBE", "params": ["ethusdt@kline_1m"], "id": 7})
                )
                assert json.loads((await ctl.receive()).data) == {"result": None, "id": 7}
                await ctl.send_str(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 8}))
                assert json.loads((await ctl.receive()).data) == {"result": ["ethusdt@kline_1m"], "id": 8}
                await ex.advance(5)
                frames = [json.loads(f) for f in await _frames(combined)]
                trades = [f["data"] for f in frames if f["stream"] == "btcusdt@trade"]
                books = [f["data"] for f in frames if f["stream"] == "btcusdt@bookTicker"]
                assert [t["t"] for t in trades] == sym.trade_id[start : sym.released].tolist()
                # Binance spot's fields, and the recorded time (E, as Binance's futures frames have it)
                assert books and all(set(b) == {"u", "s", "b", "B", "a", "A", "E"} for b in books)
                recorded = {
                    q.ts_event // 1_000_000: (q.bid, q.ask) for q in sym.quotes[: sym.quotes_released]
                }
                assert all(recorded[b["E"]] == (float(b["b"]), float(b["a"])) for b in books)
                agg = [json.loads(f) for f in await _frames(single)]
                assert [a["a"] for a in agg] == [t["t"] for t in trades]
                klines = [json.loads(f) for f in await _frames(ctl)]
                assert klines and all(k["e"] == "kline" and k["s"] == "ETHUSDT" for k in klines)
                for ws in (combined, single, ctl):
                    await ws.close()

    run(main())


def test_faults_gap_duplicate_malformed_disconnect() -> None:
    async def main() -> None:
        async with running_exchange(speed=0, history_seconds=5) as (ex, client):
            ws_url = client.base_url.replace("http", "ws")
            async with aiohttp.ClientSession() as http:
                ws = await http.ws_connect(f"{ws_url}/stream?streams=btcusdt@aggTrade/ethusdt@aggTrade")
                cursor = ex._cursor
                await ex.inject("gap", count=3)  # the next three trades, of any market
                await ex.inject("duplicate", count=2)
                await ex.advance(10)
                got = [(f["data"]["s"], f["data"]["a"]) for f in map(json.loads, await _frames(ws))]
                expected = [(sid, int(ex.symbols[sid].trade_id[i]))
                            for _, kind, sid, i in ex._events[cursor : ex._cursor] if kind == 1]  # fmt: skip
                assert got == [expected[3], expected[3], expected[4], expected[4], *expected[5:]]
                await ex.inject("malformed", count=1)
                bad = await _frames(ws)
                assert len(bad) == 1
                with pytest.raises(ValueError):
                    json.loads(bad[0])
                await ex.inject("stall", seconds=30)
                await ex.advance(10)
                assert await _frames(ws) == []  # silent, and still open
                assert not ws.closed
                await ex.inject("disconnect")
                msg = await ws.receive(timeout=1)
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)

    run(main())


def test_orders_fill_against_the_book_and_trades_with_exact_money() -> None:
    async def main() -> None:
        async with running_exchange(speed=0, history_seconds=60) as (ex, client):
            sym = ex.symbols["BTCUSDT"]
            quote = sym.last_quote()
            assert quote is not None
            order = await client.create_order("BTC/USDT", "market", "buy", 0.01,
                                              params={"newClientOrderId": "m1"})  # fmt: skip
            assert order["status"] == "closed" and order["filled"] == 0.01
            ask = Decimal(repr(quote.ask))
            assert order["average"] == float(ask)
            fee = ask * Decimal("0.01") * Decimal("0.001")
            assert ex.free["USDT"] == Decimal(100_000) - ask * Decimal("0.01") - fee
            assert ex.free["BTC"] == Decimal("0.01")

            # a limit buy below the market rests, then fills when the replay trades through it
            future = sym.price[sym.released : sym.released + 20_000]
            limit = Decimal(repr(float(np.floor(future.min() * 100) / 100 + 0.01)))
            resting = await client.create_order("BTC/USDT", "limit", "buy", 0.002, float(limit),
                                                params={"newClientOrderId": "l1"})  # fmt: skip
            assert resting["status"] == "open"
            with pytest.raises(ccxt.InvalidOrder):  # Binance: a client id is unique among open orders
                await client.create_order("BTC/USDT", "limit", "buy", 0.002, float(limit),
                                          params={"newClientOrderId": "l1"})  # fmt: skip
            assert ex.locked["USDT"] == limit * Decimal("0.002") * Decimal("1.001")
            while ex.orders[resting_id(resting)].status != "FILLED":
                assert await ex.advance(60) > 0, "the recording ended before the limit filled"
            done = await client.fetch_order(resting["id"], "BTC/USDT")
            assert done["status"] == "closed" and done["average"] == float(limit)
            mine = await client.fetch_my_trades("BTC/USDT")
            assert sum(Decimal(t["info"]["qty"]) for t in mine if t["order"] == resting["id"]) == Decimal(
                "0.002"
            )
            assert all(t["takerOrMaker"] == "maker" for t in mine if t["order"] == resting["id"])
            assert ex.locked["USDT"] == 0
            with pytest.raises(ccxt.InsufficientFunds):
                await client.create_order("BTC/USDT", "market", "buy", 100)
            with pytest.raises(ccxt.OrderNotFound):
                await client.fetch_order("999999", "BTC/USDT")

    run(main())


def resting_id(order: dict[str, Any]) -> int:
    return int(order["id"])


def test_recording_has_only_spot_markets_here() -> None:
    trades, _ = recording()
    assert set(trades.keys) == {"binance:BTC/USDT", "binance:ETH/USDT"}


def test_market_rules_come_from_ccxts_markets() -> None:
    async def main() -> None:
        async with running_exchange(speed=0, history_seconds=1) as (_, client):
            btc = market_from_ccxt("binance", client.markets["BTC/USDT"], client.precisionMode)
            assert (btc.base, btc.quote) == ("BTC", "USDT")
            assert (btc.tick_size, btc.step_size) == (Decimal("0.01"), Decimal("0.00001"))
            assert (btc.min_qty, btc.min_notional) == (Decimal("0.00001"), Decimal("5.0"))

    run(main())


def _pointed_at(urls: dict[str, str], base_url: str) -> dict[str, str]:
    """ccxt's ``urls['api']`` with every entry's scheme and host replaced by the local server's."""
    local = urlsplit(base_url)
    return {
        k: urlunsplit(urlsplit(v)._replace(scheme=local.scheme, netloc=local.netloc)) for k, v in urls.items()
    }


def test_a_default_ccxt_client_with_keys_loads_markets_and_trades() -> None:
    """What any ccxt user would write: ``ccxt.binance`` with keys and no options, only its API hosts
    pointed at the local exchange. Its load_markets asks for the wallet's coins, the margin pairs and
    the futures markets as well (a 404 on any of them failed it); a market buy then fills at the
    recorded ask, the fee a tenth of a percent of the notional in USDT."""

    async def main() -> None:
        trades, quotes = recording()
        ex = LocalExchange(trades, quotes, api_secret="a-secret", history_seconds=60)
        runner, url = await serve(ex)
        client = ccxt_async.binance({"apiKey": "a-key", "secret": "a-secret"})
        client.urls["api"] = _pointed_at(client.urls["api"], url)
        try:
            markets = await client.load_markets()
            assert {"BTC/USDT", "ETH/USDT"} <= set(markets) and all(m["spot"] for m in markets.values())
            assert {"BTC", "ETH", "USDT"} <= set(client.currencies)
            balance = await client.fetch_balance()
            assert balance["USDT"]["free"] == 100_000 and balance["BTC"]["total"] == 0

            quote = ex.symbols["BTCUSDT"].last_quote()
            assert quote is not None
            order = await client.create_order("BTC/USDT", "market", "buy", 0.01)
            assert order["status"] == "closed" and order["filled"] == 0.01 and order["price"] == quote.ask
            assert (await client.fetch_order(order["id"], "BTC/USDT"))["status"] == "closed"
            [fill] = await client.fetch_my_trades("BTC/USDT")
            assert (fill["order"], fill["amount"], fill["price"]) == (order["id"], 0.01, quote.ask)
            assert fill["fee"]["currency"] == "USDT" and fill["fee"]["cost"] == pytest.approx(
                quote.ask * 1e-5
            )
            after = await client.fetch_balance()
            assert after["BTC"]["free"] == 0.01
            assert after["USDT"]["free"] == pytest.approx(100_000 - quote.ask * 0.01 * 1.001, abs=1e-8)

            resting = await client.create_order("BTC/USDT", "limit", "buy", 0.01, 30_000)
            assert resting["status"] == "open"
            assert (await client.cancel_order(resting["id"], "BTC/USDT"))["status"] == "canceled"
            asked = {path for _, path, _ in ex.request_log}
            assert {
                "/sapi/v1/capital/config/getall",
                "/sapi/v1/margin/allPairs",
                "/fapi/v1/exchangeInfo",
            } <= asked
        finally:
            await client.close()
            await runner.cleanup()

    run(main())


def test_market_rules_are_binances_own_or_read_off_the_prices() -> None:
    """The recording's markets trade on Binance's definitions (its exchangeInfo filters, shipped in
    mambo/data/markets.json); a market with no definition gets the tick its prices are quoted on,
    never a made-up 0.01 (a coin at 0.12345 could not be ordered at its own price)."""
    bundled = json.loads((Path(mambo.__file__).parent / "data" / "markets.json").read_text())
    [spot] = [e for e in bundled if e["exchange"] == "binance"]
    t0 = 1_723_161_600_000
    prices = np.array([0.12345, 0.12351, 0.12349, 0.12362])  # on a 1e-5 tick
    n = len(prices)
    ids = np.array([str(i) for i in range(n)], dtype=object)
    coin = TradeBatch(("binance:XYZ/USDT",), np.zeros(n, np.int32), (t0 + np.arange(n)) * 1_000_000, prices,
                      np.ones(n), np.ones(n, np.int8), ids)  # fmt: skip
    top = Quote(event_id="q", ts_event=t0 * 1_000_000, ts_init=0, exchange="binance", symbol="XYZ/USDT",
                bid=0.12344, bid_qty=1000.0, ask=0.12346, ask_qty=1000.0)  # fmt: skip

    async def main() -> None:
        trades, quotes = recording()
        for batch, tops, wanted in ((trades, quotes, ("BTCUSDT", "ETHUSDT")), (coin, [top], ("XYZUSDT",))):
            ex = LocalExchange(batch, tops, api_secret="s", history_seconds=10)
            runner, url = await serve(ex)
            try:
                async with aiohttp.ClientSession() as http, http.get(f"{url}/api/v3/exchangeInfo") as resp:
                    info = {s["symbol"]: s for s in (await resp.json())["symbols"]}
            finally:
                await runner.cleanup()
            for sid in wanted:
                ours = {f["filterType"]: f for f in info[sid]["filters"]}
                if sid == "XYZUSDT":
                    assert Decimal(ours["PRICE_FILTER"]["tickSize"]) == Decimal("0.00001")
                    continue
                [theirs] = [m["info"] for m in spot["markets"].values() if m["id"] == sid]
                real = {f["filterType"]: f for f in theirs["filters"]}
                for kind, field in (("PRICE_FILTER", "tickSize"), ("LOT_SIZE", "stepSize"),
                                    ("LOT_SIZE", "minQty"), ("NOTIONAL", "minNotional")):  # fmt: skip
                    assert Decimal(ours[kind][field]) == Decimal(real[kind][field]), (sid, kind, field)

    run(main())
