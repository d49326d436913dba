"""Trades/s through the whole embedded pipeline, and peak memory.

Input: the bundled real Binance recording (69,808 trades of 4 markets, mambo/data) tiled end to end
until it holds --trades trades; each tile is shifted in time by the recording's span and its trade
ids are suffixed, so candles keep closing and no event repeats. Every stage runs: validation, candles
(1m and 5m), indicators, the four strategies on 1m candles, aggregation, intents, risk, paper fills,
portfolio, and the ClickHouse sink (embedded chdb in a temporary folder) for every topic.

Baseline, run side by side: the same pipeline fed one trade at a time (batches of 1) on the first
--baseline-trades trades. The ratio is what batching buys on this machine now.

Run: python benchmarks/embedded_pipeline.py [--trades 1000000] [--batch-size 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from mambo.connectors.clickhouse import ClickHouseSink, connect, ensure_schema
from mambo.connectors.replay import DEMO_TRADES, Recording, load_trades, replay
from mambo.core.market import Market
from mambo.core.stages import EngineConfig
from mambo.logs import configure_logging
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import split_key
from mambo.streams.embedded import EmbeddedRuntime, SinkObserver, run_replay

STRATEGIES = ("sma_cross", "rsi_reversion", "macd_cross", "bollinger_breakout")


def tiled(base: TradeBatch, n: int) -> TradeBatch:
    span = int(base.ts[-1] - base.ts[0]) + 1_000_000_000
    tiles = []
    for k in range(-(-n // len(base))):
        ids = base.trade_id if k == 0 else np.array([f"{t}-{k}" for t in base.trade_id], dtype=object)
        tiles.append(
            TradeBatch(base.keys, base.market, base.ts + k * span, base.price, base.qty, base.side, ids)
        )
    return TradeBatch.concat(tiles).slice(0, n)


def run(trades: TradeBatch, batch_size: int, folder: Path, database: str) -> tuple[float, EmbeddedRuntime]:
    config = EngineConfig(timeframes=("1m", "5m"), trading_timeframe="1m", strategies=STRATEGIES)
    markets = {k: Market.default(*split_key(k)) for k in trades.keys}
    runtime = EmbeddedRuntime(config, markets, known_markets=list(markets))
    client = connect(f"chdb://{folder}", database)
    ensure_schema(client, database)
    sink = ClickHouseSink(client, database)
    runtime.observe(SinkObserver(sink))
    progress = asyncio.run(
        run_replay(runtime, replay(Recording(trades, []), batch_size), flush=sink.flush, flush_seconds=5.0)
    )
    return len(trades) / progress.wall_seconds, runtime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trades", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=20_000)
    ap.add_argument("--baseline-trades", type=int, default=20_000)
    args = ap.parse_args()
    configure_logging()
    base, _ = load_trades(DEMO_TRADES)
    trades = tiled(base, args.trades)
    print(f"input: {len(trades):,} trades of {len(trades.keys)} markets (the bundled recording tiled)")
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up: compile the kernels and create the tables, so neither is timed
        run(trades.slice(0, 5_000), args.batch_size, Path(tmp), "warmup")
        t0 = time.perf_counter()
        rate, rt = run(trades, args.batch_size, Path(tmp), "bench")
        wall = time.perf_counter() - t0
        single, _ = run(trades.slice(0, args.baseline_trades), 1, Path(tmp), "baseline")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    counts = rt.bus.counts
    print(f"batched ({args.batch_size:,}/batch): {rate:,.0f} trades/s  ({wall:.2f} s wall incl. setup)")
    print(f"baseline (1 trade/batch, first {args.baseline_trades:,} trades): {single:,.0f} trades/s")
    print(f"ratio batched / one-at-a-time: {rate / single:.1f}x")
    print(f"peak RSS: {peak_mib:,.0f} MiB")
    print(
        "events: "
        + ", ".join(f"{t}={n:,}" for t, n in sorted(counts.items()) if not t.startswith("md.trades"))
    )


if __name__ == "__main__":
    main()
