"""``mambo train``: train the ``ml_signal`` strategy's model walk-forward; a thin front over
:func:`mambo.ml.train.train`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mambo.commands.backtest import (
    ConfigOpt,
    DataDirOpt,
    DataOpt,
    ExchangeOpt,
    FromOpt,
    SymbolsOpt,
    TimeframeOpt,
    ToOpt,
    _fail,
    _fmt,
    _load,
    _markets,
    _progress,
    _settings,
)

__all__ = ["register"]


def _specs(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(s.strip() for s in text.split(",") if s.strip())


def _show(result: Any, key: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ml_signal on {key}: walk-forward, out of sample")
    for col in (
        "fold",
        "test window (UTC)",
        "bars",
        "AUC",
        "accuracy",
        "up share",
        "trades",
        "return",
        "buy and hold",
    ):
        table.add_column(col, justify="left" if col.startswith("test") else "right", no_wrap=True)
    for r in result.folds:
        test = r.metrics
        s, b = test["strategy"], test["buy_and_hold"]
        table.add_row(
            str(r.fold.index),
            f"{_day(test['start'])} .. {_day(test['end'])}",
            f"{r.fold.test_stop - r.fold.test_start:,}",
            _fmt(r.auc),
            _fmt(r.accuracy),
            _fmt(r.up_share),
            str(s["trades"]),
            f"{s['total_return']:+.4%}",
            f"{b['total_return']:+.4%}",
        )
    console = Console()
    Console(width=max(console.width, 140)).print(table)


def _day(ns: int) -> str:
    import pandas as pd

    return pd.Timestamp(int(ns), unit="ns", tz="UTC").strftime("%Y-%m-%d %H:%M")


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        data: DataOpt,
        out: Annotated[
            Path, typer.Option(help="The model folder to write (an existing model there is replaced).")
        ],
        horizon: Annotated[
            int, typer.Option(help="Label horizon in bars: does the close rise over it?")
        ] = 15,
        label_threshold: Annotated[
            float, typer.Option(help="The forward return a bar must beat to be labelled up.")
        ] = 0.0,
        folds: Annotated[
            int, typer.Option(help="Walk-forward folds (the history is cut into folds + 1).")
        ] = 4,
        window: Annotated[str, typer.Option(help="expanding or rolling training windows.")] = "expanding",
        rounds: Annotated[int, typer.Option(help="Boosting rounds.")] = 200,
        learning_rate: Annotated[float, typer.Option(help="LightGBM learning rate.")] = 0.05,
        leaves: Annotated[int, typer.Option(help="Leaves per tree.")] = 15,
        min_leaf: Annotated[int, typer.Option(help="Fewest bars in a leaf.")] = 200,
        seed: Annotated[int, typer.Option(help="Seed (bagging, feature sampling).")] = 0,
        indicators: Annotated[
            str | None, typer.Option(help="Comma-separated indicator specs (default: Mambo's set).")
        ] = None,
        features: Annotated[
            str | None,
            typer.Option(
                help="Comma-separated feature recipes, e.g. ret:5,raw:rsi_14 (see mambo.core.features)."
            ),
        ] = None,
        buy_above: Annotated[
            float, typer.Option(help="The out-of-sample backtests buy above this probability.")
        ] = 0.55,
        sell_below: Annotated[float, typer.Option(help="... and sell below this one.")] = 0.45,
        fee_taker: Annotated[
            float | None, typer.Option(help="Taker fee rate of the backtests, e.g. 0.0004.")
        ] = None,
        markets_file: Annotated[
            Path | None, typer.Option("--markets", help="ccxt markets JSON for tick and step (as backtest).")
        ] = None,
        symbols: SymbolsOpt = None,
        exchange: ExchangeOpt = None,
        start: FromOpt = None,
        end: ToOpt = None,
        timeframe: TimeframeOpt = None,
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Train the ml_signal strategy's model walk-forward on a candle file: each fold trains on the
        past (less a purge gap of the label horizon) and is backtested on the next window against buy
        and hold; the final model, its features and how it was made go to --out. Use it with
        mambo backtest --strategy ml_signal --param ml_signal.model=OUT."""
        from dataclasses import replace
        from decimal import Decimal

        import numpy as np

        from mambo.connectors.markets import market_rules
        from mambo.ml.artifact import ModelArtifactError
        from mambo.ml.train import DEFAULT_FEATURES, DEFAULT_INDICATORS, TrainConfig
        from mambo.ml.train import train as run_train

        if window not in ("expanding", "rolling"):
            raise _fail("--window must be expanding or rolling")
        if not 0.0 < sell_below <= buy_above < 1.0:
            raise _fail("need 0 < --sell-below <= --buy-above < 1")
        try:
            train_config = TrainConfig(
                indicators=_specs(indicators) or DEFAULT_INDICATORS,
                features=_specs(features) or DEFAULT_FEATURES,
                horizon=horizon,
                label_threshold=label_threshold,
                folds=folds,
                window=window,  # type: ignore[arg-type]
                rounds=rounds,
                learning_rate=learning_rate,
                num_leaves=leaves,
                min_data_in_leaf=min_leaf,
                seed=seed,
                buy_above=buy_above,
                sell_below=sell_below,
            )
        except ValueError as exc:
            raise _fail(str(exc)) from exc
        settings = _settings(config, data_dir)
        engine = settings.engine.to_config()
        if fee_taker is not None:
            engine = replace(engine, fee_taker=Decimal(repr(fee_taker)))
        if len(_markets(symbols, exchange)) != 1:
            raise _fail("train runs on one market at a time")
        ((frame, key),) = _load(data, symbols, exchange, timeframe, start, end, settings)
        try:
            prices = np.concatenate([frame.open, frame.high, frame.low, frame.close])
            rules = market_rules(key, prices, markets_file, settings.data_dir)
        except ValueError as exc:
            raise _fail(str(exc)) from exc
        typer.echo(rules.note)
        try:
            with _progress() as bar:
                task = bar.add_task(f"train ml_signal on {key}", total=None)

                def show(done: int, total: int, what: str) -> None:
                    bar.update(task, completed=done, total=total, description=f"train: {what}")

                result = run_train(frame, train_config, engine, out, rules.market, progress=show)
        except (ModelArtifactError, ValueError) as exc:
            raise _fail(str(exc)) from exc
        _show(result, key)
        typer.echo(
            f"out of sample ({len(result.folds)} folds, compounded): ml_signal {result.oos_return:+.4%}, "
            f"buy and hold {result.buy_hold_return:+.4%}"
        )
        training = result.manifest["training"]
        typer.echo(
            f"wrote model {out} (content hash {result.content_hash[:16]}), trained on {training['rows']:,} "
            f"bars {training['start']} .. {training['end']}, {len(train_config.features)} features"
        )
        market = f" --symbols {symbols}" if symbols else ""
        typer.echo(
            f"use it: mambo backtest --data {data}{market} --strategy ml_signal --param ml_signal.model={out}"
        )
