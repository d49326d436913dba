"""The distributed runtime's commands: ``mambo kafka start|stop|status|fetch|replay``,
``mambo topology plan|apply``, ``mambo worker`` and ``mambo sink``.

Each is a thin front over :mod:`mambo.streams.kafka`; the broker's state lives in
``<data_dir>/kafka`` and the bootstrap address comes from ``kafka.bootstrap`` (default
``127.0.0.1:9092``, the local broker's). ``mambo kafka start --brokers 3`` starts a cluster there
instead (one folder per node, ports from ``kafka.bootstrap``: the ones it lists, or consecutive from
its first); ``stop`` and ``status`` then act on every node.

``worker``, ``sink``, ``source`` and ``kafka replay`` serve ``/health`` and ``/ready`` on
``--health-port`` (``MAMBO_HEALTH_PORT``) when given (:mod:`mambo.streams.health`): a worker or the
sink is ready when it holds partitions whose lag is at most ``--ready-max-lag`` messages (the sink:
and ClickHouse answers); a source when the brokers answer. ``worker --name @hostname`` names the worker
after its host: one stable, distinct name per container or pod (compose ``--scale``, a StatefulSet).
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from mambo.settings import MamboSettings
    from mambo.streams.health import Check, HealthServer
    from mambo.streams.kafka.broker import KafkaBroker
    from mambo.streams.kafka.cluster import KafkaCluster

__all__ = ["register"]

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML settings file (see README).")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Where Mambo keeps its state.")]
PrefixOpt = Annotated[str, typer.Option(help="Namespace for topic and group names (several pipelines).")]
IdleOpt = Annotated[float | None, typer.Option(help="Exit after this many idle seconds (batch runs).")]
PartitionsOpt = Annotated[int | None, typer.Option(help="Partitions of keyed topics (kafka.partitions).")]
HealthPortOpt = Annotated[
    int | None,
    typer.Option(
        envvar="MAMBO_HEALTH_PORT", help="Serve /health, /ready and /metrics on this port (default: none)."
    ),
]
MaxLagOpt = Annotated[
    int, typer.Option(envvar="MAMBO_READY_MAX_LAG", min=0, help="/ready: most messages of lag allowed.")
]
LOCAL = "127.0.0.1:9092"


def _settings(config: Path | None, data_dir: Path | None) -> MamboSettings:
    from mambo.cli import _settings as load

    return load(config, data_dir)


def _bootstrap(settings: MamboSettings) -> str:
    return settings.kafka.bootstrap or LOCAL


def _broker(settings: MamboSettings, brokers: int | None = None) -> KafkaBroker | KafkaCluster:
    """The local broker, or cluster when ``brokers`` > 1 or the folder holds one already."""
    from mambo.streams.kafka.broker import BrokerError, KafkaBroker
    from mambo.streams.kafka.cluster import KafkaCluster

    ports = []
    for address in _bootstrap(settings).split(","):
        host, _, port = address.strip().rpartition(":")
        if host not in ("127.0.0.1", "localhost"):
            typer.echo(f"error: kafka.bootstrap {_bootstrap(settings)} is not a local broker", err=True)
            raise typer.Exit(2)
        ports.append(int(port))
    folder = (settings.data_dir / "kafka").resolve()
    recorded = KafkaCluster.recorded(folder)
    size = brokers or (len(recorded["nodes"]) if recorded else 1)
    if recorded is None and size == 1:
        return KafkaBroker(folder, port=ports[0])
    if recorded is None and (folder / "data").exists():
        typer.echo(f"error: {folder} holds a single broker's data; choose another --data-dir", err=True)
        raise typer.Exit(1)
    try:
        return KafkaCluster(
            folder, size, ports if len(ports) == size else [ports[0] + i for i in range(size)]
        )
    except BrokerError as ex:
        typer.echo(f"error: {ex}", err=True)
        raise typer.Exit(1) from ex


def _running(broker: KafkaBroker | KafkaCluster) -> str:
    """Where a started broker (or each node of a cluster) runs, with its pid and log."""
    from mambo.streams.kafka.broker import KafkaBroker

    if isinstance(broker, KafkaBroker):
        return f"at {broker.bootstrap} (pid {broker.pid()}), log {broker.log_file}"
    return f"as a cluster of {len(broker.nodes)} brokers at {broker.bootstrap}" + "".join(
        f"\n  node {n.node_id}: {n.bootstrap} (pid {n.pid()}), log {n.log_file}" for n in broker.nodes
    )


def health_server(port: int | None, checks: dict[str, Callable[[], Check]]) -> HealthServer | None:
    """Start ``/health`` and ``/ready`` on ``port`` with ``checks`` (each built by its factory here),
    or nothing when no port is given. A port that cannot be bound exits 1 with the reason."""
    from mambo.streams.health import HealthServer

    if port is None:
        return None
    try:
        server = HealthServer(port)
    except (OSError, ValueError) as ex:
        typer.echo(f"error: cannot serve health on port {port}: {ex}", err=True)
        raise typer.Exit(1) from ex
    for name, make in checks.items():
        server.add_check(name, make())
    return server.start()


def _until_signal() -> threading.Event:
    import structlog

    stop = threading.Event()

    def handler(signum: int, _: object) -> None:
        structlog.get_logger("mambo").info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    return stop


def register(app: typer.Typer) -> None:
    kafka = typer.Typer(no_args_is_help=True, help="The local Apache Kafka broker (KRaft, no Docker).")
    topology = typer.Typer(no_args_is_help=True, help="Kafka topics and ClickHouse tables of the registry.")
    app.add_typer(kafka, name="kafka")
    app.add_typer(topology, name="topology")

    @kafka.command()
    def start(
        brokers: Annotated[
            int | None,
            typer.Option(min=1, help="Brokers (3: a replicated cluster; default: the folder's, or 1)."),
        ] = None,
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Start a broker (or a cluster) on 127.0.0.1 and wait until it answers (jars fetched once)."""
        from mambo.streams.kafka.broker import BrokerError

        settings = _settings(config, data_dir)
        broker = _broker(settings, brokers)
        try:
            broker.start()
        except BrokerError as ex:
            typer.echo(f"error: {ex}", err=True)
            raise typer.Exit(1) from ex
        typer.echo(f"kafka running {_running(broker)}")
        if "," in broker.bootstrap and _bootstrap(settings) != broker.bootstrap:  # reach it with a node down
            typer.echo(f"set MAMBO_KAFKA_BOOTSTRAP={broker.bootstrap}")

    @kafka.command()
    def stop(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
        """Stop the local broker (every node of a cluster) cleanly."""
        broker = _broker(_settings(config, data_dir))
        typer.echo("kafka stopped" if broker.stop() else "kafka was not running")

    @kafka.command()
    def status(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
        """Whether the local broker (every node of a cluster) runs and answers (exit 1 if not)."""
        from mambo.streams.kafka.broker import KafkaBroker

        broker = _broker(_settings(config, data_dir))
        nodes = [broker] if isinstance(broker, KafkaBroker) else broker.nodes
        healthy = True
        for node in nodes:
            pid = node.pid()
            name = "kafka" if isinstance(broker, KafkaBroker) else f"kafka node {node.node_id}"
            if pid is None:
                typer.echo(f"{name} not running")
                healthy = False
                continue
            answers = node.ready()
            healthy &= answers
            typer.echo(f"{name} pid {pid} at {node.bootstrap}: {'answering' if answers else 'NOT answering'}")
        raise typer.Exit(0 if healthy else 1)

    @kafka.command()
    def fetch() -> None:
        """Fetch the broker's jars with Maven into the cache (done by start when missing)."""
        from mambo.streams.kafka.broker import fetch_jars

        typer.echo(f"kafka jars in {fetch_jars()}")

    @kafka.command()
    def replay(
        speed: Annotated[float, typer.Option(help="Multiple of real time; 0 = as fast as it goes.")] = 0.0,
        prefix: PrefixOpt = "",
        health_port: HealthPortOpt = None,
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Publish the bundled Binance recording (trades and book tops) to md.trades and md.quotes."""
        from mambo.streams.health import kafka_check
        from mambo.streams.kafka.replay import publish_recording

        settings = _settings(config, data_dir)
        health_server(health_port, {"kafka": lambda: kafka_check(_bootstrap(settings))})
        n = publish_recording(_bootstrap(settings), speed=speed, prefix=prefix)
        typer.echo(f"published {n:,} trades")

    def _topology(
        apply_changes: bool, partitions: int | None, prefix: str, config: Path | None, data_dir: Path | None
    ) -> None:
        from confluent_kafka.admin import AdminClient

        from mambo.streams.kafka import topology as topo
        from mambo.streams.kafka.broker import min_insync

        settings = _settings(config, data_dir)
        admin = AdminClient({"bootstrap.servers": _bootstrap(settings)})
        n = partitions or settings.kafka.partitions
        try:
            live = len(admin.list_topics(timeout=15).brokers)
            changes = (topo.apply if apply_changes else topo.plan)(admin, n, prefix)
        except Exception as ex:
            typer.echo(f"error: {ex}", err=True)
            raise typer.Exit(1) from ex
        rf = topo.replication_for(live)
        insync = f", min.insync.replicas {min_insync(rf)}" if rf > 1 else ""
        typer.echo(f"{live} live brokers: topics replicated {rf}x{insync}")
        accounts = sorted(settings.accounts)
        typer.echo(
            f"market stages: md.trades and md.candles, {n} partitions keyed by market (up to {n} workers); "
            f"account stages: account.feed, {n} partitions keyed by account ({len(accounts)} account"
            f"{'s' if len(accounts) > 1 else ''}: {', '.join(accounts)})"
        )
        for c in changes:
            typer.echo(str(c))
        if apply_changes:
            from mambo.connectors.clickhouse import connect, ensure_schema

            settings.data_dir.mkdir(parents=True, exist_ok=True)
            db = settings.clickhouse.database
            ensure_schema(connect(settings.clickhouse_dsn, db), db)
            typer.echo(f"{len(changes)} topic changes applied; ClickHouse tables in {db} are current")
        else:
            typer.echo(f"{len(changes)} topic changes to apply" if changes else "topics are current")

    @topology.command("plan")
    def plan_cmd(
        partitions: PartitionsOpt = None,
        prefix: PrefixOpt = "",
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Show what ``apply`` would change on the broker."""
        _topology(False, partitions, prefix, config, data_dir)

    @topology.command("apply")
    def apply_cmd(
        partitions: PartitionsOpt = None,
        prefix: PrefixOpt = "",
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Create or update the topics (idempotent) and the ClickHouse tables."""
        _topology(True, partitions, prefix, config, data_dir)

    @topology.command("export")
    def export_cmd(
        fmt: Annotated[
            str, typer.Option("--format", help="strimzi: KafkaTopic resources (YAML).")
        ] = "strimzi",
        partitions: PartitionsOpt = None,
        replicas: Annotated[
            int, typer.Option(min=1, help="Replicas of each topic (3: min.insync.replicas 2).")
        ] = 3,
        cluster: Annotated[
            str, typer.Option(help="The Strimzi Kafka cluster (strimzi.io/cluster).")
        ] = "mambo",
        namespace: Annotated[str | None, typer.Option(help="metadata.namespace (default: none).")] = None,
        prefix: PrefixOpt = "",
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Print the registry's topics as resources for a Kubernetes operator (no broker needed)."""
        from mambo.streams.kafka import strimzi
        from mambo.streams.kafka.topology import wanted_topics

        if fmt != "strimzi":
            typer.echo(f"error: --format {fmt}: strimzi is the one format", err=True)
            raise typer.Exit(2)
        settings = _settings(config, data_dir)
        specs = wanted_topics(partitions or settings.kafka.partitions, prefix, replicas)
        try:
            docs = strimzi.kafka_topics(specs, cluster, namespace)
        except ValueError as ex:
            typer.echo(f"error: {ex}", err=True)
            raise typer.Exit(2) from ex
        typer.echo(strimzi.to_yaml(docs), nl=False)

    @app.command()
    def worker(
        name: Annotated[str, typer.Option(help="Stable per worker: its transactional id.")] = "1",
        batch_size: Annotated[int, typer.Option(help="Trades per transaction, at most.")] = 10_000,
        idle_exit: IdleOpt = None,
        prefix: PrefixOpt = "",
        trace: Annotated[
            Path | None, typer.Option(help="Write each batch's timings here (JSON lines) at exit.")
        ] = None,
        runtime: Annotated[
            str, typer.Option(help="native (confluent-kafka transactions) or faust (mambo.agents).")
        ] = "native",
        health_port: HealthPortOpt = None,
        ready_max_lag: MaxLagOpt = 100_000,
        markets: Annotated[
            str | None,
            typer.Option(
                help="The run's markets, comma-separated exchange:symbol keys: an account over every "
                "market waits for each of them (event-time order; trades of others are dead-lettered). "
                "Default: the accounts' own markets, else the markets seen so far."
            ),
        ] = None,
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Run the pipeline's stages on this worker's share of the partitions: the market stages on
        md.trades' and md.candles', the account stages on account.feed's, exactly once (or at least
        once: kafka.processing_guarantee)."""
        from mambo.streams.health import kafka_check, kafka_lag_check
        from mambo.streams.kafka.worker import INPUTS, Worker

        settings = _settings(config, data_dir)
        if runtime not in ("native", "faust"):
            typer.echo(f"error: --runtime must be native or faust, not {runtime!r}", err=True)
            raise typer.Exit(2)
        try:
            accounts = settings.account_configs()
            known = settings.run_markets(markets)
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        name = socket.gethostname() if name == "@hostname" else name
        bootstrap = _bootstrap(settings)
        if runtime == "faust":
            health_server(health_port, {"kafka": lambda: kafka_check(bootstrap)})
            from mambo.agents.app import faust_worker

            faust_worker(
                settings, name=name, batch_size=batch_size, prefix=prefix, idle_exit=idle_exit, markets=known
            )
            return
        from mambo.notify import notifications

        w = Worker(
            bootstrap,
            accounts,
            known_markets=known,
            extra=notifications(settings),
            name=name,
            batch_size=batch_size,
            prefix=prefix,
            guarantee=settings.kafka.processing_guarantee,
            trace=trace,
        )

        def assigned() -> list[tuple[str, int]]:
            return [(prefix + t, p) for t in INPUTS for p in list(w.assigned)]

        if health_server(
            health_port, {"partitions": lambda: kafka_lag_check(bootstrap, w.group, assigned, ready_max_lag)}
        ):
            from mambo.metrics import watch_group

            watch_group(bootstrap, w.group, INPUTS, lambda: bool(w.assigned), prefix)  # lag on /metrics
        w.run(_until_signal(), idle_exit)

    @app.command()
    def sink(
        batch_size: Annotated[int, typer.Option(help="Messages per insert-and-commit, at most.")] = 20_000,
        idle_exit: IdleOpt = None,
        prefix: PrefixOpt = "",
        health_port: HealthPortOpt = None,
        ready_max_lag: MaxLagOpt = 100_000,
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Consume every topic into ClickHouse (offsets committed after each good insert)."""
        from mambo.connectors.clickhouse import ClickHouseSink, connect, ensure_schema
        from mambo.streams.health import clickhouse_check, kafka_lag_check
        from mambo.streams.kafka.sink import KafkaSink

        settings = _settings(config, data_dir)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = settings.clickhouse.database
        client = connect(settings.clickhouse_dsn, db)
        ensure_schema(client, db)
        ch = ClickHouseSink(client, db, batch_rows=settings.clickhouse.batch_rows)
        group, bootstrap = "mambo-sink", _bootstrap(settings)
        sink = KafkaSink(bootstrap, ch, group=group, batch_size=batch_size, prefix=prefix)

        def assigned() -> list[tuple[str, int]]:
            return list(sink.assigned)  # kept by the sink's own thread: never call into its consumer

        if health_server(
            health_port,
            {
                "partitions": lambda: kafka_lag_check(bootstrap, prefix + group, assigned, ready_max_lag),
                "clickhouse": lambda: clickhouse_check(settings.clickhouse_dsn),
            },
        ):
            from mambo.metrics import watch_group

            watch_group(bootstrap, prefix + group, sink.topics, lambda: sink.messages > 0, prefix)  # lag
        sink.run(_until_signal(), idle_exit)
