"""The demo: the bundled recording through the whole embedded pipeline into ClickHouse.

Loads the recording, builds the runtime and the sink, replays with a live progress panel, and ends
with a summary table. Returns the process exit code.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from mambo.connectors.clickhouse import ClickHouseSink, connect, ensure_schema
from mambo.connectors.replay import DEMO_QUOTES, DEMO_TRADES, Recording, load_quotes, load_trades, replay
from mambo.core.market import Market
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import AggregatedSignal, Candle, EquitySnapshot, Fill, Order, split_key
from mambo.settings import MamboSettings
from mambo.streams.bus import Observer
from mambo.streams.embedded import EmbeddedRuntime, ReplayProgress, SinkObserver, run_replay

__all__ = ["PipelineStats", "run_demo"]


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
    equity: EquitySnapshot | None = None

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
            self.equity = payload

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
    t.add_row("equity", f"{s.equity.equity:,.2f}" if s.equity else "-")
    return t


def _summary(rt: EmbeddedRuntime, s: PipelineStats, markets: list[str]) -> Table:
    pf = rt.portfolio
    t = Table(title="mambo demo: summary")
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
            f"{pf.position(key).normalize():f}",
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
) -> int:
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
    markets = {k: Market.default(*split_key(k)) for k in recording.markets}
    runtime = EmbeddedRuntime(settings.engine.to_config(), markets, known_markets=recording.markets)
    db = settings.clickhouse.database
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    client = connect(settings.clickhouse_dsn, db)
    ensure_schema(client, db)
    sink = ClickHouseSink(client, db, batch_rows=settings.clickhouse.batch_rows)
    stats = PipelineStats()
    runtime.observe(stats)
    runtime.observe(SinkObserver(sink))
    for observer in observers:  # e.g. the API's live feed (mambo api --demo)
        runtime.observe(observer)
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
    console.print(Group(_summary(runtime, stats, recording.markets)))
    cash = settings.engine.initial_cash
    equity = stats.equity.equity if stats.equity else cash
    console.print(
        f"equity {equity:,.2f} (start {cash:,.2f}); "
        f"history in ClickHouse at {settings.data_dir / 'clickhouse'}: try\n"
        f'  mambo sql "SELECT strategy, count() AS fills, sum(realized_pnl) AS pnl, sum(fee) AS fees '
        f'FROM fills GROUP BY strategy"'
    )
    return 0
