"""Render the deployment files that are derived from others, or check that they are current.

- ``deploy/helm/mambo/files/kafkatopics.yaml``: ``mambo topology export --format strimzi`` with the
  chart's settings file's partitions (the registry is the one source of truth for topics);
- ``deploy/helm/mambo/files/alerts.yml``: a copy of ``deploy/prometheus/alerts.yml`` (the chart's
  PrometheusRule, with ``monitoring.enabled``);
- ``deploy/k8s/mambo.yaml``: ``helm template mambo deploy/helm/mambo`` (the plain manifests, for
  ``kubectl apply -f deploy/k8s/``).

``python tools/render_deploy.py`` (``make deploy-render``) writes them; ``--check`` exits 1 and names
the files that differ (tests/deploy runs the check, so they cannot drift from their sources). helm is
``$HELM``, else ``~/.cache/mambo/bin/helm`` (``make deploy-tools`` builds it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "mambo"
SETTINGS = CHART / "files" / "mambo.toml"
TOPICS = CHART / "files" / "kafkatopics.yaml"
MANIFESTS = ROOT / "deploy" / "k8s" / "mambo.yaml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
CHART_ALERTS = CHART / "files" / "alerts.yml"
RELEASE = "mambo"
STRIMZI_CLUSTER = "mambo"
HEADER = "# Rendered by `make deploy-render` ({}); do not edit: edit {} and render again.\n"


def helm() -> str:
    path = os.environ.get("HELM") or str(Path.home() / ".cache" / "mambo" / "bin" / "helm")
    if not Path(path).is_file():
        raise SystemExit(f"helm not found at {path}: run `make deploy-tools`")
    return path


def topics() -> str:
    partitions = tomllib.loads(SETTINGS.read_text())["kafka"]["partitions"]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mambo.cli",
            "topology",
            "export",
            "--format",
            "strimzi",
            "--partitions",
            str(partitions),
            "--cluster",
            STRIMZI_CLUSTER,
        ],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("MAMBO_")},
        cwd=ROOT,
    ).stdout
    return HEADER.format("mambo topology export --format strimzi", "mambo/schemas/topics.py") + out


def alerts() -> str:
    return HEADER.format("a copy", "deploy/prometheus/alerts.yml") + ALERTS.read_text()


def manifests(**set_values: str) -> str:
    """``helm template`` of the chart (``set_values``: ``--set`` overrides)."""
    sets = [a for k, v in set_values.items() for a in ("--set", f"{k}={v}")]
    out = subprocess.run(
        [helm(), "template", RELEASE, str(CHART), *sets], capture_output=True, text=True, check=True
    ).stdout
    return HEADER.format("helm template mambo deploy/helm/mambo", "deploy/helm/mambo") + out


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    # the chart's files first: the chart reads them
    for path, render in ((TOPICS, topics), (CHART_ALERTS, alerts), (MANIFESTS, manifests)):
        text = render()
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"rendered {path.relative_to(ROOT)}")
    if stale:
        print(f"stale (run `make deploy-render`): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
