"""Producing events to Kafka: :class:`KafkaPublisher`, the one producer every Mambo process uses.

confluent-kafka (librdkafka) underneath: idempotent (``enable.idempotence``: no duplicates or
reordering on retries), lz4-compressed, batched (``linger.ms``), each message keyed by its topic's key
(``exchange:symbol``) so one market's events stay ordered in one partition, with the schema version
in a header (:mod:`mambo.streams.kafka.codec`). Sources (``mambo source``, the replay) call
:meth:`KafkaPublisher.publish` / :meth:`KafkaPublisher.publish_trades`; :meth:`KafkaPublisher.flush`
waits until the broker has every message and raises :class:`PublishError` for any it refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import structlog
from confluent_kafka import KafkaError, Message, Producer

from mambo.core.control import expand
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import ControlCommand, Event, FundingRate, MarkPrice
from mambo.schemas.topics import CONTROL, FUNDING_RATES, MARK_PRICES, TRADES, Topic, by_name
from mambo.streams.kafka.codec import (
    WATERMARK_HEADERS,
    Headers,
    encode,
    encode_trades,
    encode_watermark,
    headers_for,
)

__all__ = ["PRODUCER_DEFAULTS", "KafkaPublisher", "PublishError"]

log = structlog.get_logger("mambo.kafka.producer")

PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "compression.type": "lz4",
    "linger.ms": 5,
    "batch.num.messages": 10_000,
    "queue.buffering.max.messages": 1_000_000,
    "log_level": 3,
}


class PublishError(RuntimeError):
    """The broker refused messages (after librdkafka's own retries); the message says which."""


class KafkaPublisher:
    """Publishes events to their topics. Not thread-safe beyond what librdkafka allows (one per thread)."""

    def __init__(self, bootstrap: str, prefix: str = "", **config: Any) -> None:
        self.prefix = prefix  # namespaces topic names (see topology.wanted_topics)
        self._producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_DEFAULTS, **config})
        self._errors: list[str] = []
        self.sent = 0

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            if not self._errors:  # the first of a run is logged; flush() reports them all
                log.error("publish failed", topic=msg.topic(), error=err.str())
            self._errors.append(f"{msg.topic()}: {err.str()}")

    def _produce(self, topic: str, key: str, value: bytes, headers: Headers) -> None:
        while True:
            try:
                self._producer.produce(
                    self.prefix + topic, value, key.encode(), headers=headers, on_delivery=self._on_delivery
                )
                break
            except BufferError:  # the local queue is full: let librdkafka send, then retry
                self._producer.poll(0.05)
        self.sent += 1

    def publish(self, topic: str | Topic, event: Event) -> None:
        """Queue one event on its topic (by name or registry entry), keyed by the topic's key."""
        t = by_name(topic) if isinstance(topic, str) else topic
        if not isinstance(event, t.model):
            raise TypeError(f"{t.name} carries {t.model.__name__}, got {type(event).__name__}")
        key, value = encode(t, event)
        self._produce(t.name, key, value, headers_for(t.model))

    def publish_many(self, topic: str | Topic, events: Iterable[Event]) -> None:
        for ev in events:
            self.publish(topic, ev)
        self._producer.poll(0)

    def publish_trades(self, batch: TradeBatch) -> None:
        """Queue a batch of trades on md.trades, one message per trade, in stream order."""
        headers = headers_for(TRADES.model)
        for key, value in encode_trades(batch):
            self._produce(TRADES.name, key, value, headers)
        self._producer.poll(0)

    def publish_watermarks(self, keys: Sequence[str], watermark: int, ts_init: int) -> None:
        """Queue a source watermark for each market of ``keys`` on md.trades, after its trades: no
        trade of it before ``watermark`` is still to come (see :mod:`mambo.streams.kafka.codec`)."""
        for key in keys:
            self._produce(TRADES.name, key, encode_watermark(key, watermark, ts_init), WATERMARK_HEADERS)
        self._producer.poll(0)

    def publish_funding(self, rates: Iterable[FundingRate]) -> None:
        """Queue perpetuals' funding times on md.funding (the history) and, in line with each market's
        trades, on md.trades (where the worker settles it: after the trades before it, whatever the
        interleaving of the topics; see :mod:`mambo.streams.kafka.codec`)."""
        self._publish_in_line(FUNDING_RATES, rates)

    def publish_marks(self, marks: Iterable[MarkPrice]) -> None:
        """Queue perpetuals' mark prices on md.mark (the history) and, in line with each market's
        trades, on md.trades (where the worker gives them to the market's accounts: after the trades
        before them; see :mod:`mambo.streams.kafka.codec`)."""
        self._publish_in_line(MARK_PRICES, marks)

    def _publish_in_line(self, topic: Topic, events: Iterable[FundingRate | MarkPrice]) -> None:
        """Each event on its own topic and a copy in line on its market's md.trades partition."""
        headers = headers_for(topic.model)
        for event in events:
            self.publish(topic, event)
            self._produce(TRADES.name, event.key, event.model_dump_json().encode(), headers)
        self._producer.poll(0)

    def publish_control(self, command: ControlCommand, markets: Sequence[str]) -> None:
        """Queue a control command on ``control`` (the record) and its copy for each market it concerns
        (its own, else each of ``markets``: the account's) in line on md.trades, where the worker
        takes it after the market's trades so far (see :mod:`mambo.core.control`)."""
        self.publish(CONTROL, command)
        for cmd in expand(command, list(markets)):
            self._produce(
                TRADES.name, cmd.market, cmd.model_dump_json().encode(), headers_for(ControlCommand)
            )
        self._producer.poll(0)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every queued message is acknowledged; PublishError if any was refused."""
        left = self._producer.flush(timeout)
        errors, self._errors = self._errors, []
        if left:
            errors.append(f"{left} messages still queued after {timeout}s")
        if errors:
            raise PublishError(f"{len(errors)} publish errors, first: {errors[0]}")

    def close(self, timeout: float = 30.0) -> None:
        self.flush(timeout)

    def __enter__(self) -> KafkaPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
