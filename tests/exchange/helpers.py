"""Shared by the exchange and connector tests: the bundled recording and a running local exchange."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any

from pydantic import SecretStr

from mambo.connectors.ccxt_client import make_exchange
from mambo.connectors.replay import load_quotes, load_trades
from mambo.exchange import LocalExchange, serve
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import Quote

SECRET = "test-secret"
SPOT = {"binance:BTC/USDT", "binance:ETH/USDT"}


@functools.cache
def recording() -> tuple[TradeBatch, list[Quote]]:
    """The bundled Binance spot recording (ships with the package, so no ../shared needed)."""
    trades, _ = load_trades(symbols=SPOT)
    quotes, _ = load_quotes(symbols={"BTC/USDT", "ETH/USDT"})
    return trades, [q for q in quotes if q.exchange == "binance"]


@contextlib.asynccontextmanager
async def running_exchange(**kwargs: Any) -> AsyncIterator[tuple[LocalExchange, Any]]:
    """A local exchange on a free loopback port and a ccxt.pro client pointed at it (markets loaded)."""
    trades, quotes = recording()
    exchange = LocalExchange(trades, quotes, api_secret=SECRET, **kwargs)
    runner, url = await serve(exchange)
    client = make_exchange("binance", base_url=url, api_key=SecretStr("any-key"), secret=SecretStr(SECRET))
    try:
        await client.load_markets()
        client.base_url = url
        yield exchange, client
    finally:
        await client.close()
        await runner.cleanup()


def released_trade_ids(exchange: LocalExchange, symbol_id: str, start: int = 0) -> list[str]:
    """Ids of the trades of a market the exchange has released so far, from index ``start``."""
    sym = exchange.symbols[symbol_id]
    return [str(t) for t in sym.trade_id[start : sym.released]]
