"""Two ``mambo worker`` processes share 6 partitions: the second joins mid-stream, takes over
partitions (restoring their markets' state from the changelog) and the results are still identical
to the single-process reference, under either processing guarantee. Cost: ~25 s each."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mambo.connectors.replay import load_trades
from mambo.schemas.topics import FILLS, ORDERS, TRADES
from mambo.streams.kafka.producer import KafkaPublisher

from .conftest import engine_config, feed_drained, mambo, read_topic
from .test_crash import committed
from .test_pipeline import SLICE, of, reference

pytestmark = pytest.mark.kafka


def events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_two_workers_share_six_partitions_with_identical_results(
    bootstrap: str, kafka_prefix: str, tmp_path: Path, guarantee: str
) -> None:
    batch, _ = load_trades()
    half = len(batch) // 2
    env = {
        "MAMBO_KAFKA_BOOTSTRAP": bootstrap,
        "MAMBO_LOG_FORMAT": "json",
        "MAMBO_KAFKA__PROCESSING_GUARANTEE": guarantee,
    }
    logs = {name: tmp_path / f"{name}.log" for name in ("a", "b")}

    def worker(name: str) -> subprocess.Popen[bytes]:
        args = (
            "worker",
            "--name",
            name,
            "--batch-size",
            "1000",
            "--prefix",
            kafka_prefix,
        )
        return mambo(*args, env=env, stdout=logs[name].open("wb"), stderr=subprocess.STDOUT)

    def publish(start: int, stop: int) -> None:
        with KafkaPublisher(bootstrap, kafka_prefix) as pub:
            for s in range(start, stop, SLICE):
                pub.publish_trades(batch.slice(s, min(s + SLICE, stop)))

    def wait(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 90
        while not condition():
            assert time.monotonic() < deadline and a.poll() is None
            time.sleep(0.05)

    # the first half through worker a alone; then b joins, takes half the partitions (restoring
    # their markets from the changelog), and the second half is shared
    publish(0, half)
    a = worker("a")
    wait(lambda: committed(bootstrap, kafka_prefix + "mambo-workers", kafka_prefix + TRADES.name) == half)
    b = worker("b")
    wait(lambda: any(e["event"] == "worker.assigned" for e in events(logs["b"])))
    publish(half, len(batch))
    group = kafka_prefix + "mambo-workers"
    # every trade, then every account step the markets sent (the account stage comes one poll later)
    wait(lambda: committed(bootstrap, group, kafka_prefix + TRADES.name) == len(batch))
    wait(lambda: feed_drained(bootstrap, group, kafka_prefix))
    for p in (a, b):
        p.send_signal(signal.SIGTERM)  # a clean stop
    assert a.wait(timeout=60) == 0 and b.wait(timeout=60) == 0

    stopped = {n: next(e for e in events(p) if e["event"] == "worker.stopped") for n, p in logs.items()}
    assert stopped["a"]["trades"] > half and stopped["b"]["trades"] > 0, stopped  # the work was shared
    assert stopped["a"]["trades"] + stopped["b"]["trades"] == len(batch)  # and done once
    assigned_b = [e["partitions"] for e in events(logs["b"]) if e["event"] == "worker.assigned"]
    assert assigned_b and 0 < len(assigned_b[0]) < 6
    restored_b = [e for e in events(logs["b"]) if e["event"] == "worker.restored"]
    assert any(e["markets"] > 0 for e in restored_b), "b took over markets mid-stream from the changelog"

    ref = reference(engine_config(), batch)
    for topic in (ORDERS.name, FILLS.name):
        got = sorted(read_topic(bootstrap, topic, kafka_prefix), key=lambda e: e.event_id)
        assert got == of(ref, topic), topic
