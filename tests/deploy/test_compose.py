"""docker-compose.yml checked by ``docker-compose config`` (Debian's docker-compose; no engine needed)
and read back as compose resolves it; the Dockerfile and .dockerignore read as the builder would."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from .conftest import COMPOSE, ENV_EXAMPLE, ROOT, compose_config, run

#: Services that run until stopped, and the one-shot job.
LONG_RUNNING = {
    "kafka",
    "clickhouse",
    "sink",
    "worker",
    "source",
    "source-exchange",
    "api",
    "prometheus",
    "alertmanager",
    "grafana",
}
ONE_SHOT = {"topology"}


def test_compose_config_accepts_the_file_without_a_warning(docker_compose: str) -> None:
    out = run(docker_compose, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "config", "-q")
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", out.stderr  # e.g. "configs ... will be ignored"


def test_compose_starts_the_services_the_issue_lists(docker_compose: str) -> None:
    services = compose_config(docker_compose)["services"]
    assert set(services) == LONG_RUNNING | ONE_SHOT
    kafka = services["kafka"]
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", kafka["image"])
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft: no ZooKeeper
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert services["topology"]["command"] == ["topology", "apply"]
    assert services["topology"]["restart"] == "no"
    assert services["source"]["command"][:2] == ["kafka", "replay"]  # the replay by default
    assert services["source-exchange"]["profiles"] == ["exchange"]
    assert services["source-exchange"]["command"][0] == "source"
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")


def test_long_running_services_have_healthchecks_and_start_on_healthy_ones(docker_compose: str) -> None:
    services = compose_config(docker_compose)["services"]
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
    for name, service in services.items():
        for dep, how in service.get("depends_on", {}).items():
            wanted = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert how["condition"] == wanted, f"{name} -> {dep}: {how}"
    # every mambo process is started only once the topology job has made its topics and tables
    for name in ("sink", "worker", "source", "source-exchange"):
        assert "topology" in services[name]["depends_on"], name


def test_the_worker_scales(docker_compose: str) -> None:
    """`--scale worker=3` needs no fixed container name or host port, and distinct worker names."""
    worker = compose_config(docker_compose)["services"]["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["command"] == ["worker", "--name", "@hostname"]


def test_named_volumes_hold_the_data_and_bind_mounts_exist(docker_compose: str) -> None:
    config = compose_config(docker_compose)
    named = set(config["volumes"])
    holders = {"kafka": "/var/lib/kafka/data", "clickhouse": "/var/lib/clickhouse", "api": "/data"}
    holders |= {"prometheus": "/prometheus", "alertmanager": "/alertmanager", "grafana": "/var/lib/grafana"}
    for name, service in config["services"].items():
        mounts = [_mount(v) for v in service.get("volumes", [])]
        for source, _target in mounts:
            if source.startswith("/"):  # a bind mount of a file of this repository
                assert Path(source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in named, f"{name}: volume {source} is not declared"
        if name in holders:
            assert (next(s for s, t in mounts if t == holders[name])) in named, name


def _mount(volume: Any) -> tuple[str, str]:
    if isinstance(volume, dict):
        return str(volume["source"]), str(volume["target"])
    source, target = str(volume).split(":")[:2]
    return source, target


def test_secrets_come_from_the_environment_never_the_files(docker_compose: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if "PASSWORD" not in k}
    missing = run(docker_compose, "--project-directory", str(tmp_path), "-f", str(COMPOSE), "config", env=env)
    assert missing.returncode != 0
    assert "CLICKHOUSE_PASSWORD" in missing.stderr and ".env.example" in missing.stderr
    secret = "s3cret-from-env"
    given = {**env, "CLICKHOUSE_PASSWORD": secret, "GRAFANA_ADMIN_PASSWORD": secret}
    out = run(docker_compose, "--project-directory", str(tmp_path), "-f", str(COMPOSE), "config", env=given)
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    assert services["sink"]["environment"]["MAMBO_CLICKHOUSE_DSN"] == f"http://mambo:{secret}@clickhouse:8123"
    assert services["clickhouse"]["environment"]["CLICKHOUSE_PASSWORD"] == secret
    assert secret not in COMPOSE.read_text() and secret not in (ROOT / "Dockerfile").read_text()


def test_the_env_example_names_every_variable_the_compose_file_reads() -> None:
    wanted = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text()))
    given = {
        line.split("=", 1)[0]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert wanted <= given, sorted(wanted - given)


def test_the_dockerfile_builds_one_non_root_image_with_uv_a_healthcheck_and_mambo() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\w+)", text, re.M | re.I)
    assert len(stages) >= 2, "multi-stage"
    final = text[text.rindex("\nFROM ") :]
    assert "uv pip install" in text and "uv pip install" not in final  # deps with uv, in the build stage
    users = re.findall(r"^USER\s+(\S+)", final, re.M)
    assert users and users[-1] not in ("root", "0"), "the image runs as a non-root user"
    assert re.search(rf"chown {users[-1]}:\S+ /data", final), "the user owns its data folder"
    assert re.search(r"^HEALTHCHECK .*\n?.*CMD", final, re.M)
    assert re.search(r'^ENTRYPOINT \["mambo"\]', final, re.M)
    assert not re.search(r"^(ENV|ARG)\s.*(PASSWORD|SECRET|API_KEY|DSN)", text, re.M | re.I), (
        "no secret baked in"
    )


def test_what_the_dockerfile_copies_exists_and_is_not_ignored() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for must in (".env", ".venv", ".git", ".mambo"):
        assert must in ignored, f".dockerignore lets {must} into the build context"
    text = (ROOT / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        *sources, _dest = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert not any(source == i or source.startswith(i.rstrip("/") + "/") for i in ignored), source
