"""The two stage groups of the distributed runtimes: market stages per market, account stages per
account (see :mod:`mambo.core.stages`).

Each market key runs the market stages (candles, watermarks, strategies and aggregation of every
account trading it, indicators) on its own :class:`~mambo.streams.bus.EventBus`; what they publish
goes to ``emit(topic, event)``, the account feed (``account.feed``, keyed by account) among it. Each
account runs one :class:`~mambo.core.stages.AccountStage`, fed by :meth:`MarketPipelines.ingest_feed`:
the Kafka worker produces the feed to its topic and consumes it back, so a market and its account
may live on different workers; with ``loopback`` the feed goes straight to the account stages in
process (the parity tests, and one process holding everything).

The account merges its markets' feeds in event time, so any partition count, any number of workers
and any interleaving of the markets give exactly the same orders and fills as the embedded runtime,
where the same stages run on one bus (:class:`~mambo.streams.embedded.EmbeddedRuntime`).

State is the stage objects (candle builders, indicator sets, strategies, aggregators; an account's
merge, risk engine, broker and portfolio), which pickle: :meth:`MarketPipelines.state` and
:meth:`MarketPipelines.restore` move one key's state (a market key, or ``account/<id>``) to and from
the worker's changelog.
"""

from __future__ import annotations

import pickle
import zlib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from mambo.core.market import Market
from mambo.core.stages import (
    Account,
    AccountStage,
    CandleStage,
    EngineConfig,
    Out,
    Stage,
    WatermarkStage,
    account_stages,
    market_stages,
)
from mambo.schemas.batches import TradeBatch, validate_trades
from mambo.schemas.events import (
    AccountFeed,
    Candle,
    ControlCommand,
    DeadLetter,
    FundingRate,
    MarkPrice,
    make_id,
)
from mambo.schemas.topics import (
    ACCOUNT_FEED,
    CONTROL_MARKETS,
    EXCHANGE_CANDLES,
    FUNDING_RATES,
    MARK_PRICES,
    TRADES,
    dlq_topic,
)
from mambo.streams.bus import EventBus

__all__ = ["ACCOUNT_PREFIX", "MarketPipelines"]

Emit = Callable[[str, Any], None]
_INPUTS = frozenset({TRADES.name, EXCHANGE_CANDLES.name, FUNDING_RATES.name, CONTROL_MARKETS.name})
#: An in-line record of a market's stream: a watermark (market key, watermark, ts_init), a funding
#: time, or a control command's copy for the market.
Inline = tuple[str, int, int] | FundingRate | ControlCommand
#: The state key of an account stage (market keys are ``exchange:symbol``).
ACCOUNT_PREFIX = "account/"


class MarketPipelines:
    """Market stages per market key, account stages per account; ``emit(topic, event)`` receives
    every event they publish."""

    def __init__(
        self,
        config: EngineConfig | Sequence[Account],
        emit: Emit,
        markets: Mapping[str, Market] | None = None,
        known_markets: Collection[str] | None = None,
        loopback: bool = False,
        extra: Callable[[str], Stage] | None = None,
    ) -> None:
        """``extra(account)``: a stage that reads what an account stage publishes (the notifications
        outbox's), one per account, its state kept with the account's."""
        self.accounts = [Account(config)] if isinstance(config, EngineConfig) else list(config)
        self.markets = dict(markets or {})
        self.known_markets = set(known_markets) if known_markets is not None else None
        self._known = sorted(self.known_markets) if self.known_markets is not None else list(self.markets)
        self.emit = emit
        self.loopback = loopback
        self.extra = extra
        self._extras: dict[str, Stage] = {}  # by state key, beside the account stage
        # the configuration is checked now, not at the first message
        self._account_ids = {a.config.account for a in self.accounts}
        account_stages(self.accounts, self.markets, known=self._known or None)
        self._buses: dict[str, EventBus] = {}
        self._stages: dict[str, list[Stage]] = {}
        self._account_stages: dict[str, AccountStage] = {}  # by state key, account/<id>
        # what the account stages publish goes out through a bus of no stages: its metrics (orders,
        # fills, equity, latency) see it as they see the market stages' events
        self._account_bus = EventBus()
        self._account_bus.observe(self._emit_account)

    @property
    def keys(self) -> list[str]:
        """The keys whose state this process holds: market keys and ``account/<id>``."""
        return [*self._stages, *self._account_stages]

    def _wire(self, key: str, stages: list[Stage]) -> EventBus:
        bus = EventBus()
        for s in stages:
            bus.add_stage(s)
        bus.observe(self._forward)
        self._stages[key] = stages
        self._buses[key] = bus
        return bus

    def _forward(self, topic: str, payload: Any) -> None:
        if topic in _INPUTS:  # the inputs are on their topics already (a copy of a command: on none)
            return
        if topic == ACCOUNT_FEED.name and self.loopback:
            self.ingest_feed([payload])
            return
        self.emit(topic, payload)

    def _bus(self, key: str) -> EventBus:
        bus = self._buses.get(key)
        if bus is None:
            bus = self._wire(key, market_stages(self.accounts, self._known or None))
        return bus

    def _account(self, account: str) -> AccountStage:
        key = ACCOUNT_PREFIX + account
        stage = self._account_stages.get(key)
        if stage is None:
            stage = next(
                s
                for s in account_stages(self.accounts, self.markets, known=self._known or None)
                if s.account == account
            )
            self._account_stages[key] = stage
            if self.extra is not None:
                self._extras[key] = self.extra(account)
        return stage

    def ingest_trades(self, batch: TradeBatch) -> list[str]:
        """Run a batch (any markets, stream order) through each market's pipeline; the keys it touched.

        Invalid rows become dead letters on md.trades.dlq with their reasons, as in the embedded runtime.
        """
        if not len(batch):
            return []
        good, dead = validate_trades(batch, self.known_markets, TRADES.name)
        for d in dead:
            self.emit(dlq_topic(TRADES.name), d)
        touched = []
        for code, key in enumerate(good.keys):
            sel = (good.market == code).nonzero()[0]
            if not len(sel):
                continue
            sub = good if len(good.keys) == 1 else good.take(sel)
            sub = TradeBatch(
                (key,), sub.market * 0, sub.ts, sub.price, sub.qty, sub.side, sub.trade_id, sub.ts_init
            )
            self._bus(key).publish(TRADES.name, sub)
            touched.append(key)
        return touched

    def ingest_candles(self, candles: Sequence[Candle]) -> list[str]:
        """Exchange candles (already closed, md.candles) through their markets' pipelines, in order;
        the keys touched. A candle of an unknown market becomes a dead letter, as in the embedded
        runtime."""
        touched: dict[str, None] = {}
        for c in candles:
            key = c.key
            if self.known_markets is not None and key not in self.known_markets:
                self.emit(
                    dlq_topic(EXCHANGE_CANDLES.name), _dead(EXCHANGE_CANDLES.name, c, f"unknown market {key}")
                )
                continue
            self._bus(key).publish(EXCHANGE_CANDLES.name, c)
            touched[key] = None
        return list(touched)

    def advance(self, marks: Sequence[tuple[str, int, int]]) -> list[str]:
        """Source watermarks ``(market key, watermark, ts_init)``: no trade of the market before the
        watermark is still to come. Its candles that end by then close, and its accounts learn it got
        that far (a market gone quiet no longer holds them back); the keys touched."""
        touched: dict[str, None] = {}
        for key, watermark, ts_init in marks:
            if self.known_markets is not None and key not in self.known_markets:
                continue  # a market this run does not trade: nothing of it to close
            bus = self._bus(key)
            stages = self._stages[key]
            candles = next(s for s in stages if isinstance(s, CandleStage))
            for topic, candle in candles.flush(watermark, ts_init):
                bus.publish(topic, candle)
            marker = next(s for s in stages if isinstance(s, WatermarkStage))
            for topic, feed in marker.advance(watermark, [key], ts_init):
                bus.publish(topic, feed)
            touched[key] = None
        return list(touched)

    def ingest_funding(self, rates: Sequence[FundingRate]) -> list[str]:
        """Perpetuals' funding times, each in its market's stream after the trades before it (a
        source's in-line record on md.trades): the market's candles that end by then close, then its
        accounts get the funding in their feed; the keys touched."""
        return self._in_line(FUNDING_RATES.name, rates)

    def ingest_marks(self, marks: Sequence[MarkPrice]) -> list[str]:
        """Perpetuals' mark prices from the venue, each in its market's stream after the trades before
        it (a source's in-line record on md.trades): the market's candles that end by then close, then
        its accounts get the mark in their feed (:class:`~mambo.core.stages.InLineStage`); the keys
        touched."""
        return self._in_line(MARK_PRICES.name, marks)

    def _in_line(self, topic: str, events: Sequence[FundingRate | MarkPrice]) -> list[str]:
        """Market events in line with their market's trades: its candles that end by each close first;
        one of a market this run does not know becomes a dead letter."""
        touched: dict[str, None] = {}
        for e in events:
            if self.known_markets is not None and e.key not in self.known_markets:
                self.emit(dlq_topic(topic), _dead(topic, e, f"unknown market {e.key}"))
                continue
            self.advance([(e.key, e.ts_event, e.ts_init)])
            self._bus(e.key).publish(topic, e)
            touched[e.key] = None
        return list(touched)

    def ingest_inline(
        self, steps: Sequence[tuple[str, int, int] | FundingRate | ControlCommand | MarkPrice]
    ) -> list[str]:
        """In-line records of md.trades, in order: watermarks (:meth:`advance`), funding times
        (:meth:`ingest_funding`), control commands (:meth:`ingest_control`) and mark prices
        (:meth:`ingest_marks`); the keys touched."""
        touched: dict[str, None] = {}
        for step in steps:
            if isinstance(step, FundingRate):
                keys = self.ingest_funding([step])
            elif isinstance(step, MarkPrice):
                keys = self.ingest_marks([step])
            elif isinstance(step, ControlCommand):
                keys = self.ingest_control([step])
            else:
                keys = self.advance([step])
            touched.update(dict.fromkeys(keys))
        return list(touched)

    def ingest_control(self, commands: Sequence[ControlCommand]) -> list[str]:
        """Control commands' copies for one market each (:func:`mambo.core.control.expand`), in line
        with its stream: its strategy and control stages take them; the keys touched."""
        touched: dict[str, None] = {}
        for cmd in commands:
            if not cmd.market or (self.known_markets is not None and cmd.market not in self.known_markets):
                why = f"a control command's copy names no market of this run ({cmd.market or 'none'})"
                self.emit(dlq_topic(CONTROL_MARKETS.name), _dead(CONTROL_MARKETS.name, cmd, why))
                continue
            self._bus(cmd.market).publish(CONTROL_MARKETS.name, cmd)
            touched[cmd.market] = None
        return list(touched)

    def ingest_feed(self, feeds: Sequence[AccountFeed]) -> list[str]:
        """The account feed through its accounts' stages, in order; the state keys touched
        (``account/<id>``). A feed of an account this run does not have, or one its stage cannot take,
        becomes a dead letter with the reason."""
        touched: dict[str, None] = {}
        for feed in feeds:
            if feed.account not in self._account_ids:
                why = f"unknown account {feed.account!r} (this run's: {', '.join(sorted(self._account_ids))})"
                self.emit(dlq_topic(ACCOUNT_FEED.name), _dead(ACCOUNT_FEED.name, feed, why))
                continue
            stage = self._account(feed.account)
            try:
                outs = stage.handle(ACCOUNT_FEED.name, feed)
            except Exception as exc:  # a stage fault must not stop the pipeline
                self.emit(
                    dlq_topic(ACCOUNT_FEED.name), _dead(ACCOUNT_FEED.name, feed, f"{stage.name}: {exc!r}")
                )
                continue
            self._publish_account(ACCOUNT_PREFIX + feed.account, outs)
            touched[ACCOUNT_PREFIX + feed.account] = None
        return list(touched)

    def _emit_account(self, topic: str, event: Any) -> None:
        self.emit(topic, event)

    def _publish_account(self, key: str, outs: Out) -> None:
        """An account stage's events out, each followed by what its extra stage makes of it."""
        extra = self._extras.get(key)
        for topic, event in outs:
            self._account_bus.publish(topic, event)
            if extra is not None and topic in extra.inputs:
                try:
                    made = extra.handle(topic, event)
                except Exception as exc:  # never holds up trading
                    self.emit(dlq_topic(topic), _dead(topic, event, f"{extra.name}: {exc!r}"))
                    continue
                for t, e in made:
                    self._account_bus.publish(t, e)

    def finish(self) -> None:
        """The end of every market's stream: each account takes what still waits for a watermark."""
        for key, stage in self._account_stages.items():
            self._publish_account(key, stage.finish())

    def state(self, key: str) -> bytes:
        """One key's whole operator state, serialized (for the changelog): a pickle, zlib-compressed
        (an account's state holds the steps its merge keeps waiting for a lagging market, about 1 KB
        each as a pickle, a quarter of it compressed, in 9 ms for 1,600 of them)."""
        if key.startswith(ACCOUNT_PREFIX):
            obj: Any = (self._account_stages[key], self._extras.get(key))
        else:
            obj = self._stages[key]
        return zlib.compress(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), 1)

    def restore(self, key: str, blob: bytes) -> None:
        """Replace one key's state with one saved by :meth:`state` (or, uncompressed, by a version
        before it: a pickle starts with 0x80, a zlib stream with 0x78)."""
        if blob[:1] == b"\x78":
            blob = zlib.decompress(blob)
        if key.startswith(ACCOUNT_PREFIX):
            self._account_stages[key], extra = pickle.loads(blob)
            if extra is not None:
                self._extras[key] = extra
        else:
            self._wire(key, pickle.loads(blob))

    def drop(self, keys: Iterable[str]) -> None:
        """Forget keys (their partitions moved to another worker)."""
        for k in keys:
            self._stages.pop(k, None)
            self._buses.pop(k, None)
            self._account_stages.pop(k, None)
            self._extras.pop(k, None)


def _dead(topic: str, event: Any, reason: str) -> DeadLetter:
    return DeadLetter(
        event_id=make_id("dlq", topic, event.event_id),
        ts_event=event.ts_event,
        ts_init=event.ts_init,
        topic=topic,
        key=str(getattr(event, "stream_key", None) or getattr(event, "key", "")),
        reason=reason,
        payload=event.model_dump_json(),
    )
