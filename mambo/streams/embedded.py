"""The embedded runtime: every stage on the in-process bus, one process, one asyncio loop.

:class:`EmbeddedRuntime` validates what sources hand it (bad rows become dead letters with their
reasons; the rest goes on), publishes it on the bus, and lets an observer (the ClickHouse sink, the
API's hub, progress counters) see every message of every topic. :func:`run_replay` drives it from a
recording at a chosen speed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from mambo.core.control import expand
from mambo.core.market import Market
from mambo.core.portfolio import Portfolio
from mambo.core.stages import (
    Account,
    AccountStage,
    CandleStage,
    EngineConfig,
    ExecutionStage,
    Stage,
    Venue,
    WatermarkStage,
    build_stages,
)
from mambo.schemas.batches import TradeBatch, validate_trades
from mambo.schemas.events import (
    Candle,
    ControlCommand,
    DeadLetter,
    Fill,
    FundingRate,
    MarkPrice,
    Order,
    Quote,
)
from mambo.schemas.topics import (
    CONTROL,
    CONTROL_MARKETS,
    EXCHANGE_CANDLES,
    FILLS,
    FUNDING_RATES,
    MARK_PRICES,
    ORDERS,
    QUOTES,
    TRADES,
    by_name,
    dlq_topic,
)
from mambo.streams.bus import EventBus, Observer

__all__ = ["EmbeddedRuntime", "ReplayProgress", "SinkObserver", "run_replay"]


class EmbeddedRuntime:
    """The whole pipeline in one process."""

    def __init__(
        self,
        config: EngineConfig | Sequence[Account],
        markets: Mapping[str, Market] | None = None,
        known_markets: Sequence[str] | None = None,
        venue: Venue | None = None,
        metrics: bool | None = None,
        extra: Sequence[Stage] = (),
    ) -> None:
        """``config``: one account over every market, or several accounts (see
        :func:`~mambo.core.stages.build_stages`). ``metrics``: the bus's Prometheus metrics (default:
        unless ``MAMBO_METRICS=0``; backtests turn them off). ``extra``: stages that read what the
        pipeline publishes (the notifications outbox), after the pipeline's own."""
        self.accounts = [Account(config)] if isinstance(config, EngineConfig) else list(config)
        self.markets = dict(markets or {})
        self.known_markets = set(known_markets) if known_markets is not None else None
        self.bus = EventBus(metrics)
        known = sorted(self.known_markets) if self.known_markets is not None else None
        self.stages = [*build_stages(self.accounts, self.markets, venue, known), *extra]
        self.config = self.accounts[0].config  # the first account's (the only one's, as a rule)
        for stage in self.stages:
            self.bus.add_stage(stage)

    @property
    def account_stages(self) -> list[AccountStage]:
        """Every account's stage, in the order of the accounts."""
        return [s for s in self.stages if isinstance(s, AccountStage)]

    @property
    def execution(self) -> ExecutionStage:
        """The execution stage of the first account (the only one, unless several were given)."""
        return self.account_stages[0].execution

    @property
    def portfolio(self) -> Portfolio:
        """The first account's portfolio (see :attr:`portfolios` for every account's)."""
        return self.execution.portfolio

    @property
    def portfolios(self) -> dict[str, Portfolio]:
        """Every account's portfolio, by account id."""
        return {s.account: s.portfolio for s in self.account_stages}

    def report(self, events: Sequence[Order | Fill], ts_init: int | None = None) -> None:
        """Publish what an exchange venue reported (fills, order states) through the account stage;
        one it cannot book goes to its dead-letter topic with the reason, like a stage's input."""
        stamp = time.time_ns() if ts_init is None else ts_init
        account = self.account_stages[0]
        for ev in events:
            try:
                outs = account.on_reports([ev], stamp)
            except Exception as exc:  # a bad report must not stop the pipeline
                self.bus.dead_letter(
                    FILLS.name if isinstance(ev, Fill) else ORDERS.name, ev, f"execution: {exc!r}"
                )
                continue
            for topic, event in outs:
                self.bus.publish(topic, event)

    def finish(self) -> None:
        """The end of every market's stream (a backtest's last bar): each account takes the steps
        still waiting for a market's watermark (see :class:`~mambo.core.stages.AccountStage`)."""
        for account in self.account_stages:
            for topic, event in account.finish():
                self.bus.publish(topic, event)

    def observe(self, observer: Observer) -> None:
        self.bus.observe(observer)

    def ingest_trades(self, batch: TradeBatch) -> None:
        if not len(batch):
            return
        good, dead = validate_trades(batch, self.known_markets, TRADES.name)
        self.dead_letters(dead)
        if len(good):
            self.bus.publish(TRADES.name, good)

    def ingest_quotes(self, quotes: Sequence[Quote]) -> None:
        for q in quotes:
            if self.known_markets is not None and q.key not in self.known_markets:
                self.bus.dead_letter(QUOTES.name, q, f"unknown market {q.key}")
            else:
                self.bus.publish(QUOTES.name, q)

    def ingest_candles(self, candles: Sequence[Candle]) -> None:
        """Exchange candles (already closed) instead of, or besides, trades."""
        for c in candles:
            if self.known_markets is not None and c.key not in self.known_markets:
                self.bus.dead_letter(EXCHANGE_CANDLES.name, c, f"unknown market {c.key}")
            else:
                self.bus.publish(EXCHANGE_CANDLES.name, c)

    def ingest_funding(self, rates: Sequence[FundingRate]) -> None:
        """Perpetuals' funding times, each in its market's stream after the trades before it: the
        market's candles that end by then close, then the funding goes to its accounts (settled on a
        position of a futures account, :class:`~mambo.core.stages.AccountStage`)."""
        self._in_line(FUNDING_RATES.name, rates)

    def ingest_marks(self, marks: Sequence[MarkPrice]) -> None:
        """Perpetuals' mark prices from the venue, each in its market's stream after the trades before
        it: the market's candles that end by then close, then the mark goes to its accounts, where it
        values the position and liquidates it as the venue does (:class:`~mambo.core.stages.AccountStage`)."""
        self._in_line(MARK_PRICES.name, marks)

    def _in_line(self, topic: str, events: Sequence[FundingRate | MarkPrice]) -> None:
        """Market events in line with their market's trades: its candles that end by each close first."""
        candles = next(s for s in self.stages if isinstance(s, CandleStage))
        marks = next(s for s in self.stages if isinstance(s, WatermarkStage))
        for e in events:
            if self.known_markets is not None and e.key not in self.known_markets:
                self.bus.dead_letter(topic, e, f"unknown market {e.key}")
                continue
            for t, event in [
                *candles.flush(e.ts_event, e.ts_init, [e.key]),
                *marks.advance(e.ts_event, [e.key], e.ts_init),
            ]:
                self.bus.publish(t, event)
            self.bus.publish(topic, e)

    def control(self, command: ControlCommand) -> None:
        """A control command (:mod:`mambo.core.control`), where the markets' streams are now: on the
        control topic (the record), then a copy in line for each market it concerns (its own, or every
        market of its account the run has seen); the stages answer on control.results."""
        self.bus.publish(CONTROL.name, command)
        for cmd in expand(command, self._account_markets(command.account)):
            self.bus.publish(CONTROL_MARKETS.name, cmd)

    def _account_markets(self, account: str) -> list[str]:
        for a in self.accounts:
            if a.config.account == account and a.markets is not None:
                return sorted(a.markets)
        candles = next(s for s in self.stages if isinstance(s, CandleStage))
        return sorted({*self.markets, *(self.known_markets or ()), *candles.builders})

    def dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        for d in letters:
            self.bus.publish(dlq_topic(d.topic), d)

    def close_candles(self, watermark: int, ts_init: int | None = None) -> None:
        """Close the candles that end at or before ``watermark`` (a watermark from the source: no trade
        of any market before it is still to come), and tell the accounts every market got that far."""
        stage = next(s for s in self.stages if isinstance(s, CandleStage))
        stamp = time.time_ns() if ts_init is None else ts_init
        for topic, candle in stage.flush(watermark, stamp):
            self.bus.publish(topic, candle)
        marks = next(s for s in self.stages if isinstance(s, WatermarkStage))
        keys = sorted({*self.markets, *(self.known_markets or ()), *stage.builders})
        for topic, feed in marks.advance(watermark, keys, stamp):
            self.bus.publish(topic, feed)

    @property
    def dead_letter_count(self) -> int:
        return sum(n for t, n in self.bus.counts.items() if t.endswith(".dlq"))


class SinkObserver:
    """Routes every message to its ClickHouse table: trade batches as columns, events as rows."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self._tables: dict[str, str] = {}

    def __call__(self, topic: str, payload: Any) -> None:
        table = self._tables.get(topic)
        if table is None:
            table = self._tables[topic] = by_name(topic).table
        if not table:  # an internal topic (account.feed): its results are in the history
            return
        if isinstance(payload, TradeBatch):
            self.sink.write_columns(table, payload.columns())
        else:
            self.sink.write(table, [payload])


@dataclass
class ReplayProgress:
    trades: int = 0
    quotes: int = 0
    event_ts: int = 0
    wall_seconds: float = 0.0

    @property
    def trades_per_second(self) -> float:
        return self.trades / self.wall_seconds if self.wall_seconds > 0 else 0.0


async def run_replay(
    runtime: EmbeddedRuntime,
    batches: Any,
    speed: float = 0.0,
    on_progress: Callable[[ReplayProgress], None] | None = None,
    flush: Callable[[], None] | None = None,
    flush_seconds: float = 1.0,
) -> ReplayProgress:
    """Feed ``(TradeBatch, quotes)`` slices to the runtime; ``speed`` × real time, 0 = flat out."""
    progress = ReplayProgress()
    start = time.perf_counter()
    first_ts: int | None = None
    last_flush = start
    for batch, quotes in batches:
        ts = int(batch.ts[0]) if len(batch) else (quotes[0].ts_event if quotes else None)
        if speed > 0 and ts is not None:
            first_ts = ts if first_ts is None else first_ts
            delay = (ts - first_ts) / 1e9 / speed - (time.perf_counter() - start)
            if delay > 0:
                await asyncio.sleep(delay)
        now_ns = time.time_ns()  # ts_init: when the data entered Mambo; derived events inherit it
        runtime.ingest_quotes([q.model_copy(update={"ts_init": now_ns}) for q in quotes])
        runtime.ingest_trades(replace(batch, ts_init=now_ns))
        if len(batch):  # a recording is in time order: every market has come as far as this batch
            runtime.close_candles(int(batch.ts[-1]), now_ns)
        progress.trades += len(batch)
        progress.quotes += len(quotes)
        if len(batch):
            progress.event_ts = int(batch.ts[-1])
        now = time.perf_counter()
        progress.wall_seconds = now - start
        if flush is not None and now - last_flush >= flush_seconds:
            flush()
            last_flush = now
        if on_progress is not None:
            on_progress(progress)
        await asyncio.sleep(0)
    if flush is not None:
        flush()
    progress.wall_seconds = time.perf_counter() - start
    return progress
