"""Same commands everywhere: the compose services, the chart's pods and `mambo up`'s children run the
same `mambo` subcommands with the same options and end up with the same settings (but for where Kafka
and ClickHouse are, which each deployment names its own way)."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from mambo.cli import app
from mambo.settings import load_settings

from .conftest import SETTINGS, compose_config, helm_template

#: Options that say where a process keeps its files or answers probes, not what it runs.
PLACE = {"--data-dir", "--config", "--health-port"}
#: The environment that names addresses, secrets and files (each deployment its own; the chart mounts
#: the API key file from its Secret, compose and `up` keep it in the data folder).
ADDRESSES = {
    "MAMBO_KAFKA_BOOTSTRAP",
    "MAMBO_CLICKHOUSE_DSN",
    "MAMBO_CONFIG",
    "MAMBO_HEALTH_PORT",
    "MAMBO_API__KEYS_FILE",
}
ROLES = ("topology", "sink", "worker", "source", "api")
EXCHANGE, SYMBOLS = "binance", "BTC/USDT,ETH/USDT"


def normal(argv: list[str]) -> tuple[tuple[str, ...], dict[str, str]]:
    """A `mambo` command line as (subcommand, options): place options and an empty prefix dropped, a
    worker's own name (per process in each deployment) dropped, numbers compared as numbers."""
    words = list(argv)
    cut = next((i for i, w in enumerate(words) if w.startswith("--")), len(words))
    command, rest = tuple(words[:cut]), words[cut:]
    assert len(rest) % 2 == 0, f"an option without a value in {argv}"
    options = dict(zip(rest[::2], rest[1::2], strict=True))
    for key in PLACE:
        options.pop(key, None)
    if options.get("--prefix") == "":
        del options["--prefix"]
    if command == ("worker",):
        assert options.pop("--name"), argv
    if "--speed" in options:
        options["--speed"] = str(float(options["--speed"]))
    return command, options


def compose(docker_compose: str) -> dict[str, Any]:
    services = compose_config(docker_compose)["services"]  # every profile's services
    found = {}
    for role in ROLES:
        found[role] = services[role]
    found["source-exchange"] = services["source-exchange"]
    return {
        role: {
            "argv": s["command"],
            "env": s["environment"],
            "config": next(
                v.split(":")[0] for v in s["volumes"] if v.split(":")[1] == "/etc/mambo/mambo.toml"
            ),
        }
        for role, s in found.items()
    }


def chart(helm: str, tmp: Path) -> dict[str, Any]:
    found = {}
    for kind, key in (("replay", "source"), ("exchange", "source-exchange")):
        docs = helm_template(
            helm,
            f"source.kind={kind}",
            f"source.exchange={EXCHANGE}",
            f"source.symbols={SYMBOLS}".replace(",", "\\,"),
        )
        settings = tmp / "chart-mambo.toml"
        settings.write_text(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["mambo.toml"])
        for doc in docs:
            if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
                for c in doc["spec"]["template"]["spec"]["containers"]:
                    role = key if c["name"] == "source" else c["name"]
                    env = {e["name"]: e.get("value", "<secret>") for e in c["env"]}
                    found[role] = {"argv": c["args"], "env": env, "config": str(settings)}
    return found


def up(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """`mambo up`'s children, as its supervisor is asked to start them (no process is started)."""
    import confluent_kafka.admin

    import mambo.commands.kafka
    import mambo.streams.kafka.supervisor as supervisor

    specs: list[Any] = []

    class Supervisor:
        def __init__(self, *_: Any) -> None:
            pass

        def start(self, spec: Any) -> Any:
            specs.append(spec)
            return SimpleNamespace(wait=lambda: 0)

        def check(self) -> None:
            pass

        def pids(self) -> list[int]:
            return []

        def run(self, stop: Any) -> None:
            pass

        def stop(self) -> None:
            pass

    class Admin:  # a broker that answers
        def __init__(self, *_: Any) -> None:
            pass

        def list_topics(self, timeout: float) -> None:
            pass

    monkeypatch.setattr(supervisor, "Supervisor", Supervisor)
    monkeypatch.setattr(confluent_kafka.admin, "AdminClient", Admin)
    monkeypatch.setattr(mambo.commands.kafka, "_until_signal", threading.Event)
    env = {"MAMBO_KAFKA_BOOTSTRAP": "127.0.0.1:9092", "MAMBO_CLICKHOUSE_DSN": "http://u:p@127.0.0.1:8123"}
    found = {}
    for source in ("replay", "exchange"):
        specs.clear()
        args = [
            "up",
            "--workers",
            "2",
            "--api",
            "--source",
            source,
            "--exchange",
            EXCHANGE,
            "--symbols",
            SYMBOLS,
        ]
        args += ["--config", str(SETTINGS), "--data-dir", str(tmp / "up")]
        result = CliRunner().invoke(app, args, env=env)
        assert result.exit_code == 0, result.output
        for spec in specs:
            assert spec.argv[:3] == [sys.executable, "-m", "mambo.cli"], spec.argv
            role = spec.name.split("-")[0]
            role = "source-exchange" if role == "source" and source == "exchange" else role
            config = spec.argv[spec.argv.index("--config") + 1]
            found[role] = {"argv": spec.argv[3:], "env": spec.env, "config": config}
    return found


def effective(process: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The settings a process gets: its settings file and its environment (addresses aside)."""
    with monkeypatch.context() as m:
        for name in [k for k in os.environ if k.startswith("MAMBO_")]:
            m.delenv(name)
        for name, value in process["env"].items():
            if name.startswith("MAMBO_") and name not in ADDRESSES:
                m.setenv(name, value)
        settings = load_settings(Path(process["config"]))
    return settings.model_dump(
        mode="json", exclude={"data_dir": True, "kafka": {"bootstrap"}, "clickhouse": {"dsn"}}
    )


def test_compose_the_chart_and_up_run_the_same_commands_with_the_same_settings(
    docker_compose: str, helm: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployments = {
        "compose": compose(docker_compose),
        "chart": chart(helm, tmp_path),
        "up": up(tmp_path, monkeypatch),
    }
    roles = set(ROLES) | {"source-exchange"}
    for name, processes in deployments.items():
        assert set(processes) == roles, f"{name} runs {sorted(processes)}"
    for role in sorted(roles):
        commands = {name: normal(p[role]["argv"]) for name, p in deployments.items()}
        assert len(set(map(repr, commands.values()))) == 1, f"{role}: {commands}"
        settings = {name: effective(p[role], monkeypatch) for name, p in deployments.items()}
        assert settings["compose"] == settings["chart"] == settings["up"], role
    # the /ready bound is the same where it is set
    for role in ("worker", "sink"):
        bounds = {n: p[role]["env"].get("MAMBO_READY_MAX_LAG") for n, p in deployments.items() if n != "up"}
        assert len(set(bounds.values())) == 1, bounds


def test_a_drift_is_caught(docker_compose: str) -> None:
    """The comparison sees a changed option or subcommand (what the test above relies on)."""
    worker = compose(docker_compose)["worker"]["argv"]
    assert normal(worker) == (("worker",), {})
    assert normal([*worker, "--batch-size", "5"]) != normal(worker)
    assert normal(["kafka", "replay", "--speed", "1"]) == normal(["kafka", "replay", "--speed", "1.0"])
    assert normal(["kafka", "replay", "--speed", "2"]) != normal(["kafka", "replay", "--speed", "1.0"])
