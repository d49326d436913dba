"""``mambo import`` (files traders hold, into the ClickHouse history) and ``mambo download`` (an
exchange's candles over ccxt REST, incrementally): the two ways to fill the history that
``mambo backtest --data history`` reads. The work is in :mod:`mambo.connectors.history`."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from mambo.connectors.history import Loaded

__all__ = ["register"]

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML settings file (see README).")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Where the embedded ClickHouse lives.")]
_DAY_MS = 86_400_000


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _when(ns: int | None) -> str:
    if ns is None:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _progress() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    return Progress(*columns, transient=True)


def _sink(settings: Any) -> Any:
    from mambo.connectors.clickhouse import ClickHouseSink, connect, ensure_schema

    db = settings.clickhouse.database
    try:
        client = connect(settings.clickhouse_dsn, db)
        ensure_schema(client, db)
    except Exception as exc:  # ClickHouse cannot be opened: say why, no traceback
        raise _fail(f"cannot open the history: {exc}", 1) from exc
    return ClickHouseSink(client, db)


def _summary(loaded: list[Loaded]) -> None:
    """Per market and kind: rows read, new in the history, the time range and the gaps found."""
    from rich.console import Console
    from rich.table import Table

    groups: dict[tuple[str, str], list[Loaded]] = defaultdict(list)
    for item in loaded:
        groups[(item.key, item.what)].append(item)
    table = Table(title="imported")
    for col in ("market", "data", "read", "new", "from", "to", "gaps"):
        table.add_column(col, justify="right" if col in ("read", "new") else "left")
    for (key, what), items in sorted(groups.items()):
        holes = [g for i in items for g in i.gaps]
        gap_text = "none" if not holes else (
            f"{len(holes)} ({sum(n for _, n in holes):,} bars), first at {_when(holes[0][0])}"
        )  # fmt: skip
        table.add_row(key, what, f"{sum(i.rows for i in items):,}", f"{sum(i.new for i in items):,}",
                      _when(min(i.first for i in items)), _when(max(i.last for i in items)),
                      gap_text if "candles" in what else "-")  # fmt: skip
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)


def register(app: typer.Typer) -> None:
    @app.command("import")
    def import_cmd(
        paths: Annotated[list[Path], typer.Argument(help="Files, or folders (e.g. user_data/data/binance).")],
        symbols: Annotated[
            str | None, typer.Option(help="The market of files whose name gives none (e.g. ETH/BTC).")
        ] = None,
        exchange: Annotated[
            str | None, typer.Option(help="Exchange of files whose folder names none (default binance).")
        ] = None,
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Load candle and trade files (freqtrade, ccxt, Binance bulk data, CSV, Parquet) into the
        ClickHouse history, each candle and trade once however often it is run; prints per market what
        was loaded, its time range and the gaps found."""
        from mambo.cli import _settings
        from mambo.connectors.clickhouse import ClickHouseError
        from mambo.connectors.history import import_market_data
        from mambo.formats import DataFormatError, find_data_files, read_market_file

        files = list(find_data_files(paths))
        missing = [str(p) for p in files if not p.exists()]
        if missing:
            raise _fail(f"no such file or folder: {', '.join(missing)}")
        if not files:
            raise _fail(f"no data files in {', '.join(map(str, paths))}")
        sink = _sink(_settings(config, data_dir))
        loaded, problems = [], []
        with _progress() as bar:
            task = bar.add_task("import", total=len(files))
            for path in files:
                bar.update(task, description=f"import {path.name}")
                try:
                    data = read_market_file(path)
                    typer.echo(data.describe())
                    loaded.append(import_market_data(sink, data, exchange, symbols))
                    sink.flush()
                except (DataFormatError, ValueError) as exc:  # a bad file is skipped, and said
                    problems.append(str(exc))
                    typer.echo(f"skipped: {exc}", err=True)
                except ClickHouseError as exc:  # the history cannot take it: stop, say why
                    raise _fail(str(exc), 1) from exc
                bar.advance(task)
        if loaded:
            _summary(loaded)
        typer.echo(f"{len(loaded)} file(s) imported, {len(problems)} skipped")
        if problems and not loaded:
            raise typer.Exit(2)

    @app.command("download")
    def download_cmd(
        symbols: Annotated[str, typer.Option(help="Comma-separated ccxt symbols, e.g. BTC/USDT,ETH/BTC.")],
        exchange: Annotated[str, typer.Option(help="ccxt exchange id.")] = "binance",
        timeframes: Annotated[str, typer.Option(help="Comma-separated timeframes, e.g. 1m,1h.")] = "1m",
        days: Annotated[float, typer.Option(help="How far back from --until to start.")] = 30.0,
        since: Annotated[str | None, typer.Option(help="Start (ISO, UTC) instead of --days.")] = None,
        until: Annotated[
            str | None, typer.Option(help="End (ISO, UTC, exclusive; default: the exchange's time now).")
        ] = None,
        page: Annotated[int, typer.Option(help="Candles per request (Binance allows 1000).")] = 1000,
        base_url: Annotated[
            str | None, typer.Option("--base-url", help="Talk to the local exchange at this URL.")
        ] = None,
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Download closed candles over ccxt REST into the ClickHouse history, rate limited, a page at
        a time: a run resumes where the history ends, so an interrupted one loses nothing and a repeated
        one adds only what is new (freqtrade's download-data)."""
        from mambo.cli import _settings
        from mambo.schemas.events import timeframe_ns

        chosen = [s.strip() for s in symbols.split(",") if s.strip()]
        tfs = [t.strip() for t in timeframes.split(",") if t.strip()]
        try:
            for tf in tfs:
                timeframe_ns(tf)
            lo = _ms(since) if since else None
            hi = _ms(until) if until else None
        except ValueError as exc:
            raise _fail(str(exc)) from exc
        if not chosen or not tfs:
            raise _fail("give --symbols and --timeframes")
        if page < 1:
            raise _fail("--page must be >= 1")
        settings = _settings(config, data_dir)
        sink = _sink(settings)
        try:
            asyncio.run(_download(settings, sink, exchange, chosen, tfs, days, lo, hi, page, base_url))
        except (OSError, RuntimeError, ValueError) as exc:
            raise _fail(str(exc), 1) from exc


def _ms(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an ISO date or time (e.g. 2024-08-09T00:00)") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


async def _download(
    settings: Any,
    sink: Any,
    exchange: str,
    symbols: list[str],
    timeframes: list[str],
    days: float,
    since: int | None,
    until: int | None,
    page: int,
    base_url: str | None,
) -> None:
    from mambo.connectors.ccxt_client import make_exchange
    from mambo.connectors.errors import with_retry
    from mambo.connectors.markets import save_markets

    client = make_exchange(exchange, base_url=base_url)
    try:
        await with_retry(client.load_markets, what="load_markets", client=client)
        save_markets(settings.data_dir, exchange, client.markets, client.precisionMode)  # backtests' rules
        unknown = [s for s in symbols if s not in client.markets]
        if unknown:
            raise ValueError(f"{exchange} has no market {', '.join(unknown)}")
        end = until if until is not None else int(await with_retry(client.fetch_time, what="fetch_time"))
        start = since if since is not None else end - int(days * _DAY_MS)
        with _progress() as bar:
            for symbol in symbols:
                for tf in timeframes:
                    await _download_market(client, sink, exchange, symbol, tf, start, end, page, bar)
    finally:
        sink.flush()
        await client.close()


async def _download_market(
    client: Any, sink: Any, exchange: str, symbol: str, tf: str, start: int, end: int, page: int, bar: Any
) -> None:
    """Closed ``tf`` candles of one market opening in ``[start, end)`` (ms) that the history lacks: from
    where it ends (or ``start``), a page at a time, each page stored before the next is fetched."""
    from mambo.connectors.errors import with_retry
    from mambo.connectors.history import candle_span
    from mambo.schemas.events import timeframe_ns

    step = timeframe_ns(tf) // 1_000_000
    span = candle_span(sink.client, sink.database, exchange, symbol, tf)
    first = -(-start // step) * step
    if span.last is not None and span.last // 1_000_000 >= first:
        first = span.last // 1_000_000 + step  # resume after the last stored bar
        typer.echo(f"{exchange} {symbol} {tf}: resuming after {_when(span.last)}")
    stop = end - step + 1  # closed bars only: the one still forming at ``end`` is left out
    task = bar.add_task(f"{symbol} {tf}", total=max(0, (stop - first + step - 1) // step))
    new, cursor = 0, first
    while cursor < stop:

        async def fetch(at: int = cursor) -> list[list[Any]]:
            rows: list[list[Any]] = await client.fetch_ohlcv(symbol, tf, since=at, limit=page)
            return rows

        fetched = await with_retry(fetch, what=f"fetch_ohlcv {symbol}", client=client)
        rows = [r for r in fetched if cursor <= r[0] < stop]
        if not rows:
            break  # nothing opens after the cursor
        new += _store_page(sink, exchange, symbol, tf, rows)
        sink.flush()  # a page at a time: an interruption keeps what was fetched
        last = int(rows[-1][0])
        typer.echo(f"{exchange} {symbol} {tf}: stored up to {_when(last * 1_000_000)}")
        bar.update(task, completed=(last - first) // step + 1)
        cursor = last + step
    span = candle_span(sink.client, sink.database, exchange, symbol, tf)
    typer.echo(
        f"{exchange} {symbol} {tf}: {new:,} new candles; history {span.count:,} candles, "
        f"{_when(span.first)} to {_when(span.last)}"
    )


def _store_page(sink: Any, exchange: str, symbol: str, tf: str, rows: list[list[Any]]) -> int:
    """ccxt OHLCV rows into the history (those it lacks); how many were new."""
    import numpy as np

    from mambo.connectors.history import store_candles

    arr = np.array([[np.nan if v is None else v for v in r[:6]] for r in rows], dtype=np.float64)
    arr[:, 5] = np.nan_to_num(arr[:, 5])  # ccxt gives None for a volume the exchange left out
    cols: dict[str, np.ndarray] = {
        c: arr[:, i + 1] for i, c in enumerate(("open", "high", "low", "close", "volume"))
    }
    cols["open_time"] = np.array([int(r[0]) for r in rows], np.int64) * 1_000_000
    return store_candles(sink, exchange, symbol, tf, cols)
