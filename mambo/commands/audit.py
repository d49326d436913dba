"""``mambo audit``: a thin front over :func:`mambo.audit.audit`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML settings file (see README).")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Where the embedded ClickHouse lives.")]


def register(app: typer.Typer) -> None:
    @app.command("audit")
    def audit_cmd(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
        """Check the invariants every history keeps (the history of `mambo sql`): one row per invariant
        with the rows checked, the violations and an example. Exits 1 on a violation, 0 when clean."""
        from rich.console import Console

        from mambo.audit import NoHistoryError, audit
        from mambo.cli import _settings
        from mambo.connectors.clickhouse import ClickHouseError, connect

        settings = _settings(config, data_dir)
        try:
            client = connect(settings.clickhouse_dsn, settings.clickhouse.database)
            report = audit(client, settings.clickhouse.database)
        except (ClickHouseError, NoHistoryError) as exc:  # say why, no traceback
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        console = Console()
        if not console.is_terminal:  # a pipe or CI: wide enough for the examples
            console = Console(width=200)
        console.print(report.table())
        console.print(report.summary(), style="green" if report.ok else "red")
        raise typer.Exit(0 if report.ok else 1)
