"""``kafka.processing_guarantee=at_least_once``: no transactions, and still nothing lost; a repeat
is the same event (only ``ts_init`` may differ); a market whose state is ahead of the group's
offsets skips what it holds.

Cost: ~50 s (the recording through a worker subprocess killed twice; one in-process run; a revocation)."""

from __future__ import annotations

import subprocess
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from mambo.connectors.replay import load_trades
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import Event
from mambo.schemas.topics import FILLS, ORDERS, TRADES
from mambo.streams.kafka.producer import KafkaPublisher
from mambo.streams.kafka.topology import STATE_TOPIC
from mambo.streams.kafka.worker import Worker, _Pending

from .conftest import engine_config, mambo, read_topic
from .test_crash import Victim, committed
from .test_pipeline import SLICE, of, reference

pytestmark = pytest.mark.kafka


def stamped(batch: TradeBatch) -> list[TradeBatch]:
    """The recording in slices, each stamped with its own, increasing ts_init (as a live source
    stamps the wall clock), so a repeated output that took another batch's ts_init would show."""
    t0 = 1_700_000_000_000_000_000
    return [replace(batch.slice(s, s + SLICE), ts_init=t0 + s) for s in range(0, len(batch), SLICE)]


def publish(bootstrap: str, prefix: str, slices: list[TradeBatch]) -> None:
    with KafkaPublisher(bootstrap, prefix) as pub:
        for s in slices:
            pub.publish_trades(s)


def without_ts_init(events: list[Event]) -> list[dict]:
    return [e.model_dump(exclude={"ts_init"}) for e in events]


def test_killed_twice_at_least_once_loses_nothing_and_repeats_only_exact_duplicates(
    bootstrap: str, kafka_prefix: str, tmp_path: Path
) -> None:
    batch, _ = load_trades()
    publish(bootstrap, kafka_prefix, stamped(batch))
    ref = reference(engine_config(), batch)
    env = {"MAMBO_KAFKA_BOOTSTRAP": bootstrap, "MAMBO_KAFKA__PROCESSING_GUARANTEE": "at_least_once"}

    def worker(i: int, *extra: str) -> subprocess.Popen[bytes]:
        out = open(tmp_path / f"worker{i}.log", "wb")  # noqa: SIM115 (closed with the process)
        args = ("worker", "--name", "alo", "--batch-size", "500", "--prefix", kafka_prefix, *extra)
        return mambo(*args, env=env, stdout=out, stderr=subprocess.STDOUT)

    progress = lambda: committed(bootstrap, kafka_prefix + "mambo-workers", kafka_prefix + TRADES.name)  # noqa: E731
    w = Victim(worker, progress, [15_000, 45_000], "4")
    deadline = time.monotonic() + 180
    while w.step():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert w.proc.wait(timeout=120) == 0
    assert len(w.killed_at) == 2 and all(n < len(batch) for n in w.killed_at), w.killed_at
    assert progress() == len(batch)

    repeats = 0
    for topic in (ORDERS.name, FILLS.name, "signals", "equity"):
        got = read_topic(bootstrap, topic, kafka_prefix)
        copies: dict[str, list[Event]] = defaultdict(list)
        for e in got:
            copies[e.event_id].append(e)
        for event_id, same in copies.items():  # every repeat is the same event but for ts_init
            assert all(without_ts_init([e]) == without_ts_init(same[:1]) for e in same), (topic, event_id)
        repeats += len(got) - len(copies)
        unique = sorted((c[0] for c in copies.values()), key=lambda e: e.event_id)
        expected = of(ref, topic)
        # nothing lost; the reference ran other batch boundaries, so only ts_init may differ
        assert [e.event_id for e in unique] == [e.event_id for e in expected], topic
        assert without_ts_init(unique) == without_ts_init(expected), topic
    print(f"repeated outputs after two kills: {repeats}")


def test_a_market_skips_the_input_its_state_holds_when_the_group_offsets_are_behind(
    bootstrap: str, kafka_prefix: str
) -> None:
    """The group's (asynchronous) commit lost after the state landed: the restarted worker starts
    from older offsets, skips what each market's state already holds, and repeats nothing."""
    batch, _ = load_trades()
    slices = stamped(batch)
    half = len(slices) // 2
    config = engine_config()
    publish(bootstrap, kafka_prefix, slices[:half])
    first = Worker(bootstrap, config, prefix=kafka_prefix, batch_size=3_000, guarantee="at_least_once")
    first.run(idle_exit=3.0)
    assert first.processed == sum(len(s) for s in slices[:half])

    group, topic = kafka_prefix + "mambo-workers", kafka_prefix + TRADES.name
    rewind = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "log_level": 0})
    rewind.commit(offsets=[TopicPartition(topic, p, 0) for p in range(6)], asynchronous=False)
    rewind.close()
    assert committed(bootstrap, group, topic) == 0

    publish(bootstrap, kafka_prefix, slices[half:])
    second = Worker(bootstrap, config, prefix=kafka_prefix, batch_size=3_000, guarantee="at_least_once")
    second.run(idle_exit=3.0)
    assert second.processed == len(batch) - first.processed  # the first half was skipped, not redone
    assert committed(bootstrap, group, topic) == len(batch)

    ref = reference(config, batch)
    for t in (ORDERS.name, FILLS.name):
        got = read_topic(bootstrap, t, kafka_prefix)
        assert len({e.event_id for e in got}) == len(got), f"repeats on {t}"
        assert [e.event_id for e in sorted(got, key=lambda e: e.event_id)] == [e.event_id for e in of(ref, t)]


def test_a_revoked_partition_s_pending_batches_are_written_before_it_goes(
    bootstrap: str, kafka_prefix: str
) -> None:
    """A rebalance must not let the next owner restore a state older than the outputs already out:
    the batches still waiting for their state to be written are written on revocation."""
    worker = Worker(bootstrap, engine_config(), prefix=kafka_prefix, guarantee="at_least_once")
    worker._producer_alo = worker._producer(None)
    key, partition = "binance:BTC/USDT", 2
    worker._pending.append(_Pending(worker._delivery_errors, states=[(key, b"its state", [], partition)]))
    worker._on_revoke(None, [TopicPartition(kafka_prefix + TRADES.name, partition)])  # type: ignore[arg-type]
    assert not worker._pending

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": kafka_prefix + "check", "log_level": 0})
    c.assign([TopicPartition(kafka_prefix + STATE_TOPIC, partition, 0)])
    got = [(m.key(), m.value()) for m in c.consume(10, 5) if m.error() is None]
    c.close()
    assert got == [(key.encode(), b"its state")]
