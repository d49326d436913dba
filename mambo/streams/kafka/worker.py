"""The Kafka worker: the market stages on the md.trades/md.candles partitions this process owns, and
the account stages on its account.feed partitions (see :mod:`mambo.core.stages` for the two groups).

Shape: a consumer in group ``mambo-workers`` reads md.trades, md.candles (exchange candles, which the
candle stage passes through) and account.feed in batches; for each partition's slice it decodes the
messages (undecodable ones go to ``<topic>.dlq`` with topic, partition, offset and the reason), runs
them through :class:`~mambo.streams.markets.MarketPipelines` (the same stages as the embedded runtime,
whose bus dead-letters a failing stage's message and goes on): trades and candles through their
market's stages, feed messages through their account's stage. It produces every event the stages
publish to its topic, keyed as the registry says (the markets' feed to account.feed, keyed by account,
which this worker or another consumes back), and writes each touched key's state (a market's, or an
account's as ``account/<id>``) to the compacted changelog ``mambo.worker.state`` in the partition of
its input. A market's trades and candles share a partition number (same key, same partitioner), and
the range assignor gives a worker the same partition numbers of every input topic; each topic keeps
its own order, and within one poll a partition's messages are handled topic run by topic run, in the
order they were fetched. An account's result does not depend on how its markets' feeds interleave
(it merges them in event time), so any number of workers gives the same orders.

The processing guarantee (``kafka.processing_guarantee``):

- ``exactly_once`` (default): a batch's outputs, its markets' state and the input offsets go in ONE
  Kafka transaction (``send_offsets_to_transaction`` with the group's metadata, KIP-447 fencing). A
  worker killed at any point leaves either the whole batch or none of it; readers use
  ``isolation.level=read_committed``. The transactional id is stable per worker name
  (``mambo-worker-<name>``), so a restarted worker aborts its predecessor's open transaction at once.
  A transaction the broker cannot finish (its partitions' leader or its coordinator died and the
  failover outlasted ``transaction.timeout.ms``, 10 s as in Kafka Streams) is aborted, and the worker
  does in process what a restart would: a new producer under the same id, its partitions' markets
  restored from the changelog, its consumer sought to the committed offsets; the batch is processed
  again. So is one the coordinator aborted itself for its timeout while the worker waited on it
  (the coordinator died mid-commit, its successor loaded the transaction too late), which librdkafka
  reports as a fatal fence (:func:`_timed_out_by_broker`); a fence by another process stays fatal.
  So is one whose ``send_offsets_to_transaction`` librdkafka never returns from (the group
  coordinator's broker died: :func:`_bounded`). Calls that failed with a retriable error (the
  coordinator moving) are retried.
- ``at_least_once``: no transactions, and the loop never waits for the broker. A batch's outputs
  are produced (idempotent producer) as the stages publish them; once all of them, and all of every
  earlier batch's, are acknowledged, its state is produced, each record carrying the input offsets
  it includes; once that is acknowledged, and every earlier batch's, its offsets are committed
  (asynchronously: the state already says how far each market got). Meanwhile the next batches are
  polled and processed (:meth:`Worker._advance` moves the pending batches on, oldest first). A
  crash before a batch's state was delivered can repeat its outputs on restart (and those of the
  batches pending behind it). Each repeat is the same event (same deterministic ``event_id``, same
  content) but for
  its ``ts_init``: a batch's ``ts_init`` is the earliest of its trades', and the restarted worker may
  cut its input into other batches (a loaded full suite caught a repeated signal whose ``ts_init``
  differed). ClickHouse's ReplacingMergeTree keeps one row, and an exchange order's client id
  derives from ``client_order_id``, so ExchangeBroker never sends it twice. A crash after the state
  was delivered loses nothing and repeats nothing: on restart, a market skips the input its state
  already holds (the offsets in its state record), whatever the group committed. A revoked
  partition's pending batches are delivered before it goes.

On assignment the worker restores its partitions' markets from the changelog (read_committed, to the
end), then consumes from the committed offsets.

Latency (what ``benchmarks/kafka_pipeline.py`` measures, with a trace of every transaction:
``trace=``): a back-to-back transaction's ``AddOffsetsToTxn`` (in ``send_offsets_to_transaction``)
and ``AddPartitionsToTxn`` meet ``CONCURRENT_TRANSACTIONS`` until the broker has written the previous
transaction's markers (a few ms on one node), and librdkafka retries after ``retry.backoff.ms``
(default 100 ms; 20 ms fixed for AddPartitions). So the worker's producer retries after 1 ms,
growing exponentially (``retry.backoff.max.ms``) when a real outage makes retries fail, and
alternates between two transactional producers: transaction k+1 begins on the other id while the
broker finishes k's markers, so it never waits for them. One transaction runs at a time and k+1
begins only after k's commit returned, so outputs keep their order and the group's committed offsets
only move forward (the broker materializes, of two transactional offset commits, the one appended
later to ``__consumer_offsets``, whichever marker lands first). Both ids are fenced at start
(``init_transactions`` aborts whatever a predecessor left open). And a poll returns at the first
message (``consume(n, timeout)`` waits for n messages or the whole timeout), then takes what is
already fetched: a batch is whatever arrived while the previous one was being committed.

What a transaction costs grows with the partitions it writes: librdkafka (2.16, no KIP-890
transactions v2) registers them with ``AddPartitionsToTxn`` and sends one ProduceRequest per
partition, and the broker checks each first write against the coordinator
(``transaction.partition.verification.enable``, KIP-890's defence against hanging transactions; 11
of a 21.5 ms transaction p50 when off, left on). Measured with nothing else running, 60 messages
over 48 partitions: 36 ms to deliver them in a transaction against 12 ms without one. So the trading
streams from the aggregated signal on have one partition each (:mod:`mambo.schemas.topics`): a batch
of four markets closing bars writes about 31 partitions instead of 52 (state, candles, indicators and
raw signals per market, one of each of the seven others), and such a transaction took 19 ms p50 / 57
ms p99 against 28 / 80 ms, interleaved on one broker. Splitting a batch into one transaction per
input partition, each on its own producers and committed side by side, was tried: the latency got
worse (p50 180 against 101 ms), since every transaction pays the fixed costs again. So exactly once
an order waits for about one transaction while its batch is committed and often for the one before
it: p99 is well above at least once's (see ``benchmarks/kafka_pipeline.py``).

Why not Faust for this runtime: Faust's exactly-once mode, its recovery after a kill (faust-streaming
issues 21, 47, 74, 216: recovery hangs) and its one-message-at-a-time agents were the risks
DESIGN.md names; a transaction per batch on confluent-kafka gives the same guarantees in a few lines
we can test, at batch speed. The stages are reused unchanged either way.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson
import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from mambo.core.market import Market
from mambo.core.stages import Account, EngineConfig, Stage
from mambo.metrics import ASSIGNED_PARTITIONS, REBALANCES, TRANSACTION_SECONDS, TRANSACTIONS
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import AccountFeed, Candle, Event
from mambo.schemas.topics import ACCOUNT_FEED, EXCHANGE_CANDLES, TRADES, by_name, dlq_topic
from mambo.streams.kafka.codec import (
    DecodeError,
    Headers,
    Inline,
    check_trades,
    dead_letter,
    decode,
    decode_inline,
    decode_trades,
    encode,
    headers_for,
    runs_of_trades,
)
from mambo.streams.kafka.producer import PRODUCER_DEFAULTS
from mambo.streams.kafka.topology import STATE_MAX_BYTES, STATE_TOPIC
from mambo.streams.markets import MarketPipelines

__all__ = ["INPUTS", "Guarantee", "Worker", "WorkerError"]

log = structlog.get_logger("mambo.kafka.worker")

Guarantee = Literal["exactly_once", "at_least_once"]
#: The topics a worker reads: trades and exchange candles (passed through), keyed by market, for the
#: market stages; the account feed, keyed by account, for the account stages.
INPUTS: tuple[str, ...] = (TRADES.name, EXCHANGE_CANDLES.name, ACCOUNT_FEED.name)
_OFFSETS_HEADER = "mambo-offsets"  # on a state record: {input topic: next offset} it includes
_StateRecord = tuple[str, bytes, Headers, int]  # a market's state: key, blob, headers, partition
_PARTITION_EOF = KafkaError._PARTITION_EOF
TRANSACTION_TIMEOUT_MS = 10_000  # as Kafka Streams' exactly once (see the module's docstring)
_T = TypeVar("_T")


class WorkerError(RuntimeError):
    """The broker refused outputs (after librdkafka's retries): the batch is not committed."""


class Worker:
    """One worker process's loop. ``run()`` until ``stop`` is set (or idle for ``idle_exit`` s)."""

    def __init__(
        self,
        bootstrap: str,
        config: EngineConfig | Sequence[Account],
        markets: Mapping[str, Market] | None = None,
        known_markets: Sequence[str] | None = None,
        name: str = "1",
        group: str = "mambo-workers",
        batch_size: int = 10_000,
        poll_seconds: float = 0.01,
        prefix: str = "",
        guarantee: Guarantee = "exactly_once",
        trace: Path | None = None,
        extra: Callable[[str], Stage] | None = None,
    ) -> None:
        """``extra``: see :class:`~mambo.streams.markets.MarketPipelines` (the notifications' stage)."""
        if guarantee not in ("exactly_once", "at_least_once"):
            raise ValueError(f"processing guarantee {guarantee!r}: exactly_once or at_least_once")
        self.bootstrap = bootstrap
        self.name = name
        self.prefix = prefix  # namespaces topics, group and transactional id
        self.group = prefix + group
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.guarantee = guarantee
        self.trace_file = trace
        self._trace: list[dict[str, Any]] = []  # batches and garbage collections
        self._gc_start = 0
        self._out: list[tuple[str, Any]] = []
        self.pipelines = MarketPipelines(config, self._collect, markets, known_markets, extra=extra)
        self._partition_of: dict[str, int] = {}  # market key -> input partition (and its state's)
        self._offsets: dict[str, dict[str, int]] = {}  # market key -> {input topic: next offset}
        # (input topic, partition) -> {market key: the offset its restored state reached}
        self._skip: dict[tuple[str, int], dict[str, int]] = {}
        self._delivery_errors: list[str] = []
        # at least once: the batches whose outputs, then state, are not all delivered yet, in order
        self._pending: deque[_Pending] = deque()
        self._producer_alo: Producer | None = None
        self._consumer: Consumer | None = None
        self._current: _Pending | None = None  # at least once: the batch being processed
        self.processed = 0  # trades
        self.candles = 0  # exchange candles
        self.feeds = 0  # account feed messages
        self.batches = 0
        self.aborted = 0  # exactly once: transactions the broker could not finish (batches done again)
        self._aborts_in_a_row = 0
        self._txn_ids: list[str] = []
        self.assigned: list[int] = []
        self._assigned_at = 0.0
        self._headers = {t.name: headers_for(t.model) for t in (TRADES,)}

    def _collect(self, topic: str, event: Any) -> None:
        self._out.append((topic, event))

    # --- state ---------------------------------------------------------------------------------

    def _restore(self, partitions: list[int]) -> None:
        """Load the markets of ``partitions`` from the changelog, to its committed end."""
        if not partitions:
            return
        c = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"{self.group}-restore",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
                "log_level": 3,
            }
        )
        try:
            c.assign([TopicPartition(self.prefix + STATE_TOPIC, p, 0) for p in partitions])  # 0 -> beginning
            latest: dict[str, tuple[int, bytes, Any]] = {}
            open_parts = set(partitions)
            deadline = time.monotonic() + 120
            while open_parts:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"state restore of partitions {sorted(open_parts)} did not finish")
                for m in c.consume(10_000, 0.5):
                    err = m.error()
                    if err is not None:
                        if err.code() == _PARTITION_EOF:  # caught up with the committed end
                            open_parts.discard(m.partition())
                            continue
                        raise KafkaException(err)
                    key = (m.key() or b"").decode()
                    latest[key] = (m.partition() or 0, m.value() or b"", m.headers())
        finally:
            c.close()
        for key, (p, blob, headers) in latest.items():
            if blob:
                self.pipelines.restore(key, blob)
                self._partition_of[key] = p
                offsets: dict[str, int] = next(
                    (orjson.loads(v) for h, v in headers or () if h == _OFFSETS_HEADER), {}
                )
                self._offsets[key] = offsets
                for topic, offset in offsets.items():
                    self._skip.setdefault((topic, p), {})[key] = offset
        log.info("worker.restored", worker=self.name, partitions=partitions, markets=len(latest))

    # --- rebalance -----------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        new = sorted({p.partition for p in parts} - set(self.assigned))
        self.assigned = sorted(set(self.assigned) | set(new))
        self._restore(new)
        self._assigned_at = time.monotonic()  # idle time counts from here (a join can outlast idle_exit)
        REBALANCES.labels("worker", "assigned").inc()
        ASSIGNED_PARTITIONS.labels("worker").set(len(self.assigned))
        log.info("worker.assigned", worker=self.name, partitions=self.assigned)

    def _on_revoke(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        gone = {p.partition for p in parts}
        self._drain()  # at least once: the revoked partitions' state and offsets before they go
        self.assigned = [p for p in self.assigned if p not in gone]
        self._forget(gone)
        REBALANCES.labels("worker", "revoked").inc()
        ASSIGNED_PARTITIONS.labels("worker").set(len(self.assigned))
        log.info("worker.revoked", worker=self.name, partitions=sorted(gone))

    def _forget(self, partitions: Collection[int]) -> None:
        """Drop the markets of ``partitions`` and what the worker knows of their offsets."""
        keys = [k for k, p in self._partition_of.items() if p in partitions]
        self.pipelines.drop(keys)
        for k in keys:
            del self._partition_of[k]
            self._offsets.pop(k, None)
        self._skip = {tp: skip for tp, skip in self._skip.items() if tp[1] not in partitions}

    # --- the loop ------------------------------------------------------------------------------

    def _producer(self, transactional_id: str | None) -> Producer:
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            **PRODUCER_DEFAULTS,
            "linger.ms": 1,  # a batch's outputs are flushed by its commit anyway
            # CONCURRENT_TRANSACTIONS (the previous transaction's markers being written) is retried
            # after this; exponential up to retry.backoff.max.ms if retries keep failing
            "retry.backoff.ms": 1,
            "message.max.bytes": STATE_MAX_BYTES,  # an account's state record can pass 1 MB
        }
        if transactional_id is not None:
            # librdkafka 2.10+ hangs send_offsets_to_transaction, whatever its timeout, when the group
            # coordinator's broker died and left the metadata (librdkafka issues 5511 and 5456, fixes
            # not released in 2.16): the request waits for that broker's state to change, and its
            # thread is gone. Any broker's connection going up or down makes it look for the new
            # coordinator, so idle connections are closed after this (less a jitter of up to 2 s): a
            # worker blocked there has them idle, which can end its wait sooner; _bounded gives up on
            # it after SEND_OFFSETS_BOUND in any case. A worker idle that long reconnects (a few ms).
            config["connections.max.idle.ms"] = 5_000
            config |= {"transactional.id": transactional_id, "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS}
        producer = Producer(config)
        if transactional_id is not None:
            _retrying(lambda: producer.init_transactions(30))  # the coordinator may be moving
        return producer

    def run(self, stop: threading.Event | None = None, idle_exit: float | None = None) -> None:
        stop = stop or threading.Event()
        if self.trace_file is not None:
            gc.callbacks.append(self._trace_gc)
        base = f"{self.prefix}mambo-worker-{self.name}"
        producers: list[Producer] = []
        if self.guarantee == "exactly_once":  # two ids, alternating (see the module's docstring)
            self._txn_ids = [base, f"{base}-b"]
            producers = [self._producer(i) for i in self._txn_ids]
        else:
            self._producer_alo = self._producer(None)
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": self.group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "partition.assignment.strategy": "range",  # a market's trades and candles together
                "session.timeout.ms": 10_000,
                "heartbeat.interval.ms": 1_000,
                "fetch.wait.max.ms": 10,  # latency: do not let the broker hold a fetch for 500 ms
                "log_level": 3,
            }
        )
        self._consumer = consumer
        consumer.subscribe(
            [self.prefix + t for t in INPUTS], on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        log.info(
            "worker.started",
            worker=self.name,
            pid=os.getpid(),
            bootstrap=self.bootstrap,
            guarantee=self.guarantee,
        )
        last = time.monotonic()
        collector = _Collector()
        try:
            while not stop.is_set():
                collector.step(idle=False)
                self._advance()
                t_poll = time.time_ns()
                msgs = _consume(consumer, self.batch_size, self.poll_seconds)
                msgs = [m for m in msgs if m.error() is None or not self._log_error(m)]
                if not msgs:
                    collector.step(idle=True)
                    if not self.assigned:  # idle time counts from the group's assignment
                        last = time.monotonic()
                    elif (
                        idle_exit is not None and time.monotonic() - max(last, self._assigned_at) > idle_exit
                    ):
                        break
                    continue
                last = time.monotonic()
                if producers:
                    self._process_exactly_once(consumer, producers, self.batches % 2, msgs, t_poll)
                else:
                    self._process_at_least_once(msgs, t_poll)
                last = time.monotonic()  # idle from the batch's end (an undone one takes seconds)
        finally:
            collector.close()
            try:
                self._drain()
            finally:
                consumer.close()
                for producer in [*producers, *filter(None, [self._producer_alo])]:
                    producer.flush(10)
                self._write_trace()
            log.info(
                "worker.stopped",
                worker=self.name,
                trades=self.processed,
                candles=self.candles,
                feeds=self.feeds,
                batches=self.batches,
            )

    @staticmethod
    def _log_error(m: Message) -> bool:
        log.warning("worker.consume_error", error=str(m.error()))
        return True

    def _process_exactly_once(
        self, consumer: Consumer, producers: list[Producer], which: int, msgs: list[Message], t_poll: int
    ) -> None:
        """One transaction on ``producers[which]``: the batch's outputs, dead letters, markets' state
        and input offsets. If the broker cannot finish it, the batch is undone (:meth:`_undo`)."""
        producer = producers[which]
        t_got = time.time_ns()
        counts = self.processed, self.candles, self.feeds
        producer.begin_transaction()
        begun, waiting = time.monotonic(), float("inf")  # waiting: since the first call to the broker
        try:
            ts_inits: list[int] = []
            states, offsets = self._process_batch(producer, msgs, ts_inits)
            for record in states:
                self._send_state(producer, record, None)
            t_done = time.time_ns()
            group = consumer.consumer_group_metadata()
            waiting = time.monotonic()
            _bounded(lambda: _retrying(lambda: producer.send_offsets_to_transaction(offsets, group, 30)))
            _retrying(lambda: producer.commit_transaction(30))
            TRANSACTION_SECONDS.labels("worker").observe(time.monotonic() - waiting)
            TRANSACTIONS.labels("worker", "committed").inc()
        except KafkaException as ex:
            # produce() on a producer in a fatal state (fenced) raises _FATAL, not flagged fatal
            fatal = ex.args[0].fatal() or ex.args[0].code() == KafkaError._FATAL
            timeout = TRANSACTION_TIMEOUT_MS / 1000
            if fatal and not _timed_out_by_broker(ex.args[0], begun, waiting, timeout):
                log.exception("worker.batch_failed", worker=self.name)  # fenced by another process
                raise
            log.warning("worker.batch_aborted", worker=self.name, reason=ex.args[0].str(), messages=len(msgs))
            self.processed, self.candles, self.feeds = counts
            TRANSACTIONS.labels("worker", "aborted").inc()
            producers[which] = self._undo(consumer, producer, self._txn_ids[which])
            return
        except Exception:
            log.exception("worker.batch_failed", worker=self.name)
            producer.abort_transaction(30)
            raise
        self.batches += 1
        self._aborts_in_a_row = 0
        if self.trace_file is not None:
            self._trace.append(
                {"poll": t_poll, "got": t_got, "done": t_done, "commit": time.time_ns(), "ts_init": ts_inits}
                | {"messages": len(msgs)}
            )

    def _undo(self, consumer: Consumer, producer: Producer, transactional_id: str) -> Producer:
        """Exactly once, a transaction the broker could not finish: what a restart would do, in process.
        The producer is replaced by a new one under the same id (its ``init_transactions`` aborts what
        the old one left open; reusing the old one after an abort with messages in flight failed its
        next transaction in librdkafka 2.16, "skipped sequence numbers" or an erroneous state), and the
        worker goes back to the last committed transaction (:meth:`_rewind`). The new producer."""
        self.aborted += 1
        self._aborts_in_a_row += 1
        if self._aborts_in_a_row > 30:
            raise WorkerError(f"{self._aborts_in_a_row - 1} transactions in a row could not be committed")
        try:
            producer.abort_transaction(10)
        except KafkaException as ex:  # the new producer aborts it in any case
            log.warning("worker.abort_failed", worker=self.name, reason=ex.args[0].str())
        producer.purge()
        time.sleep(min(0.1 * 2 ** (self._aborts_in_a_row - 1), 5.0))  # a failover takes seconds
        fresh = self._producer(transactional_id)
        self._rewind(consumer)
        return fresh

    def _rewind(self, consumer: Consumer) -> None:
        """Exactly once, after an aborted transaction: the assigned partitions' markets back to their
        committed state and the consumer back to the committed offsets, as after a restart."""
        parts = list(self.assigned)
        self._forget(parts)
        self._restore(parts)
        inputs = [TopicPartition(self.prefix + t, p) for t in INPUTS for p in parts]
        for tp in _retrying(lambda: consumer.committed(inputs, timeout=30)):
            consumer.seek(
                TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
            )
        log.info("worker.rewound", worker=self.name, partitions=parts)

    def _process_at_least_once(self, msgs: list[Message], t_poll: int) -> None:
        """Outputs produced at once; the batch's state follows once they are all delivered, and its
        offsets once the state is (:meth:`_advance`, in batch order); the loop never waits for them."""
        producer = self._producer_alo
        assert producer is not None
        t_got = time.time_ns()
        pending = self._current = _Pending(self._delivery_errors)
        ts_inits: list[int] = []
        pending.states, pending.offsets = self._process_batch(producer, msgs, ts_inits)
        pending.trace = {"poll": t_poll, "got": t_got, "done": time.time_ns(), "ts_init": ts_inits}
        pending.trace["messages"] = len(msgs)
        self._current = None
        self._pending.append(pending)
        self.batches += 1
        while len(self._pending) > 1_000:  # the broker is slow: hold new batches until it catches up
            producer.poll(0.05)
            self._advance()
        self._advance()

    def _advance(self) -> None:
        """At least once: serve delivery reports; write the state of each batch whose outputs are all
        in, then commit the offsets of each whose state is, oldest first."""
        producer = self._producer_alo
        if producer is None:
            return
        producer.poll(0)
        if self._delivery_errors:
            errors = list(self._delivery_errors)  # the list the pending batches append to: kept
            self._delivery_errors.clear()
            raise WorkerError(f"{len(errors)} outputs not delivered, first: {errors[0]}")
        for batch in self._pending:  # states go out in batch order, as soon as their outputs are in
            if batch.outputs_left:
                break
            if not batch.state_sent:
                batch.state_sent = True
                batch.state_left = len(batch.states)
                for record in batch.states:
                    self._send_state(producer, record, batch.ack_state)
        while self._pending and self._pending[0].state_sent and not self._pending[0].state_left:
            head = self._pending.popleft()  # offsets in batch order, once the state is in
            if head.offsets and self._consumer is not None:
                self._consumer.commit(offsets=head.offsets, asynchronous=True)
            if self.trace_file is not None:
                self._trace.append(head.trace | {"commit": time.time_ns()})

    def _drain(self, timeout: float = 30.0) -> None:
        """At least once: until every pending batch's state and offsets are written."""
        producer = self._producer_alo
        deadline = time.monotonic() + timeout
        while producer is not None and self._pending:
            if time.monotonic() > deadline:
                raise WorkerError(f"{len(self._pending)} batches not delivered after {timeout:.0f} s")
            producer.poll(0.01)
            self._advance()

    def _process_batch(
        self, producer: Producer, msgs: list[Message], ts_inits: list[int]
    ) -> tuple[list[_StateRecord], list[TopicPartition]]:
        """Process a batch partition by partition, producing its outputs; the touched markets' state
        records and the input offsets to commit, both for the caller to write as its guarantee says."""
        states: list[_StateRecord] = []
        offsets: list[TopicPartition] = []
        for p, part in _by_partition(msgs).items():
            states += self._states(self._process_partition(producer, p, part, ts_inits), p)
            offsets += [TopicPartition(t, p, o) for t, o in _next_offsets(part).items()]
        return states, offsets

    def _states(self, touched: list[str], partition: int) -> list[_StateRecord]:
        """The touched markets' state records, each carrying the input offsets it includes."""
        out = []
        for key in touched:
            self._partition_of[key] = partition
            headers: Headers = [(_OFFSETS_HEADER, orjson.dumps(self._offsets.get(key, {})))]
            out.append((key, self.pipelines.state(key), headers, partition))
        return out

    def _send_state(self, producer: Producer, record: _StateRecord, on_delivery: Any) -> None:
        key, blob, headers, partition = record
        self._produce(producer, STATE_TOPIC, blob, key.encode(), headers, on_delivery, partition=partition)

    def _process_partition(
        self, producer: Producer, partition: int, msgs: list[Message], ts_inits: list[int]
    ) -> list[str]:
        """Handle one partition's messages, run by run of one topic; the market keys touched."""
        touched: list[str] = []
        start = 0
        for i in range(1, len(msgs) + 1):
            if i == len(msgs) or msgs[i].topic() != msgs[start].topic():
                run = msgs[start:i]
                topic = (run[0].topic() or "").removeprefix(self.prefix)
                if (topic, partition) in self._skip:
                    run = self._unseen(topic, partition, run)
                if run:
                    if topic == TRADES.name:  # trades, and the source's watermarks among them
                        for marks, seg in runs_of_trades(run, Message.headers):
                            if marks:
                                touched += self._watermarks(producer, partition, seg)
                            else:
                                touched += self._trades(producer, partition, seg, ts_inits)
                    elif topic == ACCOUNT_FEED.name:
                        touched += self._feeds(producer, partition, run)
                    else:
                        touched += self._candles(producer, partition, run)
                    self._note_offsets(topic, run)
                start = i
        return list(dict.fromkeys(touched))

    def _unseen(self, topic: str, partition: int, msgs: list[Message]) -> list[Message]:
        """The messages a restored market's state does not hold yet (at-least-once: its state may be
        ahead of the group's committed offsets; exactly once it never is)."""
        first = _offset(msgs[0])
        skip = {k: o for k, o in self._skip[(topic, partition)].items() if o > first}
        if not skip:  # caught up: nothing to skip in this partition any more
            del self._skip[(topic, partition)]
            return msgs
        self._skip[(topic, partition)] = skip
        keep = [m for m in msgs if _offset(m) >= skip.get((m.key() or b"").decode(), 0)]
        log.info("worker.skipped", topic=topic, partition=partition, messages=len(msgs) - len(keep))
        return keep

    def _note_offsets(self, topic: str, msgs: list[Message]) -> None:
        last: dict[bytes, int] = {}
        for m in msgs:
            last[m.key() or b""] = _offset(m)
        for key, offset in last.items():
            self._offsets.setdefault(key.decode("utf-8", "replace"), {})[topic] = offset + 1

    def _trades(
        self, producer: Producer, partition: int, msgs: list[Message], ts_inits: list[int]
    ) -> list[str]:
        batch, _, undecodable = decode_trades([m.value() for m in msgs])
        decoded = (
            [m for i, m in enumerate(msgs) if i not in {j for j, _ in undecodable}] if undecodable else msgs
        )
        rows, invalid = check_trades(batch, self.pipelines.known_markets)
        bad = [(msgs[i], r) for i, r in undecodable] + [(decoded[i], r) for i, r in invalid]
        if invalid:
            batch = batch.take(rows)
        for m, reason in bad:
            self._dead_letter(producer, TRADES.name, partition, m, reason)
        if len(batch):
            ts_inits.append(int(batch.ts_init))
        touched = self._run(producer, lambda: self.pipelines.ingest_trades(batch))
        self.processed += len(batch)
        return touched

    def _candles(self, producer: Producer, partition: int, msgs: list[Message]) -> list[str]:
        candles: list[Candle] = []
        known = self.pipelines.known_markets
        for m in msgs:
            try:
                candle: Candle = decode(EXCHANGE_CANDLES, m.value(), m.headers())  # type: ignore[assignment]
            except DecodeError as ex:
                self._dead_letter(producer, EXCHANGE_CANDLES.name, partition, m, str(ex))
                continue
            if known is not None and candle.key not in known:
                self._dead_letter(
                    producer, EXCHANGE_CANDLES.name, partition, m, f"unknown market {candle.key}"
                )
                continue
            candles.append(candle)
        self.candles += len(candles)
        return self._run(producer, lambda: self.pipelines.ingest_candles(candles))

    def _watermarks(self, producer: Producer, partition: int, msgs: list[Message]) -> list[str]:
        """A source's in-line records, in order: watermarks, and funding times."""
        steps: list[Inline] = []
        for m in msgs:
            try:
                steps.append(decode_inline(m.value(), m.headers()))
            except DecodeError as ex:
                self._dead_letter(producer, TRADES.name, partition, m, str(ex))
        return self._run(producer, lambda: self.pipelines.ingest_inline(steps))

    def _feeds(self, producer: Producer, partition: int, msgs: list[Message]) -> list[str]:
        feeds: list[AccountFeed] = []
        for m in msgs:
            try:
                feeds.append(decode(ACCOUNT_FEED, m.value(), m.headers()))  # type: ignore[arg-type]
            except DecodeError as ex:
                self._dead_letter(producer, ACCOUNT_FEED.name, partition, m, str(ex))
        self.feeds += len(feeds)
        return self._run(producer, lambda: self.pipelines.ingest_feed(feeds))

    def _run(self, producer: Producer, ingest: Any) -> list[str]:
        """Run the pipelines and produce what they publish; the market keys they touched."""
        self._out.clear()
        touched: list[str] = ingest()
        for topic, event in self._out:
            if not isinstance(event, TradeBatch):
                self._send(producer, topic, event)
        self._out.clear()
        return touched

    def _dead_letter(self, producer: Producer, topic: str, partition: int, m: Message, reason: str) -> None:
        offset, ts = _offset(m), m.timestamp()[1] * 10**6
        letter = dead_letter(topic, partition, offset, m.key(), m.value(), reason, ts)
        self._send(producer, dlq_topic(topic), letter)
        log.warning("dead letter", topic=topic, partition=partition, offset=offset, reason=reason)

    def _send(self, producer: Producer, topic: str, event: Event) -> None:
        t = by_name(topic)
        key, value = encode(t, event)
        headers = self._headers.get(topic)
        if headers is None:
            headers = self._headers[topic] = headers_for(t.model)
        pending = self._current
        if pending is not None:
            pending.outputs_left += 1
        self._produce(producer, topic, value, key.encode(), headers, pending and pending.ack_output)

    def _produce(
        self,
        producer: Producer,
        topic: str,
        value: bytes,
        key: bytes,
        headers: Any,
        on_delivery: Any,  # at least once: the batch's counter; exactly once None (the commit reports)
        partition: int = -1,
    ) -> None:
        while True:
            try:
                producer.produce(
                    self.prefix + topic,
                    value,
                    key,
                    partition=partition,
                    headers=headers,
                    on_delivery=on_delivery,
                )
                return
            except BufferError:
                producer.poll(0.05)

    def _trace_gc(self, phase: str, info: dict[str, int]) -> None:
        """Garbage collections in the trace: a full one can pause the loop for tens of ms."""
        if phase == "start":
            self._gc_start = time.time_ns()
        else:
            self._trace.append(
                {"gc": info["generation"], "at": self._gc_start, "ns": time.time_ns() - self._gc_start}
            )

    def _write_trace(self) -> None:
        if self.trace_file is None:
            return
        if self._trace_gc in gc.callbacks:
            gc.callbacks.remove(self._trace_gc)
        with self.trace_file.open("wb") as f:
            for row in self._trace:
                f.write(orjson.dumps(row) + b"\n")


@dataclass
class _Pending:
    """At least once: one batch on its way out. Its outputs are produced as the stages publish them;
    its state records (key, blob, headers, partition) once every output is acknowledged; its offsets
    once every state record is."""

    errors: list[str]  # the worker's: a failed delivery stops it
    outputs_left: int = 0
    states: list[_StateRecord] = field(default_factory=list)
    state_sent: bool = False
    state_left: int = 0
    offsets: list[TopicPartition] = field(default_factory=list)
    trace: dict[str, Any] = field(default_factory=dict)

    def ack_output(self, err: KafkaError | None, msg: Message) -> None:
        self.outputs_left -= 1
        self._failed(err, msg)

    def ack_state(self, err: KafkaError | None, msg: Message) -> None:
        self.state_left -= 1
        self._failed(err, msg)

    def _failed(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.errors.append(f"{msg.topic()}: {err.str()}")


class _Collector:
    """Full garbage collections when the worker chooses, not whenever the allocator decides.

    Measured on the loaded machine: a full collection of the worker's heap takes 100-280 ms (the
    benchmark's trace: one at start-up, before the stream; the stages alone in process: one per ~70k
    trades). Inside the benchmark's 14 s streams none happened either way, so its figures do not
    show this; a long run would take such a pause whenever the allocator decides. So the heap as it
    is after start-up is frozen (never scanned again), automatic full collections are off, and the
    worker runs one itself: when idle at least a minute after the last, and in any case every ten
    minutes (unfreeze, collect, freeze; logged with its pause). Young collections stay automatic.
    The process's previous settings come back on close (tests run workers in-process)."""

    IDLE_AFTER = 60.0
    EVERY = 600.0

    def __init__(self) -> None:
        self.threshold = gc.get_threshold()
        gc.collect()
        gc.freeze()
        gc.set_threshold(self.threshold[0], self.threshold[1], 1_000_000_000)  # no automatic full one
        self.last = time.monotonic()

    def step(self, idle: bool) -> None:
        since = time.monotonic() - self.last
        if since >= self.EVERY or (idle and since >= self.IDLE_AFTER):
            t0 = time.perf_counter()
            gc.unfreeze()
            freed = gc.collect()
            gc.freeze()
            self.last = time.monotonic()
            log.info("worker.gc", freed=freed, pause_ms=round((time.perf_counter() - t0) * 1e3, 1), idle=idle)

    def close(self) -> None:
        gc.unfreeze()
        gc.set_threshold(*self.threshold)


def _timed_out_by_broker(error: KafkaError, begun: float, waiting: float, timeout: float) -> bool:
    """Whether a fatal ``_FENCED`` is the coordinator aborting the transaction for its timeout while
    the worker waited for the broker, not another process taking the transactional id.

    A transaction the broker cannot end in ``transaction.timeout.ms`` (its coordinator died, and the
    new one loaded the transaction state only after the timeout) is aborted by the coordinator with
    a bump of the producer's epoch (KAFKA-6119); the retried EndTxn (or AddOffsetsToTxn) then gets
    ``PRODUCER_FENCED``, which librdkafka 2.16 (no KIP-588 ``TRANSACTION_TIMED_OUT``, no KIP-890
    transactions v2) makes a fatal ``_FENCED``, as for a real fence. Kafka Streams treats a fenced
    producer as its tasks migrated and carries on; the worker likewise undoes the batch and goes on
    with a new producer, but only when the timeout passed while it was waiting for the broker
    (``send_offsets_to_transaction``/``commit_transaction`` called before it, failed after it): a
    zombie fenced by its restarted successor, paused before its commit, still stops, so it never
    fences the successor back. ``begun``/``waiting``: monotonic times of ``begin_transaction`` and of
    the first call to the broker; ``timeout``: the transaction's, in seconds."""
    if error.code() != KafkaError._FENCED:
        return False
    return waiting - begun < timeout <= time.monotonic() - begun


#: s: how long send_offsets_to_transaction may take before the worker gives its producer up (see
#: :func:`_bounded`); beyond the transaction's timeout the broker has aborted the transaction anyway.
SEND_OFFSETS_BOUND = 30.0


def _bounded(call: Callable[[], None]) -> None:
    """``call()`` (send_offsets_to_transaction), given at most SEND_OFFSETS_BOUND seconds.

    librdkafka (2.16) may block in it for as long as the group coordinator's dead broker stays out
    of the metadata, whatever its timeout (issues 5456 and 5511; the producer's idle connections
    closing usually ends the wait, see :meth:`Worker._producer`). A blocked call cannot be cancelled,
    so it runs on a thread of its own; when the bound passes, an abortable error sends the batch to
    :meth:`Worker._undo`, whose new producer under the same id fences this one (the thread, holding
    it, ends when librdkafka returns)."""
    done = threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as ex:  # handed to the worker's thread
            failed.append(ex)
        finally:
            done.set()

    threading.Thread(target=run, name="send-offsets", daemon=True).start()
    if not done.wait(SEND_OFFSETS_BOUND):
        reason = f"send_offsets_to_transaction did not return in {SEND_OFFSETS_BOUND:.0f} s"
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, reason, txn_requires_abort=True))
    if failed:
        raise failed[0]


def _retrying(call: Callable[[], _T], timeout: float = 120.0) -> _T:
    """``call()``, again while it fails with a retriable error (a coordinator moving or loading)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except KafkaException as ex:
            if not ex.args[0].retriable() or time.monotonic() > deadline:
                raise
            log.warning("worker.retry", reason=ex.args[0].str())
            time.sleep(0.1)


def _consume(consumer: Consumer, n: int, timeout: float) -> list[Message]:
    """Up to ``n`` messages, returning as soon as there is one (``consume(n, timeout)`` would wait
    the whole timeout for ``n``): the first by ``poll``, then whatever is already fetched."""
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(n - 1, 0)] if n > 1 else [first]


def _by_partition(msgs: list[Message]) -> dict[int, list[Message]]:
    by_part: dict[int, list[Message]] = defaultdict(list)
    for m in msgs:
        by_part[m.partition()].append(m)  # type: ignore[index]
    return by_part


def _next_offsets(msgs: list[Message]) -> dict[str, int]:
    """{topic: the offset after its last message} (a partition's messages come in offset order)."""
    return {m.topic(): _offset(m) + 1 for m in msgs}  # type: ignore[misc]


def _offset(m: Message) -> int:
    offset = m.offset()
    return -1 if offset is None else offset
