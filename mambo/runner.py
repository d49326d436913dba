"""The demo: the bundled recording through the whole embedded pipeline into ClickHouse.

Two venues, one pipeline:

* ``exchange`` (``mambo demo``'s default): the code of a live run. A local exchange starts in this
  process and replays the recording at ``speed`` × real time; market data comes in through the
  ccxt.pro source, orders go out through ccxt (:class:`~mambo.live.LiveSession`), fills come back
  from the exchange. Binance spot markets only (what the local exchange speaks); results depend on
  timing, like a live run's.
* ``paper``: the recording fed straight into the runtime, orders filled by the paper broker on the
  next trade: deterministic (the same orders and fills every run), and any market of the recording.

Both show a live progress panel and end with a summary table; :func:`run_demo` returns the process
exit code.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from mambo import demo_history
from mambo.audit import audit
from mambo.connectors.clickhouse import ClickHouseSink, connect, ensure_schema
from mambo.connectors.markets import market_rules
from mambo.connectors.replay import DEMO_QUOTES, DEMO_TRADES, Recording, load_quotes, load_trades, replay
from mambo.notify import notification_stage
from mambo.notify.outbox import OutboxFile
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import AggregatedSignal, Candle, EquitySnapshot, Fill, Order
from mambo.settings import MamboSettings
from mambo.streams.bus import Observer
from mambo.streams.embedded import EmbeddedRuntime, ReplayProgress, SinkObserver, run_replay

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from mambo.live import LiveSession

__all__ = ["EXCHANGE_DEMO_SPEED", "PipelineStats", "run_demo", "summary_table"]

#: Replay speed of the exchange demo when none is given: the 11-minute recording in about 17 seconds.
EXCHANGE_DEMO_SPEED = 40.0
_DEMO_SECRET = "mambo-demo-secret"  # the in-process exchange's signing secret (it lives as long as the demo)
_DEMO_CHANNELS = ("aggTrade", "bookTicker")  # the Binance streams the source watches, per market
_DRAIN_SECONDS = 5.0  # after the replay: how long the stream may stay silent before what it owes is given up
_STALL_SECONDS = 60.0  # during the replay: how long the stream may stay silent before the demo stops waiting


@dataclass
class PipelineStats:
    """What a person watching the run wants to see, counted from the bus."""

    topics: Counter[str] = field(default_factory=Counter)
    signals: Counter[tuple[str, str]] = field(default_factory=Counter)  # (key, side)
    orders: Counter[str] = field(default_factory=Counter)
    fills: Counter[str] = field(default_factory=Counter)
    realized: dict[str, Decimal] = field(default_factory=dict)
    fees: dict[str, Decimal] = field(default_factory=dict)
    candles: Counter[str] = field(default_factory=Counter)
    equity: dict[str, EquitySnapshot] = field(default_factory=dict)  # each account's latest

    @property
    def total_equity(self) -> Decimal | None:
        """The accounts' equity together, as last reported (None before the first report)."""
        return sum((e.equity for e in self.equity.values()), Decimal(0)) if self.equity else None

    def __call__(self, topic: str, payload: Any) -> None:
        self.topics[topic] += len(payload) if isinstance(payload, TradeBatch) else 1
        if isinstance(payload, Candle):
            self.candles[payload.key] += 1
        elif isinstance(payload, AggregatedSignal) and payload.side != "hold":
            self.signals[(payload.key, payload.side)] += 1
        elif isinstance(payload, Order) and payload.status == "new":
            self.orders[payload.key] += 1
        elif isinstance(payload, Fill):
            self.fills[payload.key] += 1
            self.realized[payload.key] = self.realized.get(payload.key, Decimal(0)) + payload.realized_pnl
            self.fees[payload.key] = self.fees.get(payload.key, Decimal(0)) + payload.fee
        elif isinstance(payload, EquitySnapshot):
            self.equity[payload.account] = payload

    @property
    def dead_letters(self) -> int:
        return sum(n for t, n in self.topics.items() if t.endswith(".dlq"))

    def count(self, prefix: str) -> int:
        return sum(n for t, n in self.topics.items() if t.startswith(prefix))


def _progress_table(p: ReplayProgress, s: PipelineStats, total: int) -> Table:
    t = Table(title="mambo demo: live", show_header=False)
    t.add_row("trades", f"{p.trades:,} / {total:,}  ({p.trades_per_second:,.0f}/s)")
    t.add_row("quotes", f"{p.quotes:,}")
    t.add_row("candles", f"{s.count('md.candles.'):,}")
    t.add_row("signals (buy/sell)", f"{sum(s.signals.values()):,}")
    t.add_row("orders / fills", f"{sum(s.orders.values()):,} / {sum(s.fills.values()):,}")
    t.add_row("rejections / dead letters", f"{s.topics['risk.rejections']:,} / {s.dead_letters:,}")
    equity = s.total_equity
    t.add_row("equity", f"{equity:,.2f}" if equity is not None else "-")
    return t


def _equity_line(rt: EmbeddedRuntime) -> str:
    """The accounts' equity at the end against their start, each account's when there are several."""
    pfs = rt.portfolios.values()
    line = (
        f"equity {sum((p.equity for p in pfs), Decimal(0)):,.2f}"
        f" (start {sum((p.initial_cash for p in pfs), Decimal(0)):,.2f})"
    )
    if len(pfs) > 1:
        line += " = " + " + ".join(f"{p.account} {p.equity:,.2f}" for p in pfs)
    return line


def summary_table(
    rt: EmbeddedRuntime, s: PipelineStats, markets: list[str], title: str = "mambo demo: summary"
) -> Table:
    t = Table(title=title)
    for col in (
        "market",
        "candles",
        "buy sig",
        "sell sig",
        "orders",
        "fills",
        "position",
        "realized PnL",
        "fees",
    ):
        t.add_column(col, justify="left" if col == "market" else "right")
    for key in markets:
        t.add_row(
            key,
            str(s.candles[key]),
            str(s.signals[(key, "buy")]),
            str(s.signals[(key, "sell")]),
            str(s.orders[key]),
            str(s.fills[key]),
            f"{sum((p.position(key) for p in rt.portfolios.values()), Decimal(0)).normalize():f}",
            f"{s.realized.get(key, Decimal(0)):,.2f}",
            f"{s.fees.get(key, Decimal(0)):,.2f}",
        )
    return t


async def run_demo(
    settings: MamboSettings,
    data: Path | None = None,
    quotes: Path | None = None,
    symbols: str | None = None,
    speed: float = 0.0,
    batch_size: int = 2_000,
    observers: Sequence[Observer] = (),
    venue: Literal["paper", "exchange"] = "paper",
    on_runtime: Callable[[EmbeddedRuntime], None] | None = None,
) -> int:
    """The demo on ``venue`` (see the module docstring); ``speed`` 0 is as fast as it goes on paper,
    :data:`EXCHANGE_DEMO_SPEED` on the exchange."""
    console = Console()
    if not console.is_terminal:  # a pipe or CI: wide enough for the summary table
        console = Console(width=140)
    wanted = {x.strip() for x in symbols.split(",")} if symbols else None
    trades, dead_t = load_trades(data or DEMO_TRADES, wanted)
    quote_list, dead_q = load_quotes(quotes or DEMO_QUOTES, wanted)
    recording = Recording(trades, quote_list, dead_t + dead_q)
    if not len(trades):
        console.print(f"[red]no trades for {symbols!r} in {data or DEMO_TRADES}[/red]")
        return 2
    db = settings.clickhouse.database
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    client = connect(settings.clickhouse_dsn, db)
    ensure_schema(client, db)
    try:
        if demo_history.begin(client, db, settings.data_dir):
            console.print(f"(a fresh history: the previous demo's tables in {settings.data_dir} are cleared)")
    except demo_history.ForeignHistoryError as ex:
        console.print(f"[red]{ex}[/red]")
        return 2
    if venue == "exchange":
        code = await _exchange_demo(
            console, settings, recording, speed or EXCHANGE_DEMO_SPEED, observers, chosen=wanted is not None
        )
        return code or report_audit(console, client, db)
    markets = {}
    for key in recording.markets:  # each market's rules, and where they come from, said
        rules = market_rules(
            key, trades.price[trades.market == trades.keys.index(key)], data_dir=settings.data_dir
        )
        console.print(rules.note)
        markets[key] = rules.market
    runtime = EmbeddedRuntime(
        settings.account_configs(),
        markets,
        known_markets=recording.markets,
        extra=[notification_stage(settings)],  # the notifications outbox (mambo notify delivers it)
    )
    sink = ClickHouseSink(client, db, batch_rows=settings.clickhouse.batch_rows)
    stats = PipelineStats()
    runtime.observe(stats)
    runtime.observe(SinkObserver(sink))
    # the notifications outbox as a file too: `mambo notify` beside the demo delivers it
    runtime.observe(OutboxFile(settings.data_dir / "notify" / "outbox.jsonl"))
    for observer in observers:  # e.g. the API's live feed (mambo api --demo)
        runtime.observe(observer)
    if on_runtime is not None:  # e.g. the API's controls (mambo api --demo)
        on_runtime(runtime)
    runtime.dead_letters(recording.dead_letters)
    console.print(
        f"replaying {len(trades):,} trades and {len(quote_list):,} quotes of {len(markets)} markets "
        f"({', '.join(recording.markets)}); strategies {', '.join(settings.engine.strategies)} "
        f"on {settings.engine.trading_timeframe} candles"
    )
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        progress = await run_replay(
            runtime,
            replay(recording, batch_size),
            speed=speed,
            on_progress=lambda p: live.update(_progress_table(p, stats, len(trades))),
            flush=sink.flush,
            flush_seconds=settings.clickhouse.flush_seconds,
        )
        live.update(_progress_table(progress, stats, len(trades)))
    sink.flush()
    demo_history.end(client, db, settings.data_dir)
    console.print(Group(summary_table(runtime, stats, recording.markets)))
    console.print(
        f"{_equity_line(runtime)}; "
        f"history in ClickHouse at {settings.data_dir / 'clickhouse'}: try\n"
        f'  mambo sql "SELECT strategy, count() AS fills, sum(realized_pnl) AS pnl, sum(fee) AS fees '
        f'FROM fills GROUP BY strategy"'
    )
    return report_audit(console, client, db)


def report_audit(console: Console, client: Client, database: str) -> int:
    """The audit of the history the demo left, in one line (``mambo audit`` prints the table); the
    demo's exit status: 1 when the audit found a violation, as ``mambo audit`` exits."""
    report = audit(client, database)
    more = "" if report.ok else "; `mambo audit` shows which and an example of each"
    console.print(report.summary() + more, style="green" if report.ok else "red")
    return 0 if report.ok else 1


async def _exchange_demo(
    console: Console,
    settings: MamboSettings,
    recording: Recording,
    speed: float,
    observers: Sequence[Observer],
    chosen: bool,
) -> int:
    """The recording on a local exchange in this process, traded through ccxt like a live run: its
    Binance spot markets (the others need ``--venue paper``; left out unless chosen by name)."""
    from pydantic import SecretStr

    from mambo.connectors.ccxt_client import make_exchange
    from mambo.exchange import LocalExchange, serve
    from mambo.live import LiveSession
    from mambo.logs import configure_logging

    other = [k for k in recording.markets if not k.startswith("binance:") or k.count(":") > 1]
    if other and (chosen or len(other) == len(recording.markets)):
        console.print(
            f"[red]the local exchange speaks Binance spot; {', '.join(other)} can only be traded on "
            f"paper (--venue paper)[/red]"
        )
        return 2
    if other:
        console.print(f"(the local exchange speaks Binance spot: {', '.join(other)} only with --venue paper)")
    configure_logging(settings.log_format, logging.WARNING)  # the panel tells the story; warnings still show
    cash = settings.engine.initial_cash
    local = LocalExchange(recording.trades, recording.quotes, speed=0, api_secret=_DEMO_SECRET,
                          balances={"USDT": str(cash)})  # fmt: skip
    server, url = await serve(local)  # paused until the pipeline listens
    client = make_exchange(
        "binance", base_url=url, api_key=SecretStr("mambo-demo"), secret=SecretStr(_DEMO_SECRET)
    )
    stats = PipelineStats()
    try:
        await client.load_markets()
        session = LiveSession(
            settings,
            client,
            "binance",
            [s.market.symbol for s in local.symbols.values()],
            since_ms=local.now_ms,
            poll_seconds=0.2,
            observers=[stats, *observers],
        )
        session.runtime.dead_letters(recording.dead_letters)
        total = sum(len(s.ts) for s in local.symbols.values())
        tops = sum(len(s.quotes) for s in local.symbols.values())
        console.print(
            f"local exchange on {url} replaying {total:,} trades and {tops:,} book tops of "
            f"{', '.join(session.keys)} at {speed:g}x; market data in through ccxt.pro, orders out "
            f"through ccxt; strategies {', '.join(settings.engine.strategies)} on "
            f"{settings.engine.trading_timeframe} candles"
        )
        session.start()
        subscribing = time.monotonic() + 30
        while not local.subscribed(_DEMO_CHANNELS):  # book tops have no REST history: none may go unheard
            session.check()
            if time.monotonic() > subscribing:
                raise TimeoutError("the source did not subscribe to the local exchange within 30 s")
            await asyncio.sleep(0.01)
        local.speed = speed
        local.start()
        with Live(console=console, refresh_per_second=4, transient=False) as live:

            def show() -> None:
                live.update(_progress_table(session.progress, stats, total))

            counts = session.source.counts
            flush = settings.clickhouse.flush_seconds
            # the replay; a stream silent for a minute (a websocket lost under load) ends the wait
            # rather than hanging the demo: what came short is said below
            if not await _follow(session, show, flush, local.finished.is_set, quiet_seconds=_STALL_SECONDS):
                log_stall = f"the stream was silent {_STALL_SECONDS:.0f} s before the replay ended"
                console.print(f"[yellow]{log_stall}[/yellow]")

            # the stream drains: book tops come only by stream, so when the last one is in, so is
            # the stream; trades it still owes (parsed by ccxt after its last answer, or dropped from
            # its full cache, with no later trade to bring them) come from REST
            await _follow(
                session, show, flush, lambda: counts["quotes"] >= tops, quiet_seconds=_DRAIN_SECONDS
            )
            if counts["trades"] < total:
                await session.source.catch_up()
            if counts["trades"] < total or counts["quotes"] < tops:
                console.print(
                    f"[yellow]the source stopped at {counts['trades']:,} of {total:,} trades and "
                    f"{counts['quotes']:,} of {tops:,} book tops[/yellow]"
                )
            settled = await session.stop()
            demo_history.end(session.ch, session.db, settings.data_dir)
            live.update(_progress_table(session.progress, stats, total))
    finally:
        await client.close()
        await server.cleanup()
    console.print(Group(summary_table(session.runtime, stats, session.keys)))
    exchange_orders = len(local.orders)
    console.print(
        f"{exchange_orders} orders reached the exchange, {session.venue.counts['fills']} fills came back"
        f"{'' if settled else ' (some orders still open at the end)'}; "
        f"{_equity_line(session.runtime)}; "
        f"history in ClickHouse at {settings.data_dir / 'clickhouse'}: try\n"
        f'  mambo sql "SELECT strategy, count() AS fills, sum(realized_pnl) AS pnl, sum(fee) AS fees '
        f'FROM fills GROUP BY strategy"'
    )
    return 0


async def _follow(
    session: LiveSession,
    show: Callable[[], None],
    flush_seconds: float,
    done: Callable[[], bool],
    quiet_seconds: float | None = None,
) -> bool:
    """Show the progress and flush the history every ``flush_seconds`` until ``done()``, raising what
    stopped the session; with ``quiet_seconds``, give up once the source has received nothing for
    that long. Returns whether it is done."""
    counts = session.source.counts
    last_flush = heard = time.monotonic()
    seen = (counts["trades"], counts["quotes"])
    while not done():
        session.check()
        show()
        await asyncio.sleep(0.1)
        now = time.monotonic()
        if now - last_flush >= flush_seconds:
            session.sink.flush()
            last_flush = heard = time.monotonic()  # the stream waited for the flush: not silence
        if (counts["trades"], counts["quotes"]) != seen:
            seen, heard = (counts["trades"], counts["quotes"]), now
        elif quiet_seconds is not None and now - heard > quiet_seconds:
            return False
    return True
