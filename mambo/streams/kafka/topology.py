"""The Kafka topology: every topic of the registry (and the worker's state changelog) on the broker.

:func:`plan` compares what the registry wants with what the broker has and lists the changes
(:class:`Change`): topics to create, partitions to add, configs (retention, compaction) to set.
:func:`apply` makes them; both are idempotent, so ``mambo topology apply`` can run at every deploy.
Partitions are never removed (Kafka cannot), and a topic with fewer partitions than wanted gets more
only when it is not keyed state: adding partitions moves keys, so for the state changelog it is
refused with the reason. ``mambo topology apply`` also creates the ClickHouse tables.

Replication follows the cluster: with three brokers or more every topic has three replicas and
``min.insync.replicas`` 2 (:func:`~mambo.streams.kafka.broker.min_insync`), so a write every producer
sends with ``acks=all`` is on two brokers before it counts, and one broker can die without losing it
or stopping writes; with fewer brokers, one replica per broker. A topic's replication is fixed when it
is created here: one with fewer replicas than wanted is refused with the reason (Kafka moves replicas
by reassignment, ``kafka-reassign-partitions.sh``), and its ``min.insync.replicas`` follows the
replicas it has.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from mambo.schemas.topics import ACCOUNT_FEED, ALL_TOPICS, DAY_MS, INTERNAL_TOPICS, TRADES
from mambo.streams.kafka.broker import min_insync

__all__ = [
    "STATE_MAX_BYTES",
    "STATE_TOPIC",
    "Change",
    "TopicSpec",
    "apply",
    "plan",
    "replication_for",
    "wanted_topics",
]

#: The worker's state changelog: one compacted record per market and per account (its state).
STATE_TOPIC = "mambo.worker.state"
#: The largest state record (the changelog's max.message.bytes, the workers' message.max.bytes).
STATE_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]
    keyed_state: bool = False
    replication: int = 1


@dataclass(frozen=True)
class Change:
    action: str  # create | add-partitions | set-config | refuse
    topic: str
    detail: str
    config: tuple[tuple[str, str], ...] = ()  # set-config: the settings to set

    def __str__(self) -> str:
        return f"{self.action:15} {self.topic:28} {self.detail}"


def wanted_topics(partitions: int = 6, prefix: str = "", replication: int = 1) -> list[TopicSpec]:
    """The registry's topics; keyed topics get ``partitions`` (single-partition ones stay one), each
    ``replication`` replicas (and ``min.insync.replicas`` for it when more than one).

    ``prefix`` namespaces every name (one broker, several pipelines: tests, tenants)."""
    specs = [
        TopicSpec(
            prefix + t.name,
            partitions if t.partitions > 1 else 1,
            {
                "cleanup.policy": "compact" if t.compacted else "delete",
                "retention.ms": str(t.retention_ms),
                **_insync(replication),
            },
            # the worker keeps each market's (account's) state in the changelog partition of its input
            keyed_state=t.name in (TRADES.name, ACCOUNT_FEED.name),
            replication=replication,
        )
        for t in (*ALL_TOPICS, *INTERNAL_TOPICS)
    ]
    specs.append(
        TopicSpec(
            prefix + STATE_TOPIC,
            partitions,
            {
                "cleanup.policy": "compact",
                "retention.ms": str(365 * DAY_MS),
                "min.compaction.lag.ms": "0",
                # an account's state holds the steps it waits with for a lagging market: it can pass
                # the broker's default 1 MB (the workers' producers allow as much)
                "max.message.bytes": str(STATE_MAX_BYTES),
                **_insync(replication),
            },
            keyed_state=True,
            replication=replication,
        )
    )
    return specs


def replication_for(brokers: int) -> int:
    """The replication factor a cluster of ``brokers`` live brokers gives each topic: 3 when it can."""
    return max(1, min(3, brokers))


def _insync(replication: int) -> dict[str, str]:
    return {"min.insync.replicas": str(min_insync(replication))} if replication > 1 else {}


def plan(
    admin: AdminClient,
    partitions: int = 6,
    prefix: str = "",
    timeout: float = 15.0,
    replication: int | None = None,
) -> list[Change]:
    """What :func:`apply` would change on the broker, in order (topic names carry ``prefix``).

    ``replication`` defaults to what the live brokers allow (:func:`replication_for`)."""
    md = admin.list_topics(timeout=timeout)
    rf = replication or replication_for(len(md.brokers))
    wanted = wanted_topics(partitions, prefix, rf)
    changes: list[Change] = []
    existing: list[TopicSpec] = []
    for w in wanted:
        if w.name not in md.topics:
            detail = f"{w.partitions} partitions, replication {w.replication}, {_fmt(w.config)}"
            changes.append(Change("create", w.name, detail))
            continue
        have = len(md.topics[w.name].partitions)
        replicas = min(len(p.replicas) for p in md.topics[w.name].partitions.values())
        if replicas < w.replication:
            detail = f"has replication {replicas}, wants {w.replication}: reassign its partitions"
            changes.append(Change("refuse", w.name, detail))
            w = _replicated(w, replicas)  # its min.insync.replicas must follow the replicas it has
        existing.append(w)
        if have < w.partitions:
            if w.keyed_state:
                changes.append(Change("refuse", w.name, f"has {have} partitions; keyed state cannot grow"))
            else:
                changes.append(Change("add-partitions", w.name, f"{have} -> {w.partitions}"))
    if existing:
        futures = admin.describe_configs([ConfigResource("topic", w.name) for w in existing])
        for res, fut in futures.items():
            have_cfg = {k: v.value for k, v in fut.result(timeout=timeout).items()}
            w = next(x for x in existing if x.name == res.name)
            diff = {k: v for k, v in w.config.items() if have_cfg.get(k) != v}
            if diff:
                changes.append(Change("set-config", w.name, _fmt(diff), tuple(sorted(diff.items()))))
    return changes


def _replicated(spec: TopicSpec, replication: int) -> TopicSpec:
    config = {k: v for k, v in spec.config.items() if k != "min.insync.replicas"} | _insync(replication)
    return TopicSpec(spec.name, spec.partitions, config, spec.keyed_state, replication)


def apply(
    admin: AdminClient,
    partitions: int = 6,
    prefix: str = "",
    timeout: float = 30.0,
    replication: int | None = None,
) -> list[Change]:
    """Make the changes :func:`plan` lists (refusals are returned, not applied); returns them."""
    rf = replication or replication_for(len(admin.list_topics(timeout=timeout).brokers))
    changes = plan(admin, partitions, prefix, timeout, rf)
    specs = {w.name: w for w in wanted_topics(partitions, prefix, rf)}
    creates = [
        NewTopic(c.topic, specs[c.topic].partitions, rf, config=specs[c.topic].config)
        for c in changes
        if c.action == "create"
    ]
    grows = [
        NewPartitions(c.topic, specs[c.topic].partitions) for c in changes if c.action == "add-partitions"
    ]
    configs = [
        ConfigResource(
            "topic",
            c.topic,
            incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in c.config
            ],
        )
        for c in changes
        if c.action == "set-config"
    ]
    for futures in (
        admin.create_topics(creates, operation_timeout=timeout) if creates else {},
        admin.create_partitions(grows, operation_timeout=timeout) if grows else {},
        admin.incremental_alter_configs(configs) if configs else {},
    ):
        for fut in futures.values():
            fut.result(timeout=timeout)
    _await_metadata(
        admin, {c.topic: specs[c.topic].partitions for c in changes if c.action != "refuse"}, timeout
    )
    return changes


def _await_metadata(admin: AdminClient, partitions: dict[str, int], timeout: float) -> None:
    """Wait until the broker's metadata shows the new topics and partitions (it lags the create)."""
    deadline = time.monotonic() + timeout
    while partitions:
        md = admin.list_topics(timeout=timeout).topics
        if all(t in md and len(md[t].partitions) >= n for t, n in partitions.items()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics not visible after {timeout}s: {sorted(partitions)}")
        time.sleep(0.1)


def _fmt(config: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(config.items()))
