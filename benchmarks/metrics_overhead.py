"""What the Prometheus metrics cost the embedded pipeline: trades/s with the bus's metrics on and off,
side by side.

Input: the bundled Binance recording (4 markets) tiled to --trades trades (as embedded_pipeline.py
does). Every stage runs (1m and 5m candles, indicators, the four strategies on 1s or 1m candles, risk,
paper fills, portfolio); no ClickHouse sink, so the metrics' share is not diluted by the inserts (the
sink's own metrics are one counter and one histogram per insert). Runs alternate off/on, --repeats
times each (the order alternating), after a warm-up; the ratios are of the medians and of the best
runs (the least disturbed on a shared machine), of wall time and of the process's CPU time. 1s
candles make ~60 times more events per trade than 1m: the heavier case for per-event metrics.

Run: python benchmarks/metrics_overhead.py [--trades 500000] [--timeframe 1s] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from embedded_pipeline import STRATEGIES, tiled

from mambo.connectors.replay import DEMO_TRADES, Recording, load_trades, replay
from mambo.core.market import Market
from mambo.core.stages import EngineConfig
from mambo.logs import configure_logging
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import split_key
from mambo.streams.embedded import EmbeddedRuntime


def run(trades: TradeBatch, timeframe: str, batch_size: int, metrics: bool) -> tuple[float, float, int]:
    """Trades per second of wall time and of CPU time, and the messages the bus carried."""
    tfs = (timeframe, "5m") if timeframe != "5m" else ("5m",)
    config = EngineConfig(timeframes=tfs, trading_timeframe=timeframe, strategies=STRATEGIES)
    markets = {k: Market.default(*split_key(k)) for k in trades.keys}
    rt = EmbeddedRuntime(config, markets, known_markets=list(markets), metrics=metrics)
    slices = [replace(b, ts_init=time.time_ns()) for b, _ in replay(Recording(trades, []), batch_size)]
    t0, c0 = time.perf_counter(), time.process_time()
    for batch in slices:
        rt.ingest_trades(batch)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return len(trades) / wall, len(trades) / cpu, sum(rt.bus.counts.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trades", type=int, default=500_000)
    ap.add_argument("--batch-size", type=int, default=20_000)
    ap.add_argument("--timeframe", default="1s")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    configure_logging()
    base, _ = load_trades(DEMO_TRADES)
    trades = tiled(base, args.trades)
    run(trades.slice(0, 20_000), args.timeframe, args.batch_size, True)  # warm-up: compile the kernels
    walls: dict[bool, list[float]] = {False: [], True: []}
    cpus: dict[bool, list[float]] = {False: [], True: []}
    messages = 0
    for i in range(args.repeats):
        for on in (False, True) if i % 2 == 0 else (True, False):  # neither always goes first
            gc.collect()
            wall, cpu, messages = run(trades, args.timeframe, args.batch_size, on)
            walls[on].append(wall)
            cpus[on].append(cpu)
    print(f"input: {len(trades):,} trades, {args.timeframe} trading candles, {messages:,} bus messages a run")
    for what, rates in (("wall", walls), ("CPU", cpus)):
        print(f"{what} time, trades/s over {args.repeats} runs each:")
        for on in (False, True):
            runs = ", ".join(f"{r:,.0f}" for r in rates[on])
            print(f"  metrics {'on: ' if on else 'off:'} best {max(rates[on]):,.0f}  (runs: {runs})")
        for stat, f in (("median", statistics.median), ("best", max)):
            ratio = f(rates[True]) / f(rates[False])
            print(f"  on/off, {stat}: {ratio:.3f}  (overhead {100 * (1 - ratio):.1f}%)")


if __name__ == "__main__":
    main()
