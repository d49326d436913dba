"""The deployment files, checked with the real tools: ``docker-compose config``, ``helm lint`` and
``helm template``, ``kubernetes-validate``. ``make test`` installs the tools first (``make deploy-tools``);
a missing tool fails its tests with the command that installs it, it never skips them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "mambo"
SETTINGS = CHART / "files" / "mambo.toml"
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
MANIFESTS = ROOT / "deploy" / "k8s" / "mambo.yaml"
#: The Kubernetes version whose schemas the manifests are validated against (kubernetes-validate's).
KUBERNETES = "1.37.0"


def _tool(path: str | None, name: str) -> str:
    if path is None or not Path(path).is_file():
        pytest.fail(f"{name} is not installed (looked for {path or name}): run `make deploy-tools`")
    return path


@pytest.fixture(scope="session")
def helm() -> str:
    return _tool(os.environ.get("HELM") or str(Path.home() / ".cache" / "mambo" / "bin" / "helm"), "helm")


@pytest.fixture(scope="session")
def docker_compose() -> str:
    return _tool(shutil.which("docker-compose"), "docker-compose (Debian package)")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A command's result (never raises: the tests look at the exit code and the output)."""
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def compose_config(docker_compose: str, *extra: str) -> dict[str, Any]:
    """``docker-compose config`` with .env.example: the file as compose resolves it."""
    out = run(docker_compose, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "config", *extra)
    assert out.returncode == 0, out.stderr
    config: dict[str, Any] = yaml.safe_load(out.stdout)
    return config


def helm_template(helm: str, *sets: str) -> list[dict[str, Any]]:
    """``helm template`` of the chart with ``--set`` overrides: its documents."""
    args = [a for s in sets for a in ("--set", s)]
    out = run(helm, "template", "mambo", str(CHART), *args)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]
