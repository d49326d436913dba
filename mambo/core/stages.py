"""The pipeline's stages: each wires core operators to the topics it reads and writes.

A stage is pure: ``handle(topic, payload)`` returns the ``(topic, event)`` pairs it produces, in
causal order, and touches no I/O. The embedded bus (:mod:`mambo.streams.bus`) dispatches them depth
first; the Kafka worker and the Faust agents call the same ``handle``.

Two stage groups (issue 13):

- **Market stages**, keyed by ``exchange:symbol`` (:func:`market_stages`): candles, indicators, each
  account's strategies and aggregation, and watermarks. They hold no account state, so a market can
  run on any worker. Their output for an account is its feed (``account.feed``, keyed by account):
  each closed candle of the account's trading timeframe with the aggregated signal decided on it,
  and how far the market has come (its watermark).
- **Account stages**, keyed by account (:class:`AccountStage`, :func:`account_stages`): intents,
  risk, execution and portfolio of one account over all its markets. It merges its markets' feeds in
  event time, so its results do not depend on where and in which interleaving the markets ran: one
  account's rules (sizing from the whole equity, open positions, total exposure, the drawdown kill
  switch, the order rate) bind across its markets in every runtime, with the same orders.

Inside an account step, the candle goes to execution (fills at its open of what was ordered before),
portfolio (mark and equity) and risk (stops), then its signal to intents → risk → orders → execution.
So an order decided on candle t always fills on later data, never on candle t itself.

Execution goes to a :class:`Venue`. The paper broker is one (synchronous: its answers come back
from the call, so a run is deterministic). An exchange venue queues the order and answers later, out
of band: whoever receives the exchange's answers hands them to :meth:`AccountStage.on_reports`,
which books and publishes them exactly as it does the paper broker's.

The candle stage is the one *splitting* stage: it returns, with each candle, the index in the trade
batch of the trade that closed it, and the bus hands the later md.trades subscribers (watermarks) the
batch in slices between those indices. Processing a batch whole, in pieces or one trade at a time
therefore gives identical outputs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from mambo.core.aggregation import SignalAggregator
from mambo.core.candles import CandleBuilder
from mambo.core.control import StrategyControl, command_params
from mambo.core.control import check as check_command
from mambo.core.control import result as control_result
from mambo.core.execution import PaperBroker
from mambo.core.grid import GridConfig, Grids
from mambo.core.indicators import IndicatorSet
from mambo.core.intents import IntentPolicy
from mambo.core.margin import (
    MarginAccount,
    MarginConfig,
    is_perpetual,
    liquidation_edge,
    load_brackets,
)
from mambo.core.market import Market
from mambo.core.merge import EventTimeMerge
from mambo.core.portfolio import Portfolio
from mambo.core.risk import RiskConfig, RiskEngine
from mambo.core.strategies import Bar, Decision, load_strategy, make_signal
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import (
    DEFAULT_ACCOUNT,
    FINAL_STATUSES,
    STRATEGY_ACTIONS,
    AccountFeed,
    AggregatedSignal,
    Candle,
    ControlCommand,
    DeadLetter,
    Fill,
    FundingPayment,
    FundingRate,
    IndicatorValues,
    Liquidation,
    MarkPrice,
    Order,
    OrderIntent,
    RiskRejection,
    Signal,
    make_id,
    split_key,
    timeframe_ns,
)
from mambo.schemas.topics import (
    ACCOUNT_FEED,
    CONTROL_MARKETS,
    CONTROL_RESULTS,
    EQUITY,
    EXCHANGE_CANDLES,
    FILLS,
    FUNDING,
    FUNDING_RATES,
    INDICATORS,
    INTENTS,
    LIQUIDATIONS,
    MARK_PRICES,
    ORDERS,
    POSITIONS,
    REJECTIONS,
    SIGNALS,
    SIGNALS_RAW,
    TRADES,
    candle_topic,
    dlq_topic,
)

__all__ = [
    "DEFAULT_INDICATORS",
    "Account",
    "AccountStage",
    "CandleStage",
    "EngineConfig",
    "ExecutionStage",
    "FundingStage",
    "InLineStage",
    "IndicatorStage",
    "IntentStage",
    "Out",
    "RiskStage",
    "Stage",
    "StrategyStage",
    "Venue",
    "WatermarkStage",
    "account_markets",
    "account_stages",
    "build_stages",
    "market_stages",
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
    #: paper orders fill on the closed candles of the trading timeframe, the one form every runtime
    #: can give the account stage (``"trades"``, filling on the next trade, was the embedded runtime's
    #: alone: a market order's price is the same, the next candle's open being that trade)
    fill_on: Literal["candles"] = "candles"
    #: how an account orders its markets' steps: in event time (the same orders in every runtime) or
    #: as they arrive (no wait for the slowest market, live); see :class:`AccountStage`
    ordering: Literal["event_time", "arrival"] = "event_time"
    risk: RiskConfig = field(default_factory=RiskConfig)
    #: perpetuals on margin: the account's leverage and margin mode (None: a spot account; see
    #: :class:`AccountStage`)
    futures: MarginConfig | None = None
    #: grids the account runs beside its strategies (:mod:`mambo.core.grid`)
    grids: tuple[GridConfig, ...] = ()
    #: the account these stages trade for: its id is on every intent, order, fill, position and
    #: equity snapshot they make
    account: str = DEFAULT_ACCOUNT

    def __post_init__(self) -> None:
        if self.fill_on != "candles":
            raise ValueError(
                f"fill_on {self.fill_on!r}: paper orders fill on the trading timeframe's candles "
                '(fill_on = "candles"), the form every runtime gives the account stage'
            )
        if self.ordering not in ("event_time", "arrival"):
            raise ValueError(f"ordering {self.ordering!r}: event_time or arrival")
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

    def flush(self, watermark: int, ts_init: int = 0, keys: Collection[str] | None = None) -> Out:
        """Close every candle (of the markets ``keys``, None: all) that ends at or before the watermark
        (end of a replay, idle markets, a funding time)."""
        return [
            (candle_topic(c.timeframe), c)
            for key, b in self.builders.items()
            if keys is None or key in keys
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
    """orders → venue; closed candles of the trading timeframe → fills (applied to the portfolio),
    order updates, positions.

    The paper broker fills on candles (:meth:`~mambo.core.execution.PaperBroker.on_candle`: a market
    order at the next candle's open, which is the first trade at or after the decision; a limit when a
    candle's range reaches it), since candles are what the account stage sees of its markets (see
    :class:`AccountStage`). An exchange fills on its own and reports through :meth:`on_reports`."""

    name = "execution"

    def __init__(
        self,
        broker: Venue,
        portfolio: Portfolio,
        trading_timeframe: str,
        margin: MarginAccount | None = None,
    ) -> None:
        self.broker = broker
        self.portfolio = portfolio
        self.margin = margin
        self.inputs = (ORDERS.name, candle_topic(trading_timeframe))

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
        return self._publish(self.broker.on_candle(payload), payload.ts_init)

    def on_reports(self, events: Sequence[Order | Fill], ts_init: int) -> Out:
        """What the venue reported out of band (an exchange's fills and order states), booked and
        published as the paper broker's are: fills, positions and equity, order updates."""
        return self._publish(events, ts_init)

    def cancel(self, client_order_id: str, ts_init: int) -> Out:
        """Cancel a resting order (a grid's): its update, if the venue held it."""
        cancel = getattr(self.broker, "cancel", None)
        if cancel is None:
            return []
        return self._publish(cancel(client_order_id, ts_init), ts_init)

    def _publish(self, events: Sequence[Order | Fill], ts_init: int) -> Out:
        out: Out = []
        for ev in events:
            if isinstance(ev, Fill):
                fill, position = self.portfolio.apply(ev)
                if self.margin is not None and is_perpetual(ev.key):
                    self.margin.apply(ev)
                    lp = self.margin.liquidation_price(ev.key)
                    if lp is not None:  # to 1e-18 on its liquidating side (the history's Decimal(38, 18))
                        lp = liquidation_edge(lp, position.qty > 0) if lp > 0 else None
                    position = position.model_copy(update={"liquidation_price": lp})
                out += [(FILLS.name, fill), (POSITIONS.name, position)]
                out.append((EQUITY.name, self.portfolio.snapshot(fill.ts_event, ts_init)))
            else:
                out.append((ORDERS.name, ev))
        return out


class PortfolioStage(Stage):
    """Closed candles of the trading timeframe mark positions (a perpetual's until the venue's own marks
    come in its stream); an equity snapshot follows."""

    name = "portfolio"

    def __init__(
        self, portfolio: Portfolio, trading_timeframe: str, margin: MarginAccount | None = None
    ) -> None:
        self.portfolio = portfolio
        self.margin = margin
        self.inputs = (candle_topic(trading_timeframe),)

    def handle(self, topic: str, payload: Any) -> Out:
        c: Candle = payload
        if self.portfolio.position(c.key) == 0:
            return []
        out: Out = []
        margin = self.margin
        # a market the venue's marks value (AccountStage._mark): its trades do not stand in for them
        venue_marked = margin is not None and c.key in margin.venue_marks
        if margin is not None and is_perpetual(c.key) and not venue_marked:
            # the candle stands in for the mark path: a liquidation where it reaches the liquidation
            # price (at its open when it opens beyond), booked in the portfolio too (cross: every cross
            # position goes)
            for liq in margin.mark_bar(c.key, c.low, c.high, c.close, c.ts_event, c.ts_init, c.open):
                out += [(LIQUIDATIONS.name, liq), (POSITIONS.name, self.portfolio.apply_liquidation(liq))]
        if self.portfolio.position(c.key) and not venue_marked:
            self.portfolio.mark(c.key, c.close)
        return [*out, (EQUITY.name, self.portfolio.snapshot(c.ts_event, c.ts_init))]


class IndicatorStage(Stage):
    """md.candles.<tf> → indicators, one IndicatorSet per market and timeframe."""

    name = "indicators"

    def __init__(self, timeframes: Sequence[str], specs: Sequence[str]) -> None:
        self.specs = tuple(dict.fromkeys(specs))
        self.inputs = tuple(candle_topic(tf) for tf in timeframes)
        self.sets: dict[tuple[str, str], IndicatorSet] = {}
        #: specs a market's strategies came to need (new parameters), computed from then on, by market
        self.extra: dict[str, tuple[str, ...]] = {}
        self._extra_sets: dict[tuple[str, str], IndicatorSet] = {}

    def require(self, key: str, specs: Iterable[str]) -> None:
        """Compute ``specs`` for market ``key`` too, from its next candle on (they warm up from there).
        ValueError for a spec the indicator set does not know."""
        new = tuple(
            s for s in dict.fromkeys(specs) if s not in self.specs and s not in self.extra.get(key, ())
        )
        if not new:
            return
        IndicatorSet(new)  # refuses an unknown spec before anything changes
        self.extra[key] = (*self.extra.get(key, ()), *new)
        for k in [k for k in self._extra_sets if k[0] == key]:
            del self._extra_sets[k]  # made anew with every extra spec (the earlier ones warm up again)

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
        if c.key in self.extra:
            extra = self._extra_sets.get((c.key, c.timeframe))
            if extra is None:
                extra = self._extra_sets[(c.key, c.timeframe)] = IndicatorSet(self.extra[c.key])
            update = extra.update(c.open_time, c.open, c.high, c.low, c.close, c.volume)
            values.update({k: v for k, v in update.items() if v == v})
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


class StrategyStage(Stage):
    """One account's strategies on its markets: indicators (+ the candle they belong to) →
    signals.raw → signals (aggregated), and the account's feed (:class:`AccountFeed`: the candle and
    its aggregated signal) to its account stage. A market stage: it reads nothing of the account."""

    name = "strategies"

    def __init__(
        self,
        config: EngineConfig,
        markets: frozenset[str] | None = None,
        indicators: IndicatorStage | None = None,
    ) -> None:
        self.config = config
        self.account = config.account
        self.markets = markets  # the account's markets; None: every market
        self.timeframe = config.trading_timeframe
        self.indicators = indicators  # asked for what new parameters need (control commands)
        self.inputs = (candle_topic(self.timeframe), INDICATORS.name, CONTROL_MARKETS.name)
        self.last_candle: dict[str, Candle] = {}
        #: each market's strategies as control commands left them (mambo.core.control)
        self.controls: dict[str, list[StrategyControl]] = {}
        self.aggregators: dict[str, SignalAggregator] = {}

    def _controls(self, key: str) -> list[StrategyControl]:
        s = self.controls.get(key)
        if s is None:
            cfg = self.config
            s = []
            for ref in cfg.strategies:
                params = dict(cfg.strategy_params.get(ref, {}))
                strategy = load_strategy(ref, **params)
                s.append(StrategyControl(ref, strategy.name, params, strategy=strategy))
            self.controls[key] = s
            self.aggregators[key] = SignalAggregator([c.name for c in s], threshold=cfg.aggregation_threshold)
        return s

    def _control(self, cmd: ControlCommand) -> Out:
        """A strategy command for one of this account's markets (an account command goes on through
        :class:`InLineStage`)."""
        if cmd.account != self.account or cmd.action not in STRATEGY_ACTIONS or not cmd.market:
            return []
        if self.markets is not None and cmd.market not in self.markets:
            return []
        found = [c for c in self._controls(cmd.market) if cmd.strategy in (c.name, c.ref)]
        if not found:
            names = ", ".join(c.name for c in self._controls(cmd.market))
            why = f"account {self.account} runs no strategy {cmd.strategy!r} (it runs {names})"
            return [(CONTROL_RESULTS.name, control_result(cmd, "rejected", why))]
        done, built = found[0].apply(cmd)
        if built is not None and self.indicators is not None:
            try:
                self.indicators.require(cmd.market, built.indicators())
            except ValueError as e:  # cannot happen for a strategy that built; said if it does
                done = done.model_copy(update={"reason": f"indicators: {e}"})
        return [(CONTROL_RESULTS.name, done)]

    def handle(self, topic: str, payload: Any) -> Out:
        if topic == CONTROL_MARKETS.name:
            return self._control(payload)
        if self.markets is not None and payload.key not in self.markets:
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
        for control in self._controls(ind.key):
            if control.status == "stopped":
                sig: Signal = make_signal(control.name, bar, Decision.hold(), ind.ts_init)
            else:
                strategy = control.build()
                decision = strategy.on_bar(bar)  # paused: it runs on, its state warm, and holds
                sig = make_signal(
                    strategy, bar, decision if control.status == "running" else Decision.hold(), ind.ts_init
                )
            out.append((SIGNALS_RAW.name, sig))
            agg = self.aggregators[ind.key].on_signal(sig, ind.ts_init) or agg
        if agg is not None:
            out.append((SIGNALS.name, agg))
        feed = AccountFeed.model_construct(
            event_id=make_id("feed", self.account, candle.event_id),
            ts_event=candle.ts_event,
            ts_init=ind.ts_init,
            account=self.account,
            exchange=candle.exchange,
            symbol=candle.symbol,
            watermark=candle.ts_event,  # every earlier candle of the market is out already
            candle=candle,
            signal=agg,
        )
        out.append((ACCOUNT_FEED.name, feed))
        return out


class WatermarkStage(Stage):
    """md.trades → watermark-only :class:`AccountFeed` events: how far each market's trades have come,
    for each account trading it, so an account's merge need not wait for a market's next candle to
    move on past it (a market that skips bars). One every ``step_ns`` of event time per market and
    account at most. A market stage."""

    name = "watermarks"

    def __init__(self, accounts: Sequence[tuple[str, frozenset[str] | None]], step_ns: int) -> None:
        self.accounts = tuple(accounts)
        self.step_ns = step_ns
        self.inputs = (TRADES.name,)
        self.sent: dict[tuple[str, str], int] = {}  # (account, market) -> last watermark sent

    def handle(self, topic: str, payload: Any) -> Out:
        batch: TradeBatch = payload
        out: Out = []
        for code, key in enumerate(batch.keys):
            ts = batch.ts if len(batch.keys) == 1 else batch.ts[batch.market == code]
            if len(ts):
                out += self._marks(key, int(ts.max()), batch.ts_init, self.step_ns)
        return out

    def advance(self, watermark: int, keys: Iterable[str], ts_init: int) -> Out:
        """Every market of ``keys`` has come as far as ``watermark`` (the source's word: no trade
        before it is still to come, and the candle stage has closed what ends by then)."""
        return [f for key in keys for f in self._marks(key, watermark, ts_init, 1)]

    def _marks(self, key: str, last: int, ts_init: int, step: int) -> Out:
        out: Out = []
        for account, markets in self.accounts:
            if markets is not None and key not in markets:
                continue
            if last < self.sent.get((account, key), -(2**63)) + step:
                continue
            self.sent[(account, key)] = last
            exchange, symbol = split_key(key)
            feed = AccountFeed.model_construct(
                event_id=make_id("feed", account, key, "watermark", last),
                ts_event=last,
                ts_init=ts_init,
                account=account,
                exchange=exchange,
                symbol=symbol,
                watermark=last,
                candle=None,
                signal=None,
            )
            out.append((ACCOUNT_FEED.name, feed))
        return out


class FundingStage(Stage):
    """md.funding → a funding :class:`AccountFeed` for each account trading the market: the funding
    time goes into the account's event-time merge in line with the market's candles. The runtime
    closes the market's candles that end by the funding time before it publishes the funding (the
    source puts it in the market's stream after the trades before it), so it follows them. A market
    stage."""

    name = "funding"

    def __init__(self, accounts: Sequence[tuple[str, frozenset[str] | None]]) -> None:
        self.accounts = tuple(accounts)
        self.inputs = (FUNDING_RATES.name,)

    def handle(self, topic: str, payload: Any) -> Out:
        rate: FundingRate = payload
        out: Out = []
        for account, markets in self.accounts:
            if markets is not None and rate.key not in markets:
                continue
            feed = AccountFeed.model_construct(
                event_id=make_id("feed", account, rate.event_id),
                ts_event=rate.ts_event,
                ts_init=rate.ts_init,
                account=account,
                exchange=rate.exchange,
                symbol=rate.symbol,
                watermark=rate.ts_event,
                candle=None,
                signal=None,
                funding=rate,
            )
            out.append((ACCOUNT_FEED.name, feed))
        return out


_IN_LINE_INPUTS = (
    TRADES.name,
    EXCHANGE_CANDLES.name,
    FUNDING_RATES.name,
    CONTROL_MARKETS.name,
    MARK_PRICES.name,
)


class InLineStage(Stage):
    """What an account takes where it came in the market's stream, as a :class:`AccountFeed`: account
    commands of the control topic (halt, resume, reduce_only, force_exit) and the venue's mark prices.
    Each goes right after what the market stage has seen (its trades, exchange candles, funding times,
    marks and commands), so after every candle it has published and before its next: a command at
    ``last + 1 ns``, a mark at its own time + 2 ns (after a funding time at its own + 1 ns) unless
    the stream is past that. A replay of the stream puts each in the same place. A market stage;
    strategy commands are :class:`StrategyStage`'s."""

    name = "inline"

    def __init__(self, accounts: Sequence[tuple[str, frozenset[str] | None]]) -> None:
        self.accounts = dict(accounts)
        self.inputs = _IN_LINE_INPUTS
        self.last: dict[str, int] = {}  # market -> time of the last item seen

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore pickled state (a changelog's); a stage pickled as ControlStage, before marks and
        funding came to it, reads them from now on."""
        self.__dict__.update(state)
        self.inputs = _IN_LINE_INPUTS

    def _seen(self, key: str, time: int) -> None:
        self.last[key] = max(self.last.get(key, -1), time)

    def handle(self, topic: str, payload: Any) -> Out:
        if topic == EXCHANGE_CANDLES.name:  # a market fed candles (a backtest): after the last one
            self._seen(payload.key, payload.ts_event)
            return []
        if topic == FUNDING_RATES.name:  # the account takes it at its time + 1 ns (FundingStage)
            self._seen(payload.key, payload.ts_event + 1)
            return []
        if topic == TRADES.name:
            batch: TradeBatch = payload
            for code, key in enumerate(batch.keys):
                ts = batch.ts if len(batch.keys) == 1 else batch.ts[batch.market == code]
                if len(ts):
                    self._seen(key, int(ts.max()))
            return []
        if topic == MARK_PRICES.name:
            return self._mark(payload)
        cmd: ControlCommand = payload
        if cmd.action in STRATEGY_ACTIONS or not cmd.market or cmd.account not in self.accounts:
            return []
        markets = self.accounts[cmd.account]
        if markets is not None and cmd.market not in markets:
            return []
        at = self.last[cmd.market] = self.last.get(cmd.market, 0) + 1  # after the last, before the next
        feed = _in_line(cmd.account, cmd, at, make_id("feed", cmd.account, cmd.command_id, cmd.market))
        return [(ACCOUNT_FEED.name, feed)]

    def _mark(self, mark: MarkPrice) -> Out:
        key = mark.key
        at = self.last[key] = max(mark.ts_event + 2, self.last.get(key, -1) + 1)
        return [
            (ACCOUNT_FEED.name, _in_line(account, mark, at, make_id("feed", account, mark.event_id)))
            for account, markets in self.accounts.items()
            if markets is None or key in markets
        ]


def _in_line(account: str, item: ControlCommand | MarkPrice, at: int, event_id: str) -> AccountFeed:
    """A command or mark as an account's feed item at ``at`` in its market's stream (its watermark
    just before)."""
    return AccountFeed.model_construct(
        event_id=event_id,
        ts_event=at,
        ts_init=item.ts_init,
        account=account,
        exchange=item.exchange,
        symbol=item.symbol,
        watermark=at - 1,
        candle=None,
        signal=None,
        funding=None,
        mark=item if isinstance(item, MarkPrice) else None,
        control=item if isinstance(item, ControlCommand) else None,
    )


#: The name state pickled before marks came in line knows :class:`InLineStage` by.
ControlStage = InLineStage


class GridStage(Stage):
    """An account's grids (:mod:`mambo.core.grid`) in its account stage: candles → limit intents,
    order updates → each level's next order."""

    name = "grid"

    def __init__(self, grids: Grids) -> None:
        self.grids = grids
        self.inputs = grids.inputs

    def handle(self, topic: str, payload: Any) -> Out:
        return self.grids.handle(topic, payload)


class IntentStage(Stage):
    """signals (aggregated) → intents, by the account's position. An account stage.

    While a market's last intent is still being carried out (its order not yet filled, canceled,
    rejected or expired, or the intent not yet refused by risk), the market gets no new intent: the
    position it reads does not show the order yet. A paper order fills on the next candle, before the
    next signal, so this only ever holds back an exchange's order still in flight."""

    name = "intents"

    def __init__(self, config: EngineConfig, portfolio: Portfolio) -> None:
        self.account = config.account
        self.portfolio = portfolio
        self.inputs = (SIGNALS.name, ORDERS.name, REJECTIONS.name)
        self.in_flight: dict[str, str] = {}  # market key -> client order id of its last intent
        self.policy = IntentPolicy(
            qty=config.order_qty, allow_short=config.allow_short, account=config.account
        )

    def handle(self, topic: str, payload: Any) -> Out:
        if topic != SIGNALS.name:
            if payload.account != self.account:
                return []
            done = topic == REJECTIONS.name or payload.status in FINAL_STATUSES
            if done and self.in_flight.get(payload.key) == payload.client_order_id:
                del self.in_flight[payload.key]
            return []
        agg: AggregatedSignal = payload
        if agg.key in self.in_flight:
            return []
        intent = self.policy.on_signal(agg, self.portfolio.position(agg.key), agg.ts_init)
        if intent is None:
            return []
        self.in_flight[agg.key] = intent.client_order_id
        return [(INTENTS.name, intent)]


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


class AccountStage(Stage):
    """One account's trading: its markets' feeds (account.feed) → intents, orders, fills, positions,
    equity, rejections. The account stage group of the pipeline, keyed by account.

    It merges its markets' feeds in event time (:class:`~mambo.core.merge.EventTimeMerge`): a candle
    (with the signal decided on it) goes on once every market of the account has come as far, in the
    order (candle end, market key). Each released step runs through the account's own stages, depth
    first, as the bus would: execution (fills at this candle), portfolio (mark), risk (stops) on the
    candle, then intents → risk → orders → execution on its signal. So an account's orders, fills and
    equity depend on its markets' candles and signals alone, never on how the markets' streams
    interleaved: one process, one Kafka worker or several, and a backtest over the same candles give
    the same events, id for id.

    ``ordering="arrival"`` takes each step as it comes instead (no waiting for the slowest market:
    the lowest latency live, where no replay is compared); the parity holds for ``event_time`` only.
    A step given again (an at-least-once market stage repeating its feed after a crash) is dropped
    (``merge.repeats``), so it never acts twice. A step that comes after its time was passed (a market
    broke its watermark's promise, as an exchange's late candle can) is taken at once and counted in
    ``merge.late``."""

    name = "account"

    def __init__(
        self,
        config: EngineConfig,
        venue: Venue,
        markets: Mapping[str, Market],
        account_markets: frozenset[str] | None = None,
    ) -> None:
        if config.ordering not in ("event_time", "arrival"):
            raise ValueError(f"ordering {config.ordering!r}: event_time or arrival")
        self.config = config
        self.account = config.account
        self.markets = account_markets
        self.timeframe = config.trading_timeframe
        self.inputs = (ACCOUNT_FEED.name,)
        self.portfolio = Portfolio(config.initial_cash, account=config.account)
        self.margin = _margin_account(config, account_markets)
        self.execution = ExecutionStage(venue, self.portfolio, self.timeframe, self.margin)
        self.risk = RiskEngine(config.risk, markets, config.fee_taker, config.account, margin=self.margin)
        self.stages: list[Stage] = [
            self.execution,
            PortfolioStage(self.portfolio, self.timeframe, self.margin),
            RiskStage(self.risk, self.portfolio, self.timeframe),
            IntentStage(config, self.portfolio),
        ]
        if config.grids:
            self.stages.append(
                GridStage(
                    Grids(
                        config.grids,
                        config.account,
                        dict(markets),
                        candle_topic(self.timeframe),
                        self.execution.cancel,
                        self.portfolio.position,
                    )
                )
            )
        self._readers: dict[str, list[Stage]] = {}
        for stage in self.stages:
            for topic in stage.inputs:
                self._readers.setdefault(topic, []).append(stage)
        self.merge: EventTimeMerge[AccountFeed] = EventTimeMerge(account_markets)
        #: control commands taken, (command id, market for force_exit else ""), and the last version
        self.commands: set[tuple[str, str]] = set()
        self.control_version = 0

    def handle(self, topic: str, payload: Any) -> Out:
        feed: AccountFeed = payload
        if feed.account != self.account:
            return []
        takes = (
            feed.candle is not None
            or feed.funding is not None
            or feed.control is not None
            or feed.mark is not None
        )
        if self.config.ordering == "arrival":
            steps = [feed] if takes else []
        else:
            if feed.funding is not None:  # right after the candle that ends at the funding time
                time = feed.funding.ts_event + 1
            elif feed.control is not None or feed.mark is not None:  # where InLineStage put it
                time = feed.ts_event
            else:
                time = feed.candle.ts_event if feed.candle is not None else feed.watermark
            steps = self.merge.push(feed.market, time, feed if takes else None, feed.watermark, feed.event_id)
        out: Out = []
        for step in steps:
            out += self._step(step)
        return out

    def finish(self) -> Out:
        """Every step still waiting for a watermark, taken (the end of every market's stream: a
        backtest's last bar)."""
        out: Out = []
        for step in self.merge.drain():
            out += self._step(step)
        return out

    def on_reports(self, events: Sequence[Order | Fill], ts_init: int) -> Out:
        """What an exchange reported out of band, booked (:meth:`ExecutionStage.on_reports`) and run
        through the account's stages (risk frees what it reserved, intents see the order done)."""
        out: Out = []
        for topic, event in self.execution.on_reports(events, ts_init):
            self._dispatch(topic, event, out)
        return out

    def rebuild(
        self,
        fills: Sequence[Fill],
        payments: Sequence[FundingPayment] = (),
        liquidations: Sequence[Liquidation] = (),
    ) -> None:
        """The account's books from its history (a live session's restart), booked as they were, in
        time order (at one instant: funding, a liquidation, then fills): fills; funding payments,
        a futures account's worked out again from the position it held then; liquidations at their
        marks. A payment or liquidation the books do not come to again is refused (ValueError: the
        history is not this account's, or misses a fill)."""
        steps: list[tuple[int, int, Fill | FundingPayment | Liquidation]] = [
            *((p.ts_event, 0, p) for p in payments),
            *((lq.ts_event, 1, lq) for lq in liquidations),
            *((f.ts_event, 2, f) for f in fills),
        ]
        for _, _, event in sorted(steps, key=lambda s: (s[0], s[1])):
            margin = self.margin if self.margin is not None and is_perpetual(event.key) else None
            if isinstance(event, Fill):
                self.portfolio.book(event)
                if margin is not None:
                    margin.apply(event)
            elif isinstance(event, FundingPayment):
                if margin is not None:
                    again, _ = margin.fund(
                        event.key, event.rate, event.ts_event, event.ts_init, event.mark_price
                    )
                    # the history keeps 18 decimals (Decimal(38, 18)); the books, the exact figure
                    if again is None or abs(again.amount - event.amount) >= _HISTORY_QUANTUM:
                        got = "none" if again is None else again.amount
                        raise ValueError(f"funding of {event.key} at {event.ts_event}: {event.amount} "
                                         f"in the history, {got} from the fills")  # fmt: skip
                    event = again
                self.portfolio.apply_funding(event)
            else:
                if margin is not None:
                    again_liqs = margin.mark(event.key, event.price, event.ts_event, event.ts_init)
                    if not any(lq.qty == event.qty and lq.key == event.key for lq in again_liqs):
                        raise ValueError(f"liquidation of {event.key} at {event.ts_event}: the fills do "
                                         f"not come to it at its mark {event.price}")  # fmt: skip
                self.portfolio.apply_liquidation(event)

    def _step(self, feed: AccountFeed) -> Out:
        out: Out = []
        if feed.funding is not None:
            self._fund(feed.funding, out)
            return out
        if feed.control is not None:
            self._command(feed.control, out)
            return out
        if feed.mark is not None:
            self._mark(feed.mark, out)
            return out
        assert feed.candle is not None
        self._dispatch(candle_topic(self.timeframe), feed.candle, out, own=False)
        if feed.signal is not None:
            self._dispatch(SIGNALS.name, feed.signal, out, own=False)
        return out

    def _command(self, cmd: ControlCommand, out: Out) -> None:
        """An account command (:mod:`mambo.core.control`), in its market's place in the merge. A command
        for every market comes once per market: it acts at the first, force_exit in each."""
        seen = (cmd.command_id, cmd.market) if cmd.action == "force_exit" else (cmd.command_id, "")
        if seen in self.commands:
            return
        first = not any(c == cmd.command_id for c, _ in self.commands)
        self.commands.add(seen)
        if first and cmd.version <= self.control_version:
            why = f"stale: version {cmd.version}, {self.control_version} applied"
            self._dispatch(CONTROL_RESULTS.name, control_result(cmd, "rejected", why), out)
            return
        problem = check_command(cmd)
        if problem is not None:
            self._dispatch(CONTROL_RESULTS.name, control_result(cmd, "rejected", problem), out)
            return
        self.control_version = max(self.control_version, cmd.version)
        if cmd.action == "halt":
            self.risk.halted = True
        elif cmd.action == "resume":
            self.risk.resume()
        elif cmd.action == "reduce_only":
            self.risk.reduce_only = bool(command_params(cmd).get("on", True))
        elif cmd.action == "force_exit":
            self._force_exit(cmd, out)
        self._dispatch(CONTROL_RESULTS.name, control_result(cmd, "applied"), out)

    def _force_exit(self, cmd: ControlCommand, out: Out) -> None:
        """Close the market's position at market, through risk as a strategy's exit would go."""
        qty = self.portfolio.position(cmd.market)
        if not qty:
            return
        pos = self.portfolio.positions[cmd.market]
        client_order_id = make_id("order", self.account, cmd.command_id, cmd.market)
        intent = OrderIntent(
            event_id=make_id("order_intent", client_order_id),
            account=self.account,
            ts_event=cmd.ts_event,
            ts_init=cmd.ts_init,
            exchange=cmd.exchange,
            symbol=cmd.symbol,
            client_order_id=client_order_id,
            strategy="control",
            side="sell" if qty > 0 else "buy",
            qty=None,
            reduce_only=True,
            reason=f"force_exit by {cmd.who}: {cmd.why}".rstrip(": "),
            price=float(pos.mark_price),
        )
        self._dispatch(INTENTS.name, intent, out)

    def _fund(self, rate: FundingRate, out: Out) -> None:
        """A funding time: the position pays or receives ``qty × mark × rate`` (the margin account's
        figure, booked in the portfolio too), and a liquidation it sets off. Nothing on spot or flat."""
        if self.margin is None or not is_perpetual(rate.key):
            return
        payment, liqs = self.margin.on_funding(rate)
        if payment is not None:
            self.portfolio.apply_funding(payment)
            self.portfolio.mark(rate.key, payment.mark_price)  # the funding's mark, as the margin's
            self._dispatch(FUNDING.name, payment, out)
        for liq in liqs:
            self._dispatch(LIQUIDATIONS.name, liq, out)
            self._dispatch(POSITIONS.name, self.portfolio.apply_liquidation(liq), out)
        if payment is not None or liqs:
            self._dispatch(EQUITY.name, self.portfolio.snapshot(rate.ts_event, rate.ts_init), out)

    def _mark(self, mark: MarkPrice, out: Out) -> None:
        """The venue's mark price: the market's mark from now on (its traded candles no longer stand in
        for it, :class:`PortfolioStage`); a position whose liquidation price it reaches is liquidated at
        it, as the venue does. Nothing on spot."""
        if self.margin is None or not is_perpetual(mark.key):
            return
        liqs = self.margin.on_mark(mark)
        if self.portfolio.position(mark.key):
            self.portfolio.mark(mark.key, mark.mark_price)
        for liq in liqs:
            self._dispatch(LIQUIDATIONS.name, liq, out)
            self._dispatch(POSITIONS.name, self.portfolio.apply_liquidation(liq), out)
        if liqs:
            self._dispatch(EQUITY.name, self.portfolio.snapshot(mark.ts_event, mark.ts_init), out)

    def _dispatch(self, topic: str, payload: Any, out: Out, own: bool = True) -> None:
        """Depth first through the account's stages, as :class:`~mambo.streams.bus.EventBus` does;
        what they publish goes to ``out`` (``own``: not the candle and signal taken from the feed,
        which are on their topics already). A stage that raises gives a dead letter and the rest goes on."""
        if own:
            out.append((topic, payload))
        for stage in self._readers.get(topic, ()):
            try:
                made = stage.handle(topic, payload)
            except Exception as exc:
                out.append((dlq_topic(topic), _dead_letter(topic, payload, f"{stage.name}: {exc!r}")))
                continue
            for t, e in made:
                self._dispatch(t, e, out)


#: What the history's decimals keep (ClickHouse's Decimal(38, 18)).
_HISTORY_QUANTUM = Decimal("1e-18")


def _margin_account(config: EngineConfig, markets: frozenset[str] | None) -> MarginAccount | None:
    """The margin account of an account that trades perpetuals on margin (``config.futures``), with
    Binance's bundled leverage brackets; ValueError for a spot market in it or one without brackets."""
    if config.futures is None:
        return None
    spot = sorted(k for k in markets or () if not is_perpetual(k))
    if spot:
        raise ValueError(f"account {config.account} trades on margin: {', '.join(spot)} not a perpetual")
    brackets = load_brackets()
    missing = sorted(k for k in markets or () if split_key(k)[1] not in brackets)
    if missing:
        raise ValueError(f"account {config.account}: no leverage brackets for {', '.join(missing)}")
    f = config.futures
    return MarginAccount(
        config.initial_cash,
        brackets,
        account=config.account,
        default_leverage=f.leverage,
        default_margin_mode=f.margin_mode,
        liquidation_fee_rate=f.liquidation_fee_rate,
        liquidation_fees=dict(f.liquidation_fees),
    )


def _dead_letter(topic: str, payload: Any, reason: str) -> DeadLetter:
    body = payload.model_dump_json()
    return DeadLetter(
        event_id=make_id("dlq", topic, getattr(payload, "key", ""), body, reason),
        ts_event=payload.ts_event,
        ts_init=payload.ts_init,
        topic=topic,
        key=str(getattr(payload, "key", "")),
        reason=reason,
        payload=body,
    )


@dataclass(frozen=True)
class Account:
    """One account of a run: its configuration (``config.account`` is its id) and its markets."""

    config: EngineConfig
    #: the ``exchange:symbol`` keys it trades; None: every market the run sees
    markets: frozenset[str] | None = None


def _accounts(config: EngineConfig | Sequence[Account]) -> list[Account]:
    accounts = [Account(config)] if isinstance(config, EngineConfig) else list(config)
    if not accounts:
        raise ValueError("no account to trade for")
    reject_repeats("accounts", [a.config.account for a in accounts])
    return accounts


def account_markets(account: Account, known: Collection[str] | None) -> frozenset[str] | None:
    """The markets an account's merge waits for: its own, else every market the run knows (None when
    the run does not say: the markets seen so far, which one process feeding in time order allows)."""
    if account.markets is not None:
        return account.markets
    return frozenset(known) if known else None


def market_stages(
    config: EngineConfig | Sequence[Account], known: Collection[str] | None = None
) -> list[Stage]:
    """The market stage group, in dispatch order: candles, watermarks, each account's strategies,
    indicators. Keyed by market: no state of an account, so each market can run anywhere. ``known``:
    the run's markets (see :func:`account_markets`)."""
    accounts = _accounts(config)
    timeframes = tuple(dict.fromkeys(tf for a in accounts for tf in a.config.timeframes))
    specs = [
        spec
        for a in accounts
        for spec in (
            *(
                s
                for name in a.config.strategies
                for s in load_strategy(name, **a.config.strategy_params.get(name, {})).indicators()
            ),
            *a.config.indicators,
        )
    ]
    indicators = IndicatorStage(timeframes, specs)
    strategies: list[Stage] = []
    for a in accounts:
        cfg = a.config
        # before indicators: it keeps the candle the values belong to
        strategies.append(StrategyStage(cfg, a.markets, indicators))
    step = min(timeframe_ns(a.config.trading_timeframe) for a in accounts)
    markets = [(a.config.account, account_markets(a, known)) for a in accounts]
    watermarks = WatermarkStage(markets, step)
    return [
        CandleStage(timeframes),
        watermarks,
        FundingStage(markets),
        InLineStage(markets),
        *strategies,
        indicators,
    ]


def account_stages(
    config: EngineConfig | Sequence[Account],
    markets: Mapping[str, Market],
    venue: Venue | None = None,
    known: Collection[str] | None = None,
) -> list[AccountStage]:
    """The account stage group: one :class:`AccountStage` per account. ``venue``: where orders go, for
    a single account; None is a paper broker per account with its config's fees and slippage."""
    accounts = _accounts(config)
    if venue is not None and len(accounts) > 1:
        raise ValueError("one venue serves one account; several accounts trade on paper")
    known = known if known is not None else (list(markets) or None)
    out = []
    for a in accounts:
        cfg = a.config
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
        out.append(AccountStage(cfg, broker, markets, account_markets(a, known)))
    return out


def build_stages(
    config: EngineConfig | Sequence[Account],
    markets: Mapping[str, Market],
    venue: Venue | None = None,
    known: Collection[str] | None = None,
) -> list[Stage]:
    """Every stage of the trading pipeline, in dispatch order: the market group
    (:func:`market_stages`), then the account group (:func:`account_stages`). One account (``config``)
    over every market, or several accounts, each over its own markets. ``known``: the run's markets
    (default: those of ``markets``), which an account over every market waits for."""
    known = known if known is not None else (list(markets) or None)
    return [*market_stages(config, known), *account_stages(config, markets, venue, known)]
