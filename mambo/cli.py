"""The ``mambo`` command: run the pipeline, query its history.

Each command is a thin front over one function in the library, so what the CLI does a test or the
API can do too. ``mambo --help`` lists them.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from mambo.logs import configure_logging
from mambo.settings import MamboSettings, load_settings

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Mambo: a Kafka-native streaming trading pipeline (embedded by default, Kafka when configured).",
)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML settings file (see README).")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Where the embedded ClickHouse lives.")]


def _settings(config: Path | None, data_dir: Path | None, **engine: Any) -> MamboSettings:
    try:
        settings = load_settings(config)
        if data_dir is not None:
            settings.data_dir = data_dir
        updates = {k: v for k, v in engine.items() if v is not None}
        if updates:
            settings.engine = type(settings.engine).model_validate(
                {**settings.engine.model_dump(), **updates}
            )
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: bad settings: {exc}", err=True)
        raise typer.Exit(2) from exc
    configure_logging(settings.log_format)
    return settings


def demo_timeframes(timeframe: str) -> tuple[str, ...]:
    """The demo's candles: 1s and 1m for the live view and the trading timeframe, each once."""
    return tuple(dict.fromkeys(("1s", "1m", timeframe)))


@app.command()
def demo(
    data: Annotated[
        Path | None, typer.Option(help="Trades CSV (default: the bundled Binance recording).")
    ] = None,
    quotes: Annotated[
        Path | None, typer.Option(help="Book-top CSV (default: the bundled recording).")
    ] = None,
    symbols: Annotated[
        str | None, typer.Option(help="Comma-separated symbols or exchange:symbol keys.")
    ] = None,
    strategies: Annotated[
        str, typer.Option(help="Comma-separated strategy names, or module:Class of your own.")
    ] = "sma_cross,rsi_reversion,macd_cross,bollinger_breakout",
    timeframe: Annotated[str, typer.Option(help="The timeframe strategies trade on.")] = "1s",
    speed: Annotated[
        float,
        typer.Option(help="Replay speed × real time; 0 = as fast as it goes on paper, 40 on the exchange."),
    ] = 0.0,
    batch_size: Annotated[int, typer.Option(help="Trades per batch (paper).")] = 2_000,
    venue: Annotated[
        str,
        typer.Option(
            help="exchange: a local Binance-speaking exchange in this process replays the recording; market "
            "data comes in through ccxt.pro and orders go out through ccxt, as in a live run (spot markets). "
            "paper: the recording straight into the pipeline, filled by the paper broker on the next trade; "
            "deterministic, every market."
        ),
    ] = "exchange",
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Run the whole pipeline in one process on recorded market data, with live progress.

    By default it trades on a local exchange through ccxt, the code of a live run (--venue paper: the
    fast deterministic replay)."""
    from mambo.runner import run_demo

    if venue not in ("exchange", "paper"):
        typer.echo("error: --venue must be exchange or paper", err=True)
        raise typer.Exit(2)
    settings = _settings(
        config,
        data_dir,
        strategies=strategies,
        trading_timeframe=timeframe,
        timeframes=demo_timeframes(timeframe),
    )
    code = asyncio.run(
        run_demo(
            settings,
            data=data,
            quotes=quotes,
            symbols=symbols,
            speed=speed,
            batch_size=batch_size,
            venue="paper" if venue == "paper" else "exchange",
        )
    )
    raise typer.Exit(code)


@app.command()
def sql(
    query: Annotated[
        str, typer.Argument(help='SQL, e.g. "SELECT strategy, sum(realized_pnl) FROM fills GROUP BY 1"')
    ],
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="table (the default) or csv; or end the query with FORMAT <any>."),
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Query the pipeline's history in ClickHouse (the embedded one after a demo). Values print as
    ClickHouse writes them; a query that ends in FORMAT <name> (JSONEachRow, Parquet, Pretty, ...)
    prints ClickHouse's own output in that format, byte for byte."""
    from mambo.connectors.clickhouse import connect, query_format, query_output

    if fmt not in (None, "table", "csv"):
        typer.echo("error: --format must be table or csv", err=True)
        raise typer.Exit(2)
    settings = _settings(config, data_dir)
    try:
        client = connect(settings.clickhouse_dsn, settings.clickhouse.database)
        named = query_format(client, query)
        if named is None:
            out = query_output(client, query, "csv" if fmt == "csv" else "table")
        else:  # the query's own format, as ClickHouse writes it (unless --format contradicts it)
            out = client.raw_query(query) if fmt is None else b""
    except Exception as exc:  # a bad query is the user's to fix: say why, no traceback
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if named is not None and fmt is not None:
        typer.echo(
            f"error: the query asks for FORMAT {named} and --format for {fmt}: give one of them", err=True
        )
        raise typer.Exit(2)
    sys.stdout.buffer.write(out)
    sys.stdout.flush()


# Each area keeps its commands in mambo/commands/<area>.py with a ``register(app)`` function that
# defines them (heavy imports inside the command bodies, so ``mambo --help`` stays fast). One line here
# per area.
_AREAS: tuple[str, ...] = (
    "mambo.commands.api",
    "mambo.commands.kafka",
    "mambo.commands.backtest",
    "mambo.commands.train",
    "mambo.commands.exchange",
    "mambo.commands.trade",
    "mambo.commands.up",
    "mambo.commands.audit",
    "mambo.commands.history",
    "mambo.commands.notify",
    "mambo.commands.ctl",
)

for _area in _AREAS:
    importlib.import_module(_area).register(app)


def main() -> None:
    app(prog_name="mambo")


if __name__ == "__main__":
    main()
