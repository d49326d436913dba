"""The ClickHouse sink: every topic into its table, in batches, exactly once in effect.

A consumer in group ``mambo-sink`` (``read_committed``: it never sees an aborted worker transaction)
takes up to ``batch_size`` messages at a time, decodes them per topic (trades through the column
fast path, everything else through its pydantic model), buffers them in a
:class:`~mambo.connectors.clickhouse.ClickHouseSink`, flushes, and only then commits the offsets.
A crash before the commit replays the batch, and the replay changes nothing: tables are
ReplacingMergeTree on ``event_id`` and each insert carries a deduplication token.

While ClickHouse is away, the sink holds: it pauses its partitions (staying in the group), retries the
insert with backoff, and resumes when it lands; nothing is committed, so nothing is lost. While the
group's coordinator moves (its broker died: NOT_COORDINATOR until the new one has loaded the group),
the commit is retried with backoff the same way.

A message that cannot be decoded goes to ``<topic>.dlq`` as a DeadLetter with topic, partition, offset
and the reason, and the sink goes on. Invalid trades are the worker's to dead-letter (it reads
md.trades too); the sink leaves them out of the trades table, as the embedded runtime does.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Collection, Sequence
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from mambo.connectors.clickhouse import ClickHouseSink, ClickHouseWriteError
from mambo.schemas.events import DeadLetter
from mambo.schemas.topics import ALL_TOPICS, DLQ_SUFFIX, TRADES, by_name, dlq_topic
from mambo.streams.kafka.codec import (
    DecodeError,
    check_trades,
    dead_letter,
    decode,
    decode_trades,
    is_watermark,
)
from mambo.streams.kafka.producer import KafkaPublisher

__all__ = ["KafkaSink"]

log = structlog.get_logger("mambo.kafka.sink")

#: Commit errors that pass once the group's coordinator has moved or come back: retried.
COORDINATOR_MOVING = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._WAIT_COORD,
    }
)

#: Commit errors of a consumer that no longer owns its partitions (the group rebalanced while its
#: coordinator moved): the commit is given up, not retried. The rows are written, and whoever the
#: partitions go to reads them again from the last commit: the tables keep one row per event.
ASSIGNMENT_GONE = frozenset(
    {
        KafkaError._ASSIGNMENT_LOST,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.REBALANCE_IN_PROGRESS,
    }
)


class KafkaSink:
    """Consumes ``topics`` (default: every registry topic) into ClickHouse."""

    def __init__(
        self,
        bootstrap: str,
        sink: ClickHouseSink,
        topics: Sequence[str] | None = None,
        group: str = "mambo-sink",
        batch_size: int = 20_000,
        poll_seconds: float = 0.2,
        max_backoff: float = 5.0,
        prefix: str = "",
        known_markets: Collection[str] | None = None,
    ) -> None:
        self.sink = sink
        self.known_markets = set(known_markets) if known_markets is not None else None
        self.prefix = prefix  # namespaces topics and group (see topology.wanted_topics)
        self.topics = list(topics or [t.name for t in ALL_TOPICS])
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.max_backoff = max_backoff
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": prefix + group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "session.timeout.ms": 10_000,
                "log_level": 3,
            }
        )
        self.dlq = KafkaPublisher(bootstrap, prefix)
        self.messages = 0
        self.dead = 0
        self.retries = 0  # commits retried while the coordinator moved
        self.lost_commits = 0  # commits given up: the partitions had gone to a new assignment
        #: the partitions held, as (topic, partition), kept by the rebalance callbacks: what other
        #: threads (the health server) read, since calling into the consumer from a thread of its
        #: own can hang on librdkafka's locks while the consumer's thread is in a rebalance
        self.assigned: frozenset[tuple[str, int]] = frozenset()

    def _on_assign(self, _consumer: Consumer, parts: list[TopicPartition]) -> None:
        self.assigned = self.assigned | {(tp.topic, tp.partition) for tp in parts}

    def _on_revoke(self, _consumer: Consumer, parts: list[TopicPartition]) -> None:
        self.assigned = self.assigned - {(tp.topic, tp.partition) for tp in parts}

    def run(self, stop: threading.Event | None = None, idle_exit: float | None = None) -> None:
        """Consume until ``stop`` is set (or nothing came for ``idle_exit`` seconds)."""
        stop = stop or threading.Event()
        self.consumer.subscribe(
            [self.prefix + t for t in self.topics],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        last = time.monotonic()
        try:
            while not stop.is_set():
                n = self.step(stop)
                if n or not self.consumer.assignment():  # idle time counts from the assignment
                    last = time.monotonic()
                elif idle_exit is not None and time.monotonic() - last > idle_exit:
                    break
        finally:
            self.consumer.close()
            self.dlq.close()

    def step(self, stop: threading.Event | None = None) -> int:
        """One batch: consume, decode, insert (holding while ClickHouse is away), commit. Messages done."""
        msgs = [m for m in self.consumer.consume(self.batch_size, self.poll_seconds) if m.error() is None]
        if not msgs:
            return 0
        by_topic: dict[str, list[Message]] = defaultdict(list)
        for m in msgs:
            by_topic[(m.topic() or "").removeprefix(self.prefix)].append(m)
        for topic, part in by_topic.items():
            self._buffer(topic, part)
        self.dlq.flush()
        self._flush_holding(stop)
        self._commit()
        self.messages += len(msgs)
        return len(msgs)

    def _commit(self, timeout: float = 120.0) -> None:
        """Commit the consumed offsets, retrying while the group's coordinator moves; given up (see
        :data:`ASSIGNMENT_GONE`) when the partitions are no longer this consumer's."""
        backoff, deadline = 0.1, time.monotonic() + timeout
        while True:
            try:
                self.consumer.commit(asynchronous=False)
                return
            except KafkaException as ex:
                code = ex.args[0].code()
                if code in ASSIGNMENT_GONE:
                    self.lost_commits += 1
                    log.warning("sink.commit_given_up", reason=ex.args[0].str())
                    return
                if code not in COORDINATOR_MOVING or time.monotonic() > deadline:
                    raise
                self.retries += 1
                log.warning("sink.commit_retry", reason=ex.args[0].str(), retry_in=backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    def _buffer(self, topic: str, msgs: list[Message]) -> None:
        t = by_name(topic)
        if topic == TRADES.name:
            msgs = [m for m in msgs if not is_watermark(m.headers())]  # a source's, not a trade
            batch, ts_init, _ = decode_trades([m.value() for m in msgs])
            # the worker dead-letters undecodable and invalid trades; the table holds the valid ones
            rows, _ = check_trades(batch, self.known_markets)
            if len(rows):
                cols: dict[str, Any] = batch.take(rows).columns()
                cols["ts_init"] = ts_init[rows]
                self.sink.write_columns(t.table, cols)
            return
        events = []
        for m in msgs:
            try:
                events.append(decode(t, m.value(), m.headers()))
            except DecodeError as ex:
                self._dead_letter(m, str(ex))
        if events:
            self.sink.write(t.table, events)

    def _dead_letter(self, m: Message, reason: str) -> None:
        topic = (m.topic() or "").removeprefix(self.prefix)
        self.dead += 1
        log.warning("dead letter", topic=topic, partition=m.partition(), offset=m.offset(), reason=reason)
        if topic.endswith(DLQ_SUFFIX):
            return  # never loop on a dead-letter topic
        letter: DeadLetter = dead_letter(
            topic, _or(m.partition()), _or(m.offset()), m.key(), m.value(), reason, m.timestamp()[1] * 10**6
        )
        self.dlq.publish(dlq_topic(topic), letter)

    def _flush_holding(self, stop: threading.Event | None) -> None:
        backoff = 0.1
        paused: list[TopicPartition] = []
        while True:
            try:
                self.sink.flush()
                break
            except ClickHouseWriteError as ex:
                if not paused:
                    paused = self.consumer.assignment()
                    self.consumer.pause(paused)
                self.retries += 1
                log.warning("sink.holding", reason=str(ex), retry_in=backoff)
                if stop is not None and stop.is_set():
                    raise
                deadline = time.monotonic() + backoff
                while time.monotonic() < deadline:
                    self.consumer.poll(0.05)  # keeps the group membership; paused: returns nothing
                backoff = min(backoff * 2, self.max_backoff)
        if paused:
            self.consumer.resume(paused)


def _or(value: int | None) -> int:
    return -1 if value is None else value
