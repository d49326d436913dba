"""The Helm chart: ``helm lint``, ``helm template`` and every rendered manifest through
``kubernetes-validate`` (Kubernetes' own schemas, bundled, offline); the plain manifests in deploy/k8s
are the chart's rendering, regenerated and compared so they cannot drift."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from typing import Any

import kubernetes_validate
import pytest
import yaml

from .conftest import CHART, KUBERNETES, MANIFESTS, ROOT, SETTINGS, helm_template, run

#: Value sets the chart must render and validate with: the defaults, and every optional part on.
VARIANTS = {
    "defaults": (),
    "everything": (
        "secrets.create=true",
        "secrets.clickhouseDsn=http://mambo:pw@clickhouse:8123",
        "secrets.apiKeysJson={}",
        "secrets.exchangeApiKey=k",
        "secrets.exchangeSecret=s",
        "api.ingress.enabled=true",
        "api.ingress.className=nginx",
        "source.kind=exchange",
        "worker.replicas=6",
        "imagePullSecrets[0].name=registry",
        "monitoring.enabled=true",
        "monitoring.labels.release=kube-prometheus-stack",
    ),
    "minimal": ("source.enabled=false", "strimzi.enabled=false", "worker.pdb.enabled=false"),
}
WORKLOADS = {"Deployment", "StatefulSet", "Job"}


def validate(docs: list[dict[str, Any]]) -> set[str]:
    """Validate each document but the Strimzi and Prometheus Operator ones (CRDs: checked against the
    registry by test_strimzi, and by test_monitoring_*) against Kubernetes' schema, strictly (unknown
    fields fail); returns the kinds."""
    kinds = set()
    for doc in docs:
        kinds.add(doc["kind"])
        if doc["apiVersion"].startswith(("kafka.strimzi.io/", "monitoring.coreos.com/")):
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as ex:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {ex.message} at {list(ex.path)}")
    return kinds


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_lint_passes_strictly(helm: str, variant: str) -> None:
    args = [a for s in VARIANTS[variant] for a in ("--set", s)]
    out = run(helm, "lint", "--strict", str(CHART), *args)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rendered_manifest_is_valid_kubernetes(helm: str, variant: str) -> None:
    kinds = validate(helm_template(helm, *VARIANTS[variant]))
    assert {"ConfigMap", "Service", "StatefulSet", "Deployment", "Job"} <= kinds
    if variant == "everything":
        assert {
            "Secret",
            "Ingress",
            "PodDisruptionBudget",
            "KafkaTopic",
            "PodMonitor",
            "PrometheusRule",
        } <= kinds
    else:
        assert not {"PodMonitor", "PrometheusRule"} & kinds  # off unless asked: they need the operator's CRDs


def test_the_plain_manifests_are_valid_and_the_charts_current_rendering(helm: str) -> None:
    validate([d for d in yaml.safe_load_all(MANIFESTS.read_text()) if d])
    out = subprocess.run(
        [sys.executable, "tools/render_deploy.py", "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"HELM": helm, "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr


def test_kubernetes_validate_catches_a_broken_manifest(helm: str) -> None:
    """The validator is not a rubber stamp: a misspelt probe field fails."""
    docs = helm_template(helm)
    worker = next(d for d in docs if d["kind"] == "StatefulSet")
    worker["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = "/ready"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, KUBERNETES, strict=True)


def test_more_workers_than_partitions_are_refused(helm: str) -> None:
    partitions = yaml.safe_load((CHART / "values.yaml").read_text())["kafka"]["partitions"]
    assert partitions == tomllib.loads(SETTINGS.read_text())["kafka"]["partitions"]
    helm_template(helm, f"worker.replicas={partitions}")
    out = run(helm, "template", "mambo", str(CHART), "--set", f"worker.replicas={partitions + 1}")
    assert out.returncode != 0
    assert f"kafka.partitions {partitions}" in out.stderr


def test_a_created_secret_needs_its_dsn(helm: str) -> None:
    out = run(helm, "template", "mambo", str(CHART), "--set", "secrets.create=true")
    assert out.returncode != 0
    assert "secrets.clickhouseDsn is required" in out.stderr


def _containers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {}
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            spec = doc["spec"]["template"]["spec"]
            for c in spec["containers"]:
                found[c["name"]] = {"container": c, "pod": spec, "doc": doc}
    return found


@pytest.mark.parametrize("source", ["replay", "exchange"])
def test_each_process_is_probed_on_its_own_health_and_ready(helm: str, source: str) -> None:
    docs = helm_template(helm, f"source.kind={source}")
    found = _containers(docs)
    assert set(found) == {"topology", "worker", "sink", "source", "api"}
    for name in ("worker", "sink", "source", "api"):
        c = found[name]["container"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        port = next(p for p in c["ports"] if p["name"] == c["livenessProbe"]["httpGet"]["port"])
        assert str(port["containerPort"]) == env["MAMBO_HEALTH_PORT"], name  # where the process serves
        assert c["livenessProbe"]["httpGet"]["path"] == "/health", name
        assert c["readinessProbe"]["httpGet"]["path"] == "/ready", name
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], name
        assert found[name]["pod"]["securityContext"]["runAsNonRoot"] is True
    assert "livenessProbe" not in found["topology"]["container"]  # a one-shot job serves nothing
    kinds = {name: found[name]["doc"]["kind"] for name in found}
    assert kinds["worker"] == "StatefulSet"  # stable pod names: `--name @hostname` is stable
    assert kinds["source"] == ("Job" if source == "replay" else "Deployment")


def test_disruption_budgets_cover_workers_sink_and_api(helm: str) -> None:
    docs = helm_template(helm)
    budgets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PodDisruptionBudget"}
    pods = {c: w["doc"]["spec"]["template"]["metadata"]["labels"] for c, w in _containers(docs).items()}
    for component in ("worker", "sink", "api"):
        budget = budgets[f"mambo-{component}"]
        assert budget["spec"]["maxUnavailable"] == 1
        assert budget["spec"]["selector"]["matchLabels"].items() <= pods[component].items()


def test_the_configmap_is_the_settings_file_and_the_secret_holds_the_keys(helm: str) -> None:
    docs = helm_template(helm, *VARIANTS["everything"])
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    assert config["data"]["mambo.toml"].strip() == SETTINGS.read_text().strip()
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert set(secret["stringData"]) == {
        "clickhouse-dsn",
        "api_keys.json",
        "exchange-api-key",
        "exchange-secret",
    }
    for name, found in _containers(docs).items():
        env = {e["name"]: e for e in found["container"]["env"]}
        ref = env["MAMBO_CLICKHOUSE_DSN"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": secret["metadata"]["name"], "key": "clickhouse-dsn"}, name
    assert not any(d["kind"] == "Secret" for d in helm_template(helm)), "no Secret with made-up values"


def test_monitoring_scrapes_every_process_under_its_job_and_carries_the_alert_rules(
    helm: str, tmp_path: Any
) -> None:
    """With monitoring.enabled: each PodMonitor selects the pods of one workload by exactly their
    labels, on a port their container names, under the job name deploy/prometheus/prometheus.yml gives
    that process (so the alert rules' job selectors hold); the PrometheusRule is deploy/prometheus/
    alerts.yml, and Prometheus' own promtool passes it."""
    from tests.ops import installed

    docs = helm_template(helm, "monitoring.enabled=true", "source.kind=exchange")
    pods = {}
    for d in docs:
        if d["kind"] in WORKLOADS:
            template = d["spec"]["template"]
            ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
            pods[d["metadata"]["name"]] = (template["metadata"]["labels"], ports)
    jobs = set()
    for monitor in (d for d in docs if d["kind"] == "PodMonitor"):
        wanted = monitor["spec"]["selector"]["matchLabels"]
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        matched = [name for name, (labels, ports) in pods.items() if labels == wanted]
        assert len(matched) == 1, (monitor["metadata"]["name"], matched)
        assert endpoint["port"] in pods[matched[0]][1] and endpoint["path"] == "/metrics"
        (relabel,) = endpoint["relabelings"]
        assert relabel["targetLabel"] == "job"
        jobs.add(relabel["replacement"])
    compose_prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert jobs == {j["job_name"] for j in compose_prometheus["scrape_configs"]} - {"prometheus"}
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"] == alerts
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(rule["spec"]))
    out = run(installed("promtool"), "check", "rules", str(rules))
    assert out.returncode == 0, out.stdout + out.stderr
