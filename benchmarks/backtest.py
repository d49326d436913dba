"""Candles/s of a backtest of the SMA crossover (50/200), end to end, on one core.

Input: nautilus_trader's 45,031 real one-minute BTC perpetual bars
(../shared/data/nautilus_trader_testdata/btc-perp-20211231-20220201_1m.csv) when present, else the
5,000-bar test fixture; tiled end to end until it holds --candles bars (CandleFrame.tile: each copy is
shifted in time by the file's span and scaled in price so it starts where the previous one ended, so
the averages keep crossing as in real data and no bar repeats a time).

Measured: the vectorized path (indicators, decisions, the aggregator, intents, risk, paper fills and
the Decimal portfolio on the bars that trade, the equity curve) plus every metric, from candles in
memory to metrics (reading the file is timed apart). Risk sizes each entry from equity (the default
EngineConfig), taker fee 0.1%.

Wall time and process CPU time are both printed: on a shared machine the CPU time shows what one
core does. Baseline, side by side: the event path (every candle through the embedded runtime, one at
a time) on the first --baseline-candles bars; the same bars through the vectorized path must give
the same fills, which is checked and printed.

Run: python benchmarks/backtest.py [--candles 1000000] [--baseline-candles 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from mambo.backtest.data import load_candles
from mambo.backtest.engine import run_events, run_vectorized
from mambo.backtest.metrics import compute_metrics
from mambo.core.stages import EngineConfig

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "nautilus_trader_testdata" / "btc-perp-20211231-20220201_1m.csv"
FIXTURE = ROOT / "tests" / "fixtures" / "btc_perp_1m_5000.csv"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--candles", type=int, default=1_000_000)
    parser.add_argument("--baseline-candles", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    source = REAL if REAL.exists() else FIXTURE
    t0 = time.perf_counter()
    base = load_candles(source, "BTC/USDT:USDT", "binanceusdm")
    load_s = time.perf_counter() - t0
    frame = base.tile(-(-args.candles // len(base)))
    config = EngineConfig(strategies=("sma_cross",))
    print(f"input: {source.name}, {len(base):,} real bars (read in {load_s:.2f} s), tiled to {len(frame):,}")

    run_vectorized(frame.slice(0, 5_000), config)  # compile and warm the numba kernels
    times, cpu = [], []
    for _ in range(args.repeat):
        t, c = time.perf_counter(), time.process_time()
        result = run_vectorized(frame, config)
        metrics = compute_metrics(result)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    best, median = min(times), statistics.median(times)
    s = metrics["strategy"]
    print(
        f"vectorized: {len(frame):,} candles, {s['trades']:,} fills, {s['round_trips']:,} round trips, "
        f"final equity {s['final_equity']}"
    )
    print(
        f"vectorized end to end: best {len(frame) / best:,.0f} candles/s ({best:.3f} s), "
        f"median {len(frame) / median:,.0f} candles/s ({median:.3f} s) over {args.repeat} runs"
    )
    print(
        f"vectorized per CPU second (what one core does when the machine is shared): "
        f"best {len(frame) / min(cpu):,.0f} candles/s, median {len(frame) / statistics.median(cpu):,.0f}"
    )

    part = frame.slice(0, args.baseline_candles)
    t = time.perf_counter()
    events = run_events(part, config)
    compute_metrics(events)
    event_s = time.perf_counter() - t
    same = run_vectorized(part, config).fills == events.fills
    event_rate = len(part) / event_s
    print(f"baseline, event path: {len(part):,} candles in {event_s:.2f} s = {event_rate:,.0f} candles/s")
    print(f"same fills on the baseline slice: {same} ({len(events.fills)} fills)")
    print(f"ratio vectorized (median) / event path: {len(frame) / median / event_rate:,.0f}x")


if __name__ == "__main__":
    main()
