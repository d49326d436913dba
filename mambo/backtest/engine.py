"""The backtester: one market's candle history through the live pipeline's operators, two ways.

* :func:`run_events`, the reference: every candle goes through the embedded runtime, stage by stage,
  exactly as in a live run with ``fill_on="candles"`` (indicators, strategies, aggregation, intents,
  risk, the paper broker filling at the next candle's open, the portfolio).
* :func:`run_vectorized`, the fast path, with identical fills and equity. Indicators are computed
  over whole arrays (bit-identical to bar by bar) and each strategy decides every bar at once
  through :meth:`~mambo.core.strategies.Strategy.decide_batch` (checked for look-ahead). Nothing in
  the account can change on a bar where every strategy holds and no order rests, so only the bars
  where some strategy calls buy or sell, and the bar after one that left an order at the broker
  (where it fills), go through the event path's own aggregator, intent policy, risk engine, paper
  broker and portfolio, called in the order the bus calls the stages. The portfolio is marked at the
  close of each bar that decides something while a position is held, as bar-by-bar marking leaves
  it there; the other marks move nothing a later decision reads (sizing and exposure limits read the
  deciding bar's mark, cash and positions change only at fills), only the peak equity behind the
  drawdown kill switch, which this path refuses. Per-bar work is numpy and numba; the exact Decimal
  work happens per signal and per fill, and only the events a backtest reports or decides with are
  built there: the aggregator takes each bar's batch calls without Signal events
  (:meth:`~mambo.core.aggregation.SignalAggregator.on_calls`), the broker matches bars given as
  numbers and sends no acknowledgements (``PaperBroker(order_updates=False)``). Its speed:
  ``benchmarks/backtest.py``.

What cannot be skipped that way is refused (:func:`vector_refusal`) and :func:`run_backtest` falls
back to the event path: a strategy without ``decide_batch``, and the risk features that look at every
bar (stop-loss, take-profit, trailing stop, the drawdown kill switch).

Both return a :class:`BacktestResult`: the fills (with realized PnL), the directional aggregated
signals, rejections, and the account per bar. Cash and position change only at fills, so the
per-bar equity is ``cash + qty × close`` from the :class:`Ledger` of fills: exact (Decimal) with
:meth:`BacktestResult.equity_at`, float64 for the curve, the plots and the metrics.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from decimal import Decimal, localcontext
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from numba import njit

from mambo.backtest.data import CandleFrame
from mambo.core.aggregation import SignalAggregator
from mambo.core.execution import PaperBroker
from mambo.core.indicators import compute
from mambo.core.intents import IntentPolicy
from mambo.core.market import Market, infer_tick, to_decimal
from mambo.core.portfolio import MONEY, Portfolio, booked_qty_and_fee
from mambo.core.risk import RiskEngine
from mambo.core.stages import EngineConfig
from mambo.core.strategies import SIDE_CODES, BatchDecisions, Strategy, load_strategy
from mambo.schemas.events import AggregatedSignal, ControlCommand, Fill, RiskRejection
from mambo.schemas.topics import FILLS, REJECTIONS, SIGNALS
from mambo.streams.embedded import EmbeddedRuntime

__all__ = [
    "BacktestResult",
    "Ledger",
    "LookAheadError",
    "Progress",
    "Recorder",
    "backtest_config",
    "frame_markets",
    "progress_every",
    "run_backtest",
    "run_events",
    "run_vectorized",
    "vector_refusal",
]

Mode = Literal["auto", "vectorized", "events"]
#: Called with (bars done, bars in all) now and then on long runs.
Progress = Callable[[int, int], None]
_ZERO = Decimal(0)


def backtest_config(config: EngineConfig, timeframe: str) -> EngineConfig:
    """``config`` as a backtest on candles of ``timeframe`` runs it: one timeframe, fills from
    candles, and only the indicators the strategies read."""
    return replace(
        config, timeframes=(timeframe,), trading_timeframe=timeframe, fill_on="candles", indicators=()
    )


@dataclass(frozen=True)
class Ledger:
    """Cash and position after each fill, exactly as the portfolio books them, and the bar of each."""

    initial_cash: Decimal
    bar: npt.NDArray[np.int64]  # index of the candle each fill happened on
    cash: tuple[Decimal, ...]
    qty: tuple[Decimal, ...]

    @classmethod
    def of(cls, frame: CandleFrame, fills: Sequence[Fill], initial_cash: Decimal) -> Ledger:
        cash, qty, cashes, qtys = to_decimal(initial_cash), _ZERO, [], []
        with localcontext(MONEY):
            for f in fills:
                traded, fee = booked_qty_and_fee(f)
                cash -= traded * f.price + fee
                qty += traded
                cashes.append(cash)
                qtys.append(qty)
        ts = np.array([f.ts_event for f in fills], dtype=np.int64)
        bar = np.searchsorted(frame.open_time, ts, "left").astype(np.int64)
        return cls(to_decimal(initial_cash), bar, tuple(cashes), tuple(qtys))

    def segment(self, n: int) -> npt.NDArray[np.int64]:
        """For each of ``n`` bars, the index of the last fill at or before it (-1: none yet)."""
        # the count of fills on each bar, summed up to it (what searching every bar among the fills'
        # bars gives, in one pass instead of a binary search per bar)
        return np.cumsum(np.bincount(self.bar, minlength=n)[:n]).astype(np.int64) - 1

    def position(self, n: int) -> npt.NDArray[np.float64]:
        """The position held at each bar's close, as float64."""
        qty = np.array([0.0, *map(float, self.qty)])
        return qty[self.segment(n) + 1]

    def held_bars(self, n: int) -> int:
        """How many of ``n`` bars close with a position held (``count_nonzero(position(n))``, from
        the fills alone: each one's position holds from its bar up to the next fill's)."""
        bars = self.bar.tolist()
        ends = [*bars[1:], n] if bars else []
        return sum(end - bar for bar, end, qty in zip(bars, ends, self.qty, strict=True) if qty)

    def equity(self, close: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Equity at each bar's close, float64: ``cash + qty × close``."""
        cash = np.array([float(c) for c in self.cash])
        qty = np.array([float(q) for q in self.qty])
        curve: npt.NDArray[np.float64] = _equity_curve(
            self.bar, cash, qty, float(self.initial_cash), np.ascontiguousarray(close, dtype=np.float64)
        )
        return curve

    def equity_at(self, i: int, close: float) -> Decimal:
        """Exact equity at bar ``i``'s close."""
        k = int(np.searchsorted(self.bar, i, "right")) - 1
        if k < 0:
            return self.initial_cash
        return MONEY.add(self.cash[k], MONEY.multiply(self.qty[k], to_decimal(close)))


@njit(cache=True)
def _equity_curve(
    fill_bar: npt.NDArray[np.int64],
    cash: npt.NDArray[np.float64],
    qty: npt.NDArray[np.float64],
    initial_cash: float,
    close: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    # one pass, the same float operations per bar as cash[seg] + qty[seg] * close over the arrays
    out = np.empty(len(close))
    k, c, q = 0, initial_cash, 0.0
    for i in range(len(close)):
        while k < len(fill_bar) and fill_bar[k] <= i:  # the account after the bar's last fill
            c, q = cash[k], qty[k]
            k += 1
        out[i] = c + q * close[i]
    return out


@dataclass
class BacktestResult:
    """What a backtest produced; ``mode`` says which path ran and ``fallback`` why not the fast one."""

    frame: CandleFrame
    config: EngineConfig
    mode: Literal["vectorized", "events"]
    fills: list[Fill]
    signals: list[AggregatedSignal]
    rejections: list[RiskRejection]
    ledger: Ledger
    fallback: str = ""
    #: The event path only: the live portfolio's own equity after each bar (what the ledger must equal).
    portfolio_equity: list[Decimal] | None = field(default=None, repr=False)
    _equity: npt.NDArray[np.float64] | None = field(default=None, repr=False)

    @property
    def equity(self) -> npt.NDArray[np.float64]:
        """Equity at every bar's close (float64)."""
        if self._equity is None:
            self._equity = self.ledger.equity(self.frame.close)
        return self._equity

    @property
    def position(self) -> npt.NDArray[np.float64]:
        return self.ledger.position(len(self.frame))

    def equity_at(self, i: int) -> Decimal:
        """Exact equity at bar ``i``'s close."""
        return self.ledger.equity_at(i, float(self.frame.close[i]))

    @property
    def final_equity(self) -> Decimal:
        return self.equity_at(len(self.frame) - 1) if len(self.frame) else self.ledger.initial_cash


class Recorder:
    """Keeps the events a result reports: fills, directional aggregated signals, rejections."""

    def __init__(self) -> None:
        self.fills: list[Fill] = []
        self.signals: list[AggregatedSignal] = []
        self.rejections: list[RiskRejection] = []

    def __call__(self, topic: str, payload: Any) -> None:
        if topic == FILLS.name:
            self.fills.append(payload)
        elif topic == SIGNALS.name and payload.side != "hold":
            self.signals.append(payload)
        elif topic == REJECTIONS.name:
            self.rejections.append(payload)


def frame_markets(frame: CandleFrame, market: Market | None) -> dict[str, Market]:
    """The market's rules: those given, else the tick its prices are quoted on (never a made-up one:
    a 0.01 default put every fill of a coin at 0.12 outside its bar)."""
    if market is None:
        prices = np.concatenate([frame.open, frame.high, frame.low, frame.close])
        market = Market.inferred(frame.exchange, frame.symbol, infer_tick(prices))
    return {frame.key: market}


def progress_every(n: int) -> int:
    return max(1, n // 200)


def run_events(
    frame: CandleFrame,
    config: EngineConfig,
    market: Market | None = None,
    progress: Progress | None = None,
    control: Sequence[ControlCommand] = (),
) -> BacktestResult:
    """The reference path: every candle through the embedded runtime, one at a time. ``control``: a
    control script (:mod:`mambo.core.control`), each command given to the runtime before the first
    candle that opens at or after its ``ts_event``, as a running pipeline takes it between candles."""
    config = backtest_config(config, frame.timeframe)
    runtime = EmbeddedRuntime(config, frame_markets(frame, market), metrics=False)  # no live metrics
    rec = Recorder()
    runtime.observe(rec)
    n, every = len(frame), progress_every(len(frame))
    portfolio, equity = runtime.portfolio, []
    script = sorted(control, key=lambda c: c.ts_event)
    for i in range(n):
        while script and script[0].ts_event <= int(frame.open_time[i]):
            runtime.control(script.pop(0))
        runtime.ingest_candles([frame.candle(i)])
        equity.append(portfolio.equity)
        if progress is not None and (i + 1) % every == 0:
            progress(i + 1, n)
    if progress is not None:
        progress(n, n)
    ledger = Ledger.of(frame, rec.fills, config.initial_cash)
    return BacktestResult(
        frame, config, "events", rec.fills, rec.signals, rec.rejections, ledger, portfolio_equity=equity
    )


def vector_refusal(config: EngineConfig) -> str:
    """Why the vectorized path cannot give the event path's results for ``config`` ("" when it can)."""
    risk = config.risk
    per_bar = [
        name
        for name, value in (
            ("stop_loss", risk.stop_loss),
            ("take_profit", risk.take_profit),
            ("trailing_stop", risk.trailing_stop),
            ("max_drawdown", risk.max_drawdown),
        )
        if value is not None
    ]
    if per_bar:
        return f"risk {', '.join(per_bar)} watch every bar"
    for name in config.strategies:
        strategy = load_strategy(name, **config.strategy_params.get(name, {}))
        if type(strategy).decide_batch is Strategy.decide_batch:
            return f"strategy {name} has no decide_batch"
    return ""


class _SparseRun:
    """The vectorized path's account: the event path's operators (aggregator, intent policy, risk
    engine, paper broker, portfolio), called in the order the bus calls them on a candle (see
    :mod:`mambo.core.stages`), on the bars handed to :meth:`bar`.

    On a candle the stages run execution (fills at the open; order updates reach risk), portfolio
    (mark at the close while a position is held: made here only on bars that decide, see the module
    docstring), risk (stops: refused on this path, so nothing) and signals. A signal's ``values``
    stay empty here: the arrays hold them, and no order depends on them. The events nobody reads in
    a backtest (candles of the bars that only fill, order acknowledgements and ``filled`` updates,
    positions, equity snapshots) are not built; the :class:`Ledger` gives the account at every bar.
    """

    def __init__(
        self,
        frame: CandleFrame,
        config: EngineConfig,
        markets: dict[str, Market],
        strategies: list[Strategy],
        decisions: list[tuple[npt.NDArray[np.int8], npt.NDArray[np.float64]]],
    ) -> None:
        self.frame, self.key = frame, frame.key
        self.portfolio = Portfolio(config.initial_cash, account=config.account)
        self.broker = PaperBroker(
            fee_maker=config.fee_maker,
            fee_taker=config.fee_taker,
            slippage_bps=config.slippage_bps,
            markets=markets,
            order_updates=False,  # nobody reads acks here; risk learns from the fills
        )
        self.risk = RiskEngine(config.risk, markets, config.fee_taker, config.account)
        self.decisions = decisions
        self.aggregator = SignalAggregator(
            [s.name for s in strategies], threshold=config.aggregation_threshold
        )
        self.policy = IntentPolicy(
            qty=config.order_qty, allow_short=config.allow_short, account=config.account
        )
        self.rec = Recorder()

    def bar(self, i: int, active: bool) -> None:
        """Candle ``i`` through the stages; ``active``: some strategy calls buy or sell on it."""
        f, key = self.frame, self.key
        if self.broker.has_pending(key):
            t = int(f.open_time[i])
            fills = self.broker.on_bar(
                key, t, t + f.step, float(f.open[i]), float(f.low[i]), float(f.high[i]), float(f.volume[i])
            )
            for ev in fills:
                if isinstance(ev, Fill):
                    self.rec.fills.append(self.portfolio.book(ev))
                    self.risk.on_fill(ev)
                else:
                    self.risk.on_order(ev)
        if active:
            close = float(f.close[i])
            if self.portfolio.position(key):
                self.portfolio.mark(key, close)
            self._signals(i, close)

    def _signals(self, i: int, close: float) -> None:
        f, key = self.frame, self.key
        ts = int(f.open_time[i]) + f.step  # the candle's close: its ts_event and ts_init
        # each strategy's call as its Signal would carry it (a hold has no confidence), straight to
        # the aggregator: the raw signals are never built (checked calls: see _decide)
        calls = [(SIDE_CODES[int(s[i])], float(c[i]) if s[i] else 0.0) for s, c in self.decisions]
        agg = self.aggregator.on_calls(f.exchange, f.symbol, f.timeframe, ts, close, calls, ts)
        self.rec(SIGNALS.name, agg)
        intent = self.policy.on_signal(agg, self.portfolio.position(key), ts)
        if intent is None:
            return
        decided = self.risk.check(intent, self.portfolio, ts)
        if isinstance(decided, RiskRejection):
            self.rec.rejections.append(decided)
            return
        for rejected in self.broker.submit(decided, ts):  # no acks: only a rejection comes back
            self.risk.on_order(rejected)
        self.risk.on_order(decided)


class LookAheadError(ValueError):
    """A strategy's ``decide_batch`` gave a bar a different decision once later bars existed."""


def _decide(
    strategy: Strategy, close: npt.NDArray[np.float64], values: dict[str, npt.NDArray[np.float64]]
) -> BatchDecisions:
    """``strategy.decide_batch`` over the history, checked for look-ahead.

    A decision may use its own bar and earlier ones only, so deciding a prefix of the history alone
    must give the same decisions as within the whole. That is checked on prefixes ending at a few
    bars where the strategy calls buy or sell (the first ones, whose prefixes are short, a middle
    one and the last one) and at half the history: a batch form that reads a later bar changes
    the call on the last bar of such a prefix, which then has no later bar.
    """
    made = strategy.decide_batch(close, values)
    assert made is not None  # vector_refusal checked
    sides, confidence = made
    if sides.shape != close.shape or confidence.shape != close.shape:
        raise ValueError(f"strategy {strategy.name}: decide_batch must give one side and confidence per bar")
    calls = np.flatnonzero(sides)
    # what Decision refuses on the event path: a side code other than -1, 0, +1; a call without a
    # confidence in (0, 1]
    wrong = calls[~np.isin(sides[calls], (-1, 1)) | ~((confidence[calls] > 0) & (confidence[calls] <= 1))]
    if len(wrong):
        i = int(wrong[0])
        raise ValueError(
            f"strategy {strategy.name}: decide_batch gives bar {i} side code {int(sides[i])} with confidence"
            f" {float(confidence[i])!r}; a call is -1 (sell) or +1 (buy) with a confidence in (0, 1]"
        )
    ends = {len(close) // 2, *(int(i) + 1 for i in calls[:3])}
    if len(calls):
        ends |= {int(calls[len(calls) // 2]) + 1, int(calls[-1]) + 1}
    for end in sorted(ends):
        early = strategy.decide_batch(close[:end], {k: v[:end] for k, v in values.items()})
        assert early is not None
        conf = confidence[:end]
        differs = (early[0] != sides[:end]) | ((early[1] != conf) & ~(np.isnan(early[1]) & np.isnan(conf)))
        if differs.any():
            first = int(np.flatnonzero(differs)[0])
            raise LookAheadError(
                f"strategy {strategy.name}: decide_batch reads the future (bar {first} is decided "
                "differently once later bars exist); a decision may only use bars up to its own"
            )
    return sides, confidence


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector (reference counting goes on) while the operators run.

    They make a few short-lived events per signal and fill, and no reference cycles, so the
    collector's passes over the whole heap, triggered by those allocations, find nothing: they cost
    ~6% of a backtest of a million bars. It runs again (if it was on) when the block ends.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def run_vectorized(
    frame: CandleFrame,
    config: EngineConfig,
    market: Market | None = None,
    progress: Progress | None = None,
) -> BacktestResult:
    """The fast path (see the module docstring); ValueError when :func:`vector_refusal` objects."""
    config = backtest_config(config, frame.timeframe)
    refusal = vector_refusal(config)
    if refusal:
        raise ValueError(f"the vectorized path cannot run this config: {refusal}")
    strategies = [load_strategy(n, **config.strategy_params.get(n, {})) for n in config.strategies]
    specs = [spec for s in strategies for spec in s.indicators()]
    values = compute(specs, frame.open_time, frame.open, frame.high, frame.low, frame.close, frame.volume)
    decisions = [_decide(s, frame.close, values) for s in strategies]
    n = len(frame)
    active = np.zeros(n, dtype=bool)
    for sides, _ in decisions:
        active |= sides != 0
    wanted = np.flatnonzero(active).tolist()
    run = _SparseRun(frame, config, frame_markets(frame, market), strategies, decisions)
    broker, key = run.broker, frame.key
    every = progress_every(n)

    with _cyclic_gc_paused():
        last = -1  # the last bar handed to the operators
        k = 0  # next entry of `wanted`
        follow = False  # hand over the bar after `last` too: an order rests at the broker
        while True:
            while k < len(wanted) and wanted[k] <= last:
                k += 1
            j = last + 1 if follow else (wanted[k] if k < len(wanted) else n)
            if j >= n:
                break
            run.bar(j, bool(active[j]))
            follow = broker.has_pending(key)
            if progress is not None and j // every != last // every:
                progress(j + 1, n)
            last = j
    if progress is not None:
        progress(n, n)
    rec = run.rec
    ledger = Ledger.of(frame, rec.fills, config.initial_cash)
    return BacktestResult(frame, config, "vectorized", rec.fills, rec.signals, rec.rejections, ledger)


def run_backtest(
    frame: CandleFrame,
    config: EngineConfig,
    market: Market | None = None,
    mode: Mode = "auto",
    progress: Progress | None = None,
    control: Sequence[ControlCommand] = (),
) -> BacktestResult:
    """Backtest ``config`` over ``frame``: vectorized when it can give the event path's results
    (``auto``), else the event path; ``mode`` forces one (ValueError if vectorized is refused). A
    control script (``control``) runs on the event path."""
    if control:
        if mode == "vectorized":
            raise ValueError("a control script runs on the event path (--mode events or auto)")
        result = run_events(frame, config, market, progress, control)
        result.fallback = "a control script"
        return result
    if mode == "events":
        return run_events(frame, config, market, progress)
    refusal = vector_refusal(backtest_config(config, frame.timeframe))
    if refusal and mode == "auto":
        result = run_events(frame, config, market, progress)
        result.fallback = refusal
        return result
    return run_vectorized(frame, config, market, progress)
