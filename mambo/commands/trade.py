"""``mambo trade``: the pipeline trading on an exchange through ccxt (a local exchange, Binance's spot
testnet, or, behind ``--live``, the real one). The same code as ``mambo demo``'s default venue:
:class:`mambo.live.LiveSession`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["register"]

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML settings file (see README).")]
DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Where the embedded ClickHouse lives (one folder per account)."),
]


def register(app: typer.Typer) -> None:
    @app.command("trade")
    def trade_cmd(
        symbols: Annotated[str, typer.Option(help="Comma-separated ccxt symbols, e.g. BTC/USDT,ETH/USDT.")],
        exchange: Annotated[str, typer.Option(help="ccxt exchange id.")] = "binance",
        base_url: Annotated[
            str | None,
            typer.Option(
                help="Trade on the local exchange at this URL (mambo exchange), e.g. http://127.0.0.1:8765."
            ),
        ] = None,
        sandbox: Annotated[
            bool, typer.Option(help="Trade on the exchange's testnet (ccxt sandbox mode).")
        ] = False,
        live: Annotated[
            bool, typer.Option(help="Trade real money on the real exchange. Nothing else does.")
        ] = False,
        strategies: Annotated[
            str | None, typer.Option(help="Comma-separated strategy names, or module:Class of your own.")
        ] = None,
        timeframe: Annotated[str | None, typer.Option(help="The timeframe strategies trade on.")] = None,
        since: Annotated[
            str | None,
            typer.Option(help="Start the market data from this time (ISO, UTC), fetched over REST."),
        ] = None,
        duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
        recover: Annotated[
            bool,
            typer.Option(
                help="Before trading, rebuild the account from the history and reconcile open orders."
            ),
        ] = True,
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Trade on an exchange: market data in through ccxt.pro, orders out through ccxt, history in
        ClickHouse. Keys come from MAMBO_EXCHANGE__API_KEY and MAMBO_EXCHANGE__SECRET (never logged)."""
        from mambo.cli import _settings
        from mambo.commands.exchange import _time_ms
        from mambo.connectors.exchange_broker import ExchangeCredentials

        if sum([base_url is not None, sandbox, live]) != 1:
            typer.echo(
                "error: choose where to trade: --base-url URL (a local exchange), --sandbox (the testnet) "
                "or --live (real money on the real exchange)",
                err=True,
            )
            raise typer.Exit(2)
        creds = ExchangeCredentials()
        if not creds.complete:
            typer.echo("error: trading needs MAMBO_EXCHANGE__API_KEY and MAMBO_EXCHANGE__SECRET", err=True)
            raise typer.Exit(2)
        chosen = [s.strip() for s in symbols.split(",") if s.strip()]
        if not chosen:
            raise typer.BadParameter("give at least one symbol", param_hint="--symbols")
        since_ms = _time_ms(since) if since else None
        engine: dict[str, Any] = {"strategies": strategies, "trading_timeframe": timeframe}
        if timeframe:
            engine["timeframes"] = (timeframe,)
        settings = _settings(config, data_dir, **engine)
        mode = "local" if base_url else "sandbox" if sandbox else "live"
        code = 130  # Ctrl-C: stopped by the user
        with contextlib.suppress(KeyboardInterrupt):
            code = asyncio.run(
                _trade(settings, exchange, chosen, base_url, mode, creds, since_ms, duration, recover)
            )
        raise typer.Exit(code)


async def _trade(
    settings: Any,
    exchange: str,
    symbols: list[str],
    base_url: str | None,
    mode: Any,
    creds: Any,
    since_ms: int | None,
    duration: float | None,
    recover: bool,
) -> int:
    from rich.console import Console

    from mambo.connectors.ccxt_client import make_exchange
    from mambo.live import LiveSession
    from mambo.runner import PipelineStats, summary_table

    console = Console() if Console().is_terminal else Console(width=140)
    try:
        client = make_exchange(
            exchange, base_url=base_url, api_key=creds.api_key, secret=creds.secret, sandbox=mode == "sandbox"
        )
    except ValueError as exc:  # no such exchange, a testnet that is gone, a local URL for another venue
        typer.echo(f"error: {exc}", err=True)
        return 2
    stats = PipelineStats()
    try:
        await client.load_markets()
        try:
            session = LiveSession(
                settings, client, exchange, symbols, mode=mode, live=mode == "live", since_ms=since_ms,
                observers=[stats],
            )  # fmt: skip
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            return 2
        if recover:
            booked = await session.recover()
            typer.echo(
                f"recovered: {booked} past fills booked, "
                f"{session.venue.counts['recovered']} open orders reconciled"
            )
        typer.echo(
            f"trading {', '.join(session.keys)} ({mode}); strategies {', '.join(settings.engine.strategies)}"
        )
        session.start()
        started = last = time.monotonic()
        try:
            while duration is None or time.monotonic() - started < duration:
                await asyncio.sleep(0.2)
                session.check()
                if time.monotonic() - last >= 5:
                    last = time.monotonic()
                    session.flush()
                    total = stats.total_equity
                    equity = f"{total:,.2f}" if total is not None else "-"
                    orders, fills = sum(stats.orders.values()), sum(stats.fills.values())
                    typer.echo(f"trades {stats.topics['md.trades']:,} | orders {orders} | fills {fills} | "
                               f"equity {equity}")  # fmt: skip
        finally:
            await session.stop()
        console.print(summary_table(session.runtime, stats, session.keys, title="mambo trade: summary"))
        return 0
    finally:
        await client.close()
