"""``mambo up`` as a user runs it, on the session broker: topology, sink, two workers and the replay
come up; a worker killed mid-stream is reported and restarted; SIGTERM stops every child; the orders
and fills in ClickHouse are the reference's. A real Prometheus (Debian's) scrapes every child's
/metrics meanwhile (``--health-ports``) and answers PromQL with the consumer lag the run had, order
latencies and the account's equity. Cost: ~60-80 s on the loaded machine (the replay alone takes
11 s)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from mambo.connectors.replay import load_trades
from mambo.schemas.topics import FILLS, ORDERS, TRADES
from mambo.streams.kafka.broker import free_port
from tests.ops import installed

from .conftest import engine_config, feed_drained, mambo, topic_end
from .test_crash import committed
from .test_pipeline import of, reference

pytestmark = pytest.mark.kafka


def wait(
    condition: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], seconds: float = 120
) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, f"mambo up exited ({proc.returncode}) waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def prometheus(tmp_path: Path, jobs: dict[str, list[int]]) -> tuple[subprocess.Popen[bytes], int]:
    """A real Prometheus scraping each job's ports every second; the process and its port."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    lines = ["global: {scrape_interval: 1s}", "scrape_configs:"]
    for job, ports in jobs.items():
        targets = ", ".join(f"'127.0.0.1:{p}'" for p in ports)
        lines += [f"  - job_name: {job}", f"    static_configs: [{{targets: [{targets}]}}]"]
    config.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(
        [installed("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=(tmp_path / "prometheus.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    return proc, port


def promql(port: int, query: str) -> float:
    """The single value of an instant query (0 when it has none)."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=10) as answer:
        body = json.loads(answer.read())
    assert body["status"] == "success", body
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def test_up_runs_supervises_and_stops_the_pipeline(bootstrap: str, tmp_path: Path) -> None:
    prefix = "up."  # up applies the topology itself
    data = tmp_path / "data"
    out = tmp_path / "up.out"
    health = free_port()
    while not all(port_free(health + i) for i in range(4)):  # the sink, two workers, the source
        health = free_port()
    scraper, prom = prometheus(
        tmp_path,
        {"mambo-sink": [health], "mambo-worker": [health + 1, health + 2], "mambo-source": [health + 3]},
    )
    args = (
        "up",
        "--workers",
        "2",
        "--source",
        "replay",
        "--speed",
        "60",
        "--prefix",
        prefix,
        "--data-dir",
        str(data),
        "--health-ports",
        str(health),
    )
    proc = mambo(
        *args, env={"MAMBO_KAFKA_BOOTSTRAP": bootstrap}, stdout=out.open("wb"), stderr=subprocess.STDOUT
    )
    text = lambda: out.read_text()  # noqa: E731
    pids = lambda name: [int(p) for p in re.findall(rf"^{name}: started \(pid (\d+)\)", text(), re.M)]  # noqa: E731
    try:
        wait(lambda: "processes running" in text(), "the children", proc)
        assert "kafka: answering" in text()  # the broker that runs is used, not a second one
        workers, trades = prefix + "mambo-workers", prefix + TRADES.name
        wait(lambda: committed(bootstrap, workers, trades) > 5_000, "a worker's first commits", proc)
        os.kill(pids("worker-1")[0], signal.SIGKILL)  # mid-stream: the recording takes ~11 s at speed 60
        wait(lambda: len(pids("worker-1")) == 2, "worker-1's restart", proc)
        assert re.search(r"^worker-1: DIED \(exit -9\), restarting in 1 s", text(), re.M)

        batch, _ = load_trades()
        wait(lambda: "source: done" in text(), "the replay", proc)
        # every record of md.trades: the replay's trades and its watermarks after each slice
        assert batch.keys and topic_end(bootstrap, trades) > len(batch)
        every = lambda: committed(bootstrap, workers, trades) == topic_end(bootstrap, trades)  # noqa: E731
        wait(every, "the workers", proc)
        wait(lambda: feed_drained(bootstrap, workers, prefix), "the account stage", proc)
        sink, last, since = prefix + "mambo-sink", -1, time.monotonic()
        while time.monotonic() - since < 3:  # the sink has taken everything: its offsets stay put
            now = sum(committed(bootstrap, sink, prefix + t) for t in (TRADES.name, ORDERS.name, FILLS.name))
            last, since = (now, time.monotonic()) if now != last else (last, since)
            time.sleep(0.2)
        # what Prometheus scraped meanwhile: the lag the run had (the workers' group and the sink's),
        # in messages and seconds, the latency of orders, and the account's equity
        time.sleep(2)  # a last scrape of the caught-up state
        assert (
            promql(prom, 'max(max_over_time(mambo_consumer_lag_messages{group="up.mambo-workers"}[10m]))') > 0
        )
        assert promql(prom, 'max(max_over_time(mambo_consumer_lag_messages{group="up.mambo-sink"}[10m]))') > 0
        assert promql(prom, "count(max_over_time(mambo_consumer_lag_seconds[10m]))") > 0
        assert (
            promql(prom, 'sum(max_over_time(mambo_processing_latency_seconds_count{stage="order"}[10m]))') > 0
        )
        assert promql(prom, 'max(mambo_equity{account="main"})') > 0
        assert promql(prom, 'count(up{job=~"mambo-.*"} == 1)') >= 3  # the sink and both workers
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0, text()
    finally:
        if proc.poll() is None:
            proc.kill()
        scraper.terminate()
        scraper.wait(timeout=10)
    children = [p for name in ("topology", "sink", "worker-1", "worker-2", "source") for p in pids(name)]
    assert len(children) == 6
    assert not [p for p in children if alive(p)], "a child outlived mambo up"
    assert re.search(r"worker-2: stopped.*worker-1: stopped.*sink: stopped.*up: stopped", text(), re.S), (
        text()
    )

    # the replay's watermarks and the notifications, as mambo kafka replay and mambo worker make them
    ref = reference(engine_config(), batch, watermarks=True, notify=True)
    sql = " UNION ALL ".join(
        f"SELECT '{t}' AS topic, event_id FROM {t} FINAL" for t in (ORDERS.name, FILLS.name)
    )
    res = subprocess.run(
        [sys.executable, "-m", "mambo.cli", "sql", sql, "--format", "csv", "--data-dir", str(data)],
        capture_output=True,
        check=True,
    )
    rows = [r for r in csv.reader(io.StringIO(res.stdout.decode())) if r and r[0] != "topic"]
    for topic in (ORDERS.name, FILLS.name):
        assert sorted(i for t, i in rows if t == topic) == [e.event_id for e in of(ref, topic)], topic


def port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
