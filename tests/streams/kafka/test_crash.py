"""SIGKILL a worker and a sink mid-stream, twice each at different points, restart them, and check
that no order is lost or sent twice and ClickHouse holds every event exactly once (the account runs a
grid too: its levels come back with the account's state, and its orders and fills are the reference's).

Both run as real ``mambo worker`` / ``mambo sink`` subprocesses (the sink with its own chdb folder,
read back with ``mambo sql``). Cost: ~45 s."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from mambo.connectors.replay import load_trades
from mambo.schemas.topics import FILLS, ORDERS, TABLES, TRADES, by_name
from mambo.streams.kafka import worker as worker_module
from mambo.streams.kafka.producer import KafkaPublisher

from .conftest import clickhouse_counts, engine_config, mambo, notify_stages, read_topic
from .test_pipeline import SLICE, of, reference

pytestmark = pytest.mark.kafka


def committed(bootstrap: str, group: str, topic: str) -> int:
    """Messages of ``topic`` the group has committed (its input topics carry no transaction markers)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "log_level": 0})
    try:
        for _ in range(50):
            try:
                parts = c.committed([TopicPartition(topic, p) for p in range(6)], timeout=10)
                return sum(max(tp.offset, 0) for tp in parts)
            except KafkaException:  # NOT_COORDINATOR while the group's coordinator moves: ask again
                time.sleep(0.1)
        raise AssertionError(f"no committed offsets for {group}")
    finally:
        c.close()


class Victim:
    """A process to SIGKILL each time its progress passes the next threshold, and restart; the last
    restart gets ``--idle-exit`` so it ends once the input is done."""

    def __init__(
        self,
        start: Callable[..., subprocess.Popen[bytes]],
        progress: Callable[[], int],
        thresholds: list[int],
        idle: str,
    ) -> None:
        self.start, self.progress, self.thresholds, self.idle = start, progress, list(thresholds), idle
        self.killed_at: list[int] = []
        self.runs = 0
        self.proc = self._next()

    def _next(self) -> subprocess.Popen[bytes]:
        self.runs += 1
        extra = () if self.thresholds else ("--idle-exit", self.idle)
        return self.start(self.runs, *extra)

    def step(self) -> bool:
        """Kill and restart if due; True while it still has kills to do."""
        if not self.thresholds:
            return False
        assert self.proc.poll() is None, f"exited with {self.proc.returncode} before it could be killed"
        n = self.progress()
        if n >= self.thresholds[0]:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.killed_at.append(n)
            self.thresholds.pop(0)
            self.proc = self._next()
        return bool(self.thresholds)


def test_worker_and_sink_killed_twice_resume_exactly_once(
    bootstrap: str, kafka_prefix: str, tmp_path: Path
) -> None:
    batch, _ = load_trades()
    with KafkaPublisher(bootstrap, kafka_prefix) as pub:
        for s in range(0, len(batch), SLICE):
            pub.publish_trades(batch.slice(s, s + SLICE))
    ref = reference(engine_config(), batch, notify=True)
    grid = [e for e in of(ref, FILLS.name) if e.strategy == "grid"]
    assert [f for f in grid if f.side == "sell"], "the grid takes profits on the recording"

    env = {"MAMBO_KAFKA_BOOTSTRAP": bootstrap}
    logs = tmp_path / "logs"
    logs.mkdir()
    data = tmp_path / "sinkdata"

    def worker(i: int, *extra: str) -> subprocess.Popen[bytes]:
        out = open(logs / f"worker{i}.log", "wb")  # noqa: SIM115 (closed with the process)
        args = ("worker", "--name", "crash", "--batch-size", "1000", "--prefix", kafka_prefix, *extra)
        return mambo(*args, env=env, stdout=out, stderr=subprocess.STDOUT)

    def sink(i: int, *extra: str) -> subprocess.Popen[bytes]:
        out = open(logs / f"sink{i}.log", "wb")  # noqa: SIM115
        args = ("sink", "--data-dir", str(data), "--batch-size", "2000", "--prefix", kafka_prefix, *extra)
        return mambo(
            *args, env={**env, "MAMBO_CLICKHOUSE__BATCH_ROWS": "3000"}, stdout=out, stderr=subprocess.STDOUT
        )

    trades = kafka_prefix + TRADES.name
    w_progress = lambda: committed(bootstrap, kafka_prefix + "mambo-workers", trades)  # noqa: E731
    s_progress = lambda: committed(bootstrap, kafka_prefix + "mambo-sink", trades)  # noqa: E731

    w = Victim(worker, w_progress, [12_000, 40_000], "4")
    s = Victim(sink, s_progress, [10_000, 45_000], "8")
    deadline = time.monotonic() + 180
    while w.step() | s.step():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert all(n < len(batch) for n in w.killed_at + s.killed_at), (w.killed_at, s.killed_at)
    assert len(w.killed_at) == len(s.killed_at) == 2
    assert w.proc.wait(timeout=120) == 0
    assert w_progress() == len(batch)

    # no order lost or sent twice: the committed topics hold exactly the reference's events
    for topic in (ORDERS.name, FILLS.name):
        got = read_topic(bootstrap, topic, kafka_prefix)
        assert len({e.event_id for e in got}) == len(got), f"duplicates on {topic}"
        assert sorted(got, key=lambda e: e.event_id) == of(ref, topic), topic
    counts = Counter(t for t, _ in ref)
    for topic, n in counts.items():
        assert len(read_topic(bootstrap, topic, kafka_prefix)) == n, topic

    assert s.proc.wait(timeout=120) == 0
    # every event exactly once in ClickHouse (FINAL collapses re-inserts of a replayed batch)
    expected: Counter[str] = Counter()
    for topic, n in counts.items():
        expected[by_name(topic).table] += n
    expected["trades"] = len(batch)
    rows = clickhouse_counts(data)
    for table in TABLES:
        assert rows[table] == (expected[table], expected[table]), table


def test_a_transaction_the_broker_cannot_finish_is_aborted_and_its_batch_done_again(
    bootstrap: str, kafka_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a broker dies and the failover outlasts ``transaction.timeout.ms``, librdkafka fails the
    transaction as abortable (``txn_requires_abort``; seen in the three-broker kill test as 2 messages
    failing delivery). Here three commits fail so, two of them back to back (both alternating
    producers): the worker aborts each, goes back to the committed state and offsets, and every event
    comes out once."""
    batch, _ = load_trades()
    with KafkaPublisher(bootstrap, kafka_prefix) as pub:
        for s in range(0, len(batch), SLICE):
            pub.publish_trades(batch.slice(s, s + SLICE))
    ref = reference(engine_config(), batch, notify=True)
    commits: list[int] = []
    failing = {3, 7, 8}

    class BrokerGone(Producer):
        def commit_transaction(self, *args: Any) -> None:
            commits.append(len(commits) + 1)
            if commits[-1] in failing:
                error = KafkaError(
                    KafkaError._INCONSISTENT, "2 message(s) failed delivery", txn_requires_abort=True
                )
                raise KafkaException(error)
            super().commit_transaction(*args)

    monkeypatch.setattr(worker_module, "Producer", BrokerGone)
    worker = worker_module.Worker(
        bootstrap, engine_config(), prefix=kafka_prefix, batch_size=4_000, extra=notify_stages()
    )
    worker.run(idle_exit=3.0)
    assert len(commits) > max(failing) and worker.processed == len(batch)
    # an injected failure can cost one more abort (librdkafka: 'skipped sequence numbers' on the next)
    assert worker.aborted >= len(failing)
    counts = Counter(t for t, _ in ref)
    for topic in (ORDERS.name, FILLS.name):
        got = read_topic(bootstrap, topic, kafka_prefix)
        assert sorted(got, key=lambda e: e.event_id) == of(ref, topic), topic
    for topic, n in counts.items():
        assert len(read_topic(bootstrap, topic, kafka_prefix)) == n, topic
