"""Throughput and end-to-end latency of the Kafka pipeline (real broker, ``mambo worker`` subprocess).

Input: the bundled real Binance recording (69,808 trades of 4 markets), tiled in time as in
benchmarks/embedded_pipeline.py until it holds --trades trades.

1. Throughput: every trade is published first; then one ``mambo worker`` process (every stage:
   candles 1m/5m, indicators, four strategies on 1m, aggregation, and the account stage reading
   account.feed back: intents, risk, paper fills, portfolio of one account over the markets; one
   Kafka transaction per batch with outputs, state changelog and offsets, or at least once: outputs
   flushed, state flushed, offsets committed) drains md.trades, once per guarantee. Trades/s
   is measured on the worker's committed offsets, from its first commit to its last (its start-up,
   imports and group join, is left out and printed apart). Baseline, side by side: the same trades
   through the same per-market pipelines in this process with no Kafka (MarketPipelines), after a
   warm-up pass (until 2026-11-21 the baseline included the first pass's compilation and imports,
   which made it ~13x slower than the stages are: about 3M trades/s, since 300k trades close only
   ~1,000 candles); the ratio is what Kafka (decode, produce, transactions) costs.
2. Latency at a stated rate (--rate trades/s, default 5,000), over --passes of the recording
   (default 2: one pass makes about 170 orders, few for a p99) after --warmup passes
   (default 1, not measured: the broker JIT-compiles its hot paths in the first seconds, which
   tripled the p50 of a 14 s run): the recording is published in 10 ms
   ticks, each stamped with ts_init = the wall clock when it is handed to the producer; a
   read_committed consumer on the orders topic records (arrival time - ts_init) of every order, so
   it covers produce, broker, the worker's batch and transaction, the feed's round trip through
   account.feed to the account stage (its next batch and transaction), and the consumer. Strategies
   trade 1-second candles here, for a few hundred orders; 1-second candles are measured too.
   Where the time goes: the worker writes a trace of every batch (``mambo worker --trace``: when
   it polled, got the messages, had produced the outputs and state, committed),
   and each order is matched to its batch by ts_init, which splits its latency into
   queued (the worker was busy with the previous batch), publish + fetch (producer linger, broker,
   the worker's fetch), stages (from the poll's return until the batch's outputs and state are
   produced), commit (exactly once: send_offsets_to_transaction and commit_transaction, which
   delivers the outputs; at least once: until the batch's state is delivered and its offsets
   committed, which the loop does not wait for) and visible (transaction markers, the reader's
   fetch; at least once it is negative: outputs are readable once delivered). The worker's garbage
   collections are traced too.
   Each guarantee (--guarantee) is measured in turn. After each, a machine reference: what the
   worker does to a batch of 50 trades, in process without Kafka (these shared machines were 2x
   slower at times, and the latency moved with them: compare runs only at a like reference).

Run: python benchmarks/kafka_pipeline.py [--trades 300000] [--rate 5000] [--bootstrap host:port]
[--guarantee exactly_once,at_least_once] [--runtime native|faust] [--latency-only]
(without --bootstrap it starts its own broker in a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from embedded_pipeline import STRATEGIES, tiled

from mambo.agents.app import APP_ID
from mambo.connectors.replay import load_trades
from mambo.core.stages import EngineConfig
from mambo.logs import configure_logging
from mambo.schemas.batches import TradeBatch
from mambo.schemas.topics import ORDERS, TRADES, by_name, candle_topic
from mambo.streams.kafka import topology
from mambo.streams.kafka.broker import KafkaBroker, free_port
from mambo.streams.kafka.codec import check_trades, decode_trades, encode, encode_trades
from mambo.streams.kafka.producer import KafkaPublisher
from mambo.streams.markets import MarketPipelines

ENGINE = {  # what the worker subprocess trades, by environment (see mambo.settings)
    "MAMBO_ENGINE__STRATEGIES": '["' + '", "'.join(STRATEGIES) + '"]',
}


def committed(bootstrap: str, group: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "log_level": 0})
    try:
        for _ in range(50):
            try:
                parts = c.committed([TopicPartition(topic, p) for p in range(6)], 10)
                return sum(max(tp.offset, 0) for tp in parts)
            except KafkaException:  # NOT_COORDINATOR while the group's coordinator moves: ask again
                time.sleep(0.1)
        raise SystemExit(f"no committed offsets for {group}")
    finally:
        c.close()


RUNTIME: list[str] = []  # --runtime, passed through to `mambo worker` when given


def worker_group() -> str:
    """The consumer group of the worker runtime measured (its committed offsets are the progress)."""
    return APP_ID if RUNTIME[-1:] == ["faust"] else "mambo-workers"


def wait_committed(bootstrap: str, group: str, topic: str, n: int, proc: subprocess.Popen[bytes]) -> None:
    """Until the worker's group has committed ``n`` messages of ``topic``; SystemExit if it died."""
    while committed(bootstrap, group, topic) < n:
        if proc.poll() is not None:
            raise SystemExit(f"the worker exited ({proc.returncode}) before it had processed {n:,}")
        time.sleep(0.1)


PHASES = ("queued", "publish+fetch", "stages", "commit", "visible")


def worker(
    bootstrap: str, prefix: str, env: dict[str, str], log: Path, *extra: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "mambo.cli", "worker", *RUNTIME, "--prefix", prefix, *extra],
        env={**os.environ, "MAMBO_KAFKA_BOOTSTRAP": bootstrap, "MAMBO_LOG_FORMAT": "json", **ENGINE, **env},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def throughput(
    bootstrap: str, n: int, batch_size: int, logs: Path, guarantee: str, warm_up: bool = False
) -> None:
    base, _ = load_trades()
    trades = tiled(base, n)
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    topology.apply(AdminClient({"bootstrap.servers": bootstrap}), 6, prefix)

    config = EngineConfig(timeframes=("1m", "5m"), trading_timeframe="1m", strategies=STRATEGIES)
    # compiles and imports what the stages use once:
    warm = MarketPipelines(config, lambda t, e: None, loopback=True)
    for s in range(0, len(trades), batch_size):  # the first pass was 13x slower than the next
        warm.ingest_trades(trades.slice(s, s + batch_size))
    mp = MarketPipelines(config, lambda t, e: None, loopback=True)  # the account stage too
    t0 = time.perf_counter()
    for s in range(0, len(trades), batch_size):
        mp.ingest_trades(trades.slice(s, s + batch_size))
    base_rate = len(trades) / (time.perf_counter() - t0)

    t0 = time.perf_counter()
    with KafkaPublisher(bootstrap, prefix) as pub:
        for s in range(0, len(trades), 20_000):
            pub.publish_trades(trades.slice(s, s + 20_000))
    pub_rate = len(trades) / (time.perf_counter() - t0)

    env = {
        "MAMBO_ENGINE__TIMEFRAMES": '["1m", "5m"]',
        "MAMBO_ENGINE__TRADING_TIMEFRAME": "1m",
        "MAMBO_KAFKA__PROCESSING_GUARANTEE": guarantee,
    }
    start = time.perf_counter()
    proc = worker(
        bootstrap, prefix, env, logs / "throughput.log", "--batch-size", str(batch_size), "--idle-exit", "3"
    )
    group, topic = prefix + worker_group(), prefix + TRADES.name
    first = (0.0, 0)
    while (done := committed(bootstrap, group, topic)) < len(trades):
        if done and not first[1]:
            first = (time.perf_counter(), done)
        if proc.poll() is not None:
            raise SystemExit(f"worker exited ({proc.returncode}); see {logs / 'throughput.log'}")
        time.sleep(0.05)
    end = time.perf_counter()
    proc.wait()
    rate = (len(trades) - first[1]) / (end - first[0])
    if warm_up:
        print(f"\nwarm-up (not measured): {guarantee}, {len(trades):,} trades, {rate:,.0f} trades/s")
        return
    print(f"\nthroughput, {guarantee}, {len(trades):,} trades, 4 markets, batches of {batch_size:,}")
    print(f"  publish (KafkaPublisher, lz4, idempotent):      {pub_rate:12,.0f} trades/s")
    print(f"  one worker, whole pipeline:                     {rate:12,.0f} trades/s")
    print(f"  baseline, same pipelines in process, no Kafka:  {base_rate:12,.0f} trades/s")
    print(f"  ratio worker / baseline:                        {rate / base_rate:12.2f}")
    print(f"  worker start-up to its first commit:            {first[0] - start:12.1f} s")


def record_latencies(
    bootstrap: str, prefix: str, samples: dict[str, list[tuple[int, int]]], stop: threading.Event
) -> threading.Thread:
    """A reader (read_committed) of the topics ``samples`` names, appending (ts_init, arrival ns) of
    each new event to its topic's list until ``stop``; the thread, started."""

    def consume() -> None:
        import orjson

        c = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": prefix + "latency",
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 5,
                "log_level": 0,
            }
        )
        c.subscribe([prefix + t for t in samples])
        while not stop.is_set():
            first = c.poll(0.05)  # at once when a message is there (consume(n, t) waits for n or t)
            for m in [first, *c.consume(1000, 0)] if first is not None else []:
                if m.error() is None:
                    now = time.time_ns()
                    ev = orjson.loads(m.value() or b"{}")
                    if ev.get("status", "new") != "new":
                        continue  # fills' order updates carry the trade's exchange time as ts_init
                    samples[(m.topic() or "").removeprefix(prefix)].append((ev["ts_init"], now))
        c.close()

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    return reader


def latency(bootstrap: str, rate: int, logs: Path, guarantee: str, warmup: int, passes: int) -> None:
    base, _ = load_trades()
    trades = tiled(base, len(base) * (warmup + passes))  # the warm-up passes first, then the measured
    warm_n = len(base) * warmup
    prefix = f"lat{uuid.uuid4().hex[:6]}."
    topology.apply(AdminClient({"bootstrap.servers": bootstrap}), 6, prefix)
    env = {
        "MAMBO_ENGINE__TIMEFRAMES": '["1s", "1m"]',
        "MAMBO_ENGINE__TRADING_TIMEFRAME": "1s",
        "MAMBO_KAFKA__PROCESSING_GUARANTEE": guarantee,
    }
    trace = logs / f"trace-{guarantee}.jsonl"
    traced = () if RUNTIME and RUNTIME[1] != "native" else ("--trace", str(trace))
    # stopped with SIGTERM once measured (an idle exit could come while the publisher is held up)
    proc = worker(bootstrap, prefix, env, logs / "latency.log", "--batch-size", "5000", *traced)
    samples: dict[str, list[tuple[int, int]]] = {ORDERS.name: [], candle_topic("1s"): []}
    stop = threading.Event()

    reader = record_latencies(bootstrap, prefix, samples, stop)
    # wait until the worker has joined its group (a first trade goes through)
    group, topic = prefix + worker_group(), prefix + TRADES.name
    with KafkaPublisher(bootstrap, prefix, **{"linger.ms": 1}) as pub:
        pub.publish_trades(replace(trades.slice(0, 1), ts_init=time.time_ns()))
        pub.flush()
        wait_committed(bootstrap, group, topic, 1, proc)
        tick = 0.01
        per_tick = max(1, int(rate * tick))
        start = time.perf_counter()
        measured_from = 0 if warm_n else time.time_ns()  # ts_init of the first measured trade
        measured_start = start
        for k, s in enumerate(range(1, len(trades), per_tick)):
            delay = start + k * tick - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            ts_init = time.time_ns()
            if s >= warm_n and not measured_from:
                measured_from, measured_start = ts_init, time.perf_counter()
            pub.publish_trades(replace(trades.slice(s, s + per_tick), ts_init=ts_init))
        sent_seconds = time.perf_counter() - measured_start
    wait_committed(bootstrap, group, topic, len(trades), proc)
    time.sleep(1.0)
    stop.set()
    reader.join()
    proc.terminate()
    proc.wait()
    for xs in samples.values():  # the warm-up pass is not measured
        xs[:] = [(ts, now) for ts, now in xs if ts >= measured_from]
    print(
        f"\nlatency, {guarantee}, at {rate:,} trades/s ({len(trades) - warm_n:,} trades in"
        f" {sent_seconds:.1f} s, after {warm_n:,} not measured), ms from ts_init"
    )
    for topic_name, xs in samples.items():
        a = np.array([(now - ts) / 1e6 for ts, now in xs])
        if not len(a):
            print(f"  {topic_name:14} no events")
            continue
        p50, p99, p999 = np.percentile(a, [50, 99, 99.9])
        print(f"  {topic_name:14} n={len(a):6,}  p50 {p50:7.1f}  p99 {p99:7.1f}  p99.9 {p999:7.1f}", end="")
        print(f"  max {a.max():7.1f}")
    if trace.exists():
        breakdown(trace, samples[ORDERS.name])


def machine_reference() -> None:
    """How fast this machine is right now, to read the latency by: what the worker does to a batch
    (decode, check, the latency pass's stages: 1s and 1m candles and the four strategies, encode the
    outputs, pickle the touched markets' state) over the recording in process, 50 trades a batch, no
    Kafka. On these shared machines it ranged from 0.96 to 2.06 ms p50 between runs of one day, and
    the latency figures moved with it."""
    base, _ = load_trades()
    values = [v for _, v in encode_trades(base)]
    config = EngineConfig(timeframes=("1s", "1m"), trading_timeframe="1s", strategies=STRATEGIES)
    out: list[tuple[str, object]] = []
    mp = MarketPipelines(config, lambda t, e: out.append((t, e)), loopback=True)
    times = []
    for s in range(0, len(values), 50):
        t0 = time.perf_counter()
        batch, _, _ = decode_trades(values[s : s + 50])
        check_trades(batch, None)
        out.clear()
        for key in mp.ingest_trades(batch):
            mp.state(key)
        for topic, event in out:
            if not isinstance(event, TradeBatch):
                encode(by_name(topic), event)
        times.append(time.perf_counter() - t0)
    p50, p99 = np.percentile(np.array(times) * 1e3, [50, 99])
    print(f"  machine reference (a worker's batch of 50 in process): p50 {p50:.2f} ms, p99 {p99:.2f} ms")


def breakdown(trace: Path, orders: list[tuple[int, int]]) -> None:
    """Each order's latency split by where it went, from the worker's trace of its batch."""
    import orjson

    rows_ = [orjson.loads(line) for line in trace.read_bytes().splitlines()]
    batches = [r for r in rows_ if "gc" not in r]
    full_gc = [r["ns"] / 1e6 for r in rows_ if r.get("gc") == 2]
    young_gc = [r["ns"] / 1e6 for r in rows_ if r.get("gc") in (0, 1)]
    of_ts = {ts: b for b in batches for ts in b["ts_init"]}
    rows = []
    for ts, arrived in orders:
        b = of_ts.get(ts)
        if b is None:
            continue
        start = max(b["poll"], ts)
        marks = [ts, b["poll"] if b["poll"] > ts else ts, b["got"], b["done"], b["commit"], arrived]
        rows.append([max(0, marks[1] - marks[0]), b["got"] - start, *np.diff(marks[2:])])
    if not rows:
        print("  (no order matched a traced batch)")
        return
    a = np.array(rows) / 1e6
    txn = np.array([b["commit"] - b["done"] for b in batches]) / 1e6
    print(f"  where an order's time goes ({len(rows)} of {len(orders)} orders matched to their batch), ms:")
    print("    " + " ".join(f"{p:>13}" for p in PHASES))
    for q in (50, 99):
        print(f"p{q:<3}" + " ".join(f"{v:13.1f}" for v in np.percentile(a, q, axis=0)))
    print("mean" + " ".join(f"{v:13.1f}" for v in a.mean(axis=0)))
    print(
        f"  every batch ({len(batches):,}): commit p50 {np.percentile(txn, 50):.1f}"
        f"  p99 {np.percentile(txn, 99):.1f}  messages/batch p50 "
        f"{np.percentile([b['messages'] for b in batches], 50):.0f}"
    )
    print(
        f"  garbage collections in the worker: {len(young_gc):,} young"
        f" (max {max(young_gc, default=0):.1f} ms),"
        f" {len(full_gc)} full (max {max(full_gc, default=0):.1f} ms, total {sum(full_gc):.0f} ms)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trades", type=int, default=300_000)
    ap.add_argument("--batch-size", type=int, default=10_000)
    ap.add_argument("--rate", type=int, default=5_000)
    ap.add_argument("--bootstrap", default="")
    ap.add_argument("--guarantee", default="exactly_once,at_least_once", help="comma-separated")
    ap.add_argument("--runtime", default="", help="passed to `mambo worker --runtime` (default: native)")
    ap.add_argument("--latency-only", action="store_true")
    ap.add_argument(
        "--ordering",
        default="event_time",
        help="the account stage's ordering (engine.ordering): event_time (the default, the same orders"
        " in every runtime) or arrival (no waiting for the slowest market)",
    )
    ap.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="passes of the recording before the measured ones (the broker's JIT, the worker's"
        " caches); and, when not 0, an unmeasured throughput run first",
    )
    ap.add_argument(
        "--passes", type=int, default=2, help="measured passes of the recording (about 170 orders each)"
    )
    args = ap.parse_args()
    # one account over the recording's markets (its merge waits for each of them), ordered as asked
    ENGINE["MAMBO_ACCOUNTS__MAIN__MARKETS"] = json.dumps(list(load_trades()[0].keys))
    ENGINE["MAMBO_ENGINE__ORDERING"] = args.ordering
    if args.runtime:
        RUNTIME[:] = ["--runtime", args.runtime]
    configure_logging("console")
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        broker = None
        bootstrap = args.bootstrap
        if not bootstrap:
            broker = KafkaBroker(Path(tmp) / "kafka", port=free_port())
            broker.start()
            bootstrap = broker.bootstrap
        try:
            print(
                f"Kafka pipeline benchmark, broker {bootstrap}, {os.cpu_count()} cores (shared, noisy); "
                f"account ordering {args.ordering}"
            )
            guarantees = args.guarantee.split(",")
            if not args.latency_only and args.warmup:  # the broker's JIT: see the latency's warm-up
                throughput(bootstrap, args.trades, args.batch_size, logs, guarantees[0], warm_up=True)
            for guarantee in [] if args.latency_only else guarantees:
                throughput(bootstrap, args.trades, args.batch_size, logs, guarantee)
            for guarantee in guarantees:
                latency(bootstrap, args.rate, logs, guarantee, args.warmup, args.passes)
                machine_reference()
        finally:
            if broker is not None:
                broker.stop()


if __name__ == "__main__":
    main()
