"""The pipeline's stages: each wires core operators to the topics it reads and writes.

A stage is pure: ``handle(topic, payload)`` returns the ``(topic, event)`` pairs it produces, in
causal order, and touches no I/O. The embedded bus (:mod:`mambo.streams.bus`) dispatches them depth
first; the Faust agents call the same ``handle``. State is per market key inside each stage's
operators, so each stage can be partitioned by ``exchange:symbol``.

Order on a candle topic matters and is the registration order of :func:`build_stages`: execution
(candle-driven fills at the next candle's open), portfolio (mark and equity), risk (stops), signals
(keeps the candle), then indicators → strategies → aggregation → intents → risk → orders. So an
order decided on candle t always fills on later data, never on candle t itself.

Execution goes to a :class:`Venue`. The paper broker is one (synchronous: its answers come back
from the call, so a run is deterministic). An exchange venue queues the order and answers later, out
of band: whoever receives the exchange's answers hands them to :meth:`ExecutionStage.on_reports`,
which books and publishes them exactly as it does the paper broker's.

The candle stage is the one *splitting* stage: it returns, with each candle, the index in the trade
batch of the trade that closed it, and the bus hands the later md.trades subscribers (execution) the
batch in slices between those indices. Processing a batch whole, in pieces or one trade at a time
therefore gives identical outputs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from mambo.core.aggregation import SignalAggregator
from mambo.core.candles import CandleBuilder
from mambo.core.execution import PaperBroker
from mambo.core.indicators import IndicatorSet
from mambo.core.intents import IntentPolicy
from mambo.core.market import Market
from mambo.core.portfolio import Portfolio
from mambo.core.risk import RiskConfig, RiskEngine
from mambo.core.strategies import Bar, Strategy, load_strategy, make_signal
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import (
    DEFAULT_ACCOUNT,
    FINAL_STATUSES,
    AggregatedSignal,
    Candle,
    Fill,
    IndicatorValues,
    Order,
    OrderIntent,
    RiskRejection,
    Signal,
    make_id,
    split_key,
    timeframe_ns,
)
from mambo.schemas.topics import (
    EQUITY,
    EXCHANGE_CANDLES,
    FILLS,
    INDICATORS,
    INTENTS,
    ORDERS,
    POSITIONS,
    REJECTIONS,
    SIGNALS,
    SIGNALS_RAW,
    TRADES,
    candle_topic,
)

__all__ = [
    "DEFAULT_INDICATORS",
    "Account",
    "CandleStage",
    "EngineConfig",
    "ExecutionStage",
    "IndicatorStage",
    "Out",
    "RiskStage",
    "SignalStage",
    "Stage",
    "Venue",
    "build_stages",
    "reject_repeats",
]

Out = list[tuple[str, Any]]
#: Indicators computed for every market besides those the strategies need (the dashboard's overlays).
DEFAULT_INDICATORS: tuple[str, ...] = ("ema:20", "rsi:14", "bbands:20:2", "atr:14", "vwap")


@dataclass
class EngineConfig:
    """What the pipeline builds and trades. One object for every runtime (settings fill it in)."""

    timeframes: tuple[str, ...] = ("1m",)
    trading_timeframe: str = "1m"
    strategies: tuple[str, ...] = ("sma_cross",)
    strategy_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    indicators: tuple[str, ...] = DEFAULT_INDICATORS
    aggregation_threshold: float = 0.0
    initial_cash: Decimal = Decimal(100_000)
    order_qty: Decimal | None = None  # None: risk sizes entries from equity
    allow_short: bool = False
    fee_maker: Decimal = Decimal("0.001")
    fee_taker: Decimal = Decimal("0.001")
    slippage_bps: Decimal = Decimal(0)
    fill_on: Literal["trades", "candles"] = "trades"
    risk: RiskConfig = field(default_factory=RiskConfig)
    #: the account these stages trade for: its id is on every intent, order, fill, position and
    #: equity snapshot they make
    account: str = DEFAULT_ACCOUNT

    def __post_init__(self) -> None:
        for tf in (*self.timeframes, self.trading_timeframe):
            timeframe_ns(tf)
        for name in ("timeframes", "strategies", "indicators"):
            reject_repeats(name, getattr(self, name))
        if self.trading_timeframe not in self.timeframes:
            self.timeframes = (*self.timeframes, self.trading_timeframe)


def reject_repeats(name: str, values: Sequence[str]) -> tuple[str, ...]:
    """``values`` as a tuple, or ValueError naming what is listed twice.

    A repeated timeframe made every stage that reads it subscribe twice, so each candle advanced the
    indicators twice (the demo's ``("1s", "1m", timeframe)`` with the default 1s did exactly that);
    a repeated strategy or indicator would decide or compute twice per bar. Refused rather than
    quietly dropped, so a configuration says what runs."""
    twice = [v for v, n in Counter(values).items() if n > 1]
    if twice:
        raise ValueError(f"{name} lists {', '.join(twice)} more than once: {list(values)}")
    return tuple(values)


class Stage:
    """Base of every stage: its name, the topics it reads, and its handler."""

    name: str = "stage"
    inputs: tuple[str, ...] = ()
    splits_batches: bool = False

    def handle(self, topic: str, payload: Any) -> Out:
        raise NotImplementedError


class CandleStage(Stage):
    """md.trades (TradeBatch) → md.candles.<tf>; exchange candles on md.candles pass through for
    markets whose candles are not built from their trades (a candle-only feed)."""

    name = "candles"
    splits_batches = True

    def __init__(self, timeframes: Sequence[str]) -> None:
        self.timeframes = tuple(timeframes)
        self.inputs = (TRADES.name, EXCHANGE_CANDLES.name)
        self.builders: dict[str, CandleBuilder] = {}

    def builder(self, key: str) -> CandleBuilder:
        b = self.builders.get(key)
        if b is None:
            exchange, symbol = split_key(key)
            b = self.builders[key] = CandleBuilder(exchange, symbol, self.timeframes)
        return b

    def split(self, batch: TradeBatch) -> list[tuple[int, str, Candle]]:
        """Candles closed by the batch, with the index of the closing trade, in stream order."""
        out: list[tuple[int, str, Candle]] = []
        codes = batch.market
        for code, key in enumerate(batch.keys):
            sel = (codes == code).nonzero()[0] if len(batch.keys) > 1 else None
            sub = batch if sel is None else batch.take(sel)
            if not len(sub):
                continue
            for idx, candle in self.builder(key).update_batch(sub.ts, sub.price, sub.qty, batch.ts_init):
                out.append((idx if sel is None else int(sel[idx]), candle_topic(candle.timeframe), candle))
        out.sort(key=lambda r: r[0])  # stable: timeframes stay shortest first at one index
        return out

    def handle(self, topic: str, payload: Any) -> Out:
        if topic == EXCHANGE_CANDLES.name:
            # one source of bars per market: once a market's trades build its candles, the exchange's
            # own bars (kept in history from md.candles) would make each bar count twice downstream
            if payload.key in self.builders:
                return []
            return [(candle_topic(payload.timeframe), payload)]
        return [(t, c) for _, t, c in self.split(payload)]

    def flush(self, watermark: int, ts_init: int = 0) -> Out:
        """Close every candle that ends at or before the watermark (end of a replay, idle markets)."""
        return [
            (candle_topic(c.timeframe), c)
            for b in self.builders.values()
            for c in b.advance(watermark, ts_init)
        ]


class Venue(Protocol):
    """Where :class:`ExecutionStage` sends orders (:class:`~mambo.core.execution.PaperBroker` is one).

    Each call returns the order updates and fills it caused at once; a venue that learns them later
    (an exchange) returns ``[]`` and hands them to :meth:`ExecutionStage.on_reports` when they come.
    """

    def submit(self, order: Order, ts_init: int) -> Sequence[Order | Fill]: ...
    def has_pending(self, key: str) -> bool: ...
    def on_trades(
        self,
        key: str,
        ts: npt.NDArray[np.int64],
        price: npt.NDArray[np.float64],
        qty: npt.NDArray[np.float64],
        ts_init: int | None = None,
    ) -> Sequence[Order | Fill]: ...
    def on_candle(self, candle: Candle) -> Sequence[Order | Fill]: ...


class ExecutionStage(Stage):
    """orders → venue; market data → fills (applied to the portfolio), order updates, positions."""

    name = "execution"

    def __init__(self, broker: Venue, portfolio: Portfolio, trading_timeframe: str, fill_on: str) -> None:
        self.broker = broker
        self.portfolio = portfolio
        self.fill_on = fill_on
        self.inputs = (ORDERS.name, TRADES.name, candle_topic(trading_timeframe))

    def handle(self, topic: str, payload: Any) -> Out:
        if topic == ORDERS.name:
            if payload.status != "new" or payload.account != self.portfolio.account:
                return []
            # the broker's "new" acknowledgement repeats the order already on the topic: only
            # rejections and later states are news
            acks = self.broker.submit(payload, payload.ts_init)
            return self._publish(
                [o for o in acks if isinstance(o, Fill) or o.status != "new"], payload.ts_init
            )
        if topic == TRADES.name:
            if self.fill_on != "trades":
                return []
            batch: TradeBatch = payload
            out: Out = []
            for code, key in enumerate(batch.keys):
                if not self.broker.has_pending(key):
                    continue
                sel = batch.market == code
                out += self._publish(
                    self.broker.on_trades(
                        key, batch.ts[sel], batch.price[sel], batch.qty[sel], batch.ts_init
                    ),
                    batch.ts_init,
                )
            return out
        if self.fill_on != "candles":
            return []
        return self._publish(self.broker.on_candle(payload), payload.ts_init)

    def on_reports(self, events: Sequence[Order | Fill], ts_init: int) -> Out:
        """What the venue reported out of band (an exchange's fills and order states), booked and
        published as the paper broker's are: fills, positions and equity, order updates."""
        return self._publish(events, ts_init)

    def _publish(self, events: Sequence[Order | Fill], ts_init: int) -> Out:
        out: Out = []
        for ev in events:
            if isinstance(ev, Fill):
                fill, position = self.portfolio.apply(ev)
                out += [(FILLS.name, fill), (POSITIONS.name, position)]
                out.append((EQUITY.name, self.portfolio.snapshot(fill.ts_event, ts_init)))
            else:
                out.append((ORDERS.name, ev))
        return out


class PortfolioStage(Stage):
    """Closed candles of the trading timeframe mark positions; an equity snapshot follows."""

    name = "portfolio"

    def __init__(self, portfolio: Portfolio, trading_timeframe: str) -> None:
        self.portfolio = portfolio
        self.inputs = (candle_topic(trading_timeframe),)

    def handle(self, topic: str, payload: Any) -> Out:
        c: Candle = payload
        if self.portfolio.position(c.key) == 0:
            return []
        self.portfolio.mark(c.key, c.close)
        return [(EQUITY.name, self.portfolio.snapshot(c.ts_event, c.ts_init))]


class IndicatorStage(Stage):
    """md.candles.<tf> → indicators, one IndicatorSet per market and timeframe."""

    name = "indicators"

    def __init__(self, timeframes: Sequence[str], specs: Sequence[str]) -> None:
        self.specs = tuple(dict.fromkeys(specs))
        self.inputs = tuple(candle_topic(tf) for tf in timeframes)
        self.sets: dict[tuple[str, str], IndicatorSet] = {}

    def handle(self, topic: str, payload: Any) -> Out:
        c: Candle = payload
        ind = self.sets.get((c.key, c.timeframe))
        if ind is None:
            ind = self.sets[(c.key, c.timeframe)] = IndicatorSet(self.specs)
        # NaN (warming up) is left out: it does not survive JSON, and a missing value reads as NaN
        values = {
            k: v
            for k, v in ind.update(c.open_time, c.open, c.high, c.low, c.close, c.volume).items()
            if v == v
        }
        ev = IndicatorValues.model_construct(
            event_id=make_id("indicators", c.key, c.timeframe, c.open_time),
            ts_event=c.ts_event,
            ts_init=c.ts_init,
            exchange=c.exchange,
            symbol=c.symbol,
            timeframe=c.timeframe,
            values=values,
        )
        return [(INDICATORS.name, ev)]


class SignalStage(Stage):
    """indicators (+ the candle they belong to) → signals.raw → signals (aggregated) → intents.

    While a market's last intent is still being carried out (its order not yet filled, canceled,
    rejected or expired, or the intent not yet refused by risk), the market gets no new intent: the
    position it reads does not show the order yet. A paper order fills on the next trade, before
    the next candle can close, so this only ever holds back an exchange's order still in flight."""

    name = "signals"

    def __init__(
        self, config: EngineConfig, portfolio: Portfolio, markets: frozenset[str] | None = None
    ) -> None:
        self.config = config
        self.portfolio = portfolio
        self.markets = markets  # the account's markets; None: every market
        self.timeframe = config.trading_timeframe
        self.inputs = (candle_topic(self.timeframe), INDICATORS.name, ORDERS.name, REJECTIONS.name)
        self.in_flight: dict[str, str] = {}  # market key -> client order id of its last intent
        self.last_candle: dict[str, Candle] = {}
        self.strategies: dict[str, list[Strategy]] = {}
        self.aggregators: dict[str, SignalAggregator] = {}
        self.policy = IntentPolicy(
            qty=config.order_qty, allow_short=config.allow_short, account=config.account
        )

    def _strategies(self, key: str) -> list[Strategy]:
        s = self.strategies.get(key)
        if s is None:
            cfg = self.config
            s = self.strategies[key] = [
                load_strategy(n, **cfg.strategy_params.get(n, {})) for n in cfg.strategies
            ]
            self.aggregators[key] = SignalAggregator(
                [st.name for st in s], threshold=cfg.aggregation_threshold
            )
        return s

    def handle(self, topic: str, payload: Any) -> Out:
        if self.markets is not None and payload.key not in self.markets:
            return []
        if topic == ORDERS.name or topic == REJECTIONS.name:
            if payload.account != self.config.account:
                return []
            done = topic == REJECTIONS.name or payload.status in FINAL_STATUSES
            if done and self.in_flight.get(payload.key) == payload.client_order_id:
                del self.in_flight[payload.key]
            return []
        if topic != INDICATORS.name:
            self.last_candle[payload.key] = payload
            return []
        ind: IndicatorValues = payload
        if ind.timeframe != self.timeframe:
            return []
        candle = self.last_candle[ind.key]
        bar = Bar(candle, ind.values)
        out: Out = []
        agg: AggregatedSignal | None = None
        for strategy in self._strategies(ind.key):
            sig: Signal = make_signal(strategy, bar, strategy.on_bar(bar), ind.ts_init)
            out.append((SIGNALS_RAW.name, sig))
            agg = self.aggregators[ind.key].on_signal(sig, ind.ts_init) or agg
        if agg is not None:
            out.append((SIGNALS.name, agg))
            if ind.key not in self.in_flight:
                intent = self.policy.on_signal(agg, self.portfolio.position(ind.key), ind.ts_init)
                if intent is not None:
                    self.in_flight[ind.key] = intent.client_order_id
                    out.append((INTENTS.name, intent))
        return out


class RiskStage(Stage):
    """orders.intents → orders | risk.rejections; closed candles → stop, take-profit, trailing exits.

    It also follows the orders and the fills, so what an order has filled, and all of an order that
    is done, stops counting as open."""

    name = "risk"

    def __init__(self, engine: RiskEngine, portfolio: Portfolio, trading_timeframe: str) -> None:
        self.engine = engine
        self.portfolio = portfolio
        self.inputs = (candle_topic(trading_timeframe), INTENTS.name, ORDERS.name, FILLS.name)
        self._own = frozenset((INTENTS.name, ORDERS.name, FILLS.name))  # events of one account

    def handle(self, topic: str, payload: Any) -> Out:
        if topic in self._own and payload.account != self.engine.account:
            return []
        if topic == ORDERS.name:  # order states and fills release what risk reserved for them
            self.engine.on_order(payload)
            return []
        if topic == FILLS.name:
            self.engine.on_fill(payload)
            return []
        if topic == INTENTS.name:
            intent: OrderIntent = payload
            decision = self.engine.check(intent, self.portfolio, intent.ts_init)
            return [(REJECTIONS.name if isinstance(decision, RiskRejection) else ORDERS.name, decision)]
        return [(INTENTS.name, i) for i in self.engine.on_candle(payload, self.portfolio, payload.ts_init)]


@dataclass(frozen=True)
class Account:
    """One account of a run: its configuration (``config.account`` is its id) and its markets."""

    config: EngineConfig
    #: the ``exchange:symbol`` keys it trades; None: every market the run sees
    markets: frozenset[str] | None = None


def build_stages(
    config: EngineConfig | Sequence[Account], markets: Mapping[str, Market], venue: Venue | None = None
) -> list[Stage]:
    """Every stage of the trading pipeline, in dispatch order: one account (``config``) over every
    market, or several accounts, each over its own markets.

    The market stages (candles, indicators) are shared and build the union of what the accounts need;
    each account has its own execution, portfolio, risk and signal stages, which take only their
    account's orders, fills and rejections and their markets' candles. ``venue``: where orders go, for
    a single account; None is a paper broker per account with its config's fees and slippage."""
    accounts = [Account(config)] if isinstance(config, EngineConfig) else list(config)
    if not accounts:
        raise ValueError("no account to trade for")
    reject_repeats("accounts", [a.config.account for a in accounts])
    if venue is not None and len(accounts) > 1:
        raise ValueError("one venue serves one account; several accounts trade on paper")
    timeframes = tuple(dict.fromkeys(tf for a in accounts for tf in a.config.timeframes))
    specs: list[str] = []
    stages: list[Stage] = []
    for a in accounts:
        cfg = a.config
        portfolio = Portfolio(cfg.initial_cash, account=cfg.account)
        broker: Venue = (
            venue
            if venue is not None
            else PaperBroker(
                fee_maker=cfg.fee_maker,
                fee_taker=cfg.fee_taker,
                slippage_bps=cfg.slippage_bps,
                markets=markets,
            )
        )
        tf = cfg.trading_timeframe
        specs += [
            spec
            for name in cfg.strategies
            for spec in load_strategy(name, **cfg.strategy_params.get(name, {})).indicators()
        ]
        specs += cfg.indicators
        stages += [
            ExecutionStage(broker, portfolio, tf, cfg.fill_on),
            PortfolioStage(portfolio, tf),
            RiskStage(RiskEngine(cfg.risk, markets, cfg.fee_taker, cfg.account), portfolio, tf),
            # before indicators: it keeps the candle the values belong to
            SignalStage(cfg, portfolio, a.markets),
        ]
    return [CandleStage(timeframes), *stages, IndicatorStage(timeframes, specs)]
