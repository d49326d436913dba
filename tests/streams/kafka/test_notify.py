"""``mambo notify``'s Kafka side: the notifications topic read in its own group, delivered to a local
webhook that fails at first, committed after delivery, and not read again by the group."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

from mambo.notify.delivery import DeliveryLog, Notifier, RetryPolicy, make_channels
from mambo.notify.outbox import KafkaOutbox, run_notifier
from mambo.schemas.events import Notification, make_id
from mambo.schemas.topics import NOTIFICATIONS
from mambo.streams.kafka.producer import KafkaPublisher
from tests.notify.servers import WebhookReceiver

pytestmark = pytest.mark.kafka


def note(i: int) -> Notification:
    return Notification(
        event_id=make_id("kafka-note", i),
        ts_event=i,
        ts_init=i,
        account="main",
        kind="exit",
        level="success",
        market="binance:BTC/USDT",
        title=f"[main] exit sell BTC/USDT #{i}",
        body=f"sell 0.5 BTC/USDT; realized PnL {i}",
        source_topic="fills",
        source_id=make_id("fill", i),
    )


def committed(bootstrap: str, group: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "log_level": 0})
    try:
        [tp] = c.committed([TopicPartition(topic, 0)], timeout=10)
        return tp.offset
    except KafkaException:  # the group's coordinator not found yet
        return -1
    finally:
        c.close()


def test_kafka_outbox_delivers_once_and_commits_after_delivery(
    bootstrap: str, kafka_prefix: str, tmp_path: Path
) -> None:
    with KafkaPublisher(bootstrap, kafka_prefix) as pub:
        pub.publish_many(NOTIFICATIONS, [note(i) for i in range(6)])
        pub.publish(NOTIFICATIONS, note(2))  # a repeat (a worker's at-least-once retry): dropped by id
    receiver = WebhookReceiver().start()
    receiver.fail_next = 3  # the channel refuses at first: retried with backoff
    delivered = DeliveryLog(tmp_path / "delivered.sqlite")
    # two at most read ahead: the consumer pauses while the channel refuses, and resumes
    policy = RetryPolicy(retry_seconds=0.05, retry_max_seconds=0.2, max_per_minute=1000, max_pending=2)
    notifier = Notifier(make_channels([receiver.url], timeout=2.0), policy, delivered=delivered)
    stop = threading.Event()
    outbox = KafkaOutbox(bootstrap, "mambo-notify", kafka_prefix)
    thread = threading.Thread(target=run_notifier, args=(outbox, notifier, stop), daemon=True)
    thread.start()
    topic, group = kafka_prefix + NOTIFICATIONS.name, kafka_prefix + "mambo-notify"
    try:
        deadline = time.monotonic() + 60
        while committed(bootstrap, group, topic) < 7 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert committed(bootstrap, group, topic) == 7  # every record, the repeat included
        assert receiver.event_ids() == [note(i).event_id for i in range(6)]
        assert notifier.stats.failures == 3 and notifier.stats.duplicates == 1
    finally:
        stop.set()
        thread.join(20)
    # a restart of the group reads from the commit: only what came after it
    with KafkaPublisher(bootstrap, kafka_prefix) as pub:
        pub.publish(NOTIFICATIONS, note(6))
    again = KafkaOutbox(bootstrap, "mambo-notify", kafka_prefix)
    try:
        got: list[tuple[Notification, object]] = []
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            got = again.poll(100, 0.5)
        assert [(n.event_id, token) for n, token in got] == [(note(6).event_id, (topic, 0, 7))]
    finally:
        again.close()
        receiver.stop()
