"""``mambo up`` as a user runs it, on the session broker: topology, sink, two workers and the replay
come up; a worker killed mid-stream is reported and restarted; SIGTERM stops every child. A real
Prometheus (Debian's) scrapes every child's /metrics meanwhile (``--health-ports``) and answers PromQL
with the consumer lag the run had, order latencies and the account's equity.

Control (issue 17): ``mambo api`` in distributed mode beside it (its own ClickHouse folder: the sink's
is the sink's alone) takes a parameter change on ``POST /control`` while the replay runs; the worker
that owns the market applies it and the answer comes back on ``GET /control/results`` (what the
dashboard shows). The history has the command and its answer, and rsi_reversion's signals on that
market carry RSI(14) before the command's place in the stream and RSI(7) from the next candle on. A
replay of the same topics (md.trades copied record for record into a fresh namespace, through a fresh
worker) gives the orders and fills the sink stored, id for id. Cost: ~90-110 s on the loaded machine
(the replay alone takes 11 s)."""

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
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from mambo.connectors.replay import load_trades
from mambo.schemas.topics import FILLS, ORDERS, TRADES
from mambo.streams.kafka import topology
from mambo.streams.kafka.broker import free_port
from mambo.streams.kafka.codec import CONTROL_TYPE, TYPE_HEADER, decode_watermark, is_watermark
from mambo.streams.kafka.worker import Worker
from tests.ops import installed

from .conftest import engine_config, feed_drained, mambo, read_topic, topic_end
from .test_crash import committed

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
    env = {"MAMBO_KAFKA_BOOTSTRAP": bootstrap}
    api_port = free_port()
    api_args = (
        "api",
        "--open",
        "--port",
        str(api_port),
        "--prefix",
        prefix,
        "--data-dir",
        str(tmp_path / "api"),
    )
    api = mambo(*api_args, env=env, stdout=(tmp_path / "api.out").open("wb"), stderr=subprocess.STDOUT)
    proc = mambo(*args, env=env, stdout=out.open("wb"), stderr=subprocess.STDOUT)
    text = lambda: out.read_text()  # noqa: E731
    pids = lambda name: [int(p) for p in re.findall(rf"^{name}: started \(pid (\d+)\)", text(), re.M)]  # noqa: E731
    try:
        wait(lambda: "processes running" in text(), "the children", proc)
        assert "kafka: answering" in text()  # the broker that runs is used, not a second one
        workers, trades = prefix + "mambo-workers", prefix + TRADES.name
        wait(lambda: committed(bootstrap, workers, trades) > 5_000, "a worker's first commits", proc)
        # a parameter change over the API, while the replay runs (and before a worker is killed)
        sent = post(api_port, "/control", CHANGE)
        assert sent["markets"] == 1 and sent["version"] == 1, sent
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
        answers = lambda: get(api_port, f"/control/results?command_id={sent['command_id']}")  # noqa: E731
        wait(lambda: bool(answers()), "the answer on the API", proc, 30)
        (answer,) = answers()
        assert (answer["status"], answer["exchange"], answer["symbol"]) == ("applied", "binance", "BTC/USDT")
        assert json.loads(answer["params"]) == {"period": 7}  # the parameters given beyond the defaults
        assert (answer["who"], answer["version"]) == (WHO, 1)
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
        api.terminate()
        api.wait(timeout=30)
        scraper.terminate()
        scraper.wait(timeout=10)
    children = [p for name in ("topology", "sink", "worker-1", "worker-2", "source") for p in pids(name)]
    assert len(children) == 6
    assert not [p for p in children if alive(p)], "a child outlived mambo up"
    assert re.search(r"worker-2: stopped.*worker-1: stopped.*sink: stopped.*up: stopped", text(), re.S), (
        text()
    )

    def sql(query: str) -> list[list[str]]:
        res = subprocess.run(
            [sys.executable, "-m", "mambo.cli", "sql", query, "--format", "csv", "--data-dir", str(data)],
            capture_output=True,
            check=True,
        )
        return [r for r in csv.reader(io.StringIO(res.stdout.decode())) if r][1:]  # after the header

    # the history: the command as sent, and its answer (what ran with which parameters from when)
    (command,) = sql("SELECT command_id, action, strategy, symbol, params, who, version FROM control FINAL")
    assert command == [
        sent["command_id"],
        "set_params",
        "rsi_reversion",
        "BTC/USDT",
        '{"period": 7}',
        WHO,
        "1",
    ]
    (stored,) = sql("SELECT command_id, status, params FROM control_results FINAL")
    assert stored == [sent["command_id"], "applied", answer["params"]]

    # the change acted from the market's next candle on: the command's copy sits on BTC/USDT's md.trades
    # partition where the stream had come to `reached`; the candles up to the one open then ran RSI(14)
    # (that one is closed where the command comes, before it acts), from the next candle boundary on
    # RSI(7) (a signal's time is its candle's opening)
    reached = stream_time_before_command(bootstrap, trades, "binance:BTC/USDT")
    rows = sql(
        "SELECT toUnixTimestamp64Nano(ts_event), arrayStringConcat(mapKeys(values), ',') FROM signals_raw "
        "FINAL WHERE strategy = 'rsi_reversion' AND symbol = 'BTC/USDT' AND timeframe = '1s' ORDER BY 1"
    )
    rsi = {int(t): set(k.split(",")) & {"rsi_14", "rsi_7"} for t, k in rows}
    boundary = reached // SECOND * SECOND + SECOND  # the end of the candle open when the command came
    assert {k for t, ks in rsi.items() if t < boundary for k in ks} == {"rsi_14"}
    # from there, RSI(7) warming up anew: seven candles without a value, then RSI(7) on every one (a
    # second without a trade has no candle, so candles, not seconds, are counted)
    after = [rsi[t] for t in sorted(rsi) if t >= boundary]
    assert after[:8] == [set()] * 7 + [{"rsi_7"}], (reached, after[:10])
    assert {k for t, ks in rsi.items() if t >= boundary for k in ks} == {"rsi_7"}
    assert len(after) > 100  # the change had the rest of the replay to act in

    # a replay of the same topics gives the same orders and fills, id for id
    again = copy_trades(bootstrap, trades)
    Worker(bootstrap, engine_config(), prefix=again, batch_size=5_000).run(idle_exit=3.0)
    rows = sql(
        " UNION ALL ".join(f"SELECT '{t}', event_id FROM {t} FINAL" for t in (ORDERS.name, FILLS.name))
    )
    for topic in (ORDERS.name, FILLS.name):
        stored_ids = sorted(i for t, i in rows if t == topic)
        assert stored_ids == sorted(e.event_id for e in read_topic(bootstrap, topic, again)), topic
        assert len(stored_ids) > 10, topic


SECOND = 1_000_000_000
#: Who the API says sent a command with open access (a key's name otherwise).
WHO = "open access (local)"
#: The parameter change sent over the API: rsi_reversion on binance:BTC/USDT from RSI(14) to RSI(7).
CHANGE = {
    "action": "set_params",
    "strategy": "rsi_reversion",
    "market": "binance:BTC/USDT",
    "params": {"period": 7},
    "why": "faster RSI",
}


def post(port: int, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 202
        return json.loads(answer.read())


def get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as answer:
        return json.loads(answer.read())


def partitions(bootstrap: str, topic: str) -> list[int]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return sorted(admin.list_topics(topic, timeout=10).topics[topic].partitions)


def records(bootstrap: str, topic: str, partition: int) -> list[Message]:
    """Every record of one partition of a non-transactional topic, in order."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "up-test", "log_level": 0})
    try:
        low, high = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        c.assign([TopicPartition(topic, partition, low)])
        out: list[Message] = []
        while len(out) < high - low:
            for m in c.consume(10_000, 0.1):
                assert m.error() is None, m.error()
                out.append(m)
        return out
    finally:
        c.close()


def stream_time_before_command(bootstrap: str, topic: str, market: str) -> int:
    """How far ``market``'s stream had come where its first control record sits on md.trades: the
    latest trade or source watermark before it (a watermark closes the candles it passes, as a trade
    does)."""
    last = 0
    for p in partitions(bootstrap, topic):
        for m in records(bootstrap, topic, p):
            if (m.key() or b"").decode() != market:
                continue
            if dict(m.headers() or ()).get(TYPE_HEADER) == CONTROL_TYPE:
                return last
            if is_watermark(m.headers()):
                last = max(last, decode_watermark(m.value())[1])
            else:
                last = max(last, json.loads(m.value() or b"{}")["ts_event"])
    raise AssertionError(f"no control record for {market} on {topic}")


def copy_trades(bootstrap: str, topic: str) -> str:
    """md.trades copied record for record (key, value, headers, partition) into a fresh namespace with
    every topic of the registry; the namespace."""
    prefix = f"again{uuid.uuid4().hex[:6]}."
    parts = partitions(bootstrap, topic)
    topology.apply(AdminClient({"bootstrap.servers": bootstrap}), len(parts), prefix)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 20})
    for p in parts:
        for m in records(bootstrap, topic, p):
            producer.produce(
                prefix + TRADES.name, m.value(), m.key(), partition=p, headers=m.headers() or None
            )
            producer.poll(0)
    assert producer.flush(30) == 0
    return prefix


def port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
