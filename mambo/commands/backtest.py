"""``mambo backtest`` and ``mambo optimize``: thin fronts over :mod:`mambo.backtest`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from mambo.backtest.data import CandleFrame
    from mambo.backtest.engine import BacktestResult
    from mambo.backtest.futures import FuturesResult
    from mambo.core.stages import EngineConfig
    from mambo.settings import MamboSettings

__all__ = ["register"]

DATA_HELP = (
    "A candle file: freqtrade (feather, JSON, parquet; market and timeframe from its name), ccxt "
    "OHLCV JSON, Binance bulk klines (CSV or zip), or CSV/Parquet with a time column (timestamp, date, "
    "datetime, open_time or time; ISO 8601 or epoch s/ms/us). Or 'history': the ClickHouse history "
    "(mambo import, mambo download), or the name of a ClickHouse candles table."
)
DataOpt = Annotated[str, typer.Option("--data", help=DATA_HELP)]
SymbolsOpt = Annotated[
    str | None,
    typer.Option(
        "--symbols",
        help="Comma-separated markets, symbol or exchange:symbol (default: the one a file's name gives, "
        "else BTC/USDT). A file holds one market (with several --data, give one symbol per file, in "
        "order); the history is filtered by them. Several markets trade from one account (--each: each "
        "on its own).",
    ),
]
ExchangeOpt = Annotated[
    str | None,
    typer.Option(help="Exchange of symbols given without one (default: a freqtrade folder's, else binance)."),
]
FromOpt = Annotated[str | None, typer.Option("--from", help="First bar, ISO 8601 (UTC) or epoch ms.")]
ToOpt = Annotated[str | None, typer.Option("--to", help="End (exclusive), ISO 8601 (UTC) or epoch ms.")]
TimeframeOpt = Annotated[
    str | None, typer.Option(help="The candles' timeframe (default: from their spacing; for a table, all).")
]
ParamOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--param", help="A strategy parameter, strategy.name=value (e.g. sma_cross.fast=20); repeat."
    ),
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML settings file (engine and risk).")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Where the embedded ClickHouse lives.")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _number(text: str) -> int | float | str:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _settings(config: Path | None, data_dir: Path | None) -> MamboSettings:
    from mambo.cli import _settings as load

    return load(config, data_dir)


def _engine(
    settings: MamboSettings, strategies: str, params: list[str] | None, **changes: Any
) -> EngineConfig:
    from dataclasses import replace

    from mambo.core.strategies import StrategyConfigError, load_strategy

    config = settings.engine.to_config()
    names = tuple(s.strip() for s in strategies.split(",") if s.strip())
    merged: dict[str, dict[str, Any]] = {k: dict(v) for k, v in config.strategy_params.items()}
    for item in params or []:
        m = re.fullmatch(r"([\w.:]+)\.(\w+)=(.+)", item)
        if m is None:
            raise _fail(f"--param {item!r}: write strategy.name=value, e.g. sma_cross.fast=20")
        merged.setdefault(m[1], {})[m[2]] = _number(m[3])
    try:
        for name in names:
            load_strategy(name, **merged.get(name, {}))
    except StrategyConfigError as exc:
        raise _fail(str(exc)) from exc
    if not names:
        raise _fail("give at least one strategy")
    return replace(
        config,
        strategies=names,
        strategy_params=merged,
        **{k: v for k, v in changes.items() if v is not None},
    )


def _markets(symbols: str | None, exchange: str | None) -> list[tuple[str, str]]:
    symbols, exchange = symbols or "BTC/USDT", exchange or "binance"
    out = []
    for item in (s.strip() for s in symbols.split(",")):
        if not item:
            continue
        ex, sep, sym = item.partition(":")
        # "BTC/USDT:USDT" is a ccxt symbol, not exchange:symbol: an exchange has no "/"
        out.append((ex, sym) if sep and "/" not in ex else (exchange, item))
    if not out:
        raise _fail("give at least one symbol")
    return out


def _load(
    data: str,
    symbols: str | None,
    exchange: str | None,
    timeframe: str | None,
    start: str | None,
    end: str | None,
    settings: MamboSettings,
) -> list[tuple[CandleFrame, str]]:
    from mambo.backtest.data import (
        CandleDataError,
        frame_from_file,
        load_candles,
        parse_time,
        read_candle_file,
    )
    from mambo.formats.readers import DATA_SUFFIXES

    try:
        lo = parse_time(start) if start else None
        hi = parse_time(end) if end else None
        path = Path(data)
        if path.is_dir():
            raise CandleDataError(
                f"{data} is a folder: give one candle file, or load the folder with mambo import and "
                "backtest --data history"
            )
        if path.exists():
            file = read_candle_file(path)
            typer.echo(file.describe())
            markets = _markets(symbols or file.symbol, exchange or file.exchange)
            if len(markets) > 1:
                raise CandleDataError(f"{data} holds one market; give one symbol (got {len(markets)})")
            ((ex, sym),) = markets
            if file.symbol and symbols and sym != file.symbol:  # the trader's word over a file's name
                typer.echo(
                    f"note: {path.name} names {file.symbol}; run as {sym}, as --symbols says", err=True
                )
            frames = [(frame_from_file(file, ex, sym, timeframe, lo, hi), f"{ex}:{sym}")]
            if file.kind == "trades":
                typer.echo(
                    f"built {frames[0][0].timeframe} candles from the trades (choose with --timeframe)"
                )
        elif "/" in data or data.lower().endswith(DATA_SUFFIXES):
            raise CandleDataError(f"{data}: no such file (give a candle file, 'history' or a table name)")
        else:
            from mambo.connectors.clickhouse import connect

            client = connect(settings.clickhouse_dsn, settings.clickhouse.database)
            table = "candles" if data == "history" else data
            frames = [
                (load_candles(table, sym, ex, timeframe, lo, hi, client=client), f"{ex}:{sym}")
                for ex, sym in _markets(symbols, exchange)
            ]
    except CandleDataError as exc:
        raise _fail(str(exc)) from exc
    except Exception as exc:  # e.g. ClickHouse cannot be opened: say why, no traceback
        raise _fail(f"cannot read {data}: {exc}", 1) from exc
    for frame, key in frames:
        if len(frame) < 2:
            raise _fail(f"{key}: {len(frame)} candle(s) in that range; need at least 2")
    return frames


def _progress() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
    )


def _show_metrics(metrics: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{metrics['market']} {metrics['timeframe']}: {metrics['bars']:,} bars ({metrics['mode']})"
    )
    table.add_column("metric")
    table.add_column("strategy", justify="right")
    table.add_column("buy and hold", justify="right")
    for name, value in metrics["strategy"].items():
        hold = metrics["buy_and_hold"].get(name, "")
        table.add_row(name, _fmt(value), _fmt(hold))
    Console().print(table)


def _fmt(v: Any) -> str:
    return f"{v:,.4f}" if isinstance(v, float) else str(v)


def _show_portfolio(metrics: dict[str, Any]) -> None:
    from decimal import Decimal

    from rich.console import Console
    from rich.table import Table

    markets = metrics["markets"]
    table = Table(title=f"one account over {len(markets)} markets")
    columns = list(next(iter(markets.values())))
    table.add_column("market")
    for c in columns:
        table.add_column(c, justify="right")
    for key, m in markets.items():  # money to the cent here; metrics.json keeps it exact
        table.add_row(
            key, *(f"{Decimal(m[c]):,.2f}" if isinstance(m[c], str) else _fmt(m[c]) for c in columns)
        )
    account = Table(title="the account")
    account.add_column("metric")
    account.add_column("value", justify="right")
    for name, value in metrics["account"].items():
        account.add_row(name, _fmt(value))
    console = Console()
    Console(width=max(console.width, 120)).print(table, account)


def _futures(
    result: BacktestResult,
    funding: Path,
    marks: Path | None,
    leverage: int,
    margin_mode: str,
    settings: MamboSettings,
) -> tuple[FuturesResult, dict[str, Any]]:
    """The perpetual's run and its section of metrics.json: :mod:`mambo.backtest.futures`. ``history``
    for ``funding`` or ``marks``: the ClickHouse history's funding times and mark prices."""
    from decimal import Decimal

    from mambo.backtest.futures import (
        FuturesConfig,
        funding_from_history,
        futures_metrics,
        load_funding_rates,
        load_mark_candles,
        mark_candles_from_history,
        run_futures,
    )

    frame = result.frame
    span = (int(frame.open_time[0]), int(frame.ts_event[-1])) if len(frame) else (0, -1)
    try:
        client: Any = None
        if "history" in (str(funding), str(marks)):
            from mambo.connectors.clickhouse import connect

            client = connect(settings.clickhouse_dsn, settings.clickhouse.database)
        db = settings.clickhouse.database
        if str(funding) == "history":
            rates = funding_from_history(client, db, frame.exchange, frame.symbol, *span)
            typer.echo(f"futures: {len(rates)} funding times from the history")
        else:
            rates = load_funding_rates(funding, frame.exchange, frame.symbol)
        mark_frame: CandleFrame | None = None
        if str(marks) == "history":
            mark_frame = mark_candles_from_history(
                client, db, frame.exchange, frame.symbol, frame.timeframe, *span
            )
            typer.echo(f"futures: {len(mark_frame)} mark-price candles from the history's marks")
        elif marks is not None:
            mark_frame = load_mark_candles(marks, frame.exchange, frame.symbol)
        config = FuturesConfig(
            leverage=leverage, margin_mode="isolated" if margin_mode == "isolated" else "cross"
        )
        run = run_futures(result, rates, config, mark_frame)
        futures = futures_metrics(run)
    except ValueError as exc:  # CandleDataError is one
        raise _fail(str(exc)) from exc
    for note in futures["notes"]:
        typer.echo(f"futures: {note}")
    typer.echo(
        f"futures: {futures['funding_payments']} funding payments, net"
        f" {Decimal(futures['funding_net']):,.4f}; {futures['liquidations']} liquidations;"
        f" max margin ratio {futures['max_margin_ratio']:.4f}"
    )
    return run, futures


def _run_portfolio(
    frames: list[tuple[CandleFrame, str]],
    engine: EngineConfig,
    markets_file: Path | None,
    settings: MamboSettings,
    out: Path,
) -> None:
    """Several markets, one account: :func:`~mambo.backtest.portfolio.run_portfolio`."""
    import numpy as np

    from mambo.backtest.portfolio import portfolio_metrics, run_portfolio
    from mambo.backtest.report import write_portfolio_outputs
    from mambo.connectors.markets import market_rules

    rules = {}
    for frame, key in frames:
        try:
            prices = np.concatenate([frame.open, frame.high, frame.low, frame.close])
            found = market_rules(key, prices, markets_file, settings.data_dir)
        except ValueError as exc:
            raise _fail(str(exc)) from exc
        typer.echo(found.note)
        rules[key] = found.market
    try:
        with _progress() as bar:
            task = bar.add_task(f"backtest {len(frames)} markets, one account", total=None)

            def show(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            result = run_portfolio([f for f, _ in frames], engine, rules, progress=show)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    metrics = portfolio_metrics(result)
    paths = write_portfolio_outputs(result, metrics, out)
    _show_portfolio(metrics)
    typer.echo(f"wrote {', '.join(str(p) for p in paths.values())}")


def register(app: typer.Typer) -> None:
    @app.command()
    def backtest(
        data: Annotated[
            list[str],
            typer.Option(
                "--data",
                help=DATA_HELP + " Repeat for several markets: one account trades them all (a portfolio "
                "backtest; --each backtests each market on its own).",
            ),
        ],
        strategy: Annotated[
            str, typer.Option(help="Comma-separated strategies (names, or module:Class of your own).")
        ] = "sma_cross",
        symbols: SymbolsOpt = None,
        exchange: ExchangeOpt = None,
        start: FromOpt = None,
        end: ToOpt = None,
        timeframe: TimeframeOpt = None,
        out: Annotated[Path, typer.Option(help="Folder for trades.csv, metrics.json, report.html.")] = Path(
            "backtest"
        ),
        param: ParamOpt = None,
        cash: Annotated[float | None, typer.Option(help="Initial cash (quote currency).")] = None,
        qty: Annotated[
            float | None, typer.Option(help="Fixed order size (default: risk sizes from equity).")
        ] = None,
        fee_maker: Annotated[float | None, typer.Option(help="Maker fee rate, e.g. 0.0002.")] = None,
        fee_taker: Annotated[float | None, typer.Option(help="Taker fee rate, e.g. 0.0004.")] = None,
        slippage_bps: Annotated[
            float | None, typer.Option(help="Market orders fill this much worse.")
        ] = None,
        allow_short: Annotated[bool | None, typer.Option("--allow-short/--long-only")] = None,
        mode: Annotated[str, typer.Option(help="auto, vectorized or events.")] = "auto",
        markets_file: Annotated[
            Path | None,
            typer.Option(
                "--markets",
                help="The exchange's market definitions (ccxt's markets as JSON) for tick, step and minimum "
                "notional. Default: ccxt's markets cached in the data folder, then Mambo's bundled ones, "
                "else the tick is read off the prices (said in the output).",
            ),
        ] = None,
        each: Annotated[
            bool,
            typer.Option(
                "--each/--portfolio",
                help="With several markets: backtest each on its own account, or all on one (the default).",
            ),
        ] = False,
        funding: Annotated[
            Path | None,
            typer.Option(
                help="A perpetual: its funding-rate history (freqtrade's *-funding_rate.feather, a CSV "
                "with fundingTime, fundingRate[, markPrice], or 'history': the ClickHouse history's). The "
                "fills are booked in a margin account with funding and liquidations; metrics.json gains a "
                "futures section. One market.",
            ),
        ] = None,
        mark_prices: Annotated[
            Path | None,
            typer.Option(
                "--marks",
                help="With --funding: mark-price candles, or 'history': built from the history's mark prices "
                "(else the closes, said so).",
            ),
        ] = None,
        leverage: Annotated[int, typer.Option(help="With --funding: the leverage.")] = 1,
        control: Annotated[
            Path | None,
            typer.Option(
                help="A control script: a JSON list of commands, each {at (ISO time), action, strategy, "
                "market, params, why}, given to the pipeline before the first candle opening at or after "
                "its time (see mambo ctl). Runs the event path; one market or --each.",
            ),
        ] = None,
        margin_mode: Annotated[str, typer.Option(help="With --funding: cross or isolated.")] = "cross",
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Backtest strategies over candle history with the live pipeline's operators; writes
        trades.csv, metrics.json and report.html to --out. Several markets trade from one account."""
        from decimal import Decimal

        import numpy as np

        from mambo.backtest.engine import run_backtest
        from mambo.backtest.metrics import compute_metrics
        from mambo.backtest.report import write_outputs
        from mambo.connectors.markets import market_rules

        if mode not in ("auto", "vectorized", "events"):
            raise _fail("--mode must be auto, vectorized or events")
        settings = _settings(config, data_dir)
        dec = {
            "initial_cash": cash,
            "order_qty": qty,
            "fee_maker": fee_maker,
            "fee_taker": fee_taker,
            "slippage_bps": slippage_bps,
        }
        engine = _engine(
            settings,
            strategy,
            param,
            allow_short=allow_short,
            **{k: None if v is None else Decimal(repr(v)) for k, v in dec.items()},
        )
        wanted = [s.strip() for s in (symbols or "").split(",") if s.strip()]
        per_file: list[tuple[str, str | None]] = [(d, symbols) for d in data]
        if len(data) > 1 and len(wanted) == len(data):  # one symbol per file, in order
            per_file = list(zip(data, wanted, strict=True))
        frames = [f for d, w in per_file for f in _load(d, w, exchange, timeframe, start, end, settings)]
        if funding is not None:
            # a perpetual is paid with margin, not cash: the margin account refuses what it cannot carry
            from dataclasses import replace

            if len(frames) != 1 or margin_mode not in ("cross", "isolated"):
                raise _fail("--funding backtests one market; --margin-mode is cross or isolated")
            engine = replace(engine, risk=engine.risk.model_copy(update={"cash_only": False}))
        if len(frames) > 1 and not each:
            _run_portfolio(frames, engine, markets_file, settings, out)
            return
        for frame, key in frames:
            folder = out if len(frames) == 1 else out / re.sub(r"[^\w.-]+", "_", key)
            try:
                prices = np.concatenate([frame.open, frame.high, frame.low, frame.close])
                rules = market_rules(key, prices, markets_file, settings.data_dir)
            except ValueError as exc:  # an unreadable markets file, or one without the market
                raise _fail(str(exc)) from exc
            typer.echo(rules.note)
            try:
                with _progress() as bar:
                    task = bar.add_task(f"backtest {key}", total=len(frame))

                    def show(done: int, _total: int, bar: Any = bar, task: Any = task) -> None:
                        bar.update(task, completed=done)

                    result = run_backtest(
                        frame, engine, rules.market, mode=mode, progress=show,  # type: ignore[arg-type]
                        control=_control_script(control, key) if control is not None else (),
                    )  # fmt: skip
            except ValueError as exc:
                raise _fail(str(exc)) from exc
            if result.fallback:
                typer.echo(f"note: ran the event path: {result.fallback}", err=True)
            metrics = compute_metrics(result)
            perpetual = None
            if funding is not None:
                perpetual, metrics["futures"] = _futures(
                    result, funding, mark_prices, leverage, margin_mode, settings
                )
            paths = write_outputs(result, metrics, folder, perpetual)
            _show_metrics(metrics)
            typer.echo(f"wrote {', '.join(str(p) for p in paths.values())}")

    def _control_script(path: Path, market: str) -> list[Any]:
        """The commands of a control script file (see ``--control``), for ``market``."""
        import json
        import uuid

        import pandas as pd

        from mambo.core.control import check
        from mambo.schemas.events import ControlCommand

        try:
            items = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise _fail(f"--control {path}: {e}") from e
        if not isinstance(items, list):
            raise _fail(f"--control {path}: a JSON list of commands")
        out, versions = [], dict[str, int]()
        for n, item in enumerate(items, 1):
            try:
                at = pd.Timestamp(item["at"])
                at = at.tz_localize("UTC") if at.tzinfo is None else at
                strategy = item.get("strategy", "")
                versions[strategy] = versions.get(strategy, 0) + 1
                ts = int(at.value)
                exchange, _, symbol = (item.get("market") or market).partition(":")
                cmd = ControlCommand(
                    event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"{path}#{n}").hex,
                    ts_event=ts,
                    ts_init=ts,
                    command_id=f"script-{n}",
                    account=item.get("account", "main"),
                    action=item["action"],
                    strategy=strategy,
                    exchange=exchange,
                    symbol=symbol,
                    params=json.dumps(item.get("params", {}), sort_keys=True),
                    version=versions[strategy],
                    who=item.get("who", "control script"),
                    why=item.get("why", ""),
                )
            except (KeyError, TypeError, ValueError) as e:
                raise _fail(f"--control {path}: command {n}: {e}") from e
            problem = check(cmd)
            if problem is not None:
                raise _fail(f"--control {path}: command {n}: {problem}")
            out.append(cmd)
        return out

    @app.command()
    def optimize(
        data: DataOpt,
        grid: Annotated[
            list[str],
            typer.Option(
                "--grid",
                help="A parameter and its values, name=v1,v2,... (optuna searches between the smallest and "
                "largest); repeat per parameter.",
            ),
        ],
        strategy: Annotated[str, typer.Option(help="The strategy to tune (one).")] = "sma_cross",
        search: Annotated[str, typer.Option(help="grid or optuna.")] = "grid",
        trials: Annotated[int, typer.Option(help="Optuna trials per fold.")] = 50,
        folds: Annotated[int, typer.Option(help="Walk-forward folds (0: search the whole history).")] = 3,
        objective: Annotated[str, typer.Option(help="What to maximize (max_drawdown: minimize).")] = "sharpe",
        jobs: Annotated[int | None, typer.Option(help="Worker processes (default: every core).")] = None,
        seed: Annotated[int, typer.Option(help="Optuna's seed.")] = 0,
        symbols: SymbolsOpt = None,
        exchange: ExchangeOpt = None,
        start: FromOpt = None,
        end: ToOpt = None,
        timeframe: TimeframeOpt = None,
        param: ParamOpt = None,
        store_results: Annotated[
            bool, typer.Option("--store/--no-store", help="Keep the run and its trials in ClickHouse.")
        ] = True,
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Search a strategy's parameters in parallel with walk-forward validation; prints the
        out-of-sample results and stores every trial in ClickHouse (tables backtest_runs, backtest_trials)."""
        from rich.console import Console
        from rich.table import Table

        from mambo.backtest.optimize import OBJECTIVES, store
        from mambo.backtest.optimize import optimize as run_optimize

        if search not in ("grid", "optuna"):
            raise _fail("--search must be grid or optuna")
        if objective not in OBJECTIVES:
            raise _fail(f"--objective must be one of {', '.join(OBJECTIVES)}")
        space: dict[str, list[int | float]] = {}
        for item in grid:
            name, sep, values = item.partition("=")
            parsed = [_number(v.strip()) for v in values.split(",") if v.strip()]
            if not sep or not name.strip() or not parsed or any(isinstance(v, str) for v in parsed):
                raise _fail(f"--grid {item!r}: write name=v1,v2,... with numbers")
            space[name.strip()] = parsed  # type: ignore[assignment]
        settings = _settings(config, data_dir)
        engine = _engine(settings, strategy, param)
        if len(engine.strategies) != 1:
            raise _fail("optimize tunes one strategy at a time")
        if len(_markets(symbols, exchange)) != 1:
            raise _fail("optimize runs on one market at a time")
        ((frame, key),) = _load(data, symbols, exchange, timeframe, start, end, settings)
        try:
            with _progress() as bar:
                task = bar.add_task(f"optimize {strategy} on {key}", total=None)
                result = run_optimize(
                    frame,
                    engine,
                    engine.strategies[0],
                    space,
                    search=search,  # type: ignore[arg-type]
                    trials=trials,
                    folds=folds,
                    objective=objective,
                    jobs=jobs,
                    seed=seed,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                )
        except ValueError as exc:
            raise _fail(str(exc)) from exc
        table = Table(title=f"{strategy} on {key}: {search}, objective {objective}, run {result.run_id}")
        for col in (
            "fold",
            "best params (in sample)",
            f"in-sample {objective}",
            f"out-of-sample {objective}",
            "oos return",
        ):
            table.add_column(col)
        for fold, best in enumerate(result.best):
            train = max(
                (t for t in result.trials if t.fold == fold and t.phase != "test"), key=lambda t: t.objective
            )
            test = next((t for t in result.out_of_sample if t.fold == fold), None)
            table.add_row(
                str(fold),
                ", ".join(f"{k}={v}" for k, v in best.items()),
                _fmt(float(train.metrics["strategy"][objective])),
                _fmt(float(test.metrics["strategy"][objective])) if test else "-",
                _fmt(float(test.metrics["strategy"]["total_return"])) if test else "-",
            )
        Console().print(table)
        if result.out_of_sample:
            typer.echo(
                f"out of sample: mean {objective} {result.oos_objective:.4f}, "
                f"compounded return {result.oos_return:.4%}"
            )
        if store_results:
            from mambo.connectors.clickhouse import connect, ensure_schema

            try:
                client = connect(settings.clickhouse_dsn, settings.clickhouse.database)
                ensure_schema(client, settings.clickhouse.database)
                store(client, settings.clickhouse.database, result, frame, engine, data)
            except Exception as exc:
                raise _fail(f"results not stored in ClickHouse: {exc}", 1) from exc
            typer.echo(
                f"stored run {result.run_id} ({len(result.trials)} trials): "
                f"mambo sql \"SELECT * FROM backtest_trials WHERE run_id = '{result.run_id}'\""
            )
