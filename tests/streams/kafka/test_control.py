"""Control commands on Kafka (issue 17): ``KafkaPublisher.publish_control`` puts each command on the
``control`` topic and its copy for each market in line on md.trades; a native worker applies them
where they came, with the orders, fills and answers of the in-process stage groups, id for id."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from mambo.connectors.replay import load_trades
from mambo.core.control import expand
from mambo.core.stages import Account
from mambo.schemas.events import ControlCommand
from mambo.schemas.topics import CONTROL, CONTROL_RESULTS, FILLS, ORDERS, REJECTIONS
from mambo.streams.kafka.producer import KafkaPublisher
from mambo.streams.kafka.worker import Worker
from mambo.streams.markets import MarketPipelines

from ..test_control import CONFIG, SCRIPT, items
from .conftest import ENGINE_ENV, MARKETS, mambo, read_topic
from .test_pipeline import of

pytestmark = pytest.mark.kafka


def test_commands_in_line_on_kafka_give_the_in_process_orders_and_answers(
    bootstrap: str, kafka_prefix: str
) -> None:
    """~30 s: the recording and the commands through one exactly-once worker."""
    recording, _ = load_trades()
    markets = sorted(recording.keys)
    # the account names its markets (on Kafka an account waits for the markets it is told of)
    accounts = [Account(CONFIG, frozenset(markets))]
    ref: list[tuple[str, Any]] = []
    mp = MarketPipelines(accounts, lambda t, e: ref.append((t, e)), loopback=True)  # as the worker runs
    with KafkaPublisher(bootstrap, kafka_prefix) as pub:
        for item in items(recording, SCRIPT):
            if isinstance(item, ControlCommand):
                pub.publish_control(item, markets)
                mp.ingest_control(expand(item, markets))
            else:
                pub.publish_trades(item)
                mp.ingest_trades(item)
    worker = Worker(bootstrap, accounts, prefix=kafka_prefix, batch_size=5_000)
    worker.run(idle_exit=3.0)
    assert worker.processed == len(recording)
    for topic in (ORDERS.name, FILLS.name, REJECTIONS.name, CONTROL_RESULTS.name):
        got = sorted(read_topic(bootstrap, topic, kafka_prefix), key=lambda e: e.event_id)
        assert got == of(ref, topic), topic
    assert {r.status for r in of(ref, CONTROL_RESULTS.name)} == {"applied", "rejected"}
    assert [o for o in of(ref, ORDERS.name) if o.strategy == "control"]  # the forced exit
    assert len(read_topic(bootstrap, CONTROL.name, kafka_prefix)) == len(SCRIPT)


def test_mambo_ctl_sends_a_command_to_a_running_worker_and_prints_its_answer(
    bootstrap: str, kafka_prefix: str
) -> None:
    """``mambo ctl`` beside a ``mambo worker`` process: a pause is applied in the market it names (the
    answer printed, exit 0); parameters the strategy refuses are rejected with the reason (exit 1),
    and the next command's version follows the last one sent."""
    recording, _ = load_trades()
    env = {"MAMBO_KAFKA_BOOTSTRAP": bootstrap}
    worker = mambo(
        "worker", "--prefix", kafka_prefix, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        with KafkaPublisher(bootstrap, kafka_prefix) as pub:
            pub.publish_trades(recording.slice(0, 4_000))
        ctl = ("ctl", "--prefix", kafka_prefix, "--wait", "90", "--who", "ops")
        paused = run_mambo(*ctl, "pause", "--strategy", "sma_cross", "--market", "binance:BTC/USDT", env=env)
        assert paused.returncode == 0, paused.stderr
        assert "binance:BTC/USDT: applied" in paused.stdout and "version 1" in paused.stdout
        bad = run_mambo(*ctl, "set_params", "--strategy", "rsi_reversion", "--param", "period=0", env=env)
        assert bad.returncode == 1
        assert bad.stdout.count("rejected: invalid parameters") == len(MARKETS)  # in each market
        assert "version 1" in bad.stdout  # rsi_reversion's first
        again = run_mambo(*ctl, "start", "--strategy", "sma_cross", "--market", "binance:BTC/USDT", env=env)
        assert again.returncode == 0 and "version 2" in again.stdout
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0


def run_mambo(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mambo.cli", *args],
        env={**os.environ, **ENGINE_ENV, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )
