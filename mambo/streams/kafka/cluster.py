"""Several Kafka brokers on 127.0.0.1 as one cluster (``mambo kafka start --brokers 3``), no Docker.

Each node is a :class:`~mambo.streams.kafka.broker.KafkaBroker` in combined mode (broker and
controller in one JVM), its state in ``<data_dir>/node-<id>``, and all of them are the controller
quorum. Combined nodes, not one controller beside three brokers: Kafka's KRaft documentation calls
combined servers "simpler to operate for small use cases like a development environment" (not for
critical deployments, where controllers are rolled and scaled apart), three voters keep a majority
when any one node dies, so killing a broker never takes the quorum with it (a lone controller would
be a single point of failure the kill tests do not exercise), and it is three JVMs instead of four on
a small machine. Kafka's own topics (consumer offsets, transaction state) get replication 3 and
``min.insync.replicas`` 2, as the topology gives Mambo's topics (:mod:`mambo.streams.kafka.topology`).

The layout (cluster id, each node's ports) is written once to ``<data_dir>/cluster.json`` and reused,
so a node restarts on the same ports and rejoins the same quorum.

A SIGKILLed broker is noticed by the controller after ``broker.session.timeout.ms``; until then its
partitions have no leader and acks=all writes to partitions it follows wait for it. Kafka's default,
9 s with a heartbeat every 2 s, is for machines whose pauses run long; on loopback the cluster uses
4 s and 1 s, so a leader change costs seconds, not ten (measured: ``benchmarks/kafka_cluster.py``).
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from mambo.streams.kafka.broker import BrokerError, KafkaBroker, free_port

__all__ = ["KafkaCluster"]

#: Broker settings of every node beyond the single broker's (see the module's docstring).
CLUSTER_SETTINGS = {"broker.session.timeout.ms": "4000", "broker.heartbeat.interval.ms": "1000"}


@dataclass
class KafkaCluster:
    """``size`` combined nodes on ``ports`` (the first run's; later runs reuse the recorded layout)."""

    data_dir: Path
    size: int = 3
    ports: list[int] = field(default_factory=list)
    heap: str = "512m"
    nodes: list[KafkaBroker] = field(init=False)

    def __post_init__(self) -> None:
        layout = self.recorded(self.data_dir)
        if layout is None:
            if self.size < 1:
                raise BrokerError("a cluster needs at least one broker")
            ports = self.ports or [9092 + i for i in range(self.size)]
            if len(ports) != self.size:
                raise BrokerError(f"{self.size} brokers need {self.size} ports, got {ports}")
            layout = {
                "cluster_id": uuid.uuid4().hex[:22],
                "nodes": [
                    {"id": i, "port": port, "controller_port": free_port()}
                    for i, port in enumerate(ports, start=1)
                ],
            }
        elif len(layout["nodes"]) != self.size:
            raise BrokerError(
                f"{self.data_dir} holds a cluster of {len(layout['nodes'])} brokers, not {self.size}"
            )
        self._layout = layout
        voters = ",".join(f"{n['id']}@127.0.0.1:{n['controller_port']}" for n in layout["nodes"])
        self.nodes = [
            KafkaBroker(
                self.data_dir / f"node-{n['id']}",
                port=n["port"],
                heap=self.heap,
                node_id=n["id"],
                controller_port=n["controller_port"],
                voters=voters,
                cluster_id=layout["cluster_id"],
                replication=min(3, self.size),
                settings=CLUSTER_SETTINGS,
            )
            for n in layout["nodes"]
        ]

    @staticmethod
    def recorded(data_dir: Path) -> dict | None:
        """The layout a previous start recorded in ``data_dir``, if any."""
        try:
            return dict(json.loads((data_dir / "cluster.json").read_text()))
        except FileNotFoundError:
            return None

    @property
    def bootstrap(self) -> str:
        """Every node's address: a client that knows one node only cannot start while it is down."""
        return ",".join(n.bootstrap for n in self.nodes)

    def node(self, node_id: int) -> KafkaBroker:
        return next(n for n in self.nodes if n.node_id == node_id)

    def start(self, timeout: float = 120.0) -> None:
        """Start the nodes not running, together, and wait until every node is a live broker."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "cluster.json").write_text(json.dumps(self._layout, indent=1))
        jvms = {n.node_id: n.launch() for n in self.nodes if n.pid() is None}
        try:
            for n in self.nodes:
                if n.node_id in jvms:
                    n.wait(jvms[n.node_id], timeout)
            self.wait_live(timeout=timeout)
        except BrokerError:
            self.stop()
            raise

    def restart(self, node_id: int, timeout: float = 120.0) -> None:
        """Start one (killed or stopped) node again and wait until the cluster counts it live."""
        node = self.node(node_id)
        node.wait(node.launch(), timeout)
        self.wait_live(timeout=timeout)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop every node (SIGTERM to all at once: stopped one by one, the last would wait for a
        quorum that is gone). False if none ran."""
        running = [(n, n.pid()) for n in self.nodes]
        for _, pid in running:
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for n, pid in running:
            if pid is not None:
                n.stop(max(0.0, deadline - time.monotonic()))
        return any(pid is not None for _, pid in running)

    def admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})

    def live(self, timeout: float = 5.0) -> set[int]:
        """The node ids the cluster's metadata names live (empty if no node answers)."""
        try:
            return set(self.admin().list_topics(timeout=timeout).brokers)
        except Exception:
            return set()

    def wait_live(self, nodes: set[int] | None = None, timeout: float = 120.0) -> None:
        """Until exactly ``nodes`` (default: every node) are live brokers."""
        want = nodes if nodes is not None else {n.node_id for n in self.nodes}
        deadline = time.monotonic() + timeout
        while (got := self.live()) != want:
            if time.monotonic() > deadline:
                raise BrokerError(f"live brokers {sorted(got)}, not {sorted(want)}, after {timeout:.0f}s")
            time.sleep(0.2)

    def leaders(self, topic: str) -> dict[int, int]:
        """{partition: the node leading it} (-1 while it has no leader)."""
        md = self.admin().list_topics(topic, timeout=10)
        return {p: m.leader for p, m in md.topics[topic].partitions.items()}

    def busiest_leader(self, topic: str) -> tuple[int, list[int]]:
        """The node leading the most of ``topic``'s partitions that hold messages, and those partitions
        (the broker to kill to hit a consumer of that topic hardest)."""
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "mambo-leaders", "log_level": 0})
        try:
            parts = self.leaders(topic)
            busy = [p for p in parts if c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] > 0]
        finally:
            c.close()
        counts = {n: sum(parts[p] == n for p in busy) for n in {parts[p] for p in busy}}
        if not counts:
            raise BrokerError(f"no partition of {topic} holds a message")
        node = max(counts, key=lambda n: (counts[n], -n))
        return node, [p for p in busy if parts[p] == node]

    def wait_in_sync(self, timeout: float = 120.0) -> None:
        """Until every partition of every topic has all its replicas in sync (after a restart)."""
        deadline = time.monotonic() + timeout
        while True:
            md = self.admin().list_topics(timeout=10)
            behind = [
                f"{t}/{p}"
                for t, tm in md.topics.items()
                for p, pm in tm.partitions.items()
                if set(pm.isrs) != set(pm.replicas)
            ]
            if not behind:
                return
            if time.monotonic() > deadline:
                raise BrokerError(f"{len(behind)} partitions not in sync after {timeout:.0f}s: {behind[:5]}")
            time.sleep(0.2)
