"""What a broker's death costs the orders' latency: three brokers, the leader SIGKILLed mid-stream.

A three-broker KRaft cluster on loopback (:class:`~mambo.streams.kafka.cluster.KafkaCluster`, the full
JIT as users get it), topics replicated 3 with ``min.insync.replicas`` 2, one ``mambo worker``
subprocess, and the bundled recording published at --rate trades/s in 10 ms ticks, each stamped
ts_init = the wall clock when handed to the producer. The reader of benchmarks/kafka_pipeline.py's
latency pass (read_committed, on the orders topic) records arrival - ts_init of every new order, so a
latency covers produce, broker, the worker's batch and transaction, and the reader; strategies trade
1-second candles, about 170 orders per pass of the recording.

Passes: --warmup passes not measured (the brokers' and the worker's JIT), one steady pass (the steady
state), then the broker is SIGKILLed: the one leading the most of md.trades' partitions that hold
trades (--kill input: the worker's input), or the orders partition's leader (--kill orders). It stays
down until the controller has fenced it (its partitions have moved) and --down seconds more, then it
is restarted while the stream goes on, --after passes in all from the kill.

Printed per guarantee and victim: the orders' p50 / p99 / max latency in the steady pass, in a
window of --window seconds from the kill and from the restart (orders whose input was published in
the window), and after both; how long the controller took to fence the dead broker.

Run: python benchmarks/kafka_cluster.py [--rate 5000] [--guarantee exactly_once,at_least_once]
[--kill input,orders] [--window 15] [--down 5]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
from embedded_pipeline import tiled
from kafka_pipeline import machine_reference, record_latencies, wait_committed, worker

from mambo.connectors.replay import load_trades
from mambo.logs import configure_logging
from mambo.schemas.topics import ORDERS, TRADES
from mambo.streams.kafka import topology
from mambo.streams.kafka.broker import free_port
from mambo.streams.kafka.cluster import KafkaCluster
from mambo.streams.kafka.producer import KafkaPublisher


class Kill:
    """Kills the victim when told (``now``), off the publisher's thread, and restarts it once it is
    fenced and --down seconds have passed; the times of each step, wall clock ns."""

    def __init__(self, cluster: KafkaCluster, topic: str, down: float) -> None:
        self.cluster, self.topic, self.down = cluster, topic, down
        self.now = threading.Event()
        self.marks: dict[str, int] = {}
        self.node, self.partitions = 0, list[int]()
        self.jvm: object = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def choose(self, leading: str) -> None:
        if leading == "orders":
            self.node, self.partitions = self.cluster.leaders(self.topic)[0], [0]
        else:
            self.node, self.partitions = self.cluster.busiest_leader(self.topic)
        self.thread.start()

    def _run(self) -> None:
        self.now.wait()
        self.marks["kill"] = time.time_ns()
        self.cluster.node(self.node).kill()
        self.cluster.wait_live({n.node_id for n in self.cluster.nodes} - {self.node})
        self.marks["fenced"] = time.time_ns()
        time.sleep(self.down)
        self.marks["restart"] = time.time_ns()
        self.jvm = self.cluster.node(self.node).launch()

    def rejoin(self) -> None:
        self.thread.join()
        self.cluster.node(self.node).wait(self.jvm, 180)  # type: ignore[arg-type]
        self.cluster.wait_live()
        self.cluster.wait_in_sync()


def run(cluster: KafkaCluster, guarantee: str, leading: str, args: argparse.Namespace, logs: Path) -> None:
    base, _ = load_trades()
    steady_from = int(args.rate * args.warmup)
    kill_at = steady_from + int(args.rate * args.steady)
    trades = tiled(base, kill_at + int(args.rate * args.after))
    bootstrap = cluster.bootstrap
    prefix = f"kill{uuid.uuid4().hex[:6]}."
    topology.apply(cluster.admin(), 6, prefix)
    env = {
        "MAMBO_ENGINE__TIMEFRAMES": '["1s", "1m"]',
        "MAMBO_ENGINE__TRADING_TIMEFRAME": "1s",
        "MAMBO_KAFKA__PROCESSING_GUARANTEE": guarantee,
        "PYTHONUNBUFFERED": "1",
        "PYTHONFAULTHANDLER": "1",
    }
    proc = worker(bootstrap, prefix, env, logs / f"worker-{guarantee}-{leading}.log", "--batch-size", "5000")
    samples: dict[str, list[tuple[int, int]]] = {ORDERS.name: []}
    stop = threading.Event()
    reader = record_latencies(bootstrap, prefix, samples, stop)
    group, topic = prefix + "mambo-workers", prefix + TRADES.name
    kill = Kill(cluster, prefix + (ORDERS.name if leading == "orders" else TRADES.name), args.down)
    marks: dict[str, int] = {}
    with KafkaPublisher(bootstrap, prefix, **{"linger.ms": 1}) as pub:
        pub.publish_trades(replace(trades.slice(0, 1), ts_init=time.time_ns()))
        pub.flush()
        wait_committed(bootstrap, group, topic, 1, proc)  # the worker has joined its group
        tick = 0.01
        per_tick = max(1, int(args.rate * tick))
        start = time.perf_counter()
        for k, s in enumerate(range(1, len(trades), per_tick)):
            delay = start + k * tick - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            if s >= steady_from and "steady" not in marks:
                marks["steady"] = time.time_ns()
                kill.choose(leading)  # the leaders as they are once the trades flow
            if s >= kill_at and not kill.now.is_set():
                kill.now.set()
            pub.publish_trades(replace(trades.slice(s, s + per_tick), ts_init=time.time_ns()))
        pub.flush(300)
    wait_committed(bootstrap, group, topic, len(trades), proc)
    marks["end"] = time.time_ns()
    time.sleep(1.0)
    stop.set()
    reader.join()
    proc.terminate()
    proc.wait()
    kill.rejoin()
    admin = cluster.admin()  # held: a collected client fails its futures
    for fut in admin.delete_topics([t.name for t in topology.wanted_topics(6, prefix)]).values():
        fut.result()

    marks |= kill.marks
    window = int(args.window * 1e9)
    fenced = (marks["fenced"] - marks["kill"]) / 1e9
    print(
        f"\n{guarantee}, node {kill.node} killed (leading {leading}: partitions {kill.partitions}),"
        f" fenced after {fenced:.1f} s, restarted {(marks['restart'] - marks['kill']) / 1e9:.1f} s"
        f" after the kill; orders' latency, ms from ts_init, at {args.rate:,} trades/s"
    )
    spans = {
        "steady pass": (marks["steady"], marks["kill"]),
        f"{args.window:.0f} s from the kill": (marks["kill"], marks["kill"] + window),
        f"{args.window:.0f} s from the restart": (marks["restart"], marks["restart"] + window),
        "after both": (max(marks["kill"], marks["restart"]) + window, marks["end"]),
    }
    for name, (t0, t1) in spans.items():
        a = np.array([(now - ts) / 1e6 for ts, now in samples[ORDERS.name] if t0 <= ts < t1])
        if not len(a):
            print(f"  {name:24} no orders")
            continue
        p50, p99 = np.percentile(a, [50, 99])
        print(f"  {name:24} n={len(a):5,}  p50 {p50:8.1f}  p99 {p99:8.1f}  max {a.max():8.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=int, default=2_000, help="trades/s")
    ap.add_argument("--guarantee", default="exactly_once,at_least_once", help="comma-separated")
    ap.add_argument("--kill", default="input,orders", help="comma-separated: input, orders")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds of stream not measured")
    ap.add_argument("--steady", type=float, default=30.0, help="seconds of steady state before the kill")
    ap.add_argument("--after", type=float, default=45.0, help="seconds of stream from the kill on")
    ap.add_argument("--window", type=float, default=15.0, help="seconds measured from the kill, the restart")
    ap.add_argument("--down", type=float, default=5.0, help="seconds the victim stays down once fenced")
    ap.add_argument("--tmp", default=None, help="where the run's temporary folder goes (cluster, logs)")
    args = ap.parse_args()
    configure_logging("console")
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        cluster = KafkaCluster(Path(tmp) / "cluster", 3, [free_port() for _ in range(3)])
        t0 = time.perf_counter()
        cluster.start()
        print(
            f"Kafka broker-kill benchmark: 3 brokers at {cluster.bootstrap} (started in"
            f" {time.perf_counter() - t0:.1f} s), {os.cpu_count()} cores (shared, noisy)"
        )
        try:
            for guarantee in args.guarantee.split(","):
                for leading in args.kill.split(","):
                    run(cluster, guarantee, leading, args, Path(tmp))
            machine_reference()
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
