"""``mambo audit`` over the history of a Kafka run: ``mambo up`` (topology, sink, a worker, the replay
of the bundled recording) on the session broker, stopped once the sink has taken everything, then
``mambo audit`` on its data folder. Each market is its own account there (README, ``mambo up``).
Exactly once, and at least once with the worker killed mid-stream: its restart repeats outputs, the same
events but for their ``ts_init``, which the audit must take as one event each. Cost: about a minute each
on the loaded machine."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mambo.connectors.replay import load_trades
from mambo.schemas.topics import FILLS, ORDERS, TRADES

from .conftest import feed_drained, mambo, topic_end
from .test_crash import committed
from .test_up import wait

pytestmark = pytest.mark.kafka


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_a_kafka_run_of_mambo_up_passes_the_audit(bootstrap: str, tmp_path: Path, guarantee: str) -> None:
    prefix, data, out = f"audit-{guarantee}.", tmp_path / "data", tmp_path / "up.out"
    args = ("up", "--workers", "1", "--source", "replay", "--speed", "60", "--prefix", prefix)
    proc = mambo(
        *args,
        "--data-dir",
        str(data),
        env={"MAMBO_KAFKA_BOOTSTRAP": bootstrap, "MAMBO_KAFKA__PROCESSING_GUARANTEE": guarantee},
        stdout=out.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        batch, _ = load_trades()
        workers, sink = prefix + "mambo-workers", prefix + "mambo-sink"
        if guarantee == "at_least_once":
            wait(lambda: committed(bootstrap, workers, prefix + TRADES.name) > 5_000, "first commits", proc)
            pid = re.findall(r"^worker-1: started \(pid (\d+)\)", out.read_text(), re.M)[0]
            os.kill(int(pid), signal.SIGKILL)
            wait(lambda: out.read_text().count("worker-1: started") == 2, "worker-1's restart", proc)
        wait(lambda: "source: done" in out.read_text(), "the replay", proc, seconds=300)
        trades = prefix + TRADES.name  # every record: the replay's trades and its watermarks
        assert topic_end(bootstrap, trades) > len(batch)
        every = lambda: committed(bootstrap, workers, trades) == topic_end(bootstrap, trades)  # noqa: E731
        wait(every, "the worker", proc)
        wait(lambda: feed_drained(bootstrap, workers, prefix), "the account stage", proc)
        last, since = -1, time.monotonic()
        while time.monotonic() - since < 3:  # the sink has taken everything: its offsets stay put
            now = sum(committed(bootstrap, sink, prefix + t) for t in (TRADES.name, ORDERS.name, FILLS.name))
            last, since = (now, time.monotonic()) if now != last else (last, since)
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    done = subprocess.run(
        [sys.executable, "-m", "mambo.cli", "audit", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    checked = re.search(r"10 invariants over ([\d,]+) rows", done.stdout)
    assert checked and int(checked[1].replace(",", "")) > len(batch), done.stdout + done.stderr
    assert done.returncode == 0, done.stdout + done.stderr
