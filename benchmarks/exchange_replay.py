"""Memory and throughput of a long replay: the local exchange (its own process) streaming to the
exchange source (this process) through ccxt.pro over loopback WebSocket, with REST gap fills after
injected disconnects.

Input: the bundled Binance spot recording (BTC/USDT and ETH/USDT, 34,419 trades and their book tops
over 11 minutes), tiled --copies times end to end (each copy shifted in time by the recording's span
and in trade ids by its id range, so ids stay consecutive and nothing repeats): 30 copies are
1.03M trades, 5.5 hours of market time.

Measured: this process's resident memory (RSS from /proc) every second against the trades received,
so the figure is the source's alone (the exchange and its copy of the recording live in the other
process). Printed at each tenth of the replay, with the peak (ru_maxrss) and the slope of a line
fitted to RSS over trades after the warm-up (the first --warmup of the trades): ~0 when memory is
flat. Plot: artifacts/exchange_replay_rss.html (RSS over trades received). With --trace, tracemalloc
snapshots (after the warm-up, then at each fifth) and the lines whose live memory grew most since
the first; tracemalloc slows the source and adds its own memory, so the RSS figures of a traced run
are not the ones to quote.

Throughput: trades received per wall second, beside the baseline run first: the same trades
released by the exchange with nobody connected (the replay's own cost, in this process).

Run: python benchmarks/exchange_replay.py [--copies 30] [--speed 50] [--disconnects 5] [--trace]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import multiprocessing as mp
import resource
import time
import tracemalloc
from collections import Counter
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

import aiohttp
import numpy as np

from mambo.connectors.ccxt_client import make_exchange
from mambo.connectors.errors import Backoff
from mambo.connectors.exchange_source import ExchangeSource, SourceConfig
from mambo.connectors.replay import load_quotes, load_trades
from mambo.exchange import LocalExchange, serve
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import Candle, FeedHealth, Quote

PAGE = resource.getpagesize()
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def tiled(copies: int) -> tuple[TradeBatch, list[Quote]]:
    trades, _ = load_trades(symbols={"binance:BTC/USDT", "binance:ETH/USDT"})
    quotes, _ = load_quotes(symbols={"BTC/USDT", "ETH/USDT"})
    quotes = [q for q in quotes if q.exchange == "binance"]
    span = int(trades.ts[-1] - trades.ts[0]) + 1_000_000_000
    ids = trades.trade_id.astype(np.int64)
    id_span = {code: int(ids[trades.market == code].max() - ids[trades.market == code].min()) + 1
               for code in range(len(trades.keys))}  # fmt: skip
    shift_ids = np.array([id_span[int(c)] for c in trades.market], np.int64)
    parts, all_quotes = [], []
    for k in range(copies):
        parts.append(TradeBatch(trades.keys, trades.market, trades.ts + k * span, trades.price, trades.qty,
                                trades.side, (ids + k * shift_ids).astype(str).astype(object)))  # fmt: skip
        all_quotes += [q.model_copy(update={"ts_event": q.ts_event + k * span}) for q in quotes]
    return TradeBatch.concat(parts), all_quotes


def last_ids(trades: TradeBatch) -> dict[str, int]:
    return {key: int(trades.trade_id[trades.market == code][-1]) for code, key in enumerate(trades.keys)}


# --- the exchange's process ------------------------------------------------------------------------


def exchange_process(
    copies: int, speed: float, conn: Connection, cursor: Synchronized[int], finished: Synchronized[int]
) -> None:
    """Serve the tiled recording; start replaying when the parent says so; report progress."""

    async def main() -> None:
        trades, quotes = tiled(copies)
        exchange = LocalExchange(trades, quotes, speed=0, history_seconds=1)  # paused until told
        _runner, url = await serve(exchange)
        conn.send((url, len(exchange._events), len(trades), last_ids(trades)))
        del trades, quotes
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        exchange.speed = speed
        exchange.start()
        while True:
            cursor.value = exchange._cursor
            finished.value = int(exchange.finished.is_set())
            await asyncio.sleep(0.2)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


# --- the source's process (this one) ---------------------------------------------------------------


class Tally:
    """A Publisher that counts and checks id continuity, holding nothing."""

    def __init__(self) -> None:
        self.n_trades = self.n_quotes = self.n_candles = self.breaks = 0
        self.last_ids: dict[str, int] = {}

    def trades(self, batch: TradeBatch) -> None:
        self.n_trades += len(batch)
        for code, key in enumerate(batch.keys):
            ids = batch.trade_id[batch.market == code].astype(np.int64)
            if not len(ids):
                continue
            prev = self.last_ids.get(key)
            seq = np.concatenate([[prev], ids]) if prev is not None else ids
            jumps = np.nonzero(np.diff(seq) != 1)[0]
            for j in jumps:
                print(f"id break in {key}: {seq[j]} -> {seq[j + 1]}")
            self.breaks += len(jumps)
            self.last_ids[key] = int(ids[-1])

    def quotes(self, quotes: Sequence[Quote]) -> None:
        self.n_quotes += len(quotes)

    def candles(self, candles: Sequence[Candle]) -> None:
        self.n_candles += len(candles)

    def health(self, event: FeedHealth) -> None:
        pass


def object_counts() -> Counter[str]:
    """Live objects the garbage collector tracks (containers: dicts, lists, instances), by type."""
    return Counter(type(o).__qualname__ for o in gc.get_objects())


def top_growth(base: tracemalloc.Snapshot, now: tracemalloc.Snapshot, n: int = 8) -> None:
    for stat in now.compare_to(base, "lineno")[:n]:
        if stat.size_diff > 0:
            frame = stat.traceback[0]
            where = "/".join(Path(frame.filename).parts[-3:])
            grew = stat.size_diff / 2**20
            print(f"      {grew:+7.2f} MB {stat.count_diff:+8d} blocks  {where}:{frame.lineno}")


async def replay_with_source(copies: int, speed: float, disconnects: int, warmup: float, trace: bool) -> None:
    ctx = mp.get_context("spawn")  # a fresh interpreter: nothing of this one's heap is shared
    parent, child = ctx.Pipe()
    cursor, finished = ctx.Value("q", 0), ctx.Value("i", 0)
    proc = ctx.Process(target=exchange_process, args=(copies, speed, child, cursor, finished), daemon=True)
    proc.start()
    url, total, n_trades, final = await asyncio.get_running_loop().run_in_executor(None, parent.recv)
    client = make_exchange("binance", base_url=url)
    await client.load_markets()
    tally = Tally()
    # a tracemalloc snapshot holds the loop for seconds: not a stall to reconnect for
    config = SourceConfig("binance", ["BTC/USDT", "ETH/USDT"], timeframe="1m",
                          stall_seconds=60 if trace else 5, backoff=Backoff(0.05, 0.5))  # fmt: skip
    source = ExchangeSource(client, tally, config)
    task = asyncio.create_task(source.run())
    if trace:
        tracemalloc.start()
    parent.send("go")
    start = time.perf_counter()
    samples: list[tuple[float, int, float]] = []  # (wall s, trades received, RSS MB)
    fault_at = [total * (i + 1) // (disconnects + 1) for i in range(disconnects)]
    snapshots: list[tracemalloc.Snapshot] = []
    checks: list[Counter[str]] = []
    printed = 0
    print(f"{'progress':>9} {'wall s':>7} {'RSS MB':>7} {'trades in':>10}")
    async with aiohttp.ClientSession() as http:
        while not finished.value or any(tally.last_ids.get(k) != v for k, v in final.items()):
            await asyncio.sleep(1.0)
            wall = time.perf_counter() - start
            samples.append((wall, tally.n_trades, rss_mb()))
            if fault_at and cursor.value >= fault_at[0]:
                fault_at.pop(0)
                await http.post(f"{url}/mambo/faults", json={"kind": "disconnect"})
            done = cursor.value / total
            while printed < int(done * 10):
                printed += 1
                print(f"{printed * 10:>8}% {wall:>7.1f} {samples[-1][2]:>7.1f} {tally.n_trades:>10}")
            if done >= warmup + len(checks) * (1 - warmup) / 5 and len(checks) < 6:
                checks.append(object_counts())  # about 0.1 s: cheap enough to keep on
                if trace:
                    snapshots.append(tracemalloc.take_snapshot())
                if len(checks) > 1:
                    grew = (checks[-1] - checks[0]).most_common(5)
                    print(f"   live objects grown since the warm-up ({done:.0%} of the replay): "
                          + (", ".join(f"{k} {v:+,}" for k, v in grew) or "none"))  # fmt: skip
                if len(snapshots) > 1:
                    print("   tracemalloc, lines whose memory grew most since the warm-up:")
                    top_growth(snapshots[0], snapshots[-1])
            if finished.value and wall > samples[0][0] + 3600:
                break
    wall = time.perf_counter() - start
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await client.close()
    proc.terminate()
    proc.join()

    c = source.counts
    print(f"\ntrades received {tally.n_trades:,} of {n_trades:,} (the first second is history; id breaks "
          f"{tally.breaks}, caught up to the last trade: {tally.last_ids == final}, duplicates dropped "
          f"{c['duplicates']:,}, recovered over REST {c['recovered']:,}, reconnects {c['reconnects']}); "
          f"quotes {tally.n_quotes:,}, candles {tally.n_candles:,}")  # fmt: skip
    report_memory(samples, warmup, copies, speed)
    print(f"source: {tally.n_trades / wall:,.0f} trades/s received over {wall:.1f} s wall")


def report_memory(samples: list[tuple[float, int, float]], warmup: float, copies: int, speed: float) -> None:
    wall, n, rss = (np.array(col) for col in zip(*samples, strict=True))
    after = n >= warmup * n[-1]
    slope, _ = np.polyfit(n[after], rss[after], 1)  # MB per trade
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    first = float(rss[after][0])
    span = int(n[-1] - n[after][0])
    print(f"RSS after the warm-up ({warmup:.0%} of the trades) {first:.1f} MB, at the end {rss[-1]:.1f} MB, "
          f"max sampled {rss.max():.1f} MB, peak (ru_maxrss) {peak:.1f} MB")  # fmt: skip
    print(f"slope after the warm-up: {slope * 100_000:+.3f} MB per 100k trades "
          f"({slope * span:+.1f} MB over the {span:,} trades after it)")  # fmt: skip
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(x=n, y=rss, mode="lines", name="RSS", customdata=wall,
                               hovertemplate="%{x:,} trades, %{y:.1f} MB, %{customdata:.0f} s"))  # fmt: skip
    fig.add_vline(x=float(n[after][0]), line_dash="dot", annotation_text="warm-up ends")
    fig.update_layout(title=f"Exchange source RSS over a {copies}-copy replay at {speed:g}x "
                            f"(slope after warm-up {slope * 100_000:+.3f} MB/100k trades)",
                      xaxis_title="trades received", yaxis_title="RSS MB")  # fmt: skip
    ARTIFACTS.mkdir(exist_ok=True)
    out = ARTIFACTS / "exchange_replay_rss.html"
    fig.write_html(out, include_plotlyjs=True)
    print(f"plot: {out}")


def replay_alone(copies: int) -> tuple[int, float]:
    """The baseline: (trades, seconds) of the exchange releasing the replay with nobody connected."""
    trades, quotes = tiled(copies)
    exchange = LocalExchange(trades, quotes, speed=0, history_seconds=0)

    async def run() -> float:
        start = time.perf_counter()
        while await exchange.advance(60):
            pass
        return time.perf_counter() - start

    return len(trades), asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=30)
    parser.add_argument("--speed", type=float, default=50.0)
    parser.add_argument("--disconnects", type=int, default=5)
    parser.add_argument("--warmup", type=float, default=0.2, help="Share of the replay before the fit.")
    parser.add_argument("--trace", action="store_true", help="tracemalloc snapshots (slower).")
    args = parser.parse_args()
    print(f"replay: {args.copies} copies of the recording at {args.speed:g}x")
    with mp.get_context("spawn").Pool(1) as pool:  # in a process of its own: this one measures the source
        n, seconds = pool.apply(replay_alone, (args.copies,))
    print(f"baseline (exchange alone, nobody connected): {n:,} trades, {n / seconds:,.0f} trades/s")
    asyncio.run(replay_with_source(args.copies, args.speed, args.disconnects, args.warmup, args.trace))


if __name__ == "__main__":
    main()
