"""The pipeline as a Faust app (faust-streaming): one agent on md.trades over the same operators.

The agent is a thin wrapper: it takes md.trades in batches (``take_events``), decodes them with the
Kafka codec (undecodable or invalid messages go to ``md.trades.dlq`` with topic, partition, offset and
reason), and runs each batch through :class:`~mambo.streams.markets.MarketPipelines`, the same
per-market stages (candles, indicators, strategies, aggregation, intents, risk, execution,
portfolio) that the confluent-kafka worker and the in-process reference run. Every event the stages
publish goes to its registry topic through Faust's producer, keyed as the registry says.

State: each market's operator state (the pickled stages, :meth:`MarketPipelines.state`) lives in the
Faust table ``state`` keyed by ``exchange:symbol``, whose changelog topic
``<app id>-state-changelog`` (compacted) Faust writes in the partition of the market's input and
replays on assignment; a market missing from memory is restored from the table before its trades
run, and a revocation drops the in-memory pipelines (the table is the truth).

The processing guarantee is Faust's ``processing_guarantee``: ``at_least_once`` (offsets committed
after processing) or ``exactly_once`` (Faust's transactional producers, one per input partition,
carry the outputs, the changelog writes and the offsets). A batch that raises in the stages is
dead-lettered message by message with the error as the reason, so nothing is acked silently (a
Faust agent that raises would still ack its message).

Checked against Kafka 4.3.1 with aiokafka 0.14: both guarantees run, and one run gives the
reference's orders and fills (tests/streams/kafka/test_faust.py). aiokafka reads our producers' lz4
batches only with ``cramjam`` installed (without it the consumer thread crashes and the app goes on
idle; :meth:`FaustPipeline.run` raises instead). Known limits: a second run of the same app resuming
from the changelog and committed offsets has twice stalled with a few dozen trades never delivered
to the agent (after a GroupCoordinatorNotAvailable during the join); with ``at_least_once`` the
last batch's offsets can stay uncommitted for tens of seconds while idle. ``mambo worker``
(confluent-kafka transactions) is the runtime the crash and scale tests prove.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import faust
import structlog

from mambo.core.market import Market
from mambo.core.stages import EngineConfig
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import Event
from mambo.schemas.topics import TRADES, by_name, dlq_topic
from mambo.streams.kafka.codec import check_trades, dead_letter, decode_trades, encode, headers_for
from mambo.streams.markets import MarketPipelines

__all__ = ["GUARANTEES", "FaustPipeline"]

log = structlog.get_logger("mambo.agents")

GUARANTEES = ("at_least_once", "exactly_once")


class FaustPipeline:
    """A Faust app running every stage per market on the md.trades partitions it is assigned.

    ``await run(idle_exit=...)`` starts the app, processes until stopped or idle, and stops it.
    """

    def __init__(
        self,
        bootstrap: str,
        config: EngineConfig,
        datadir: Path,
        *,
        guarantee: str = "at_least_once",
        prefix: str = "",
        partitions: int = 6,
        markets: Mapping[str, Market] | None = None,
        known_markets: Sequence[str] | None = None,
        batch_size: int = 5_000,
        within: float = 0.05,
    ) -> None:
        if guarantee not in GUARANTEES:
            raise ValueError(
                f"processing guarantee must be one of {', '.join(GUARANTEES)}, got {guarantee!r}"
            )
        self.prefix = prefix
        self._bootstrap = bootstrap
        self.batch_size = batch_size
        self.within = within
        self.processed = 0  # trades
        self.dead = 0
        self.batches = 0
        self.last_activity = time.monotonic()
        self._out: list[tuple[str, Any]] = []
        self.pipelines = MarketPipelines(config, self._collect, markets, known_markets)
        self.app = faust.App(
            prefix + "mambo-faust",
            broker=f"kafka://{bootstrap}",
            store="memory://",
            processing_guarantee=guarantee,
            topic_partitions=partitions,
            topic_replication_factor=1,
            datadir=str(datadir),
            web_enabled=False,
        )
        self.source = self.app.topic(
            prefix + TRADES.name, partitions=partitions, key_serializer="raw", value_serializer="raw"
        )
        self.table = self.app.Table("state", partitions=partitions, key_type=bytes, value_type=bytes)
        self._topics: dict[str, faust.types.TopicT] = {}
        self._headers: dict[str, list[tuple[str, bytes]]] = {}
        self.app.agent(self.source, name=prefix + "mambo-trades")(self._agent)
        self.app.on_partitions_revoked.connect(self._on_revoked)

    def _collect(self, topic: str, event: Any) -> None:
        self._out.append((topic, event))

    async def _on_revoked(self, sender: Any, /, *_: Any, signal: Any, **__: Any) -> None:
        self.pipelines.drop(self.pipelines.keys)

    # --- the agent -----------------------------------------------------------------------------

    async def _agent(self, stream: faust.types.StreamT[Any]) -> None:
        assert isinstance(stream, faust.Stream)  # take_events is on the class, not the protocol
        async for events in stream.take_events(self.batch_size, within=self.within):
            by_part: dict[int, list[faust.types.EventT]] = defaultdict(list)
            for ev in events:
                by_part[ev.message.partition].append(ev)
            for partition, part in by_part.items():
                self._out.clear()
                try:
                    touched = self._process(partition, part)
                except Exception as ex:  # an agent that raises would still ack: dead-letter and go on
                    log.exception("agent.batch_failed", partition=partition)
                    self._out.clear()
                    touched = []
                    for ev in part:
                        self._dead(partition, ev, f"processing failed: {type(ex).__name__}: {ex}")
                for topic, event in self._out:
                    if not isinstance(event, TradeBatch):
                        await self._send(topic, event)
                self._out.clear()
                for key in touched:
                    blob = self.pipelines.state(key)
                    self.table.data[key.encode()] = blob
                    self.table.send_changelog(partition, key.encode(), blob)
            self.batches += 1
            self.last_activity = time.monotonic()

    def _process(self, partition: int, part: list[faust.types.EventT]) -> list[str]:
        values = [ev.message.value for ev in part]
        batch, _, undecodable = decode_trades(values)
        skip = {j for j, _ in undecodable}
        decoded = [ev for i, ev in enumerate(part) if i not in skip] if undecodable else part
        rows, invalid = check_trades(batch, self.pipelines.known_markets)
        for i, reason in undecodable:
            self._dead(partition, part[i], reason)
        for i, reason in invalid:
            self._dead(partition, decoded[i], reason)
        if invalid:
            batch = batch.take(rows)
        for key in batch.keys:  # a market this process has not held in memory: from the table
            blob = self.table.data.get(key.encode()) if key not in self.pipelines.keys else None
            if blob is not None:
                self.pipelines.restore(key, blob)
        touched = self.pipelines.ingest_trades(batch)
        self.processed += len(batch)
        return touched

    def _dead(self, partition: int, ev: faust.types.EventT, reason: str) -> None:
        m = ev.message
        letter = dead_letter(TRADES.name, partition, m.offset, m.key, m.value, reason, int(m.timestamp * 1e9))
        self._out.append((dlq_topic(TRADES.name), letter))
        self.dead += 1
        log.warning("dead letter", topic=TRADES.name, partition=partition, offset=m.offset, reason=reason)

    async def _send(self, topic: str, event: Event) -> None:
        t = by_name(topic)
        key, value = encode(t, event)
        headers = self._headers.get(topic)
        if headers is None:
            headers = self._headers[topic] = [(k, v) for k, v in headers_for(t.model) if isinstance(v, bytes)]
        out = self._topics.get(topic)
        if out is None:
            out = self._topics[topic] = self.app.topic(
                self.prefix + topic, key_serializer="raw", value_serializer="raw"
            )
        await out.send(key=key.encode(), value=value, headers=headers)

    def _raise_if_crashed(self) -> None:
        """Faust's consumer thread can crash (an undecodable batch codec, a lost broker) while the
        app object stays up and simply stops consuming: turn that into an error, not an idle exit."""
        consumer = self.app.consumer
        for svc in (self.app, consumer, getattr(consumer, "_thread", None)):
            if svc is not None and svc.crashed:
                raise RuntimeError(f"faust {type(svc).__name__} crashed: {svc.crash_reason!r}")

    def _drained(self) -> bool:
        """Whether the app's group has committed md.trades to its end on every partition (so an
        idle exit never leaves input behind: a rebalance or a table recovery also looks idle)."""
        from confluent_kafka import Consumer, TopicPartition

        topic = self.source.get_topic_name()
        c = Consumer({"bootstrap.servers": self._bootstrap, "group.id": self.app.conf.id, "log_level": 3})
        try:
            parts = c.list_topics(topic, timeout=10).topics[topic].partitions
            committed = c.committed([TopicPartition(topic, p) for p in parts], timeout=10)
            for tp in committed:
                _, high = c.get_watermark_offsets(tp, timeout=10)
                if high > 0 and tp.offset < high:
                    return False
            return True
        finally:
            c.close()

    # --- running -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None, idle_exit: float | None = None) -> None:
        """Start the app, process until ``stop`` is set or nothing arrived for ``idle_exit`` s, stop."""
        stop = stop or asyncio.Event()
        await self.app.start()
        log.info("faust.started", app=self.app.conf.id, guarantee=self.app.conf.processing_guarantee.value)
        try:
            self.last_activity = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.2)
                self._raise_if_crashed()
                if not self.app.consumer.assignment():
                    self.last_activity = time.monotonic()  # idle time counts from assignment
                elif idle_exit is not None and time.monotonic() - self.last_activity > idle_exit:
                    if await asyncio.to_thread(self._drained):
                        break
                    if time.monotonic() - self.last_activity > idle_exit + 30:
                        log.warning("faust.idle_exit_before_commit", app=self.app.conf.id)
                        break  # at_least_once: Faust may not commit the last batch while idle
        finally:
            await self.app.stop()
            log.info("faust.stopped", trades=self.processed, batches=self.batches, dead=self.dead)
