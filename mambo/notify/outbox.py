"""Where ``mambo notify`` reads the outbox from, and the loop that drives a :class:`Notifier`.

A source gives ``(notification, token)`` pairs in outbox order and commits tokens once the notifier
says they are done (delivered or given up on every channel):

* :class:`KafkaOutbox`: the ``notifications`` topic, in its own consumer group (``[notify] group``),
  read_committed; offsets are committed after delivery, so a restart resumes at the first notification
  not yet done (and the delivery log drops what was sent but not yet committed).
* :class:`FileOutbox`: a JSON-lines file that :class:`OutboxFile` (an observer of the embedded bus)
  appends to; the cursor is a byte offset kept in the delivery log.
* :class:`ClickHouseOutbox`: the ``notifications`` table of the history (the Kafka sink and the
  embedded runtime write it), polled by ``ts_init`` with a look-back window; the delivery log drops
  what was seen. With chdb the folder is one process's at a time: read it after the run, or use a
  ClickHouse server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from pydantic import ValidationError

from mambo.notify.delivery import DeliveryLog, Notifier
from mambo.schemas.events import Notification
from mambo.schemas.topics import NOTIFICATIONS

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

__all__ = ["ClickHouseOutbox", "FileOutbox", "KafkaOutbox", "Outbox", "OutboxFile", "run_notifier"]

log = structlog.get_logger("mambo.notify")


class Outbox(Protocol):
    def poll(self, max_items: int, timeout: float) -> list[tuple[Notification, Any]]: ...
    def commit(self, tokens: Sequence[Any]) -> None: ...
    def close(self) -> None: ...


def run_notifier(
    source: Outbox,
    notifier: Notifier,
    stop: threading.Event | None = None,
    idle_exit: float | None = None,
) -> None:
    """Read, deliver, commit until ``stop`` is set (or, with ``idle_exit``, until nothing was read
    and nothing is pending for that many seconds)."""
    stop = stop or threading.Event()
    idle_since = time.monotonic()
    wait = 0.0
    try:
        while not stop.is_set():
            # with no room (max_pending waiting) the source is still polled, for nothing: a Kafka
            # consumer must keep polling to stay in its group
            room = max(0, notifier.policy.max_pending - notifier.pending)
            got = source.poll(room, min(max(wait, 0.01), 0.5))
            for n, token in got:
                notifier.offer(n, token)
            wait = notifier.step()
            done = notifier.acked()
            if done:
                source.commit(done)
            if got or notifier.pending:
                idle_since = time.monotonic()
            elif idle_exit is not None and time.monotonic() - idle_since > idle_exit:
                break
    finally:
        source.close()


# --- Kafka ----------------------------------------------------------------------------------------


class KafkaOutbox:
    """The ``notifications`` topic in consumer group ``group``; commits after delivery."""

    def __init__(self, bootstrap: str, group: str = "mambo-notify", prefix: str = "") -> None:
        from confluent_kafka import Consumer

        self.topic = prefix + NOTIFICATIONS.name
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
        self.consumer.subscribe([self.topic])
        self._paused: list[Any] = []

    def poll(self, max_items: int, timeout: float) -> list[tuple[Notification, Any]]:
        """Up to ``max_items`` notifications; with 0, the partitions are paused (the consumer still
        polls, so it stays in the group) until there is room again."""
        from mambo.streams.kafka.codec import DecodeError, decode

        if max_items <= 0:
            if not self._paused:
                self._paused = self.consumer.assignment()
                self.consumer.pause(self._paused)
            m = self.consumer.poll(timeout)
            if m is not None and m.error() is None:  # from a partition assigned since: read it later
                from confluent_kafka import TopicPartition

                self.consumer.seek(TopicPartition(str(m.topic()), m.partition() or 0, m.offset() or 0))
            return []
        if self._paused:
            self.consumer.resume(self._paused)
            self._paused = []
        out: list[tuple[Notification, Any]] = []
        for m in self.consumer.consume(max_items, timeout):
            err = m.error()
            if err is not None:
                log.warning("notify.kafka_error", error=err.str())
                continue
            token = (m.topic(), m.partition(), m.offset())
            try:
                event = decode(NOTIFICATIONS, m.value(), m.headers())
            except DecodeError as exc:  # not a notification: nothing to deliver, skip it
                log.warning("notify.undecodable", partition=m.partition(), offset=m.offset(), reason=str(exc))
                out.append((_skip(), token))
                continue
            assert isinstance(event, Notification)
            out.append((event, token))
        return out

    def commit(self, tokens: Sequence[Any]) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        last: dict[tuple[str, int], int] = {}
        for topic, partition, offset in tokens:
            last[(topic, partition)] = max(offset, last.get((topic, partition), -1))
        parts = [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
        try:
            self.consumer.commit(offsets=parts, asynchronous=False)
        except KafkaException as exc:  # a rebalance took the partition: its new owner resumes there
            log.warning("notify.commit_failed", error=str(exc))

    def close(self) -> None:
        self.consumer.close()


def _skip() -> Notification:
    """A placeholder for an undecodable record: no event id, so the notifier only commits past it."""
    return Notification.model_construct(
        event_id="", ts_event=0, ts_init=0, kind="entry", title="", body="", source_topic="", source_id=""
    )


# --- a JSON-lines file (the embedded runtime) -------------------------------------------------------


class OutboxFile:
    """An embedded bus observer that appends every notification to a JSON-lines file (one line each,
    flushed): the embedded runtime's outbox for a ``mambo notify --outbox-file`` beside it."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._f = path.open("a", encoding="utf-8")

    def __call__(self, topic: str, payload: Any) -> None:
        if topic == NOTIFICATIONS.name:
            self._f.write(payload.model_dump_json() + "\n")
            self._f.flush()

    def close(self) -> None:
        self._f.close()


class FileOutbox:
    """Tails a file :class:`OutboxFile` writes; the byte offset of the first line not yet done is the
    cursor, kept in the delivery log."""

    def __init__(self, path: Path, delivered: DeliveryLog) -> None:
        self.path = path
        self.delivered = delivered
        self.name = f"file:{path.resolve()}"
        self.pos = int(delivered.get_cursor(self.name) or 0)
        self._partial = b""

    def poll(self, max_items: int, timeout: float) -> list[tuple[Notification, Any]]:
        out: list[tuple[Notification, Any]] = []
        if self.path.exists() and max_items > 0:
            with self.path.open("rb") as f:
                f.seek(self.pos)
                while len(out) < max_items:
                    line = f.readline()
                    if not line.endswith(b"\n"):  # not all written yet: read it next time
                        break
                    self.pos += len(line)
                    try:
                        out.append((Notification.model_validate_json(line), self.pos))
                    except ValidationError as exc:
                        log.warning(
                            "notify.bad_line", file=str(self.path), end=self.pos, error=str(exc)[:200]
                        )
                        out.append((_skip(), self.pos))
        if not out:
            time.sleep(timeout)
        return out

    def commit(self, tokens: Sequence[Any]) -> None:
        self.delivered.set_cursor(self.name, str(max(tokens)))

    def close(self) -> None:
        pass


# --- ClickHouse history ------------------------------------------------------------------------------


class ClickHouseOutbox:
    """The ``notifications`` table, read by ``ts_init`` from the cursor less ``lookback`` seconds (rows
    land in batches, not always in ``ts_init`` order); the delivery log drops the repeats."""

    def __init__(
        self, client: Client, database: str, delivered: DeliveryLog, lookback: float = 300.0
    ) -> None:
        self.client = client
        self.database = database
        self.delivered = delivered
        self.lookback_ns = int(lookback * 1e9)
        self.name = f"clickhouse:{database}"
        self.cursor = int(delivered.get_cursor(self.name) or 0)
        self._seen: dict[str, int] = {}  # event id -> ts_init, within the look-back

    def poll(self, max_items: int, timeout: float) -> list[tuple[Notification, Any]]:
        from mambo.connectors.clickhouse import read_events

        if max_items <= 0:
            time.sleep(timeout)
            return []
        since = max(0, self.cursor - self.lookback_ns)
        rows = read_events(
            self.client,
            NOTIFICATIONS.table,
            self.database,
            # read_events gives ts_init as ns (an Int64 alias, which the condition sees too)
            where="ts_init >= {since:Int64}",
            parameters={"since": since},
        )
        rows.sort(key=lambda e: (e.ts_init, e.event_id))
        self._seen = {k: t for k, t in self._seen.items() if t >= since}
        out: list[tuple[Notification, Any]] = []
        for event in rows:
            if event.event_id in self._seen:
                continue
            if len(out) >= max_items:
                break
            assert isinstance(event, Notification)
            self._seen[event.event_id] = event.ts_init
            out.append((event, event.ts_init))
        if not out:
            time.sleep(timeout)
        return out

    def commit(self, tokens: Sequence[Any]) -> None:
        self.cursor = max(self.cursor, *tokens)
        self.delivered.set_cursor(self.name, str(self.cursor))

    def close(self) -> None:
        pass
