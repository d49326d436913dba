"""Memory and throughput of a long replay: the local exchange streaming to the exchange source
through ccxt.pro over loopback WebSocket, with REST gap fills after injected disconnects.

Input: the bundled Binance spot recording (BTC/USDT and ETH/USDT, 34,419 trades and their book tops
over 11 minutes), tiled --copies times end to end (each copy shifted in time by the recording's span
and in trade ids by its id range, so ids stay consecutive and nothing repeats) for a long replay.

Measured in one process (exchange and source share the loop, as in the tests): resident memory
(RSS from /proc) sampled every second, printed at each tenth of the replay, and the peak
(ru_maxrss). Memory is flat when the RSS at the end is close to the RSS a tenth of the way in
(everything held is bounded: ccxt's caches, the source's dedupe window; the exchange's recording
is loaded before the first sample). Throughput: trades received per wall second, against the
baseline side by side: the same trades released by the exchange with nobody connected (the
replay's own cost).

Run: python benchmarks/exchange_replay.py [--copies 6] [--speed 50] [--disconnects 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import time
from collections.abc import Sequence

import numpy as np

from mambo.connectors.ccxt_client import make_exchange
from mambo.connectors.errors import Backoff
from mambo.connectors.exchange_source import ExchangeSource, SourceConfig
from mambo.connectors.replay import load_quotes, load_trades
from mambo.exchange import LocalExchange, serve
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import Candle, FeedHealth, Quote

PAGE = resource.getpagesize()


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


async def replay_with_source(trades: TradeBatch, quotes: list[Quote], speed: float, disconnects: int) -> None:
    exchange = LocalExchange(trades, quotes, speed=speed, history_seconds=1)
    runner, url = await serve(exchange)
    client = make_exchange("binance", base_url=url)
    await client.load_markets()
    tally = Tally()
    config = SourceConfig("binance", ["BTC/USDT", "ETH/USDT"], timeframe="1m", stall_seconds=5,
                          backoff=Backoff(0.05, 0.5))  # fmt: skip
    source = ExchangeSource(client, tally, config)
    task = asyncio.create_task(source.run())
    total = len(exchange._events)
    start, samples, printed = time.perf_counter(), [], 0
    fault_at = {int(total * (i + 1) / (disconnects + 1)) for i in range(disconnects)}
    print(f"{'progress':>9} {'wall s':>7} {'RSS MB':>7} {'trades in':>10}")
    while not exchange.finished.is_set():
        await asyncio.sleep(1.0)
        done = exchange._cursor / total
        samples.append(rss_mb())
        if any(exchange._cursor >= f for f in fault_at):
            fault_at = {f for f in fault_at if exchange._cursor < f}
            await exchange.inject("disconnect")
        while printed < int(done * 10):
            printed += 1
            wall = time.perf_counter() - start
            print(f"{printed * 10:>8}% {wall:>7.1f} {samples[-1]:>7.1f} {tally.n_trades:>10}")
    # let the source take the tail
    last = {k: int(s.trade_id[s.released - 1]) for k, s in exchange.symbols.items()}
    for _ in range(100):
        if all(
            tally.last_ids.get(f"binance:{s.market.symbol}") == last[k] for k, s in exchange.symbols.items()
        ):
            break
        await asyncio.sleep(0.2)
    wall = time.perf_counter() - start
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await client.close()
    await runner.cleanup()
    released = sum(s.released for s in exchange.symbols.values())
    c = source.counts
    print(f"\ntrades released {released:,}, received {tally.n_trades:,} (id breaks {tally.breaks}, "
          f"duplicates dropped {c['duplicates']:,}, recovered over REST {c['recovered']:,}, "
          f"reconnects {c['reconnects']}); quotes {tally.n_quotes:,}, "
          f"candles {tally.n_candles:,}")  # fmt: skip
    tenth = samples[max(0, len(samples) // 10 - 1)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"RSS at 10% {tenth:.1f} MB, at the end {samples[-1]:.1f} MB, "
          f"growth {samples[-1] - tenth:+.1f} MB; peak RSS {peak:.1f} MB")  # fmt: skip
    print(f"source: {tally.n_trades / wall:,.0f} trades/s received over {wall:.1f} s wall")


async def replay_alone(trades: TradeBatch, quotes: list[Quote]) -> float:
    exchange = LocalExchange(trades, quotes, speed=0, history_seconds=0)
    start = time.perf_counter()
    while await exchange.advance(60):
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=6)
    parser.add_argument("--speed", type=float, default=50.0)
    parser.add_argument("--disconnects", type=int, default=5)
    args = parser.parse_args()
    trades, quotes = tiled(args.copies)
    minutes = (trades.ts[-1] - trades.ts[0]) / 6e10
    print(f"replay: {len(trades):,} trades, {len(quotes):,} book tops, "
          f"{minutes:.0f} minutes of market time at {args.speed:g}x")  # fmt: skip
    baseline = asyncio.run(replay_alone(trades, quotes))
    print(f"baseline (exchange alone, nobody connected): {len(trades) / baseline:,.0f} trades/s")
    asyncio.run(replay_with_source(trades, quotes, args.speed, args.disconnects))


if __name__ == "__main__":
    main()
