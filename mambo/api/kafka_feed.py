"""The API's live feed in distributed mode: the Kafka topics the API serves, into the service.

:class:`KafkaFeed` is a confluent-kafka consumer on a thread of its own. It reads every topic that has
a WebSocket channel (:func:`~mambo.api.hub.channel_of`: signals, signals.raw, the candle topics,
indicators, orders, fills, positions, equity, risk.rejections), in batches, decodes each message with
the project's codec (:func:`~mambo.streams.kafka.codec.decode`) and hands ``(topic, event)`` to a
handler, :meth:`~mambo.api.service.SignalService.on_event_threadsafe` in ``mambo api``, which runs it
on the server's event loop. One market's events keep their order: they share a partition, and a
partition's messages come in offset order.

* **Live, not history.** The feed starts at the latest offsets every time (history is ClickHouse's:
  the service loads the stored latest signals when the first live event arrives) and commits nothing.
  Its consumer group is its own and unique per process (``<prefix>mambo-api-<host>-<pid>-<random>``):
  every API process must see every partition, so API processes never share a group with each other,
  with the sink or with the workers.
* **Committed only.** ``read_committed``: a worker's aborted transaction never reaches a client.
* **Bad input never stops it.** A message that cannot be decoded is logged (topic, partition, offset,
  reason) and skipped. It is not dead-lettered here: the sink reads the same topics and already puts
  it in ``<topic>.dlq``; the API adding a second dead letter would double-count. A handler that
  raises is logged the same way.
* **Clean stop.** :meth:`KafkaFeed.stop` sets a flag the loop checks between batches (at most
  ``poll_seconds`` later), the consumer leaves its group and the thread ends.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from confluent_kafka import OFFSET_END, Consumer, KafkaError, KafkaException, Message, TopicPartition

from mambo.api.hub import channel_of
from mambo.schemas.topics import ALL_TOPICS, DLQ_SUFFIX, by_name
from mambo.streams.kafka.codec import DecodeError, decode

__all__ = ["FEED_TOPICS", "KafkaFeed"]

log = structlog.get_logger("mambo.api.kafka_feed")

#: The topics the API serves live: those with a WebSocket channel.
FEED_TOPICS: tuple[str, ...] = tuple(
    t.name for t in ALL_TOPICS if not t.name.endswith(DLQ_SUFFIX) and channel_of(t.name) is not None
)


class KafkaFeed:
    """Consumes ``topics`` (default :data:`FEED_TOPICS`) from the latest offsets into ``handler``.

    :meth:`start` runs the loop on a daemon thread; :attr:`ready` is set once the consumer holds its
    partitions and knows where it starts (anything published after that is delivered);
    :meth:`stop` ends it. Counters: :attr:`delivered`, :attr:`skipped`.
    """

    def __init__(
        self,
        bootstrap: str,
        handler: Callable[[str, Any], None],
        topics: Sequence[str] | None = None,
        prefix: str = "",
        group: str | None = None,
        batch_size: int = 1_000,
        poll_seconds: float = 0.1,
    ) -> None:
        self.bootstrap = bootstrap
        self.handler = handler
        self.prefix = prefix  # namespaces topics and group (see topology.wanted_topics)
        self.topics = [by_name(t).name for t in (topics or FEED_TOPICS)]
        self.group = prefix + (
            group or f"mambo-api-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.ready = threading.Event()
        self.delivered = 0
        self.skipped = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Run the feed on a daemon thread (the consumer is created on it)."""
        if self._thread is not None:
            raise RuntimeError("the feed is already started")
        self._thread = threading.Thread(target=self.run, name="mambo-api-kafka-feed", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop and wait for the consumer to leave its group."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("kafka feed did not stop in time", timeout=timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- the loop ------------------------------------------------------------------------------------

    def run(self) -> None:
        """Consume until :meth:`stop` (on the calling thread)."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": self.group,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "latest",
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 10,  # a live view: a signal should not wait for a fuller fetch
                "session.timeout.ms": 10_000,
                "log_level": 3,
            }
        )
        consumer.subscribe([self.prefix + t for t in self.topics], on_assign=self._on_assign)
        log.info("kafka feed started", bootstrap=self.bootstrap, group=self.group, topics=len(self.topics))
        try:
            while not self._stop.is_set():
                msgs = consumer.consume(self.batch_size, self.poll_seconds)
                for m in msgs:
                    self._deliver(m)
        except Exception as ex:  # the API stays up (REST, stored data); its live view stops: say so
            log.error("kafka feed stopped by an error: the live view is frozen", error=repr(ex))
        finally:
            consumer.close()
            self.ready.clear()
            log.info("kafka feed stopped", delivered=self.delivered, skipped=self.skipped)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Start each partition at its latest offset, whatever was committed. The offsets are asked
        for here (one ListOffsets request for "latest", sent with the consumer's isolation level, so
        the last stable offset), not left to ``OFFSET_END``, so the feed knows where it starts before
        it says it is ready. A later rebalance (partitions added to a topic) starts over at the
        latest offsets too: a live view, not a log."""
        try:
            latest = consumer.offsets_for_times(
                [TopicPartition(tp.topic, tp.partition, OFFSET_END) for tp in partitions], 10.0
            )
        except KafkaException as ex:  # the broker did not answer: let librdkafka find the end itself
            log.warning("kafka feed could not look up the latest offsets", error=str(ex))
            latest = [TopicPartition(tp.topic, tp.partition, OFFSET_END) for tp in partitions]
        consumer.assign(latest)
        if all(tp.offset >= 0 for tp in latest):
            self.ready.set()
            log.info("kafka feed ready", partitions=len(latest))

    def _deliver(self, m: Message) -> None:
        err = m.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("kafka feed consumer error", error=err.str())
            return
        topic = (m.topic() or "").removeprefix(self.prefix)
        try:
            event = decode(by_name(topic), m.value(), m.headers())
        except DecodeError as ex:
            self.skipped += 1
            log.warning(
                "kafka feed skipped an undecodable message",
                topic=topic,
                partition=m.partition(),
                offset=m.offset(),
                reason=str(ex),
            )
            return
        try:
            self.handler(topic, event)
        except Exception as ex:  # the API stays up; this event is lost to live clients only
            self.skipped += 1
            log.warning(
                "kafka feed handler failed",
                topic=topic,
                partition=m.partition(),
                offset=m.offset(),
                error=repr(ex),
            )
            return
        self.delivered += 1
