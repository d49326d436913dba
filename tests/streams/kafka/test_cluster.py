"""A broker dies, nothing is lost: the pipeline on three brokers, one SIGKILLed mid-stream and restarted.

One three-broker cluster for the module, started and stopped as a user would (``mambo kafka start
--brokers 3``, ``mambo kafka stop``; combined nodes, the C1 JIT of the tests). Each scenario runs the
pipeline as processes, a ``mambo worker`` and a ``mambo sink`` into its own chdb folder, while this
test publishes the bundled recording: the first part at once, the rest only after the kill, so the
kill always falls mid-stream. Once the worker has committed a quarter of the input, the broker
leading the worker's input partitions (the most of those holding trades), or the one leading the
orders topic, gets SIGKILL; the pipeline must go on with two brokers (the worker commits more input
while the victim is down), and the victim is restarted while it runs. Every wait is on a condition
(committed offsets, live brokers) with a generous deadline.

What must hold, against the single-process reference computed here by the same code: the orders and
fills equal it id for id (exactly once: nothing doubled, and every topic's count; at least once: any
repeat is the same event but for ``ts_init``), and ClickHouse holds each event exactly once.

Cost: ~15 s for the cluster, then 35-45 s per scenario (two) on a loaded two-core machine."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import ConfigResource

from mambo.connectors.replay import load_trades
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import Event
from mambo.schemas.topics import ALL_TOPICS, FILLS, ORDERS, TABLES, TRADES, by_name
from mambo.streams.kafka import topology
from mambo.streams.kafka.broker import free_port
from mambo.streams.kafka.cluster import KafkaCluster
from mambo.streams.kafka.producer import KafkaPublisher

from .conftest import clickhouse_counts, engine_config, feed_drained, mambo, read_topic
from .test_at_least_once import publish, stamped, without_ts_init
from .test_broker_topology import cli
from .test_crash import committed
from .test_pipeline import SLICE, of, reference

pytestmark = pytest.mark.kafka
WAIT = 180.0  # seconds: generous, for a loaded two-core machine


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    data = tmp_path_factory.mktemp("cluster")
    env = {"MAMBO_KAFKA_BOOTSTRAP": ",".join(f"127.0.0.1:{free_port()}" for _ in range(3))}
    started = cli("kafka", "start", "--brokers", "3", "--data-dir", str(data), env=env)
    assert started.returncode == 0, started.stdout + started.stderr
    assert f"as a cluster of 3 brokers at {env['MAMBO_KAFKA_BOOTSTRAP']}" in started.stdout
    c = KafkaCluster(data / "kafka", 3)  # the layout the start recorded
    yield c
    stopped = cli("kafka", "stop", "--data-dir", str(data), env=env)
    assert "kafka stopped" in stopped.stdout and all(n.pid() is None for n in c.nodes), stopped.stdout


@pytest.fixture(scope="module")
def recording() -> tuple[TradeBatch, list[tuple[str, Any]]]:
    """The recording and its single-process reference (the events every market's pipeline publishes)."""
    batch, _ = load_trades()
    return batch, reference(engine_config(), batch, notify=True)


def until(what: str, condition: Callable[[], object], *alive: subprocess.Popen[bytes]) -> None:
    """Wait for ``condition``; fail with ``what`` after WAIT seconds or if a process exits."""
    deadline = time.monotonic() + WAIT
    while not condition():
        for proc in alive:
            assert proc.poll() is None, f"{proc.args[3]} exited ({proc.returncode}) waiting for {what}"
        assert time.monotonic() < deadline, f"not after {WAIT:.0f} s: {what}"
        time.sleep(0.1)


def native_stacks(pid: int, out: Path) -> None:
    """Every thread's native stack of a stuck process into ``out``, if gdb is there (librdkafka's
    threads and where the Python thread waits in it: how a hang in send_offsets_to_transaction was
    found, librdkafka issue 5511)."""
    if shutil.which("gdb") is None:
        return
    try:
        gdb = subprocess.run(
            ["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt"], capture_output=True, timeout=120
        )
        out.write_bytes(gdb.stdout + gdb.stderr)
    except (OSError, subprocess.TimeoutExpired) as ex:
        out.write_text(f"gdb failed: {ex}\n")


def data_ends(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], int]:
    """{(topic, partition): the offset after its last committed message} for partitions with data
    (transactional topics end with a commit marker, which no consumer sees or commits)."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"ends-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "log_level": 3,
        }
    )
    md = c.list_topics(timeout=10).topics
    parts = [TopicPartition(t, p, 0) for t in topics for p in md[t].partitions]
    c.assign(parts)
    ends: dict[tuple[str, int], int] = {}
    left = {(tp.topic, tp.partition) for tp in parts}
    while left:
        for m in c.consume(10_000, 0.1):
            err = m.error()
            if err is not None and err.code() == KafkaError._PARTITION_EOF:
                left.discard((m.topic(), m.partition()))
            elif err is None:
                ends[(m.topic(), m.partition())] = (m.offset() or 0) + 1  # type: ignore[index]
    c.close()
    return ends


def caught_up(bootstrap: str, group: str, ends: dict[tuple[str, int], int]) -> bool:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "log_level": 0})
    try:
        got = c.committed([TopicPartition(t, p) for t, p in ends], timeout=10)
    except Exception:  # the group's coordinator moving: not yet
        return False
    finally:
        c.close()
    return all(tp.offset >= ends[(tp.topic, tp.partition)] for tp in got)


def victim_of(cluster: KafkaCluster, prefix: str, leading: str) -> tuple[int, list[int]]:
    """The node to kill and the partitions it leads: of the orders topic, or of md.trades' partitions
    holding trades, the node leading the most (the worker's input)."""
    if leading == "orders":
        leaders = cluster.leaders(prefix + ORDERS.name)
        return leaders[0], [0]
    topic = prefix + TRADES.name
    c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "x", "log_level": 0})
    busy = [p for p in range(6) if c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] > 0]
    c.close()
    leaders = cluster.leaders(topic)
    counts = Counter(leaders[p] for p in busy)
    node = max(counts, key=lambda n: (counts[n], -n))
    return node, [p for p in busy if leaders[p] == node]


def test_kafka_status_names_every_node(cluster: KafkaCluster) -> None:
    status = cli("kafka", "status", "--data-dir", str(cluster.data_dir.parent))
    assert status.returncode == 0, status.stdout + status.stderr
    for node in cluster.nodes:
        assert f"kafka node {node.node_id} pid {node.pid()} at {node.bootstrap}: answering" in status.stdout
    assert cluster.live() == {1, 2, 3}


def test_topics_on_three_brokers_have_three_replicas_and_two_in_sync(cluster: KafkaCluster) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    out = subprocess.run(
        [sys.executable, "-m", "mambo.cli", "topology", "plan", "--prefix", prefix],
        env={**os.environ, "MAMBO_KAFKA_BOOTSTRAP": cluster.bootstrap},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "replication 3" in out.stdout and "min.insync.replicas=2" in out.stdout
    admin = cluster.admin()
    topology.apply(admin, 6, prefix)
    md = admin.list_topics(timeout=10).topics
    for spec in topology.wanted_topics(6, prefix):
        assert {len(p.replicas) for p in md[spec.name].partitions.values()} == {3}, spec.name

    def min_insync() -> str | None:
        [fut] = admin.describe_configs([ConfigResource("topic", prefix + ORDERS.name)]).values()
        try:
            return str(fut.result()["min.insync.replicas"].value)
        except KafkaException:  # a broker that has not heard of the topic yet
            return None

    until("the orders topic's config on the broker asked", lambda: min_insync() is not None)
    assert min_insync() == "2"
    internal = {t: len(m.partitions[0].replicas) for t, m in md.items() if t.startswith("__")}
    assert internal.get("__consumer_offsets", 3) == 3 and internal.get("__transaction_state", 3) == 3


#: Two scenarios, each guarantee and each victim once (all four cost ~150 s of CI's 25 minutes): the
#: transactional producer losing the leader it writes orders to, and the plain consumer losing the
#: leader of its input.
@pytest.mark.parametrize(("leading", "guarantee"), [("orders", "exactly_once"), ("input", "at_least_once")])
def test_a_broker_killed_mid_stream_loses_nothing(
    cluster: KafkaCluster,
    recording: tuple[TradeBatch, list[tuple[str, Any]]],
    guarantee: str,
    leading: str,
    tmp_path: Path,
) -> None:
    cluster.wait_live()
    cluster.wait_in_sync()  # the previous scenario's victim is back in every replica set
    bootstrap = cluster.bootstrap
    prefix = f"t{uuid.uuid4().hex[:8]}."
    topology.apply(cluster.admin(), 6, prefix)
    batch, ref = recording
    # at least once, each slice stamped with its own ts_init (a repeat that took another batch's would
    # show); exactly once, unstamped as the reference, so the outputs equal it to the last field
    slices = (
        stamped(batch)
        if guarantee == "at_least_once"
        else [batch.slice(s, s + SLICE) for s in range(0, len(batch), SLICE)]
    )
    first = len(slices) * 2 // 5  # published before the kill; the rest after it

    env = {
        "MAMBO_KAFKA_BOOTSTRAP": bootstrap,
        "MAMBO_KAFKA__PROCESSING_GUARANTEE": guarantee,
        "PYTHONUNBUFFERED": "1",  # their logs up to the last line, whatever happens to them
        "PYTHONFAULTHANDLER": "1",
    }
    data = tmp_path / "sinkdata"
    logs = {name: (tmp_path / f"{name}.log").open("wb") for name in ("worker", "sink")}
    worker = mambo(
        *("worker", "--name", "kill", "--batch-size", "2000", "--prefix", prefix),
        env=env,
        stdout=logs["worker"],
        stderr=subprocess.STDOUT,
    )
    sink = mambo(
        *("sink", "--data-dir", str(data), "--prefix", prefix),
        env=env,
        stdout=logs["sink"],
        stderr=subprocess.STDOUT,
    )
    killed = threading.Event()
    published: list[BaseException | None] = []

    def source() -> None:
        try:
            publish(bootstrap, prefix, slices[:first])
            killed.wait(WAIT)
            with KafkaPublisher(bootstrap, prefix) as pub:  # the rest through the outage
                for piece in slices[first:]:
                    pub.publish_trades(piece)
                pub.flush(WAIT)
            published.append(None)
        except BaseException as ex:
            published.append(ex)

    publisher = threading.Thread(target=source, daemon=True)
    publisher.start()
    try:
        group, trades = prefix + "mambo-workers", prefix + TRADES.name
        progress = lambda: committed(bootstrap, group, trades)  # noqa: E731
        until("a quarter of the input committed", lambda: progress() >= len(batch) // 4, worker, sink)
        node, partitions = victim_of(cluster, prefix, leading)
        assert partitions, f"node {node} leads nothing of {leading}"
        at_kill = progress()
        t_kill = time.monotonic()
        cluster.node(node).kill()
        killed.set()
        others = {n.node_id for n in cluster.nodes} - {node}
        cluster.wait_live(others, timeout=WAIT)  # the controller fenced it: its partitions moved
        t_fenced = time.monotonic()
        until(
            "the pipeline going on with two brokers",
            lambda: progress() >= min(at_kill + 5_000, len(batch)),
            worker,
            sink,
        )
        t_restart = time.monotonic()
        victim = cluster.node(node).launch()  # restarted while the pipeline runs on
        until("every trade published", lambda: bool(published), worker, sink)
        assert published == [None], published
        until("the worker through the input", lambda: progress() == len(batch), worker, sink)
        drained = lambda: feed_drained(bootstrap, group, prefix)  # noqa: E731
        until("the account stage through its feed", drained, worker, sink)
        assert at_kill < len(batch)
        t_done = time.monotonic()
        worker.terminate()
        assert worker.wait(timeout=60) == 0
        cluster.node(node).wait(victim, WAIT)
        cluster.wait_live(timeout=WAIT)
        t_back = time.monotonic()

        ends = data_ends(bootstrap, [prefix + t.name for t in ALL_TOPICS])
        until("the sink through every topic", lambda: caught_up(bootstrap, prefix + "mambo-sink", ends), sink)
        sink.terminate()
        print(
            f"\n{guarantee}, killed node {node} leading {leading} partitions {partitions} at {at_kill:,}"
            f" trades; after the kill: fenced {t_fenced - t_kill:.1f} s,"
            f" restarted {t_restart - t_kill:.1f} s,"
            f" worker through {t_done - t_kill:.1f} s, three brokers live {t_back - t_kill:.1f} s;"
            f" sink through {time.monotonic() - t_done:.1f} s after the worker"
        )
        assert sink.wait(timeout=60) == 0
    finally:
        for proc, name in ((worker, "worker"), (sink, "sink")):
            if proc.poll() is None:  # stuck: its threads' stacks into its log (faulthandler), then gone
                logs[name].write(b"\n[test] still running when the test failed: SIGABRT for its stacks\n")
                logs[name].flush()  # the same file offset as the process's: its dump follows the line
                native_stacks(proc.pid, tmp_path / f"{name}.gdb.txt")
                proc.send_signal(signal.SIGABRT)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for f in logs.values():
            f.close()
        killed.set()
        for n in cluster.nodes:  # the next scenario needs every broker
            if n.pid() is None:
                n.launch()

    counts = Counter(t for t, _ in ref)
    for topic in (ORDERS.name, FILLS.name, *(() if guarantee == "exactly_once" else ("signals", "equity"))):
        got = read_topic(bootstrap, topic, prefix)
        expected = of(ref, topic)
        if guarantee == "exactly_once":
            assert len({e.event_id for e in got}) == len(got), f"doubled on {topic}"
            assert sorted(got, key=lambda e: e.event_id) == expected, topic
            continue
        copies: dict[str, list[Event]] = defaultdict(list)
        for e in got:
            copies[e.event_id].append(e)
        for event_id, same in copies.items():  # a repeat is the same event but for ts_init
            assert all(without_ts_init([e]) == without_ts_init(same[:1]) for e in same), (topic, event_id)
        unique = sorted((c[0] for c in copies.values()), key=lambda e: e.event_id)
        assert [e.event_id for e in unique] == [e.event_id for e in expected], topic
        assert without_ts_init(unique) == without_ts_init(expected), topic
    if guarantee == "exactly_once":
        for topic, n in counts.items():
            assert len(read_topic(bootstrap, topic, prefix)) == n, topic

    expected_rows: Counter[str] = Counter()
    for topic, n in counts.items():
        expected_rows[by_name(topic).table] += n
    expected_rows["trades"] = len(batch)
    rows = clickhouse_counts(data)
    for table in TABLES:
        assert rows[table] == (expected_rows[table], expected_rows[table]), table
    # the next scenario's restarted broker recovers (and catches up) fewer partitions
    admin = cluster.admin()  # held: a collected client fails its futures
    for fut in admin.delete_topics([t.name for t in topology.wanted_topics(6, prefix)]).values():
        fut.result()
