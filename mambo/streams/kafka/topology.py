"""The Kafka topology: every topic of the registry (and the worker's state changelog) on the broker.

:func:`plan` compares what the registry wants with what the broker has and lists the changes
(:class:`Change`): topics to create, partitions to add, configs (retention, compaction) to set.
:func:`apply` makes them; both are idempotent, so ``mambo topology apply`` can run at every deploy.
Partitions are never removed (Kafka cannot), and a topic with fewer partitions than wanted gets more
only when it is not keyed state: adding partitions moves keys, so for the state changelog it is
refused with the reason. ``mambo topology apply`` also creates the ClickHouse tables.
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

from mambo.schemas.topics import ALL_TOPICS, DAY_MS, TRADES

__all__ = ["STATE_TOPIC", "Change", "TopicSpec", "apply", "plan", "wanted_topics"]

#: The worker's state changelog: one compacted record per market (its operators' state).
STATE_TOPIC = "mambo.worker.state"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]
    keyed_state: bool = False


@dataclass(frozen=True)
class Change:
    action: str  # create | add-partitions | set-config | refuse
    topic: str
    detail: str

    def __str__(self) -> str:
        return f"{self.action:15} {self.topic:28} {self.detail}"


def wanted_topics(partitions: int = 6, prefix: str = "") -> list[TopicSpec]:
    """The registry's topics; keyed topics get ``partitions`` (single-partition ones stay one).

    ``prefix`` namespaces every name (one broker, several pipelines: tests, tenants)."""
    specs = [
        TopicSpec(
            prefix + t.name,
            partitions if t.partitions > 1 else 1,
            {
                "cleanup.policy": "compact" if t.compacted else "delete",
                "retention.ms": str(t.retention_ms),
            },
            # the worker keeps each market's state in the changelog partition of its input partition
            keyed_state=t.name == TRADES.name,
        )
        for t in ALL_TOPICS
    ]
    specs.append(
        TopicSpec(
            prefix + STATE_TOPIC,
            partitions,
            {"cleanup.policy": "compact", "retention.ms": str(365 * DAY_MS), "min.compaction.lag.ms": "0"},
            keyed_state=True,
        )
    )
    return specs


def plan(admin: AdminClient, partitions: int = 6, prefix: str = "", timeout: float = 15.0) -> list[Change]:
    """What :func:`apply` would change on the broker, in order (topic names carry ``prefix``)."""
    md = admin.list_topics(timeout=timeout)
    wanted = wanted_topics(partitions, prefix)
    changes: list[Change] = []
    existing = [w for w in wanted if w.name in md.topics]
    for w in wanted:
        if w.name not in md.topics:
            changes.append(Change("create", w.name, f"{w.partitions} partitions, {_fmt(w.config)}"))
            continue
        have = len(md.topics[w.name].partitions)
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
                changes.append(Change("set-config", w.name, _fmt(diff)))
    return changes


def apply(admin: AdminClient, partitions: int = 6, prefix: str = "", timeout: float = 30.0) -> list[Change]:
    """Make the changes :func:`plan` lists (refusals are returned, not applied); returns them."""
    changes = plan(admin, partitions, prefix, timeout)
    specs = {w.name: w for w in wanted_topics(partitions, prefix)}
    creates = [
        NewTopic(c.topic, specs[c.topic].partitions, 1, config=specs[c.topic].config)
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
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
                for k, v in specs[c.topic].config.items()
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
