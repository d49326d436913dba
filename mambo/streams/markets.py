"""One pipeline, and one paper account, per market: the form both runtimes share for parity.

Why (the determinism decision of issue 3): in :class:`~mambo.streams.embedded.EmbeddedRuntime` one
:class:`~mambo.core.portfolio.Portfolio` is shared by every market, so equity-fraction sizing and the
exposure and drawdown rules depend on how the markets' events interleave. Kafka keeps order only
within a partition, and partitions run independently, on as many workers as there are; no interleaving
across them is reproducible without funnelling every market through one partition (one core, the
throughput of one worker, and a merge by event time that has to guess how long to wait for a slow
partition). So the distributed runtime gives each market its own account: every stage of
:func:`~mambo.core.stages.build_stages` runs per ``exchange:symbol`` key on its own
:class:`~mambo.streams.bus.EventBus`, as an account named after the key (``account`` on every intent,
order, fill, position and equity snapshot is the market key). A market's orders and fills then depend
on that market's trades alone, in their order, which one partition keeps, so any partition count and
any number of workers give exactly the same orders and fills. :class:`MarketPipelines` is that
runtime; the Kafka worker holds one for the keys of its partitions and the parity tests run the same
recording through it in one process. The shared-account embedded runtime stays the default of ``mambo
demo``; its results differ from these only where the account-level rules bind across markets.

Each market's state is its stage objects (candle builders, indicator sets, strategies, aggregator,
risk engine, broker, portfolio), which pickle: :meth:`MarketPipelines.state` and
:meth:`MarketPipelines.restore` move it to and from the worker's changelog.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from mambo.core.market import Market
from mambo.core.stages import EngineConfig, Stage, build_stages
from mambo.schemas.batches import TradeBatch, validate_trades
from mambo.schemas.events import Candle, DeadLetter, make_id
from mambo.schemas.topics import EXCHANGE_CANDLES, TRADES, dlq_topic
from mambo.streams.bus import EventBus

__all__ = ["MarketPipelines"]

Emit = Callable[[str, Any], None]


class MarketPipelines:
    """Every stage, per market key; ``emit(topic, event)`` receives every event they publish."""

    def __init__(
        self,
        config: EngineConfig,
        emit: Emit,
        markets: Mapping[str, Market] | None = None,
        known_markets: Collection[str] | None = None,
    ) -> None:
        self.config = config
        self.markets = dict(markets or {})
        self.known_markets = set(known_markets) if known_markets is not None else None
        self.emit = emit
        self._buses: dict[str, EventBus] = {}
        self._stages: dict[str, list[Stage]] = {}

    @property
    def keys(self) -> list[str]:
        return list(self._stages)

    def _wire(self, key: str, stages: list[Stage]) -> EventBus:
        bus = EventBus()
        for s in stages:
            bus.add_stage(s)
        bus.observe(self._forward)
        self._stages[key] = stages
        self._buses[key] = bus
        return bus

    def _forward(self, topic: str, payload: Any) -> None:
        if topic not in (TRADES.name, EXCHANGE_CANDLES.name):  # the inputs are already on their topics
            self.emit(topic, payload)

    def _bus(self, key: str) -> EventBus:
        bus = self._buses.get(key)
        if bus is None:
            bus = self._wire(key, build_stages(replace(self.config, account=key), self.markets))
        return bus

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
                    dlq_topic(EXCHANGE_CANDLES.name),
                    DeadLetter(
                        event_id=make_id("dlq", EXCHANGE_CANDLES.name, c.event_id),
                        ts_event=c.ts_event,
                        ts_init=c.ts_init,
                        topic=EXCHANGE_CANDLES.name,
                        key=key,
                        reason=f"unknown market {key}",
                        payload=c.model_dump_json(),
                    ),
                )
                continue
            self._bus(key).publish(EXCHANGE_CANDLES.name, c)
            touched[key] = None
        return list(touched)

    def state(self, key: str) -> bytes:
        """The market's whole operator state, serialized (for the changelog)."""
        return pickle.dumps(self._stages[key], protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, key: str, blob: bytes) -> None:
        """Replace the market's state with one saved by :meth:`state`."""
        self._wire(key, pickle.loads(blob))

    def drop(self, keys: Iterable[str]) -> None:
        """Forget markets (their partitions moved to another worker)."""
        for k in keys:
            self._stages.pop(k, None)
            self._buses.pop(k, None)
