"""``mambo notify``: deliver the ``notifications`` outbox to the ``[notify]`` channels.

A process of its own (:mod:`mambo.notify`): it reads the outbox (``--source kafka``: the topic, in
consumer group ``notify.group``, committing after delivery; ``file``: the JSON lines an embedded run
appends to ``--outbox-file``; ``clickhouse``: the history's ``notifications`` table), delivers each
notification to every channel through apprise with retries and backoff, drops repeats by event id
(``<data_dir>/notify/delivered.sqlite``), and writes what it gives up to
``<data_dir>/notify/dead_letters.jsonl``. The pipeline never waits for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML settings file (see README).")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Where Mambo keeps its state.")]


def register(app: typer.Typer) -> None:
    @app.command()
    def notify(
        source: Annotated[
            str,
            typer.Option(
                help="kafka | file | clickhouse (default: kafka when kafka.bootstrap is set, else file)."
            ),
        ] = "",
        outbox_file: Annotated[
            Path | None,
            typer.Option(help="--source file: the JSON lines (default <data_dir>/notify/outbox.jsonl)."),
        ] = None,
        prefix: Annotated[str, typer.Option(help="Namespace for topic and group names.")] = "",
        idle_exit: Annotated[
            float | None,
            typer.Option(help="Exit when nothing came and nothing is pending this many seconds."),
        ] = None,
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Deliver trade notifications (fills, rejections, kill switch, drawdown, feeds) to Telegram,
        Slack, Discord, email or webhooks; retried with backoff, each delivered once."""
        from mambo.cli import _settings
        from mambo.commands.kafka import _bootstrap, _until_signal
        from mambo.notify.delivery import DeliveryLog, Notifier, RetryPolicy, make_channels
        from mambo.notify.outbox import ClickHouseOutbox, FileOutbox, KafkaOutbox, Outbox, run_notifier

        settings = _settings(config, data_dir)
        cfg = settings.notify
        source = source or ("kafka" if settings.kafka.bootstrap else "file")
        if source not in ("kafka", "file", "clickhouse"):
            typer.echo(f"error: --source {source}: kafka, file or clickhouse", err=True)
            raise typer.Exit(2)
        if not cfg.channels:
            typer.echo("error: no channels: set notify.channels (apprise URLs) in the settings", err=True)
            raise typer.Exit(2)
        try:
            channels = make_channels([c.get_secret_value() for c in cfg.channels], cfg.timeout_seconds)
        except ValueError as exc:  # names the channel by index, never by its URL
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        folder = (settings.data_dir / "notify").resolve()
        delivered = DeliveryLog(folder / "delivered.sqlite")
        policy = RetryPolicy(
            retry_seconds=cfg.retry_seconds,
            retry_max_seconds=cfg.retry_max_seconds,
            max_attempts=cfg.max_attempts,
            max_per_minute=cfg.max_per_minute,
            max_pending=cfg.max_pending,
        )
        notifier = Notifier(channels, policy, cfg.events, delivered, folder / "dead_letters.jsonl")
        outbox: Outbox
        if source == "kafka":
            outbox = KafkaOutbox(_bootstrap(settings), cfg.group, prefix)
        elif source == "file":
            outbox = FileOutbox(outbox_file or folder / "outbox.jsonl", delivered)
        else:
            from mambo.connectors.clickhouse import connect

            outbox = ClickHouseOutbox(
                connect(settings.clickhouse_dsn, settings.clickhouse.database),
                settings.clickhouse.database,
                delivered,
            )
        typer.echo(
            f"notify: {len(channels)} channels ({', '.join(c.label for c in channels)}), source {source}"
        )
        run_notifier(outbox, notifier, _until_signal(), idle_exit)
        s = notifier.stats
        typer.echo(
            f"notify: delivered {s.delivered}, failed sends {s.failures}, dead letters {s.dead},"
            f" duplicates dropped {s.duplicates}, kinds skipped {s.skipped}"
        )
        delivered.close()
