"""A live run: an exchange's market data through the embedded pipeline, its orders back to the exchange.

:class:`LiveSession` is what ``mambo trade`` runs, and what ``mambo demo`` runs against the local
exchange (so the demo is the same code as a live run). It wires:

* market data in: :class:`~mambo.connectors.exchange_source.ExchangeSource` (ccxt.pro trades and book
  tops, gap-filled over REST, from ``since_ms`` when given) into the
  :class:`~mambo.streams.embedded.EmbeddedRuntime`, which builds candles, indicators, signals,
  intents and risk-checked orders;
* orders out: the runtime's execution stage sends to an
  :class:`~mambo.streams.exchange_venue.ExchangeVenue`, which places them through
  :class:`~mambo.connectors.exchange_broker.ExchangeBroker` and delivers the exchange's fills and
  order states back to the runtime (fills, positions and equity are published as for paper fills);
* history: every topic into ClickHouse (the orders table flushed before each order goes out).

Restart (``recover=True``, the default for ``mambo trade``): before the first order, the account is
rebuilt from the fills in the history (positions, cash, realized PnL) and the orders the history left
open are reconciled with the exchange. Strategies warm up again on the new data. A data folder is one
account: point a run at another exchange or account with another ``--data-dir``.

Start with :meth:`LiveSession.open`, then :meth:`~LiveSession.start`, wait as you like,
:meth:`~LiveSession.stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any

import structlog

from mambo.connectors.clickhouse import ClickHouseSink, connect, ensure_schema, read_events
from mambo.connectors.exchange_broker import ExchangeBroker, Mode
from mambo.connectors.exchange_source import EmbeddedPublisher, ExchangeSource, SourceConfig
from mambo.connectors.markets import market_from_ccxt
from mambo.core.stages import Account
from mambo.notify import notification_stage
from mambo.notify.outbox import OutboxFile
from mambo.schemas.events import Fill, FundingPayment, Liquidation, Order, market_key
from mambo.schemas.topics import FILLS, FUNDING, LIQUIDATIONS, ORDERS
from mambo.settings import MamboSettings
from mambo.streams.bus import Observer
from mambo.streams.embedded import EmbeddedRuntime, ReplayProgress, SinkObserver
from mambo.streams.exchange_venue import ExchangeVenue

__all__ = ["LiveSession"]

log = structlog.get_logger(__name__)


def venue_liquidation_fees(account: Account, client: Any, symbols: Sequence[str]) -> Account:
    """A futures account with the clearance fee the venue publishes for each perpetual it trades
    (ccxt keeps Binance's exchangeInfo ``liquidationFee`` under the market's ``info``), where the
    settings name none for that symbol."""
    futures = account.config.futures
    if futures is None:
        return account
    fees = dict(futures.liquidation_fees)
    for symbol in symbols:
        published = (client.markets.get(symbol) or {}).get("info", {}).get("liquidationFee")
        if published not in (None, "") and symbol not in fees:
            fees[symbol] = Decimal(str(published))
    if fees == dict(futures.liquidation_fees):
        return account
    with_fees = futures.model_copy(update={"liquidation_fees": tuple(sorted(fees.items()))})
    return Account(replace(account.config, futures=with_fees), account.markets)


class LiveSession:
    """Source → pipeline → exchange venue → pipeline, with the history in ClickHouse."""

    def __init__(
        self,
        settings: MamboSettings,
        client: Any,
        exchange_id: str,
        symbols: Sequence[str],
        *,
        mode: Mode = "local",
        live: bool = False,
        since_ms: int | None = None,
        stall_seconds: float = 30.0,
        poll_seconds: float = 1.0,
        observers: Sequence[Observer] = (),
    ) -> None:
        """Build everything (no I/O but ClickHouse). ``client``: a ccxt.pro client with markets loaded."""
        self.settings = settings
        self.client = client
        self.exchange_id = exchange_id
        self.symbols = list(symbols)
        unknown = [s for s in self.symbols if s not in client.markets]
        if unknown:
            raise ValueError(f"{exchange_id} has no market {', '.join(unknown)}")
        self.keys = [market_key(exchange_id, s) for s in self.symbols]
        markets = {
            k: market_from_ccxt(exchange_id, client.markets[s], client.precisionMode)
            for k, s in zip(self.keys, self.symbols, strict=True)
        }
        self.db = settings.clickhouse.database
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.ch = connect(settings.clickhouse_dsn, self.db)
        ensure_schema(self.ch, self.db)
        self.sink = ClickHouseSink(self.ch, self.db, batch_rows=settings.clickhouse.batch_rows)
        self.broker = ExchangeBroker(client, exchange_id, mode=mode, live=live)
        self.venue = ExchangeVenue(
            self.broker, poll_seconds=poll_seconds, before_send=lambda: self.sink.flush(ORDERS.table)
        )
        accounts = settings.account_configs()
        if len(accounts) > 1:  # one exchange session, one set of keys: one account
            raise ValueError(
                f"{len(accounts)} accounts configured; trading on an exchange runs one account per process"
            )
        accounts = [venue_liquidation_fees(a, client, self.symbols) for a in accounts]
        self.runtime = EmbeddedRuntime(
            accounts, markets, known_markets=self.keys, venue=self.venue, extra=[notification_stage(settings)]
        )
        self.venue.deliver = self.runtime.report
        self.runtime.observe(SinkObserver(self.sink))
        self.runtime.observe(OutboxFile(settings.data_dir / "notify" / "outbox.jsonl"))  # mambo notify
        for observer in observers:
            self.runtime.observe(observer)
        self.source = ExchangeSource(
            client,
            EmbeddedPublisher(self.runtime),
            SourceConfig(exchange_id, self.symbols, streams=("trades", "quotes", "marks"),
                         timeframe=settings.engine.trading_timeframe, stall_seconds=stall_seconds,
                         since_ms=since_ms),
        )  # fmt: skip
        self._venue_task: asyncio.Task[None] | None = None
        self._source_task: asyncio.Task[None] | None = None
        self._started = 0.0

    @property
    def progress(self) -> ReplayProgress:
        """Trades and quotes received so far (the demo's progress panel reads it)."""
        return ReplayProgress(
            trades=self.source.counts["trades"],
            quotes=self.source.counts["quotes"],
            wall_seconds=time.perf_counter() - self._started if self._started else 0.0,
        )

    async def recover(self) -> int:
        """Rebuild the account from the history's fills (a futures account's funding payments and
        liquidations too, its margin account with them), reconcile the orders it left open. Returns
        the number of past fills booked."""
        where = "exchange = {exchange:String}"
        params = {"exchange": self.exchange_id}

        def history(table: str, kind: type[Any]) -> list[Any]:
            found = [e for e in read_events(self.ch, table, self.db, where, params) if isinstance(e, kind)]
            return sorted(found, key=lambda e: (e.ts_event, e.event_id))

        fills = history(FILLS.table, Fill)
        self.runtime.account_stages[0].rebuild(
            fills, history(FUNDING.table, FundingPayment), history(LIQUIDATIONS.table, Liquidation)
        )
        orders = [
            o for o in read_events(self.ch, ORDERS.table, self.db, where, params) if isinstance(o, Order)
        ]
        await self.venue.recover(orders)
        log.info(
            "live.recovered", fills=len(fills), orders=len(orders), cash=str(self.runtime.portfolio.cash)
        )
        return len(fills)

    def start(self) -> None:
        """Start the venue and the source (call :meth:`recover` first after a restart)."""
        self._started = time.perf_counter()
        self._venue_task = asyncio.create_task(self.venue.run())
        self._source_task = asyncio.create_task(self.source.run())

    def flush(self) -> None:
        """Write what the history holds in memory to ClickHouse."""
        self.sink.flush()

    def check(self) -> None:
        """Raise what stopped the source or the venue (an error a person must act on)."""
        for task in (self._venue_task, self._source_task):
            if task is not None and task.done() and not task.cancelled():
                error = task.exception()
                if error is not None:
                    raise error

    async def stop(self, settle_seconds: float = 10.0) -> bool:
        """Stop the source, let the venue answer what is in flight (at most ``settle_seconds``), stop
        it, and flush the history. Returns whether every order was answered and done."""
        await _cancel(self._source_task)
        settled = await self.venue.settle(settle_seconds)
        if not settled:
            log.warning("live.unsettled", open_orders=len(self.broker.open_orders()))
        await _cancel(self._venue_task)
        self.sink.flush()
        return settled


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
