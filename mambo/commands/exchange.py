"""``mambo exchange`` (the local Binance-speaking exchange), ``mambo source`` (live market data from a
ccxt exchange into the pipeline) and ``mambo backfill`` (history over REST for a date range)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from mambo.commands.kafka import HealthPortOpt, PrefixOpt, health_server

__all__ = ["register"]

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML settings file (see README).")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Where the embedded ClickHouse lives.")]
BaseUrlOpt = Annotated[
    str | None,
    typer.Option("--base-url", help="Talk to the local exchange at this URL (e.g. http://127.0.0.1:8765)."),
]
SymbolsOpt = Annotated[str | None, typer.Option(help="Comma-separated ccxt symbols, e.g. BTC/USDT,ETH/USDT.")]


def _client(exchange: str, base_url: str | None, sandbox: bool = False) -> Any:
    from mambo.connectors.ccxt_client import make_exchange
    from mambo.connectors.exchange_broker import ExchangeCredentials

    creds = ExchangeCredentials()
    if sandbox and not creds.complete:
        raise typer.BadParameter("--sandbox needs MAMBO_EXCHANGE__API_KEY and MAMBO_EXCHANGE__SECRET")
    return make_exchange(
        exchange, base_url=base_url, api_key=creds.api_key, secret=creds.secret, sandbox=sandbox
    )


def _time_ms(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r} is not an ISO date or time (e.g. 2024-08-09T00:00)") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _serve_usdm(
    recording: Path, host: str, port: int, speed: float, history_seconds: float, secret: str, balance: str
) -> None:
    """``mambo exchange --usdm``: the local exchange's Binance USD-M side on a recording."""
    from mambo.exchange.binance.futures import FuturesExchange, load_usdm_recording

    try:
        events = load_usdm_recording(recording)
        # the replay clock waits for the first client: the time it takes to start one (another
        # terminal, a process's imports) is none of the recording's
        local = FuturesExchange(events, api_secret=secret, balance=balance, speed=speed,
                                history_seconds=history_seconds, wait_for_client=True)  # fmt: skip
    except (OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc

    names = [m.trades.market.symbol for m in local.markets.values()]
    _serve_until_stopped(
        local,
        host,
        port,
        lambda url: [
            f"local exchange (Binance USD-M futures) on {url} (markets: {', '.join(names)})",
            f"  the replay ({speed:g}x) starts when the first client connects"
            if speed > 0
            else "  the replay is paused (--speed 0)",
            f"  mambo source --exchange binanceusdm --symbols {names[0]} --base-url {url}",
        ],
    )


def _serve_until_stopped(local: Any, host: str, port: int, banner: Callable[[str], list[str]]) -> None:
    """Serve a local exchange (its replay started) until Ctrl-C, saying where and when the recording
    has been replayed."""
    from mambo.exchange import serve

    async def main() -> None:
        runner, url = await serve(local, host, port)
        for line in banner(url):
            typer.echo(line)
        try:
            await local.finished.wait()
            typer.echo("the recording has been replayed; still serving (Ctrl-C to stop)")
            await asyncio.Event().wait()
        finally:
            await local.stop()
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


def register(app: typer.Typer) -> None:
    @app.command("exchange")
    def exchange_cmd(
        host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port (0: any free one).")] = 8765,
        speed: Annotated[float, typer.Option(help="Replay speed × real time (0: paused).")] = 1.0,
        history_seconds: Annotated[
            float, typer.Option(help="Seconds of the recording that are already history at start.")
        ] = 60.0,
        trades: Annotated[
            Path | None, typer.Option(help="Trades CSV (default: the bundled recording).")
        ] = None,
        quotes: Annotated[
            Path | None, typer.Option(help="Book-top CSV (default: the bundled recording).")
        ] = None,
        depth: Annotated[
            Path | None,
            typer.Option(
                help="A recorded multi-level book (e.g. tests/fixtures/binance_spot_depth10.jsonl.gz)."
            ),
        ] = None,
        secret: Annotated[
            str,
            typer.Option(envvar="MAMBO_LOCAL_EXCHANGE_SECRET", help="Secret that signed requests must use."),
        ] = "mambo-local-secret",
        usdm: Annotated[
            Path | None,
            typer.Option(
                help="Serve Binance USD-M futures (/fapi) instead, replaying this recording of its streams "
                "(e.g. tests/fixtures/binance_usdm/btcusdt_20230404_funding.dat.gz)."
            ),
        ] = None,
        balance: Annotated[str, typer.Option(help="--usdm: the account's USDT balance.")] = "10000",
    ) -> None:
        """Run the local exchange: Binance spot (or with --usdm, USD-M futures) REST and WebSocket,
        replaying recorded data."""
        from mambo.connectors.replay import DEMO_QUOTES, DEMO_TRADES, load_quotes, load_trades
        from mambo.exchange import LocalExchange
        from mambo.exchange.depth import load_depth
        from mambo.logs import configure_logging

        configure_logging("console")
        if usdm is not None:
            _serve_usdm(usdm, host, port, speed, history_seconds, secret, balance)
            return
        batch, _ = load_trades(trades or DEMO_TRADES)
        book, _ = load_quotes(quotes or DEMO_QUOTES)
        recorded_depth = load_depth(depth) if depth is not None else None

        local = LocalExchange(batch, book, speed=speed, history_seconds=history_seconds,
                              api_secret=secret, depth=recorded_depth)  # fmt: skip
        names = ", ".join(s.market.symbol for s in local.symbols.values())
        _serve_until_stopped(
            local,
            host,
            port,
            lambda url: [
                f"local exchange on {url} (markets: {names})",
                f"  mambo source --exchange binance --symbols BTC/USDT --base-url {url}",
                f'  faults: curl -X POST {url}/mambo/faults -d \'{{"kind": "disconnect"}}\'',
            ],
        )

    @app.command("source")
    def source_cmd(
        exchange: Annotated[str, typer.Option(help="ccxt exchange id.")] = "binance",
        symbols: SymbolsOpt = None,
        top: Annotated[
            int | None, typer.Option(help="Instead of --symbols: the top N by 24h volume.")
        ] = None,
        quote: Annotated[str | None, typer.Option(help="Only markets quoted in this currency.")] = None,
        timeframe: Annotated[str, typer.Option(help="Candle timeframe to watch.")] = "1m",
        stall_seconds: Annotated[float, typer.Option(help="Reconnect a stream silent this long.")] = 30.0,
        duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
        base_url: BaseUrlOpt = None,
        prefix: PrefixOpt = "",
        health_port: HealthPortOpt = None,
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Stream trades, book tops and candles from an exchange into the pipeline (embedded or Kafka)."""
        from mambo.cli import _settings
        from mambo.streams.health import kafka_check

        settings = _settings(config, data_dir, trading_timeframe=timeframe)
        if settings.kafka.bootstrap:  # embedded: the pipeline is in this process, alive is ready
            health_server(health_port, {"kafka": lambda: kafka_check(settings.kafka.bootstrap)})
        else:
            health_server(health_port, {})
        asyncio.run(
            _run_source(
                settings, exchange, symbols, top, quote, timeframe, stall_seconds, duration, base_url, prefix
            )
        )

    @app.command("backfill")
    def backfill_cmd(
        start: Annotated[str, typer.Option(help="From (ISO, UTC), e.g. 2024-08-09T00:00.")],
        end: Annotated[str, typer.Option(help="To (ISO, UTC, exclusive).")],
        exchange: Annotated[str, typer.Option(help="ccxt exchange id.")] = "binance",
        symbols: SymbolsOpt = "BTC/USDT",
        timeframe: Annotated[str, typer.Option(help="Candle timeframe.")] = "1m",
        trades: Annotated[bool, typer.Option(help="Fetch trades too (candles always).")] = True,
        base_url: BaseUrlOpt = None,
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Fetch history over REST (paginated, rate limited) into ClickHouse, without duplicates."""
        from mambo.cli import _settings

        settings = _settings(config, data_dir)
        since, until = _time_ms(start), _time_ms(end)
        if until <= since:
            raise typer.BadParameter("--end must be after --start")
        chosen = [s.strip() for s in (symbols or "").split(",") if s.strip()]
        asyncio.run(_run_backfill(settings, exchange, chosen, since, until, timeframe, trades, base_url))


async def _run_source(
    settings: Any,
    exchange: str,
    symbols: str | None,
    top: int | None,
    quote: str | None,
    timeframe: str,
    stall_seconds: float,
    duration: float | None,
    base_url: str | None,
    prefix: str = "",
) -> None:
    from mambo.connectors.clickhouse import ClickHouseSink, connect, ensure_schema
    from mambo.connectors.exchange_source import (
        EmbeddedPublisher,
        ExchangeSource,
        KafkaSourcePublisher,
        SourceConfig,
        select_symbols,
    )
    from mambo.streams.embedded import EmbeddedRuntime, SinkObserver

    client = _client(exchange, base_url)
    try:
        await client.load_markets()
        chosen = (
            [s.strip() for s in symbols.split(",") if s.strip()]
            if symbols
            else await select_symbols(client, top=top, quote=quote)
        )
        if not chosen:
            raise typer.BadParameter("no symbols: give --symbols, or --top/--quote that match markets")
        typer.echo(f"{exchange}: {', '.join(chosen)}")
        kafka = settings.kafka.bootstrap
        sink = None
        if kafka:
            publisher: Any = KafkaSourcePublisher(kafka, prefix=prefix)
        else:
            db = settings.clickhouse.database
            ch = connect(settings.clickhouse_dsn, db)
            ensure_schema(ch, db)
            sink = ClickHouseSink(ch, db)
            runtime = EmbeddedRuntime(settings.account_configs())
            runtime.observe(SinkObserver(sink))
            publisher = EmbeddedPublisher(runtime)
        source = ExchangeSource(client, publisher, SourceConfig(exchange, chosen, timeframe=timeframe,
                                                                stall_seconds=stall_seconds))  # fmt: skip
        task = asyncio.create_task(source.run())
        started = time.monotonic()
        try:
            while not task.done() and (duration is None or time.monotonic() - started < duration):
                await asyncio.wait({task}, timeout=min(5.0, duration or 5.0))
                ages = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(source.health().items()))
                typer.echo(f"{source.counts} | last message: {ages}")
                if sink is not None:
                    sink.flush()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if sink is not None:
                sink.flush()
            if kafka:
                publisher.flush()
    finally:
        await client.close()


async def _run_backfill(
    settings: Any,
    exchange: str,
    symbols: list[str],
    since: int,
    until: int,
    timeframe: str,
    with_trades: bool,
    base_url: str | None,
) -> None:
    from mambo.connectors.clickhouse import ClickHouseSink, connect, ensure_schema
    from mambo.connectors.exchange_source import (
        ClickHousePublisher,
        candles_from_ccxt,
        fetch_candles_between,
        trade_pages,
        trades_from_ccxt,
    )
    from mambo.schemas.events import timeframe_ns

    db = settings.clickhouse.database
    ch = connect(settings.clickhouse_dsn, db)
    ensure_schema(ch, db)
    sink = ClickHouseSink(ch, db)
    publisher = ClickHousePublisher(sink)
    client = _client(exchange, base_url)
    step = timeframe_ns(timeframe) // 1_000_000
    try:
        await client.load_markets()
        for symbol in symbols:
            # closed candles only: the one still forming at ``until`` is left out
            rows = await fetch_candles_between(client, symbol, timeframe, since, until - step + 1)
            publisher.candles(candles_from_ccxt(exchange, symbol, timeframe, rows, time.time_ns()))
            n_trades = 0
            if with_trades:  # a page at a time: a long range never sits in memory whole
                async for page in trade_pages(client, symbol, since, until):
                    publisher.trades(trades_from_ccxt(exchange, page, time.time_ns()))
                    n_trades += len(page)
            sink.flush()
            typer.echo(f"{exchange} {symbol}: {len(rows)} {timeframe} candles, {n_trades} trades")
    finally:
        sink.flush()
        await client.close()
