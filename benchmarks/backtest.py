"""Candles/s of a backtest of the SMA crossover (50/200), end to end, on one core; and of the same
backtest as a perpetual with funding (the margin account after it), beside spot.

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
* always: spot and a perpetual side by side on the real bars (--perpetual-candles, default all of them,
  untiled): spot is ``mambo backtest``'s work (run_backtest and its metrics), the perpetual is
  ``mambo backtest --funding ... --leverage 10 --margin-mode cross``'s (the same with the margin account's
  risk, then run_futures: every bar's marks, the funding times and the fills booked in the Decimal margin
  account, and futures_metrics). The two take turns --perpetual-repeat times in this process, so both see
  the same machine; the ratio is of the medians. No recorded BTC funding covers these bars (the BTC
  funding at hand is from 2019 and 2023), so the funding history is synthetic and said so: every 8 hours
  (00:00, 08:00, 16:00 UTC) at 0.01%, Binance's rate when the premium is nil;
* with --against DIR (another checkout of Mambo, e.g. ``git worktree add /tmp/base <commit>``): the
  same measurement of both checkouts in fresh processes, taking turns --rounds times, then the best
  and median of each and their ratio, and whether both gave the same fills and final equity.

Run: python benchmarks/backtest.py [--candles 1000000] [--baseline-candles 20000] [--repeat 3]
     [--perpetual-candles 45031] [--perpetual-repeat 5]
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


#: The synthetic funding: Binance's interval and its rate when the premium index is nil.
FUNDING_EVERY_NS = 8 * 3600 * 1_000_000_000
FUNDING_RATE = 0.0001


def synthetic_funding(frame: Any) -> list[Any]:
    """A FundingRate at every 8-hour mark (00:00, 08:00, 16:00 UTC) over the frame's span, all at
    :data:`FUNDING_RATE`; no mark price (run_futures takes the last close)."""
    from mambo.schemas.events import FundingRate, make_id

    first = -(-int(frame.open_time[0]) // FUNDING_EVERY_NS) * FUNDING_EVERY_NS
    return [
        FundingRate(
            event_id=make_id("funding_rate", frame.exchange, frame.symbol, t),
            ts_event=t,
            ts_init=t,
            exchange=frame.exchange,
            symbol=frame.symbol,
            rate=FUNDING_RATE,
        )
        for t in range(first, int(frame.ts_event[-1]) + 1, FUNDING_EVERY_NS)
    ]


def spot_and_perpetual(candles: int, repeat: int) -> None:
    """Spot and perpetual candles/s over the same bars, taking turns, printed side by side."""
    from dataclasses import replace

    from mambo.backtest.data import load_candles
    from mambo.backtest.engine import run_backtest
    from mambo.backtest.futures import FuturesConfig, futures_metrics, run_futures
    from mambo.backtest.metrics import compute_metrics
    from mambo.core.stages import EngineConfig

    source = REAL if REAL.exists() else FIXTURE
    base = load_candles(source, "BTC/USDT:USDT", "binanceusdm")
    candles = candles or len(base)
    frame = base.tile(-(-candles // len(base))).slice(0, candles)
    spot = EngineConfig(strategies=("sma_cross",))
    perp = replace(spot, risk=spot.risk.model_copy(update={"cash_only": False}))  # as --funding runs it
    futures_config = FuturesConfig(leverage=10, margin_mode="cross")
    funding = synthetic_funding(frame)

    def run_spot() -> dict[str, Any]:
        result = run_backtest(frame, spot)
        return {"fills": len(result.fills), **compute_metrics(result)["strategy"]}

    def run_perp() -> dict[str, Any]:
        result = run_backtest(frame, perp)
        compute_metrics(result)
        return {"fills": len(result.fills), **futures_metrics(run_futures(result, funding, futures_config))}

    run_spot(), run_perp()  # warm: numba kernels, brackets, imports
    timed: dict[str, tuple[list[float], list[float]]] = {"spot": ([], []), "perpetual": ([], [])}
    last: dict[str, dict[str, Any]] = {}
    for _ in range(repeat):
        for name, run in (("spot", run_spot), ("perpetual", run_perp)):
            t, c = time.perf_counter(), time.process_time()
            last[name] = run()
            timed[name][0].append(time.perf_counter() - t)
            timed[name][1].append(time.process_time() - c)
    p = last["perpetual"]
    print(
        f"spot and perpetual, the same {len(frame):,} bars of {source.name}, taking turns {repeat} times; "
        f"funding SYNTHETIC: {len(funding)} times every 8 h at {FUNDING_RATE:.2%} (no recorded BTC funding "
        f"covers these bars); perpetual at {futures_config.leverage}x {futures_config.margin_mode}"
    )
    print(
        f"perpetual: {p['fills']:,} fills (spot {last['spot']['fills']:,}), {p['funding_payments']} funding "
        f"payments, funding net {float(p['funding_net']):,.2f}, {p['liquidations']} liquidations, "
        f"{p['refused_fills']} refused, max margin ratio {p['max_margin_ratio']:.4f}"
    )
    medians = {}
    for name, (wall, cpu) in timed.items():
        (wb, wm), (cb, cm) = rates(len(frame), wall), rates(len(frame), cpu)
        medians[name] = (wm, cm)
        print(
            f"{name + ':':<11} wall best {wb:>10,.0f} median {wm:>10,.0f} candles/s; "
            f"CPU best {cb:>10,.0f} median {cm:>10,.0f} candles/s"
        )
    (sw, sc), (pw, pc) = medians["spot"], medians["perpetual"]
    print(f"ratio spot / perpetual (medians): wall {sw / pw:.1f}x, CPU {sc / pc:.1f}x")


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
    parser.add_argument(
        "--perpetual-candles", type=int, default=0, help="bars for spot vs perpetual (0: the real file's)"
    )
    parser.add_argument("--perpetual-repeat", type=int, default=5, help="turns of each, spot vs perpetual")
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
    spot_and_perpetual(args.perpetual_candles, args.perpetual_repeat)
    print(f"load average while measured: {os.getloadavg()[0]:.1f} (on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
