"""Candles/s of a backtest of the SMA crossover (50/200), end to end, on one core.

Input: nautilus_trader's 45,031 real one-minute BTC perpetual bars
(../shared/data/nautilus_trader_testdata/btc-perp-20211231-20220201_1m.csv) when present, else the
5,000-bar test fixture; tiled end to end until it holds --candles bars (CandleFrame.tile: each copy is
shifted in time by the file's span and scaled in price so it starts where the previous one ended, so
the averages keep crossing as in real data and no bar repeats a time).

Measured: the vectorized path (indicators, decisions and their look-ahead check, the aggregator,
intents, risk, paper fills and the Decimal portfolio on the bars that trade, the equity curve) plus
every metric, from candles in memory to metrics (reading the file is timed apart). Risk sizes each
entry from equity (the default EngineConfig), taker fee 0.1%.

Wall time and process CPU time are both printed: on a shared machine the CPU time shows what one
core does. Baselines, side by side:

* always: the event path (every candle through the embedded runtime, one at a time) on the first
  --baseline-candles bars; the same bars through the vectorized path must give the same fills,
  which is checked and printed;
* with --against DIR (another checkout of Mambo, e.g. ``git worktree add /tmp/base <commit>``): the
  same measurement of both checkouts in fresh processes, taking turns --rounds times, then the best
  and median of each and their ratio, and whether both gave the same fills and final equity.

Run: python benchmarks/backtest.py [--candles 1000000] [--baseline-candles 20000] [--repeat 3]
     python benchmarks/backtest.py --against /tmp/base [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "nautilus_trader_testdata" / "btc-perp-20211231-20220201_1m.csv"
FIXTURE = ROOT / "tests" / "fixtures" / "btc_perp_1m_5000.csv"


def measure(candles: int, repeat: int) -> dict[str, Any]:
    """Run the vectorized backtest and its metrics ``repeat`` times over ``candles`` tiled bars (with
    whichever ``mambo`` is first on the path)."""
    from mambo.backtest.data import load_candles
    from mambo.backtest.engine import run_vectorized
    from mambo.backtest.metrics import compute_metrics
    from mambo.core.stages import EngineConfig

    source = REAL if REAL.exists() else FIXTURE
    t0 = time.perf_counter()
    base = load_candles(source, "BTC/USDT:USDT", "binanceusdm")
    load_s = time.perf_counter() - t0
    frame = base.tile(-(-candles // len(base)))
    config = EngineConfig(strategies=("sma_cross",))
    run_vectorized(frame.slice(0, 5_000), config)  # compile and warm the numba kernels
    wall, cpu = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        metrics = compute_metrics(run_vectorized(frame, config))
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    s = metrics["strategy"]
    return {
        "source": source.name,
        "real_bars": len(base),
        "load_s": load_s,
        "bars": len(frame),
        "wall": wall,
        "cpu": cpu,
        "fills": s["trades"],
        "round_trips": s["round_trips"],
        "final_equity": s["final_equity"],
    }


def rates(bars: int, seconds: list[float]) -> tuple[float, float]:
    """(best, median) candles/s."""
    return bars / min(seconds), bars / statistics.median(seconds)


def side_by_side(against: Path, candles: int, repeat: int, rounds: int) -> None:
    runs: dict[str, list[dict[str, Any]]] = {"this checkout": [], f"against {against}": []}
    roots = dict(zip(runs, (ROOT, against.resolve()), strict=True))
    for _ in range(rounds):
        for name, root in roots.items():
            env = {**os.environ, "PYTHONPATH": str(root)}
            cmd = [sys.executable, __file__, "--worker", "--candles", str(candles), "--repeat", str(repeat)]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            runs[name].append(json.loads(out.splitlines()[-1]))
    load = os.getloadavg()
    print(f"{rounds} rounds, each checkout in turn, {repeat} runs per round; load average {load[0]:.1f}")
    cpu_median = {}
    for name, results in runs.items():
        bars = results[0]["bars"]
        wall = [w for r in results for w in r["wall"]]
        cpu = [c for r in results for c in r["cpu"]]
        cpu_median[name] = statistics.median(cpu)
        (wb, wm), (cb, cm) = rates(bars, wall), rates(bars, cpu)
        print(
            f"{name}: {bars:,} candles, {results[0]['fills']:,} fills, final equity "
            f"{results[0]['final_equity']}; wall best {wb:,.0f} median {wm:,.0f} candles/s; "
            f"CPU best {cb:,.0f} median {cm:,.0f} candles/s"
        )
    this, other = runs
    same = {(r["fills"], r["final_equity"]) for rs in runs.values() for r in rs}
    print(f"same fills and final equity in every run: {len(same) == 1}")
    print(f"ratio (CPU median): this checkout {cpu_median[other] / cpu_median[this]:.2f}x the other")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--candles", type=int, default=1_000_000)
    parser.add_argument("--baseline-candles", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--against", type=Path, help="another checkout to measure side by side")
    parser.add_argument("--rounds", type=int, default=3, help="turns of each checkout with --against")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(measure(args.candles, args.repeat)))
        return
    if args.against is not None:
        side_by_side(args.against, args.candles, args.repeat, args.rounds)
        return

    from mambo.backtest.engine import run_events, run_vectorized
    from mambo.backtest.metrics import compute_metrics
    from mambo.core.stages import EngineConfig

    m = measure(args.candles, args.repeat)
    bars = m["bars"]
    print(
        f"input: {m['source']}, {m['real_bars']:,} real bars (read in {m['load_s']:.2f} s), tiled to {bars:,}"
    )
    print(
        f"vectorized: {bars:,} candles, {m['fills']:,} fills, {m['round_trips']:,} round trips, "
        f"final equity {m['final_equity']}"
    )
    (wb, wm), (cb, cm) = rates(bars, m["wall"]), rates(bars, m["cpu"])
    print(
        f"vectorized end to end: best {wb:,.0f} candles/s ({min(m['wall']):.3f} s), "
        f"median {wm:,.0f} candles/s ({statistics.median(m['wall']):.3f} s) over {args.repeat} runs"
    )
    print(
        f"vectorized per CPU second (one core's work on a shared machine): best {cb:,.0f}, median {cm:,.0f}"
    )

    from mambo.backtest.data import load_candles

    base = load_candles(REAL if REAL.exists() else FIXTURE, "BTC/USDT:USDT", "binanceusdm")
    part = base.tile(-(-args.baseline_candles // len(base))).slice(0, args.baseline_candles)
    config = EngineConfig(strategies=("sma_cross",))
    t = time.perf_counter()
    events = run_events(part, config)
    compute_metrics(events)
    event_s = time.perf_counter() - t
    same = run_vectorized(part, config).fills == events.fills
    event_rate = len(part) / event_s
    print(f"baseline, event path: {len(part):,} candles in {event_s:.2f} s = {event_rate:,.0f} candles/s")
    print(f"same fills on the baseline slice: {same} ({len(events.fills)} fills)")
    print(f"ratio vectorized (median) / event path: {wm / event_rate:,.0f}x")
    print(f"load average while measured: {os.getloadavg()[0]:.1f} (on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
