"""The pipeline trading through an exchange: orders the execution stage sends go out through ccxt to
the local exchange, fill there, and come back as Fill events that the portfolio books like paper fills,
with the history in ClickHouse and the account equal to the exchange's to the last unit.

The local exchange is paused (``speed=0``) and moved by ``advance``, so the market data the source
gets and the prices orders fill at are fixed. About 5 s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from clickhouse_connect.driver.client import Client

from mambo.connectors.clickhouse import read_events
from mambo.connectors.exchange_broker import ExchangeBroker, exchange_client_id
from mambo.core.market import Market
from mambo.core.stages import EngineConfig
from mambo.live import LiveSession
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import Candle, EquitySnapshot, Fill, Order, OrderIntent, Position
from mambo.schemas.topics import INTENTS
from mambo.settings import MamboSettings
from mambo.streams.embedded import EmbeddedRuntime
from mambo.streams.exchange_venue import ExchangeVenue, open_orders_from_history
from tests.exchange.helpers import running_exchange

SCRIPTED = "tests.streams.scripted:Scripted"


def settings_for(tmp_path: Path, dsn: str, database: str, **engine: object) -> MamboSettings:
    return MamboSettings(
        data_dir=tmp_path,
        clickhouse={"dsn": dsn, "database": database},
        engine={"strategies": (SCRIPTED,), "trading_timeframe": "1s", "timeframes": ("1s",), **engine},
    )


async def until(condition: object, session: LiveSession, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        session.check()
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_pipeline_orders_fill_on_the_exchange_and_come_back(
    tmp_path: Path, clickhouse_dsn: str, clickhouse_db: str, clickhouse_client: Client
) -> None:
    async def main() -> None:
        async with running_exchange(speed=0, history_seconds=10) as (ex, client):
            sym = ex.symbols["BTCUSDT"]
            params = {SCRIPTED: {"buy_at": 3, "sell_at": 15}}
            settings = settings_for(tmp_path, clickhouse_dsn, clickhouse_db, strategy_params=params)
            session = LiveSession(settings, client, "binance", ["BTC/USDT"], since_ms=int(sym.ts[0]),
                                  poll_seconds=0.05)  # fmt: skip
            assert await session.recover() == 0  # a fresh history: nothing to rebuild
            session.start()
            # the past (REST) closes bars 1..~10: the buy; the stream after it: the sell
            await until(lambda: session.venue.counts["fills"] >= 1, session)
            await ex.advance(30)
            await until(lambda: session.venue.counts["fills"] >= 2, session)
            assert await session.stop()
            portfolio = session.runtime.portfolio
            # the account is the exchange's, exactly: cash against the exchange's free quote balance
            assert portfolio.position("binance:BTC/USDT") == 0 and ex.free["BTC"] == 0
            assert portfolio.cash == ex.free["USDT"]
            # a restart on this history gets the account back from the fills, before any trading
            again = LiveSession(settings, client, "binance", ["BTC/USDT"])
            assert await again.recover() == 2
            assert again.runtime.portfolio.cash == portfolio.cash and again.venue.counts["recovered"] == 0
            assert (
                again.runtime.portfolio.snapshot(0, 0).realized_pnl == portfolio.snapshot(0, 0).realized_pnl
            )
            return ex

    ex = asyncio.run(main())
    db = clickhouse_db
    orders = [o for o in read_events(clickhouse_client, "orders", db) if isinstance(o, Order)]
    new = [o for o in orders if o.status == "new"]
    assert [o.side for o in new] == ["buy", "sell"] and {o.strategy for o in new} == {"scripted"}
    assert sorted(o.status for o in orders) == ["filled", "filled", "new", "new"]
    # each order reached the exchange once, under the client id derived from Mambo's
    on_exchange = {o.client_id: o for o in ex.orders.values()}
    assert len(ex.orders) == 2
    assert set(on_exchange) == {exchange_client_id(o.client_order_id) for o in new}
    assert {o.status for o in on_exchange.values()} == {"FILLED"}

    fills = [f for f in read_events(clickhouse_client, "fills", db) if isinstance(f, Fill)]
    mine = {t["id"]: t for t in ex._my_trades}
    assert len(fills) == 2 == len(mine)
    for fill, trade in zip(fills, sorted(mine.values(), key=lambda t: t["id"]), strict=True):
        assert fill.price == Decimal(trade["price"]) and fill.qty == Decimal(trade["qty"])
        assert fill.fee == Decimal(trade["commission"]) and fill.fee_currency == "USDT"
        assert fill.liquidity == "taker" and fill.strategy == "scripted"
    buy, sell = fills
    assert buy.side == "buy" and sell.side == "sell" and buy.qty == sell.qty
    assert sell.realized_pnl == (sell.price - buy.price) * sell.qty  # booked by the portfolio, exact
    positions = [p for p in read_events(clickhouse_client, "positions", db) if isinstance(p, Position)]
    assert [p.qty for p in positions] == [buy.qty, 0]
    equity = [e for e in read_events(clickhouse_client, "equity", db) if isinstance(e, EquitySnapshot)]
    last = max(equity, key=lambda e: (e.ts_event, e.ts_init))
    assert last.equity == last.cash == Decimal(100_000) + sell.realized_pnl - buy.fee - sell.fee


def test_a_resting_limit_order_is_followed_until_it_fills() -> None:
    """No pipeline: the venue alone. A buy limit below the market rests on the exchange; the venue's
    polling delivers its fills as replayed trades reach it, then its final state."""

    async def main() -> None:
        async with running_exchange(speed=0, history_seconds=60) as (ex, client):
            sym = ex.symbols["BTCUSDT"]
            limit = Decimal(repr(float(sym.price[sym.released : sym.released + 3000].min()))) + Decimal(
                "0.01"
            )
            got: list[Order | Fill] = []
            venue = ExchangeVenue(ExchangeBroker(client, "binance"), got.extend, poll_seconds=0.02)
            task = asyncio.create_task(venue.run())
            order = Order(event_id="e", ts_event=1, ts_init=1, exchange="binance", symbol="BTC/USDT",
                          client_order_id="resting-1", strategy="s", side="buy", order_type="limit",
                          qty=Decimal("0.002"), limit_price=limit)  # fmt: skip
            assert venue.submit(order, 1) == [] and venue.submit(order, 1) == []  # queued once
            deadline = time.monotonic() + 60
            while not venue.broker.open_orders():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            assert not venue.idle  # resting: the venue follows it
            while not venue.idle:
                assert time.monotonic() < deadline and await ex.advance(10) >= 0
                await asyncio.sleep(0.05)
            task.cancel()
            fills = [e for e in got if isinstance(e, Fill)]
            assert sum(f.qty for f in fills) == order.qty and {f.price for f in fills} == {limit}
            assert {f.liquidity for f in fills} == {"maker"} and len(ex.orders) == 1
            assert [e.status for e in got if isinstance(e, Order)][-1] == "filled"

    asyncio.run(main())


def test_recover_expires_an_order_that_never_reached_the_exchange() -> None:
    """Written ahead, then the process stopped before sending: the exchange does not know it. The
    restart reports it expired (risk and the strategy's market are released) and does not send it."""

    async def main() -> None:
        async with running_exchange(speed=0, history_seconds=10) as (ex, client):
            got: list[Order | Fill] = []
            venue = ExchangeVenue(ExchangeBroker(client, "binance"), got.extend)
            unsent = Order(event_id="e", ts_event=1, ts_init=1, exchange="binance", symbol="BTC/USDT",
                           client_order_id="written-ahead", strategy="s", side="buy", order_type="market",
                           qty=Decimal("0.001"))  # fmt: skip
            assert await venue.recover([unsent]) == 1
            assert [(o.status, o.client_order_id) for o in got if isinstance(o, Order)] == [
                ("expired", "written-ahead")
            ]
            assert "stopped before sending" in got[0].reason  # type: ignore[union-attr]
            assert venue.idle and venue.submit(unsent, 1) == [] and not ex.orders

    asyncio.run(main())


class SilentVenue:
    """A venue that takes orders and answers nothing (an exchange's answer still in flight)."""

    def __init__(self) -> None:
        self.orders: list[Order] = []

    def submit(self, order: Order, ts_init: int) -> Sequence[Order | Fill]:
        self.orders.append(order)
        return []

    def has_pending(self, key: str) -> bool:
        return False

    def on_trades(self, *args: object, **kwargs: object) -> Sequence[Order | Fill]:
        return []

    def on_candle(self, candle: Candle) -> Sequence[Order | Fill]:
        return []


def test_no_new_intent_while_an_order_is_in_flight() -> None:
    """A buy on every bar while the first buy is unanswered: one order, not one per bar. Once the
    exchange refuses it, the next buy signal makes the next order."""
    params = {SCRIPTED: {"buy_at": 2, "every_bar": True}}
    config = EngineConfig(timeframes=("1s",), trading_timeframe="1s", strategies=(SCRIPTED,),
                          strategy_params=params, indicators=())  # fmt: skip
    key = "binance:BTC/USDT"
    venue = SilentVenue()
    rt = EmbeddedRuntime(config, {key: Market.default("binance", "BTC/USDT")}, venue=venue)
    intents: list[OrderIntent] = []
    rt.observe(lambda topic, event: intents.append(event) if topic == INTENTS.name else None)

    def second(n: int) -> None:  # one trade in second n: closes the bar of second n - 1
        ts = np.array([n * 1_000_000_000], np.int64)
        one = np.zeros(1, np.int64)
        rt.ingest_trades(TradeBatch((key,), one, ts, np.array([100.0]), np.array([1.0]), one.astype(np.int8),
                                    np.array([str(n)], dtype=object), ts_init=int(ts[0])))  # fmt: skip

    for n in range(1, 8):
        second(n)
    assert len(venue.orders) == len(intents) == 1  # bars 2..6 all said buy
    first = venue.orders[0]
    rt.report([first.model_copy(update={"status": "rejected", "reason": "rejected by the exchange: test"})])
    second(8)
    assert len(venue.orders) == 2 and venue.orders[1].client_order_id != first.client_order_id


@pytest.mark.parametrize(
    ("states", "still_open"),
    [
        (["new"], ["a"]),
        (["new", "partially_filled"], ["a"]),
        (["new", "filled"], []),
        (["filled", "new"], []),  # read back out of order: the most advanced state counts
        (["new", "rejected"], []),
    ],
)
def test_open_orders_from_history(states: list[str], still_open: list[str]) -> None:
    base = Order(event_id="e", ts_event=1, ts_init=1, exchange="binance", symbol="BTC/USDT",
                 client_order_id="a", strategy="s", side="buy", order_type="market",
                 qty=Decimal(1))  # fmt: skip
    history = [base.model_copy(update={"status": s, "filled_qty": Decimal(s != "new")}) for s in states]
    assert [o.client_order_id for o in open_orders_from_history(history)] == still_open
