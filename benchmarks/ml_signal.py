"""The ml_signal strategy trained walk-forward on real candles, judged out of sample against buy and hold.

Input: nautilus_trader's 45,031 real one-minute BTC perpetual bars
(../shared/data/nautilus_trader_testdata/btc-perp-20211231-20220201_1m.csv) when present, else the
5,000-bar test fixture (or --data FILE).

What runs is what ``mambo train`` runs (:func:`mambo.ml.train.train`): the default indicator
features, labels "does the close rise over --horizon bars", --folds walk-forward folds (each trains
on the past less a purge gap of the horizon, then is backtested on the next window through the
backtester, fees and next-open fills included), the final model written to --out. Printed: per fold
the AUC, the accuracy beside the share of "up" labels (the accuracy of always saying up), the trades,
the strategy's return and buy and hold's; the compounded out-of-sample returns; the training time.

Then the replay check on the last test window with that fold's model: the vectorized backtest and
the event path (every candle through the embedded runtime, the strategy deciding bar by bar) must
give the same signals and fills.

Note the scale: risk sizes each entry at --position-fraction of equity (0.1 by default), while buy and
hold is all in; the Sharpe ratios compare the two on a scale-free footing.

Run: python benchmarks/ml_signal.py [--horizon 15] [--folds 4] [--window expanding] [--fee-taker 0.001]
     [--position-fraction 0.1] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "nautilus_trader_testdata" / "btc-perp-20211231-20220201_1m.csv"
FIXTURE = ROOT / "tests" / "fixtures" / "btc_perp_1m_5000.csv"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=REAL if REAL.exists() else FIXTURE)
    parser.add_argument("--out", type=Path, help="model folder (default: a temporary one)")
    parser.add_argument("--horizon", type=int, default=15)
    parser.add_argument("--label-threshold", type=float, default=0.0)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--window", choices=("expanding", "rolling"), default="expanding")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--buy-above", type=float, default=0.55)
    parser.add_argument("--sell-below", type=float, default=0.45)
    parser.add_argument("--fee-taker", type=str, default="0.001", help="taker fee rate (the default 0.1%%)")
    parser.add_argument(
        "--position-fraction", type=str, default="0.1", help="equity per entry (the default risk sizing: 0.1)"
    )
    parser.add_argument("--no-replay", action="store_true", help="skip the event-path replay check")
    args = parser.parse_args()

    from mambo.backtest.data import load_candles
    from mambo.backtest.engine import run_events, run_vectorized
    from mambo.core.risk import RiskConfig
    from mambo.core.stages import EngineConfig
    from mambo.ml.train import TrainConfig, train

    frame = load_candles(args.data, "BTC/USDT:USDT", "binanceusdm")
    config = TrainConfig(
        horizon=args.horizon,
        label_threshold=args.label_threshold,
        folds=args.folds,
        window=args.window,
        rounds=args.rounds,
        seed=args.seed,
        buy_above=args.buy_above,
        sell_below=args.sell_below,
    )
    engine = EngineConfig(
        fee_taker=Decimal(args.fee_taker), risk=RiskConfig(position_fraction=Decimal(args.position_fraction))
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "model"
        t0 = time.perf_counter()
        result = train(frame, config, engine, out)
        took = time.perf_counter() - t0
        print(
            f"input: {args.data.name}, {len(frame):,} bars {frame.timeframe}; horizon {config.horizon} bars, "
            f"{config.folds} folds ({config.window}), {config.rounds} rounds, seed {config.seed}, "
            f"{len(config.features)} features; thresholds buy > {config.buy_above}, "
            f"sell < {config.sell_below}; taker fee {args.fee_taker}, "
            f"{args.position_fraction} of equity per entry"
        )
        print(
            f"{'fold':>4} {'train bars':>10} {'test bars':>9} {'AUC':>6} {'acc':>6} {'up':>6} {'trades':>6} "
            f"{'exposure':>8} {'return':>9} {'sharpe':>7} {'buy&hold':>9} {'sharpe':>7}"
        )
        for r in result.folds:
            s, b = r.metrics["strategy"], r.metrics["buy_and_hold"]
            f = r.fold
            print(
                f"{f.index:>4} {f.train_stop - f.train_start:>10,} {f.test_stop - f.test_start:>9,} "
                f"{r.auc:>6.3f} {r.accuracy:>6.3f} {r.up_share:>6.3f} {s['trades']:>6} {s['exposure']:>8.3f} "
                f"{s['total_return']:>+9.3%} {s['sharpe']:>7.2f} "
                f"{b['total_return']:>+9.3%} {b['sharpe']:>7.2f}"
            )
        print(
            f"out of sample, compounded over the test windows: ml_signal {result.oos_return:+.3%}, "
            f"buy and hold {result.buy_hold_return:+.3%}"
        )
        print(
            f"trained (folds, their backtests, final model) in {took:.1f} s; "
            f"content hash {result.content_hash[:16]}"
        )

        if not args.no_replay:
            last = result.folds[-1]
            window = frame.slice(last.fold.test_start, last.fold.test_stop)
            params = {"model": str(out / "folds" / str(last.fold.index)), "buy_above": config.buy_above}
            run = replace(
                engine,
                strategies=("ml_signal",),
                strategy_params={"ml_signal": {**params, "sell_below": config.sell_below}},
            )
            t0 = time.perf_counter()
            fast = run_vectorized(window, run)
            t1 = time.perf_counter()
            slow = run_events(window, run)
            t2 = time.perf_counter()
            same_signals = [(s.ts_event, s.side, s.confidence) for s in fast.signals] == [
                (s.ts_event, s.side, s.confidence) for s in slow.signals
            ]
            print(
                f"replay check, fold {last.fold.index} test window ({len(window):,} bars): "
                f"{len(fast.signals):,} signals, {len(fast.fills)} fills; same signals: {same_signals}, "
                f"same fills: {fast.fills == slow.fills}; "
                f"vectorized {t1 - t0:.2f} s, bar by bar {t2 - t1:.2f} s"
            )


if __name__ == "__main__":
    main()
