"""The topology as Strimzi ``KafkaTopic`` resources: ``mambo topology export --format strimzi``.

On Kubernetes, topics are declared to the Strimzi topic operator instead of created by
``mambo topology apply``; this renders them from the same :func:`~mambo.streams.kafka.topology.
wanted_topics` that ``plan`` and ``apply`` use, so the registry stays the one source of truth
(partitions, replicas, ``cleanup.policy``, ``retention.ms``, ``min.insync.replicas``). A resource's
name must be a Kubernetes name (lowercase, ``[a-z0-9.-]``), so a topic whose name is not one gets a
cleaned name and keeps its own in ``spec.topicName``.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from mambo.streams.kafka.topology import TopicSpec

__all__ = ["API_VERSION", "kafka_topics", "resource_name", "to_yaml"]

API_VERSION = "kafka.strimzi.io/v1beta2"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def resource_name(topic: str) -> str:
    """A Kubernetes resource name for ``topic``: itself when valid, else lowercased, other characters
    as ``-``. Raises :class:`ValueError` when nothing valid is left."""
    if len(topic) <= 253 and _NAME.match(topic):
        return topic
    name = re.sub(r"[^a-z0-9.-]", "-", topic.lower())
    name = ".".join(part.strip("-") for part in name.split(".") if part.strip("-"))[:253].strip(".-")
    if not name or not _NAME.match(name):
        raise ValueError(f"topic {topic!r} has no valid Kubernetes resource name")
    return name


def kafka_topics(specs: list[TopicSpec], cluster: str, namespace: str | None = None) -> list[dict[str, Any]]:
    """One ``KafkaTopic`` per topic, labelled for the Strimzi cluster ``cluster``."""
    docs: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    for spec in specs:
        name = resource_name(spec.name)
        if name in names:
            raise ValueError(f"topics {names[name]!r} and {spec.name!r} both map to resource name {name!r}")
        names[name] = spec.name
        metadata: dict[str, Any] = {"name": name, "labels": {"strimzi.io/cluster": cluster}}
        if namespace:
            metadata["namespace"] = namespace
        docs.append(
            {
                "apiVersion": API_VERSION,
                "kind": "KafkaTopic",
                "metadata": metadata,
                "spec": {
                    "topicName": spec.name,
                    "partitions": spec.partitions,
                    "replicas": spec.replication,
                    "config": dict(sorted(spec.config.items())),
                },
            }
        )
    return docs


def to_yaml(docs: list[dict[str, Any]]) -> str:
    """The resources as one YAML stream (``---`` between documents), keys in the order given."""
    return "".join("---\n" + yaml.safe_dump(d, sort_keys=False) for d in docs)
