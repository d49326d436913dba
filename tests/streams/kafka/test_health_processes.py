"""/health and /ready of real `mambo worker` and `mambo sink` processes on the session broker, and the
lag check against the broker's own offsets."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from mambo.schemas.topics import TRADES
from mambo.streams.health import kafka_lag_check
from mambo.streams.kafka.broker import free_port

from .conftest import mambo, wait_for

pytestmark = pytest.mark.kafka


def get(port: int, path: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as ex:
        return ex.code, json.loads(ex.read())
    except (urllib.error.URLError, OSError):
        return 0, {}


def test_the_lag_check_reads_the_groups_offsets_on_the_broker(bootstrap: str, kafka_prefix: str) -> None:
    topic = kafka_prefix + TRADES.name
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(25):
        producer.produce(topic, b"x", partition=2, key=str(i).encode())
    assert producer.flush(30) == 0
    group = f"{kafka_prefix}health-{uuid.uuid4().hex[:6]}"
    held: list[tuple[str, int]] = []
    lag = kafka_lag_check(bootstrap, group, lambda: held, max_lag=10)

    def check() -> tuple[bool, str]:
        """The check's answer; a request timed out on the loaded machine (the server answers not
        ready with the error then, test_health shows it) is asked again."""
        deadline = time.monotonic() + 60
        while True:
            try:
                return lag()
            except KafkaException:
                if time.monotonic() > deadline:
                    raise

    assert check() == (False, "no partitions assigned")
    held[:] = [(topic, 2), (topic, 3)]
    assert check() == (False, "2 partitions assigned, lag 25 (bound 10)")  # nothing committed yet
    member = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    member.commit(offsets=[TopicPartition(topic, 2, 20)], asynchronous=False)
    member.close()
    assert check() == (True, "2 partitions assigned, lag 5 (bound 10)")


def test_worker_and_sink_answer_health_then_ready_once_they_hold_partitions(
    bootstrap: str, kafka_prefix: str, tmp_path: Path
) -> None:
    worker_port, sink_port = free_port(), free_port()
    env = {"MAMBO_KAFKA_BOOTSTRAP": bootstrap}
    log = tmp_path / "worker.log"
    procs = [
        mambo(
            "worker", "--name", "@hostname", "--prefix", kafka_prefix, "--health-port", str(worker_port),
            env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        ),
        mambo(
            "sink", "--prefix", kafka_prefix, "--data-dir", str(tmp_path / "sink"),
            env={**env, "MAMBO_HEALTH_PORT": str(sink_port)},  # the environment's port, as in the image
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ),
    ]  # fmt: skip
    try:
        wait_for(lambda: get(worker_port, "/health")[0] == 200, "the worker's /health", procs)
        wait_for(lambda: get(sink_port, "/health")[0] == 200, "the sink's /health", procs)
        wait_for(lambda: get(worker_port, "/ready")[0] == 200, "the worker's /ready", procs)
        wait_for(lambda: get(sink_port, "/ready")[0] == 200, "the sink's /ready", procs)
        # one worker holds every partition of its inputs (md.trades, md.candles and account.feed, 6
        # each), once the group has settled (a probe may be answered from the last 5 s: fewer first)
        whole = {"partitions": {"ok": True, "detail": "18 partitions assigned, lag 0 (bound 100000)"}}
        wait_for(lambda: get(worker_port, "/ready")[1].get("checks") == whole, "all 18 partitions", procs)
        _, sink = get(sink_port, "/ready")
        checks = sink["checks"]
        assert isinstance(checks, dict) and checks["clickhouse"] == {"ok": True, "detail": "embedded chdb"}
        assert checks["partitions"]["ok"] is True
        assert socket.gethostname() in log.read_text()  # --name @hostname
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            assert p.wait(timeout=60) == 0
