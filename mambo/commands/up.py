"""``mambo up``: the distributed runtime on one machine, in one command.

In order: the Kafka broker (started in ``<data_dir>/kafka`` unless one already answers at
``kafka.bootstrap``), ``mambo topology apply`` (topics and ClickHouse tables), the ClickHouse sink,
the API (``--api``), N workers (``--workers``), and a source (``--source replay``: the bundled
recording, as ``mambo kafka replay``; ``--source exchange``: ``mambo source`` with ``--symbols``,
``--exchange`` and ``--base-url``). Each runs as its own ``mambo`` process under a
:class:`~mambo.streams.kafka.supervisor.Supervisor` (logs in ``<data_dir>/logs``, a child that dies is
restarted with backoff); Ctrl-C or SIGTERM stops them in reverse order (source, workers, API, sink),
then the broker if ``up`` started it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML settings file (see README).")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Where Mambo keeps its state and logs.")]


def register(app: typer.Typer) -> None:
    @app.command()
    def up(
        workers: Annotated[int, typer.Option(min=1, help="Worker processes sharing the partitions.")] = 1,
        source: Annotated[
            str, typer.Option(help="none | replay (the bundled recording) | exchange.")
        ] = "none",
        speed: Annotated[
            float, typer.Option(help="--source replay: multiple of real time, 0 = flat out.")
        ] = 1.0,
        symbols: Annotated[str, typer.Option(help="--source exchange: comma-separated symbols.")] = "",
        exchange: Annotated[str, typer.Option(help="--source exchange: ccxt exchange id.")] = "binance",
        base_url: Annotated[str, typer.Option(help="--source exchange: a local exchange's URL.")] = "",
        api: Annotated[
            bool, typer.Option("--api", help="Also serve the API (needs a ClickHouse server).")
        ] = False,
        prefix: Annotated[str, typer.Option(help="Namespace for topic and group names.")] = "",
        health_ports: Annotated[
            int | None,
            typer.Option(
                help="Serve /health, /ready and /metrics on each child from this port on: the sink on it, "
                "worker i on it + i, the source after the workers (the API's are on its own port)."
            ),
        ] = None,
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Broker, topology, sink, workers, and optionally a source and the API, supervised until Ctrl-C."""
        from confluent_kafka.admin import AdminClient

        from mambo.cli import _settings
        from mambo.commands.kafka import _bootstrap, _broker, _running, _until_signal
        from mambo.streams.kafka.broker import BrokerError
        from mambo.streams.kafka.supervisor import ChildSpec, Supervisor

        settings = _settings(config, data_dir)
        if source not in ("none", "replay", "exchange"):
            typer.echo(f"error: --source {source}: none, replay or exchange", err=True)
            raise typer.Exit(2)
        if source == "exchange" and not symbols:
            typer.echo("error: --source exchange needs --symbols", err=True)
            raise typer.Exit(2)
        if api and settings.clickhouse_dsn.startswith("chdb://"):
            typer.echo(
                "error: --api with the embedded ClickHouse (chdb): the sink's process holds its folder "
                "(one process per folder); set clickhouse.dsn to a server, or run `mambo api` after `up`",
                err=True,
            )
            raise typer.Exit(2)
        stop = _until_signal()
        bootstrap = _bootstrap(settings)
        data = settings.data_dir.resolve()
        data.mkdir(parents=True, exist_ok=True)

        broker = None
        try:
            AdminClient({"bootstrap.servers": bootstrap, "log_level": 0}).list_topics(timeout=3)
            typer.echo(f"kafka: answering at {bootstrap}")
        except Exception:
            broker = _broker(settings)  # exits 2 if the bootstrap is not a local address
            try:
                broker.start()
            except BrokerError as ex:
                typer.echo(f"error: {ex}", err=True)
                raise typer.Exit(1) from ex
            typer.echo(f"kafka: started {_running(broker)}")

        common = ["--data-dir", str(data), *(["--config", str(config)] if config else [])]
        env = {"MAMBO_KAFKA_BOOTSTRAP": bootstrap, "MAMBO_LOG_FORMAT": "json"}
        mambo = [sys.executable, "-m", "mambo.cli"]
        sup = Supervisor(data / "logs", typer.echo)

        def health(offset: int, child: str) -> list[str]:
            if health_ports is None:
                return []
            typer.echo(f"{child}: /health, /ready and /metrics on port {health_ports + offset}")
            return ["--health-port", str(health_ports + offset)]

        try:
            topo = sup.start(
                ChildSpec(
                    "topology", [*mambo, "topology", "apply", "--prefix", prefix, *common], env, restart=False
                )
            )
            if topo.wait() != 0:
                typer.echo(f"error: topology apply failed, see {sup.log_file('topology')}", err=True)
                raise typer.Exit(1)
            sup.check()
            sup.start(
                ChildSpec("sink", [*mambo, "sink", "--prefix", prefix, *common, *health(0, "sink")], env)
            )
            if api:
                sup.start(ChildSpec("api", [*mambo, "api", "--prefix", prefix, *common], env))
            for i in range(1, workers + 1):
                worker_health = health(i, f"worker-{i}")
                sup.start(
                    ChildSpec(
                        f"worker-{i}",
                        [*mambo, "worker", "--name", f"up-{i}", "--prefix", prefix, *common, *worker_health],
                        env,
                    )
                )
            source_health = health(workers + 1, "source") if source != "none" else []
            if source == "replay":
                args = ["kafka", "replay", "--speed", str(speed), "--prefix", prefix, *common, *source_health]
                sup.start(ChildSpec("source", [*mambo, *args], env, restart=False))
            elif source == "exchange":
                args = ["source", "--exchange", exchange, "--symbols", symbols, "--prefix", prefix, *common]
                args += source_health
                sup.start(
                    ChildSpec("source", [*mambo, *args, *(["--base-url", base_url] if base_url else [])], env)
                )
            typer.echo(f"up: {len(sup.pids())} processes running; Ctrl-C (or SIGTERM) stops them all")
            sup.run(stop)
        finally:
            typer.echo("up: stopping")
            sup.stop()
            if broker is not None:
                broker.stop()
                typer.echo("kafka: stopped")
        typer.echo("up: stopped")
