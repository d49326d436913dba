"""ccxt's own recorded Binance REST responses drive our parsing: each raw reply goes through ccxt's
real request path (its HTTP layer answered with the recording), ccxt's result must equal ccxt's
expected output, and our Mambo events must agree with that expected output.

Fixture: tests/fixtures/ccxt_binance_static.json (see tests/fixtures/README.md). Under a second.
"""

from __future__ import annotations

import asyncio
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import ccxt.async_support as ccxt_async
import pytest

from mambo.connectors.exchange_broker import ExchangeBroker
from mambo.connectors.exchange_source import candles_from_ccxt, trades_from_ccxt
from mambo.core.market import Market
from mambo.exchange.binance.rest import _symbol_info
from mambo.schemas.events import Order

CASES = json.loads((Path(__file__).parents[1] / "fixtures" / "ccxt_binance_static.json").read_text())[
    "methods"
]
# which recorded reply answers which Binance path
ROUTES = {"aggTrades": "fetchTrades", "klines": "fetchOHLCV", "depth": "fetchOrderBook",
          "myTrades": "fetchMyTrades"}  # fmt: skip


def _client(answers: dict[str, Any]) -> Any:
    """A real ccxt binance client whose HTTP layer answers from the recording (nothing leaves)."""
    client = ccxt_async.binance(
        {"apiKey": "k", "secret": "s", "options": {"fetchMarkets": {"types": ["spot"]}}}
    )
    markets = [
        _symbol_info(Market("binance", s, *s.split("/"))) for s in ("BTC/USDT", "LTC/USDT", "SOL/USDT")
    ]
    client.options["crossMarginPairsData"] = client.options["isolatedMarginPairsData"] = []
    client.set_markets([client.parse_market(m) for m in markets])
    requested: list[str] = []

    async def fetch(url: str, method: str = "GET", headers: Any = None, body: Any = None) -> Any:
        requested.append(f"{method} {url}")
        path = url.split("?")[0].rsplit("/", 1)[-1]
        if path == "order":
            return answers["createOrder" if method == "POST" else "fetchOrder"]
        return answers[ROUTES[path]]

    client.fetch = fetch
    client.requested = requested
    return client


def _answers() -> dict[str, Any]:
    return {name: cases[0]["httpResponse"] for name, cases in CASES.items()}


def _call(client: Any, name: str) -> Any:
    case = CASES[name][0]
    method = re.sub(r"([A-Z]+)", lambda m: "_" + m.group(1).lower(), name)  # fetchOHLCV -> fetch_ohlcv
    return asyncio.run(getattr(client, method)(*case["input"]))


def _same(got: Any, expected: Any, keys: tuple[str, ...]) -> None:
    for k in keys:
        assert (
            got[k] == pytest.approx(expected[k]) if isinstance(expected[k], float) else got[k] == expected[k]
        ), k


def test_trades_agree_with_ccxts_expected_output() -> None:
    client = _client(_answers())
    trades = _call(client, "fetchTrades")
    expected = CASES["fetchTrades"][0]["parsedResponse"]
    for got, want in zip(trades, expected, strict=True):
        _same(got, want, ("id", "timestamp", "symbol", "side", "price", "amount"))
    batch = trades_from_ccxt("binance", trades, ts_init=7)
    assert batch.keys == ("binance:BTC/USDT",)
    assert batch.trade_id.tolist() == [t["id"] for t in expected]
    assert batch.ts.tolist() == [t["timestamp"] * 1_000_000 for t in expected]
    assert batch.price.tolist() == [t["price"] for t in expected]
    assert batch.qty.tolist() == [t["amount"] for t in expected]
    assert batch.side.tolist() == [{"buy": 1, "sell": -1}[t["side"]] for t in expected]
    assert "/api/v3/aggTrades" in client.requested[0]
    asyncio.run(client.close())


def test_candles_agree_with_ccxts_expected_output() -> None:
    client = _client(_answers())
    rows = _call(client, "fetchOHLCV")
    expected = CASES["fetchOHLCV"][0]["parsedResponse"]
    assert rows == expected
    candles = candles_from_ccxt("binance", "BTC/USDT", "1h", rows, ts_init=7)
    for c, r in zip(candles, expected, strict=True):
        assert c.open_time == r[0] * 1_000_000 and c.ts_event == (r[0] + 3_600_000) * 1_000_000
        assert [c.open, c.high, c.low, c.close, c.volume] == r[1:]
    assert len({c.event_id for c in candles}) == len(candles)
    asyncio.run(client.close())


def test_order_book_agrees_with_ccxts_expected_output() -> None:
    client = _client(_answers())
    book = _call(client, "fetchOrderBook")
    _same(book, CASES["fetchOrderBook"][0]["parsedResponse"], ("bids", "asks", "nonce", "symbol"))
    asyncio.run(client.close())


def test_fills_and_orders_agree_with_ccxts_expected_output() -> None:
    client = _client(_answers())
    mine = _call(client, "fetchMyTrades")
    expected_trade = CASES["fetchMyTrades"][0]["parsedResponse"][0]
    _same(mine[0], expected_trade, ("id", "order", "price", "amount", "takerOrMaker", "side"))
    broker = ExchangeBroker(client, "binance", clock=lambda: 9)
    order = Order(event_id="o", ts_event=1, ts_init=1, exchange="binance", symbol="LTC/USDT",
                  client_order_id="c1", strategy="s", side="sell", order_type="market",
                  qty=Decimal("0.1"))  # fmt: skip
    fill = broker._fill(order, {"id": expected_trade["order"]}, mine[0])
    assert fill.price == Decimal(str(expected_trade["price"])) == Decimal("69.63")
    assert fill.qty == Decimal("0.2")
    assert fill.fee == Decimal(str(expected_trade["fee"]["cost"])) and fill.fee_currency == "USDT"
    assert fill.liquidity == expected_trade["takerOrMaker"] == "taker"
    assert fill.ts_event == expected_trade["timestamp"] * 1_000_000

    # a looked-up filled order: status and filled quantity as ccxt expects, its fills fetched
    fetched = _call(client, "fetchOrder")
    expected_order = CASES["fetchOrder"][0]["parsedResponse"]
    _same(fetched, expected_order, ("status", "filled", "clientOrderId", "side", "type"))
    broker._orders["c"] = order
    events = asyncio.run(broker._events("c", fetched))
    update = events[-1]
    assert isinstance(update, Order) and update.status == "filled" and update.filled_qty == Decimal("0.1")
    assert any("/myTrades" in r for r in client.requested)

    created = _call(client, "createOrder")
    _same(
        created,
        CASES["createOrder"][0]["parsedResponse"],
        ("status", "id", "clientOrderId", "price", "amount"),
    )
    asyncio.run(client.close())
