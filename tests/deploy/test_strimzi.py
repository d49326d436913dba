"""``mambo topology export --format strimzi`` against the topic registry, and the chart's copy of it."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from mambo.cli import app
from mambo.schemas.topics import ALL_TOPICS, INTERNAL_TOPICS
from mambo.streams.kafka.topology import STATE_TOPIC

from .conftest import CHART, SETTINGS

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def export(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["topology", "export", *args], env={"MAMBO_CONFIG": ""})
    return result.exit_code, result.output


def topics(*args: str) -> dict[str, dict[str, Any]]:
    code, out = export("--format", "strimzi", *args)
    assert code == 0, out
    docs = [d for d in yaml.safe_load_all(out) if d]
    by_topic = {d["spec"]["topicName"]: d for d in docs}
    assert len(by_topic) == len(docs), "a topic is declared twice"
    return by_topic


@pytest.mark.parametrize(("partitions", "replicas"), [(6, 3), (12, 3), (3, 1)])
def test_every_registry_topic_is_a_kafka_topic_as_the_registry_says(partitions: int, replicas: int) -> None:
    docs = topics("--partitions", str(partitions), "--replicas", str(replicas), "--cluster", "prod")
    assert set(docs) == {t.name for t in (*ALL_TOPICS, *INTERNAL_TOPICS)} | {STATE_TOPIC}
    for topic in (*ALL_TOPICS, *INTERNAL_TOPICS):
        doc = docs[topic.name]
        assert doc["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert doc["kind"] == "KafkaTopic"
        assert doc["metadata"]["labels"] == {"strimzi.io/cluster": "prod"}
        assert DNS_SUBDOMAIN.match(doc["metadata"]["name"]), doc["metadata"]["name"]
        spec = doc["spec"]
        assert spec["partitions"] == (partitions if topic.partitions > 1 else 1), topic.name
        assert spec["replicas"] == replicas
        config = spec["config"]
        assert config["cleanup.policy"] == ("compact" if topic.compacted else "delete"), topic.name
        assert int(config["retention.ms"]) == topic.retention_ms, topic.name
        # three replicas: a write acknowledged by all in-sync replicas is on two brokers at least
        assert config.get("min.insync.replicas") == ("2" if replicas == 3 else None), topic.name
    state = docs[STATE_TOPIC]["spec"]
    assert state["partitions"] == partitions  # one changelog partition per input partition
    assert state["config"]["cleanup.policy"] == "compact"


def test_the_keyed_topics_scale_and_the_trading_topics_stay_single() -> None:
    docs = topics("--partitions", "9")
    assert docs["md.trades"]["spec"]["partitions"] == 9
    assert docs["orders"]["spec"]["partitions"] == 1  # one order of events for an account
    assert docs["fills"]["spec"]["partitions"] == 1


def test_a_prefix_that_is_no_kubernetes_name_is_cleaned_and_the_topic_name_kept() -> None:
    docs = topics("--prefix", "Team_A.", "--namespace", "trading")
    doc = docs["Team_A.md.trades"]
    assert doc["metadata"] == {
        "name": "team-a.md.trades",
        "labels": {"strimzi.io/cluster": "mambo"},
        "namespace": "trading",
    }


def test_an_unknown_format_is_refused_with_the_reason() -> None:
    code, out = export("--format", "terraform")
    assert code == 2
    assert "strimzi" in out


def test_the_charts_topics_are_the_registrys() -> None:
    """files/kafkatopics.yaml (what the chart declares) is the export for the settings' partitions."""
    partitions = tomllib.loads(SETTINGS.read_text())["kafka"]["partitions"]
    chart = [d for d in yaml.safe_load_all((CHART / "files" / "kafkatopics.yaml").read_text()) if d]
    fresh = topics("--partitions", str(partitions), "--cluster", "mambo")
    assert {d["spec"]["topicName"]: d for d in chart} == fresh
