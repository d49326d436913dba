"""/metrics of real `mambo worker` and `mambo sink` processes on the session broker after the bundled
recording went through them: the pipeline's counters and latencies in the worker, its transactions
and rebalances, rows per table in the sink, consumer lag per partition in both, and `promtool check
metrics` over each exposition."""

from __future__ import annotations

import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mambo.streams.kafka.broker import free_port
from mambo.streams.kafka.replay import publish_recording
from tests.ops import promtool_check

from .conftest import mambo, wait_for

pytestmark = pytest.mark.kafka


def scrape(port: int) -> tuple[bytes, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
            body = answer.read()
    except (urllib.error.URLError, OSError):
        return b"", {}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    return body, samples


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def test_worker_and_sink_metrics_after_a_replay(bootstrap: str, kafka_prefix: str, tmp_path: Path) -> None:
    worker_port, sink_port = free_port(), free_port()
    env = {"MAMBO_KAFKA_BOOTSTRAP": bootstrap}
    procs = [
        mambo(
            "worker", "--prefix", kafka_prefix, "--health-port", str(worker_port),
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ),
        mambo(
            "sink", "--prefix", kafka_prefix, "--data-dir", str(tmp_path / "sink"),
            "--health-port", str(sink_port), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ),
    ]  # fmt: skip
    try:
        # scraped at once, before the consumers have joined: the scrape must not wait on them
        wait_for(lambda: bool(scrape(worker_port)[0]) and bool(scrape(sink_port)[0]), "/metrics", procs)
        trades = publish_recording(bootstrap, prefix=kafka_prefix)

        def worker_done() -> bool:  # every trade, and the account stage's fills from the feed
            samples = scrape(worker_port)[1]
            took = total(samples, "mambo_messages_total", topic="md.trades") >= trades
            return took and total(samples, "mambo_fills_total") > 0

        wait_for(worker_done, "the worker's trades", procs)
        body, worker = scrape(worker_port)
        assert total(worker, "mambo_messages_total", topic="md.trades") == trades  # exactly once
        assert total(worker, "mambo_orders_total", status="new") > 0
        assert total(worker, "mambo_fills_total") > 0
        assert total(worker, "mambo_processing_latency_seconds_count", stage="fill") > 0
        assert any(n == "mambo_equity" for n, _ in worker)
        # exactly once (the default): every committed transaction timed, the group's assignment seen
        committed = total(worker, "mambo_kafka_transactions_total", runtime="worker", outcome="committed")
        assert committed > 0
        timed = total(worker, "mambo_kafka_transaction_commit_seconds_count", runtime="worker")
        assert committed <= timed <= committed + 1  # a scrape may fall between the two updates
        assert total(worker, "mambo_kafka_rebalances_total", runtime="worker", event="assigned") >= 1
        assert total(worker, "mambo_kafka_assigned_partitions", runtime="worker") > 0
        lag = {dict(ls)["partition"] for (n, ls), _ in worker.items() if n == "mambo_consumer_lag_messages"}
        assert lag, "the worker's lag per partition"
        inputs = ("md.trades", "md.candles", "account.feed")
        assert all(dict(ls)["topic"] in inputs for (n, ls) in worker if "lag" in n)

        # the worker eventually catches up: zero lag on every partition of the market inputs; on the
        # account feed, which the worker writes in transactions, at most the marker that closes the
        # last transaction (a read_committed group commits the offset after the last record: the
        # broker's end is one past the marker, as Kafka Lag Exporter shows for any transactional topic)
        def caught_up() -> bool:
            samples = scrape(worker_port)[1]
            markets = sum(
                total(samples, "mambo_consumer_lag_messages", topic=t) for t in ("md.trades", "md.candles")
            )
            feed = [
                v
                for (n, ls), v in samples.items()
                if n == "mambo_consumer_lag_messages" and dict(ls)["topic"] == "account.feed"
            ]
            return markets == 0 and all(v <= 1 for v in feed)

        wait_for(caught_up, "the worker's lag", procs)

        def sink_done() -> bool:
            return total(scrape(sink_port)[1], "mambo_sink_rows_total", table="trades") >= trades

        wait_for(sink_done, "the sink's trade rows", procs)
        sink_body, sink = scrape(sink_port)
        assert total(sink, "mambo_sink_insert_seconds_count", table="trades") > 0
        assert any(dict(ls).get("group", "").endswith("mambo-sink") for (n, ls) in sink if "lag" in n)
        for exposition in (body, sink_body):
            promtool_check(exposition)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            assert p.wait(timeout=60) == 0
