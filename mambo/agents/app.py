"""The pipeline as a Faust app (faust-streaming): one agent running each market's fused stages, one
running each account's stage.

Start here: :class:`FaustPipeline` (``await FaustPipeline(...).run()``; ``mambo worker --runtime
faust`` runs one). Why one agent and not one per stage: :mod:`mambo.agents`.

Each agent takes its topic (md.trades; account.feed) in batches (``Stream.take_events``), per input
partition: decodes them with the Kafka codec (undecodable or invalid messages become dead letters on
``<topic>.dlq`` with topic, partition, offset and reason), runs them through
:class:`~mambo.streams.markets.MarketPipelines` (the same stages as the native worker and the
in-process reference) and sends every event the stages publish to its registry topic. Each touched
key's state (a market's pickled stages, keyed ``exchange:symbol``; an account's, ``account/<id>``)
goes to the Faust table ``state`` and to its changelog ``<app id>-state-changelog``, in the partition
of the input;
Faust replays that changelog into the table when a partition is assigned (recovery), and a market not
held in memory is restored from the table before its trades run.

The processing guarantee is Faust's ``processing_guarantee`` (``kafka.processing_guarantee``):

- ``exactly_once``: Faust keeps one transactional producer per input partition (transactional id
  ``<app id>-<topic group>-<partition>``) and commits each one's consumed offsets in its transaction.
  A batch's outputs, dead letters and changelog records go through the transactional producer *of the
  batch's input partition*, so they are in one transaction with the batch's offsets. The agent sends
  them itself (``_publish``) because Faust's ``Topic.send`` routes a message to the transaction of
  its *destination* partition (right only for co-partitioned topics of equal partition counts; our
  single-partition topics, equity and the dead-letter topics, would land on partition 0's producer,
  which may be another worker's) and attaches it to the stream's current event, and
  ``Table.__setitem__`` buffers the changelog write (``send_soon``), which a commit does not wait for.
  Faust runs transactions only when ``app.in_worker`` is set (``faust.Worker`` sets it; we set it
  too, and :meth:`FaustPipeline.run` checks).
- ``at_least_once``: the same messages through Faust's plain producer; Faust flushes it before each
  offset commit, so a crash can repeat a batch's outputs (the same deterministic event ids, which the
  ClickHouse sink collapses), never lose them.

Both: no commit runs while a batch is half sent (Faust computes the offsets to commit before it takes
a transaction's lock, so a commit falling there would take the outputs sent so far without their
offsets): the agent holds Faust's own one-commit-at-a-time future (``Consumer._commit_fut``) from its
first send to its acks, and commits itself after a batch when one is due. Each input partition is
processed in log order, each record once, whatever order Faust delivers it in
(:mod:`mambo.agents.order`): a record delivered again is skipped, one delivered ahead of an earlier one
is dropped and its partition sought back (Faust does both around its recovery's seek to the committed
offsets). A batch that cannot be sent stops the process at once, like a SIGKILL (:func:`_fail_stop`).

Known costs, measured on the shared 2-core machine: ~2,300 trades/s per worker (Faust passes every
message through its asyncio stream machinery one at a time; ``take_events`` only batches the agent's
side), and a restart or a partition moving in takes 10 s or more: Faust's changelog recovery reads to
the high watermark, which under read_committed ends at a transaction marker the consumer never
returns, so it finishes only when two 5 s polls come back empty (faust/tables/recovery.py).

Faust's consumer needs ``cramjam`` to read our producers' lz4 batches (without it its consumer thread
crashes and the app idles: :meth:`FaustPipeline.run` raises instead).
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import faust
import structlog
from confluent_kafka import Consumer, TopicPartition
from faust.types import TP

from mambo.agents.order import InputOrder, Verdict
from mambo.core.market import Market
from mambo.core.stages import Account, EngineConfig, Stage
from mambo.metrics import ASSIGNED_PARTITIONS, REBALANCES, TRANSACTION_SECONDS, TRANSACTIONS
from mambo.notify import notifications
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import AccountFeed, ControlCommand
from mambo.schemas.topics import ACCOUNT_FEED, TRADES, by_name, dlq_topic
from mambo.streams.kafka.codec import (
    DecodeError,
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
from mambo.streams.kafka.topology import STATE_MAX_BYTES
from mambo.streams.markets import MarketPipelines

if TYPE_CHECKING:
    from mambo.settings import MamboSettings

__all__ = ["GUARANTEES", "FaustPipeline", "faust_worker"]

log = structlog.get_logger("mambo.agents")

GUARANTEES = ("exactly_once", "at_least_once")
APP_ID = "mambo-faust"
#: One outgoing message: topic (unprefixed), key, value, headers, partition (None: by key).
Outgoing = tuple[str, bytes, bytes, list[tuple[str, bytes]], int | None]
_END = 2**63 - 1  # past any offset


class FaustPipeline:
    """A Faust app running every stage per market on the md.trades partitions it is assigned.

    ``await run(stop, idle_exit=...)`` starts the app, processes until ``stop`` is set or the input is
    drained and idle for ``idle_exit`` s, and stops it. ``processed``, ``dead`` and ``batches`` count
    what this process did.
    """

    def __init__(
        self,
        bootstrap: str,
        config: EngineConfig | Sequence[Account],
        datadir: Path,
        *,
        guarantee: str = "exactly_once",
        prefix: str = "",
        partitions: int = 6,
        markets: Mapping[str, Market] | None = None,
        known_markets: Sequence[str] | None = None,
        batch_size: int = 5_000,
        within: float = 0.05,
        name: str = "1",
        commit_interval: float = 0.5,
        extra: Callable[[str], Stage] | None = None,
    ) -> None:
        if guarantee not in GUARANTEES:
            raise ValueError(f"processing guarantee must be one of {', '.join(GUARANTEES)}: {guarantee!r}")
        self.prefix = prefix
        self.bootstrap = bootstrap
        self.batch_size = batch_size
        self.within = within
        self.processed = 0  # trades
        self.feeds = 0  # account feed messages
        self.dead = 0
        self.batches = 0
        self.last_activity = time.monotonic()
        self._out: list[tuple[str, Any]] = []
        # state key (market, or account/<id>) -> its input topic and partition (= its changelog's)
        self._partition_of: dict[str, tuple[str, int]] = {}
        self.commit_interval = commit_interval
        self.redelivered = 0  # records Faust delivered again after they were processed
        self.dropped = 0  # records Faust delivered out of log order (sought back and delivered again)
        self._orders: dict[str, InputOrder] = {}  # by input topic (prefixed), filled below
        self._reader: Consumer | None = None  # asks the broker what InputOrder needs
        self._last_commit = time.monotonic()
        self._headers: dict[str, list[tuple[str, bytes]]] = {}
        self.pipelines = MarketPipelines(config, self._collect, markets, known_markets, extra=extra)
        self.app = faust.App(
            prefix + APP_ID,
            broker=f"kafka://{bootstrap}",
            store="memory://",
            processing_guarantee=guarantee,
            topic_partitions=partitions,
            topic_replication_factor=1,
            table_standby_replicas=0,
            datadir=str(datadir),
            web_enabled=False,
            consumer_auto_offset_reset="earliest",
            # static membership (KIP-345): a worker restarted under its name takes its place in the
            # group at once, without a rebalance; one that stays away leaves it after the session
            consumer_group_instance_id=f"{prefix}{APP_ID}-{name}",
            broker_session_timeout=10.0,
            # a transaction per input partition is committed this often: under exactly_once, what
            # read_committed consumers see lags by up to this (Faust's default is 2.8 s)
            broker_commit_interval=commit_interval,
            broker_heartbeat_interval=1.0,
            producer_max_request_size=STATE_MAX_BYTES,
        )
        # what faust.Worker.on_start does, and before anything reads the cached ``app.in_transaction``:
        # Faust runs transactions only inside a worker (an app merely started has none, whatever its
        # processing_guarantee: the cause of the first attempt's lost and doubled orders)
        self.app.in_worker = True
        self.source = self.app.topic(
            prefix + TRADES.name, partitions=partitions, key_serializer="raw", value_serializer="raw"
        )
        # the account stages' input: the market stages' feed, keyed by account (mambo.core.stages)
        self.feed = self.app.topic(
            prefix + ACCOUNT_FEED.name, partitions=partitions, key_serializer="raw", value_serializer="raw"
        )
        #: input topic (prefixed) -> its registry name
        self._inputs = {
            self.source.get_topic_name(): TRADES.name,
            self.feed.get_topic_name(): ACCOUNT_FEED.name,
        }
        for topic in self._inputs:
            self._orders[topic] = InputOrder(
                functools.partial(self._start_offset, topic), functools.partial(self._first_at, topic)
            )
        self.table = self.app.Table(
            "state",
            partitions=partitions,
            key_type=bytes,
            value_type=bytes,
            # an account's state can pass the broker's default 1 MB (the steps it waits with)
            extra_topic_configs={"max.message.bytes": str(STATE_MAX_BYTES)},
        )
        self.app.agent(self.source, name=prefix + "mambo-markets")(self._agent)
        self.app.agent(self.feed, name=prefix + "mambo-accounts")(self._agent)
        self.app.sensors.add(_CommitSensor())
        self.app.on_partitions_revoked.connect(self._on_revoked)
        self.app.on_partitions_assigned.connect(self._on_assigned)

    def _collect(self, topic: str, event: Any) -> None:
        self._out.append((topic, event))

    @property
    def transactional(self) -> bool:
        return bool(self.app.in_transaction)

    # --- rebalance -----------------------------------------------------------------------------

    async def _on_revoked(self, sender: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        """Forget the in-memory stages of revoked partitions' markets; the table keeps their last
        state, which is restored if the partition stays here (Faust revokes everything at a
        rebalance and does not replay a partition it gives back to the same worker)."""
        revoked = args[0]  # the revoked set of TP
        gone = {(tp.topic, tp.partition) for tp in revoked if tp.topic in self._inputs}
        keys = [k for k, tp in self._partition_of.items() if tp in gone]
        self.pipelines.drop(keys)
        for topic, order in self._orders.items():  # what it processed is committed by now
            order.revoke(p for t, p in gone if t == topic)
        REBALANCES.labels("faust", "revoked").inc()
        log.info("faust.revoked", partitions=sorted(gone), keys=len(keys))

    async def _on_assigned(self, sender: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        """Drop the table's state of markets whose partition went elsewhere (if it comes back, Faust
        replays its changelog, which then holds the other worker's later state)."""
        assigned = args[0]  # the whole new assignment (set of TP)
        mine = {(tp.topic, tp.partition) for tp in assigned if tp.topic in self._inputs}
        for k in [k for k, tp in self._partition_of.items() if tp not in mine]:
            del self._partition_of[k]
            self.table.data.pop(k.encode(), None)
        REBALANCES.labels("faust", "assigned").inc()
        ASSIGNED_PARTITIONS.labels("faust").set(len(mine))
        log.info("faust.assigned", partitions=sorted(mine))

    # --- the agent -----------------------------------------------------------------------------

    async def _agent(self, stream: faust.types.StreamT[Any]) -> None:
        assert isinstance(stream, faust.Stream)  # take_events is on the class, not the protocol
        consumer = self.app.consumer
        async for events in stream.take_events(self.batch_size, within=self.within):
            try:
                by_part = await self._admit(events)
            except Exception as ex:  # the broker could not say where a partition stands
                _fail_stop(ex)
            # No Faust commit may run while a batch is half sent: Faust works out the offsets to
            # commit before it takes a transaction's lock, so it would commit the outputs sent so far
            # without their offsets. Its own one-commit-at-a-time future holds them off: a commit
            # that finds it set waits for it and then does nothing.
            await consumer.maybe_wait_for_commit_to_finish()  # type: ignore[attr-defined]  # on the class
            guard = consumer._commit_fut = asyncio.get_running_loop().create_future()  # type: ignore[attr-defined]
            try:
                topic = events[0].message.topic if events else ""
                for partition, part in by_part.items():
                    await self._publish(topic, partition, self._process(topic, partition, part))
                for ev in events:  # acked here, inside the guard (take_events' own acks are then no-ops)
                    await stream.ack(ev)
            except Exception as ex:
                _fail_stop(ex)
            finally:
                consumer._commit_fut = None  # type: ignore[attr-defined]
                guard.set_result(None)
            self.batches += 1
            self.last_activity = now = time.monotonic()
            if now - self._last_commit > self.commit_interval:  # busy: commits held off above come here
                self._last_commit = now
                await consumer.commit()

    async def _admit(self, events: Sequence[faust.types.EventT]) -> dict[int, list[faust.types.EventT]]:
        """A batch's records to process, per input partition, in log order (:mod:`mambo.agents.order`).

        A record dropped as out of order is marked acknowledged without telling the consumer, so no
        commit counts it, and its partition is sought back to the record it must resume at (which
        also resets Faust's read-offset filter); Faust's gaps from there on go too, since they were
        taken from the stale records. A real gap is handed to Faust as its own would be."""
        consumer = self.app.consumer
        if not events:
            return {}
        records = [(ev.message.partition, ev.message.offset) for ev in events]
        topic = events[0].message.topic  # one agent, one input topic
        assigned = {tp.partition for tp in consumer.assignment() if tp.topic == topic}
        verdicts, reseek, gaps = await asyncio.to_thread(self._orders[topic].admit, records, assigned)
        by_part: dict[int, list[faust.types.EventT]] = defaultdict(list)
        dropped: Counter[int] = Counter()
        for ev, verdict in zip(events, verdicts, strict=True):
            if verdict is Verdict.PROCESS:
                by_part[ev.message.partition].append(ev)
            elif verdict is Verdict.REPEAT:
                self.redelivered += 1
            else:
                ev.message.acked = True
                dropped[ev.message.partition] += 1
        self.dropped += dropped.total()
        for p, first, last in gaps:
            await self._faust_add_gap(TP(topic, p), first, last)
        for p, offset in reseek.items():
            tp = TP(topic, p)
            consumer._gap[tp].chop(offset, _END)  # type: ignore[attr-defined]  # Faust's, no public API
            await consumer.seek_wait({tp: offset})
            log.warning("faust.out_of_order", partition=p, resume_at=offset, dropped=dropped[p])
        return by_part

    def _process(self, topic: str, partition: int, part: list[faust.types.EventT]) -> list[Outgoing]:
        """The messages one partition's slice of a batch produces (outputs, dead letters, state)."""
        self._out.clear()
        name = self._inputs[topic]
        try:
            if name == TRADES.name:
                touched = self._run_stages(partition, part)
            else:
                touched = self._run_accounts(partition, part)
        except Exception as ex:  # a Faust agent that raises still acks: dead-letter the slice instead
            log.exception("faust.batch_failed", topic=name, partition=partition)
            self._out.clear()
            # the slice's keys go back to their last good state (the table's) before the next batch
            self.pipelines.drop([k for k, tp in self._partition_of.items() if tp == (topic, partition)])
            for ev in part:
                self._dead(name, partition, ev, f"processing failed: {type(ex).__name__}: {ex}")
            touched = []
        out = [self._encode(topic, event) for topic, event in self._out if not isinstance(event, TradeBatch)]
        self._out.clear()
        changelog = self.table.changelog_topic.get_topic_name()
        for key in touched:
            blob = self.pipelines.state(key)
            self.table.data[key.encode()] = blob
            self._partition_of[key] = (topic, partition)
            out.append((changelog, key.encode(), blob, [], partition))
        return out

    def _run_stages(self, partition: int, part: list[faust.types.EventT]) -> list[str]:
        """md.trades: trades, and the source's watermarks among them, run by run in log order."""
        touched: list[str] = []
        for marks, seg in runs_of_trades(part, lambda ev: ev.message.headers):
            touched += self._run_marks(partition, seg) if marks else self._run_trades(partition, seg)
        return list(dict.fromkeys(touched))

    def _run_marks(self, partition: int, part: list[faust.types.EventT]) -> list[str]:
        """A source's in-line records, in order: watermarks, and funding times."""
        steps: list[Inline] = []
        for ev in part:
            try:
                steps.append(decode_inline(ev.message.value, ev.message.headers))
            except DecodeError as ex:
                self._dead(TRADES.name, partition, ev, str(ex))
        keys = [
            s[0] if isinstance(s, tuple) else s.market if isinstance(s, ControlCommand) else s.key
            for s in steps
        ]
        self._held(keys, partition)
        return self.pipelines.ingest_inline(steps)

    def _run_trades(self, partition: int, part: list[faust.types.EventT]) -> list[str]:
        batch, _, undecodable = decode_trades([ev.message.value for ev in part])
        skip = {j for j, _ in undecodable}
        decoded = [ev for i, ev in enumerate(part) if i not in skip] if undecodable else part
        rows, invalid = check_trades(batch, self.pipelines.known_markets)
        for i, reason in undecodable:
            self._dead(TRADES.name, partition, part[i], reason)
        for i, reason in invalid:
            self._dead(TRADES.name, partition, decoded[i], reason)
        if invalid:
            batch = batch.take(rows)
        self._held(batch.keys, partition)
        touched = self.pipelines.ingest_trades(batch)
        self.processed += len(batch)
        return touched

    def _run_accounts(self, partition: int, part: list[faust.types.EventT]) -> list[str]:
        feeds: list[AccountFeed] = []
        for ev in part:
            try:
                feeds.append(decode(ACCOUNT_FEED, ev.message.value, ev.message.headers))  # type: ignore[arg-type]
            except DecodeError as ex:
                self._dead(ACCOUNT_FEED.name, partition, ev, str(ex))
        self._held([f.stream_key for f in feeds], partition)
        touched = self.pipelines.ingest_feed(feeds)
        self.feeds += len(feeds)
        return touched

    def _held(self, keys: Iterable[str], partition: int) -> None:
        """A key (market or account) not in memory: from the table (recovered from the changelog)."""
        held = set(self.pipelines.keys)
        for key in dict.fromkeys(keys):
            if key not in held:
                blob = self.table.data.get(key.encode())
                if blob is not None:
                    self.pipelines.restore(key, blob)
                    log.info("faust.restored", key=key, partition=partition)

    def _dead(self, topic: str, partition: int, ev: faust.types.EventT, reason: str) -> None:
        m = ev.message
        ts = int(m.timestamp * 1e9)
        letter = dead_letter(topic, partition, m.offset, m.key, m.value, reason, ts)
        self._out.append((dlq_topic(topic), letter))
        self.dead += 1
        log.warning("dead letter", topic=topic, partition=partition, offset=m.offset, reason=reason)

    def _encode(self, topic: str, event: Any) -> Outgoing:
        t = by_name(topic)
        key, value = encode(t, event)
        headers = self._headers.get(topic)
        if headers is None:
            headers = self._headers[topic] = [(k, v) for k, v in headers_for(t.model) if isinstance(v, bytes)]
        return self.prefix + topic, key.encode(), value, headers, None

    async def _publish(self, topic: str, partition: int, out: list[Outgoing]) -> None:
        """Send a partition's batch: in its input partition's transaction (exactly_once, holding that
        transaction's lock throughout) or through the plain producer (at_least_once)."""
        driver = self.app.producer
        if self.transactional:
            group = self.app.assignor.group_for_topic(topic)
            tid = f"{self.app.conf.id}-{group}-{partition}"
            producer = driver._transaction_producers.get(tid)  # type: ignore[attr-defined]
            if producer is None:
                raise RuntimeError(f"no transactional producer {tid} for an assigned partition")
            async with driver._trn_locks[tid]:  # type: ignore[attr-defined]
                for topic, key, value, headers, part in out:
                    await producer.send(topic, value, key=key, partition=part, headers=headers)
        else:
            producer = driver._ensure_producer()  # type: ignore[attr-defined]
            for topic, key, value, headers, part in out:
                await producer.send(topic, value, key=key, partition=part, headers=headers)

    # --- running -------------------------------------------------------------------------------

    def _raise_if_crashed(self) -> None:
        """Faust's consumer thread can crash (an undecodable batch codec, a lost broker) while the
        app object stays up and simply stops consuming: turn that into an error, not an idle exit."""
        consumer = self.app.consumer
        for svc in (self.app, consumer, getattr(consumer, "_thread", None)):
            if svc is not None and svc.crashed:
                raise RuntimeError(f"faust {type(svc).__name__} crashed: {svc.crash_reason!r}")

    def _consumer(self) -> Consumer:
        """A plain consumer beside Faust's, reading as it does (read_committed under exactly_once);
        of the app's group, but never joining it or committing."""
        return Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": self.app.conf.id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed" if self.transactional else "read_uncommitted",
                "log_level": 3,
            }
        )

    def _drained(self) -> bool:
        """Whether the app's group has committed md.trades and the account feed to their ends on
        every partition (an idle exit must not leave input behind: a rebalance or a table recovery
        also looks idle). The feed is written in transactions: its end is its last record's offset
        + 1 (the offsets after it are transaction markers)."""
        c = self._consumer()
        try:
            for topic in self._inputs:
                parts = c.list_topics(topic, timeout=10).topics[topic].partitions
                for tp in c.committed([TopicPartition(topic, p) for p in parts], timeout=10):
                    end = self._end(topic, tp.partition)
                    if end > 0 and tp.offset < end:
                        return False
            return True
        finally:
            c.close()

    def _end(self, topic: str, partition: int) -> int:
        """The offset after the partition's last record that a read_committed consumer sees."""
        reader = self._broker()
        low, high = reader.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        if high <= low or topic == self.source.get_topic_name():  # md.trades: no transactions
            return high
        # transactions back, read to the end in one go (one fetch, not one per record: that took ~25 s
        # a partition): the last record is among them
        reader.assign([TopicPartition(topic, partition, max(low, high - 1000))])
        last = None
        try:
            quiet = time.monotonic() + 1.0  # the end: nothing more for a second, or the position at high
            while time.monotonic() < quiet:
                got = [m.offset() for m in reader.consume(500, 0.1) if m.error() is None]
                if got:
                    last, quiet = got[-1], time.monotonic() + 1.0
                [pos] = reader.position([TopicPartition(topic, partition)])
                if (last is not None and last + 1 >= high) or pos.offset >= high:
                    break
        finally:
            reader.unassign()
        return low if last is None else last + 1

    def _start_offset(self, topic: str, partition: int) -> int:
        """Where the group resumes a partition: its committed offset, else the log start."""
        reader = self._broker()
        tp = TopicPartition(topic, partition)
        [got] = reader.committed([tp], timeout=10)
        return got.offset if got.offset >= 0 else reader.get_watermark_offsets(tp, timeout=10)[0]

    def _first_at(self, topic: str, partition: int, offset: int, wait: float = 10.0) -> int | None:
        """The offset of the first record at or after ``offset`` (None if none came within ``wait`` s)."""
        reader = self._broker()
        reader.assign([TopicPartition(topic, partition, offset)])
        try:
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                m = reader.poll(0.5)
                if m is not None and m.error() is None and m.offset() is not None:
                    return m.offset()
            return None
        finally:
            reader.unassign()

    def _broker(self) -> Consumer:
        """The consumer :class:`InputOrder`'s questions go through (one, kept until :meth:`run` ends)."""
        if self._reader is None:
            self._reader = self._consumer()
        return self._reader

    def _patch_gaps(self) -> None:
        """Faust takes any jump in an input partition's offsets for transaction markers and counts
        the offsets between as acknowledged; a stale record after a seek makes such a jump over
        records not yet processed. For md.trades :meth:`_admit` reports the real gaps instead."""
        consumer = self.app.consumer
        add_gap = self._faust_add_gap = consumer._add_gap  # type: ignore[attr-defined]
        inputs = set(self._inputs)

        async def _add_gap(tp: TP, offset_from: int, offset_to: int) -> None:
            if tp.topic not in inputs:
                await add_gap(tp, offset_from, offset_to)

        consumer._add_gap = _add_gap  # type: ignore[attr-defined]  # on this instance only

    async def run(self, stop: asyncio.Event | None = None, idle_exit: float | None = None) -> None:
        """Start the app, process until ``stop`` is set or the input is drained and nothing arrived
        for ``idle_exit`` s, then stop it (committing what was processed)."""
        stop = stop or asyncio.Event()
        if self.app.in_transaction != (self.app.conf.processing_guarantee.value == "exactly_once"):
            raise RuntimeError("Faust's transactions are not on as the processing guarantee says")
        self._patch_gaps()
        await self.app.start()
        log.info("faust.started", app=self.app.conf.id, guarantee=self.app.conf.processing_guarantee.value)
        try:
            self.last_activity = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.2)
                self._raise_if_crashed()
                if not self.app.consumer.assignment():
                    self.last_activity = time.monotonic()  # idle time counts from assignment
                elif (
                    idle_exit is not None
                    and time.monotonic() - self.last_activity > idle_exit
                    and await asyncio.to_thread(self._drained)
                ):
                    break
        finally:
            await self.app.stop()
            if self._reader is not None:
                self._reader.close()
            log.info(
                "faust.stopped",
                trades=self.processed,
                feeds=self.feeds,
                batches=self.batches,
                dead=self.dead,
                redelivered=self.redelivered,
                dropped=self.dropped,
            )


def _fail_stop(ex: BaseException) -> NoReturn:
    """A batch whose outputs could not be sent (fenced, broker gone, refused), or whose partitions'
    positions the broker could not give: stop this process at once, like a SIGKILL. Raising would
    let Faust ack the batch (an agent's events are acked when it ends) and commit it on the way out;
    dying leaves the open transaction (exactly_once) or the offsets (at_least_once) uncommitted, and
    a restart resumes from the last commit, as the crash test proves."""
    log.critical("faust.batch_not_sent", error=f"{type(ex).__name__}: {ex}", exc_info=ex)
    sys.stderr.flush()
    os._exit(70)


def faust_worker(
    settings: MamboSettings,
    *,
    name: str = "1",
    batch_size: int = 5_000,
    prefix: str = "",
    idle_exit: float | None = None,
    markets: Sequence[str] | None = None,
) -> FaustPipeline:
    """``mambo worker --runtime faust``: run a :class:`FaustPipeline` with ``settings`` (bootstrap,
    partitions, ``kafka.processing_guarantee``, the engine) until SIGINT/SIGTERM, or drained and idle
    for ``idle_exit`` s. Its Faust data folder is ``<data_dir>/faust/<name>``."""
    import signal

    folder = (settings.data_dir / "faust" / name).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    pipeline = FaustPipeline(
        settings.kafka.bootstrap or "127.0.0.1:9092",
        settings.account_configs(),
        folder,
        guarantee=settings.kafka.processing_guarantee,
        prefix=prefix,
        partitions=settings.kafka.partitions,
        batch_size=batch_size,
        name=name,
        known_markets=markets,
        extra=notifications(settings),
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await pipeline.run(stop, idle_exit)

    asyncio.run(main())
    return pipeline


class _CommitSensor(faust.Sensor):
    """Faust's commits as the native worker's metrics: under exactly once each is a transaction's
    commit (offsets and outputs), timed from Faust's sensor hooks. A commit with nothing to commit
    (no offset moved) is not counted."""

    def on_commit_initiated(self, consumer: Any) -> Any:
        return time.monotonic(), dict(getattr(consumer, "_committed_offset", {}))

    def on_commit_completed(self, consumer: Any, state: Any) -> None:
        began, before = state
        if dict(getattr(consumer, "_committed_offset", {})) == before:
            return
        runtime = "faust"
        if getattr(consumer, "in_transaction", False):
            TRANSACTION_SECONDS.labels(runtime).observe(time.monotonic() - began)
            TRANSACTIONS.labels(runtime, "committed").inc()
