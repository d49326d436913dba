"""Every event that crosses a topic, as a pydantic model.

Conventions (see DESIGN.md "Events"):

* ``ts_event`` is exchange (event) time and ``ts_init`` the time the event entered Mambo, both integer
  nanoseconds since the Unix epoch, UTC.
* ``event_id`` is deterministic: a hash of the event's source identity (:func:`make_id`), so a replay
  or a restart produces the same id and sinks can deduplicate on it.
* Market data and indicator values are ``float`` (float64). Order prices and quantities, cash, fees
  and positions are :class:`~decimal.Decimal`, so accounting identities hold to the last unit.
* ``exchange`` and ``symbol`` are ccxt ids and unified symbols; the partition key is
  ``exchange:symbol`` (:func:`market_key`).

Models are frozen: an event, once published, never changes.
"""

from __future__ import annotations

import hashlib
import math
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

__all__ = [
    "DEFAULT_ACCOUNT",
    "FINAL_STATUSES",
    "OPEN_STATUSES",
    "TIMEFRAMES",
    "AccountEvent",
    "AccountFeed",
    "AggregatedSignal",
    "Candle",
    "DeadLetter",
    "EquitySnapshot",
    "Event",
    "FeedHealth",
    "FeedStatus",
    "Fill",
    "FundingPayment",
    "FundingRate",
    "IndicatorValues",
    "Liquidation",
    "MarginMode",
    "MarkPrice",
    "Notification",
    "NotificationKind",
    "NotificationLevel",
    "Order",
    "OrderIntent",
    "OrderSide",
    "OrderStatus",
    "OrderType",
    "Position",
    "Quote",
    "RiskRejection",
    "Signal",
    "SignalSide",
    "Trade",
    "make_id",
    "market_key",
    "split_key",
    "timeframe_ns",
]

OrderSide = Literal["buy", "sell"]
SignalSide = Literal["buy", "sell", "hold"]
OrderType = Literal["market", "limit"]
OrderStatus = Literal["new", "partially_filled", "filled", "canceled", "rejected", "expired"]
#: An order in one of these states is done: nothing more happens to it.
FINAL_STATUSES: frozenset[OrderStatus] = frozenset({"filled", "canceled", "rejected", "expired"})
#: An order in one of these states can still fill or be canceled.
OPEN_STATUSES: frozenset[OrderStatus] = frozenset({"new", "partially_filled"})
TradeSide = Literal["buy", "sell", ""]
#: A feed stream's state: ``alive`` is the periodic report (its age says how long it has been silent);
#: the others are changes: a stream ``stalled`` (silent too long) or ``disconnected`` is reconnected,
#: then ``reconnected``; ``gap_filled`` says history was fetched over REST.
FeedStatus = Literal["alive", "connected", "stalled", "disconnected", "reconnected", "gap_filled"]

NS_PER_SECOND = 1_000_000_000
_TF_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: The candle timeframes Mambo builds from trades (``1s`` is there for fast demos and tests).
TIMEFRAMES: tuple[str, ...] = ("1s", "1m", "5m", "15m", "1h", "4h", "1d")


def timeframe_ns(timeframe: str) -> int:
    """Length of a timeframe such as ``"5m"`` in nanoseconds; ValueError for an unknown one."""
    try:
        return int(timeframe[:-1]) * _TF_UNITS[timeframe[-1]] * NS_PER_SECOND
    except (KeyError, ValueError, IndexError):
        raise ValueError(f"unknown timeframe {timeframe!r}; use e.g. 1s, 1m, 5m, 1h, 1d") from None


def make_id(*parts: object) -> str:
    """A deterministic 16-byte hex id from an event's source identity."""
    return hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=16).hexdigest()


def market_key(exchange: str, symbol: str) -> str:
    """The partition key of a market: ``exchange:symbol``."""
    return f"{exchange}:{symbol}"


def split_key(key: str) -> tuple[str, str]:
    """Inverse of :func:`market_key`."""
    exchange, sep, symbol = key.partition(":")
    if not sep or not exchange or not symbol:
        raise ValueError(f"bad market key {key!r}; expected exchange:symbol")
    return exchange, symbol


def _finite_positive(v: float) -> float:
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"must be a finite number > 0, got {v!r}")
    return v


def _finite_non_negative(v: float) -> float:
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"must be a finite number >= 0, got {v!r}")
    return v


Price = Annotated[float, AfterValidator(_finite_positive)]
Qty = Annotated[float, AfterValidator(_finite_non_negative)]
TsNs = Annotated[int, Field(ge=0, description="nanoseconds since the Unix epoch, UTC")]


class Event(BaseModel):
    """Fields every event carries."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    #: Schema version, sent as a Kafka header; bump on an incompatible change.
    schema_version: ClassVar[int] = 1

    event_id: str
    ts_event: TsNs
    ts_init: TsNs


class MarketEvent(Event):
    exchange: str = Field(min_length=1)
    symbol: str = Field(min_length=1)

    @property
    def key(self) -> str:
        return market_key(self.exchange, self.symbol)


class Trade(MarketEvent):
    """One public trade (a print) on an exchange."""

    trade_id: str
    price: Price
    qty: Annotated[float, AfterValidator(_finite_positive)]
    side: TradeSide = ""  # the aggressor's side, "" when the venue does not say


class Quote(MarketEvent):
    """Top of book: best bid and ask."""

    bid: Price
    bid_qty: Qty
    ask: Price
    ask_qty: Qty


class Candle(MarketEvent):
    """OHLCV bar of one timeframe. ``ts_event`` is the bar's end (exclusive), ``open_time`` its start."""

    timeframe: str
    open_time: TsNs
    open: Price
    high: Price
    low: Price
    close: Price
    volume: Qty
    trades: int = Field(ge=0)
    closed: bool = True


class IndicatorValues(MarketEvent):
    """All indicator values of one closed candle; NaN while an indicator warms up."""

    timeframe: str
    values: dict[str, float]


class Signal(MarketEvent):
    """One strategy's view of one market after a closed candle."""

    strategy: str
    timeframe: str
    side: SignalSide
    confidence: float = Field(ge=0.0, le=1.0)
    price: float
    values: dict[str, float] = Field(default_factory=dict)


class AggregatedSignal(MarketEvent):
    """The combined view of all strategies on one market: what clients subscribe to."""

    timeframe: str
    side: SignalSide
    score: float = Field(ge=-1.0, le=1.0)
    confidence: float = Field(ge=0.0, le=1.0)
    price: float
    weights: dict[str, float]
    contributions: dict[str, float]
    lead_strategy: str
    values: dict[str, float] = Field(default_factory=dict)


#: The account of a configuration that names none (``[accounts.main]``, over every market).
DEFAULT_ACCOUNT = "main"


class AccountEvent(MarketEvent):
    """An event of one account's trading in one market: intents, orders, fills, positions, rejections."""

    account: str = Field(DEFAULT_ACCOUNT, min_length=1)


class AccountFeed(Event):
    """One market's progress as one account sees it (the internal ``account.feed`` topic, keyed by
    account): a closed candle of the account's trading timeframe with the aggregated signal decided
    on it (None when the strategies gave none), a perpetual's funding settled at a funding time, its
    mark price, a control command, or only a watermark.

    ``watermark``: the market has published every candle of this account that ends at or before it
    (a candle's own end, or the last trade its market stage has seen). The account stage merges its
    markets' feeds in event time up to the least of their watermarks (:mod:`mambo.core.accounts`)."""

    account: str = Field(min_length=1)
    exchange: str = Field(min_length=1)
    symbol: str = Field(min_length=1)
    watermark: TsNs
    candle: Candle | None = None
    signal: AggregatedSignal | None = None
    #: a funding time of the market: the account stage settles it after the candles that end by then
    funding: FundingRate | None = None
    #: a perpetual's mark price from the venue, where it came in the market's stream
    mark: MarkPrice | None = None
    #: a command to the account (halt, resume, reduce_only, force_exit) where it came in the market's stream
    control: ControlCommand | None = None

    @property
    def market(self) -> str:
        return market_key(self.exchange, self.symbol)

    @property
    def stream_key(self) -> str:
        """Its Kafka key (and the key of the account stage's state): ``account/<id>``."""
        return f"account/{self.account}"

    def __setstate__(self, state: dict[Any, Any]) -> None:
        """A feed pickled (waiting in an account's merge) before it could carry a mark or a command."""
        fields = state.get("__dict__")
        if isinstance(fields, dict):
            fields.setdefault("mark", None)
            fields.setdefault("control", None)
        super().__setstate__(state)


class OrderIntent(AccountEvent):
    """What the strategies want; risk turns it into an Order or a RiskRejection."""

    client_order_id: str
    strategy: str
    side: OrderSide
    order_type: OrderType = "market"
    qty: Decimal | None = Field(default=None, description="None: let risk size it from equity")
    limit_price: Decimal | None = None
    reduce_only: bool = False
    reason: str = ""
    price: float = Field(description="reference market price at decision time")


class RiskRejection(AccountEvent):
    """An intent denied by a risk rule: an event with its reason, never an exception."""

    client_order_id: str
    strategy: str
    side: OrderSide
    rule: str
    reason: str


class Order(AccountEvent):
    """An order as sent to a broker, and its later states."""

    client_order_id: str
    strategy: str
    side: OrderSide
    order_type: OrderType
    qty: Decimal
    limit_price: Decimal | None = None
    status: OrderStatus = "new"
    filled_qty: Decimal = Decimal(0)
    reduce_only: bool = False
    reason: str = ""


class Fill(AccountEvent):
    """An execution of (part of) an order."""

    fill_id: str
    client_order_id: str
    strategy: str
    side: OrderSide
    price: Decimal
    qty: Decimal
    fee: Decimal
    fee_currency: str
    liquidity: Literal["maker", "taker"]
    realized_pnl: Decimal = Decimal(0)


class Position(AccountEvent):
    """A market's position after a fill or a mark."""

    qty: Decimal
    avg_price: Decimal
    realized_pnl: Decimal
    unrealized_pnl: Decimal
    fees: Decimal
    mark_price: Decimal
    liquidation_price: Decimal | None = Field(None, description="perpetuals: the venue's, by its formula")


class EquitySnapshot(Event):
    """The account at a point in time: cash + positions at market = equity, exactly."""

    account: str = DEFAULT_ACCOUNT
    cash: Decimal
    positions_value: Decimal
    equity: Decimal
    realized_pnl: Decimal
    unrealized_pnl: Decimal
    fees: Decimal
    funding: Decimal = Field(
        Decimal(0),
        description="perpetuals: funding received (negative: paid), and what an insurance fund covered",
    )
    drawdown: float = 0.0


class DeadLetter(Event):
    """A message that could not be decoded or processed, with where it came from and why."""

    topic: str
    partition: int = -1
    offset: int = -1
    key: str = ""
    reason: str
    payload: str


class FeedHealth(Event):
    """The health of one stream of a market data feed (a source's ``trades:BTC/USDT``, ``quotes``,
    ``candles:ETH/USDT``): periodic (``alive``) or on a change (see :data:`FeedStatus`).

    ``age_seconds`` is the time since the stream's last message when the event was made: for
    ``stalled`` how long it had been silent, for ``alive`` how fresh it is."""

    exchange: str = Field(min_length=1)
    stream: str = Field(min_length=1)
    status: FeedStatus
    age_seconds: float = Field(ge=0.0)
    detail: str = ""


#: What a :class:`Notification` reports (``[notify] events`` chooses which are delivered).
NotificationKind = Literal["entry", "exit", "order", "rejections", "kill_switch", "drawdown", "feed"]
NotificationLevel = Literal["info", "success", "warning", "failure"]


class Notification(Event):
    """A message for people, on the ``notifications`` topic (the outbox ``mambo notify`` delivers):
    made by :class:`mambo.notify.NotificationStage` from fills, orders, rejections, equity and feed
    health. ``event_id`` derives from the event that caused it (``source_id``), so a replay makes the
    same notification and a deliverer drops repeats by id."""

    account: str = ""  # "" for what is no account's (a feed)
    kind: NotificationKind
    level: NotificationLevel = "info"
    market: str = ""  # exchange:symbol, or an exchange for a feed; "" for the whole account
    title: str
    body: str
    source_topic: str
    source_id: str


# --- futures (perpetuals): mark prices, funding, liquidations -----------------------------------------

#: How a futures position is margined: by its own isolated wallet, or by the account's cross wallet.
MarginMode = Literal["isolated", "cross"]


def _finite(v: float) -> float:
    if not math.isfinite(v):
        raise ValueError(f"must be a finite number, got {v!r}")
    return v


def _positive_or_none(v: float | None) -> float | None:
    return None if v is None else _finite_positive(v)


#: A price a venue may leave out.
OptionalPrice = Annotated[float | None, AfterValidator(_positive_or_none)]


class MarkPrice(MarketEvent):
    """A perpetual's mark price (Binance ``@markPrice``, ``premiumIndex``): what unrealized PnL,
    margins and liquidations are measured at. ``index_price`` when the venue gives it."""

    mark_price: Price
    index_price: OptionalPrice = None


class FundingRate(MarketEvent):
    """A perpetual's funding rate settled at ``ts_event`` (the funding time). A position pays
    ``qty x mark x rate`` (longs pay when the rate is positive). ``mark_price``: the mark at the funding
    time when the venue gives it (Binance's ``fundingRate`` history does)."""

    rate: Annotated[float, AfterValidator(_finite)]
    mark_price: OptionalPrice = None


class FundingPayment(AccountEvent):
    """Funding booked on a position at a funding time (``ts_event``): ``amount`` is the change of the
    wallet, ``-qty x mark_price x rate`` (negative: paid)."""

    rate: Decimal
    mark_price: Decimal
    qty: Decimal = Field(description="the signed position funded")
    amount: Decimal
    margin_mode: MarginMode


class Liquidation(AccountEvent):
    """A position closed by the venue at the mark price because its margin balance fell to its
    maintenance margin (isolated: the position's; cross: the cross account's).

    ``realized_pnl`` is the price PnL of the closed ``qty``; ``fee`` the liquidation (clearance) fee,
    at most what margin was left; ``insurance`` what the insurance fund covered of a balance that would
    have gone below zero."""

    side: OrderSide = Field(description="the side of the closing order: sell closes a long")
    qty: Decimal
    price: Decimal
    realized_pnl: Decimal
    fee: Decimal
    insurance: Decimal = Decimal(0)
    margin_mode: MarginMode
    margin_balance: Decimal = Field(description="the margin balance that triggered it")
    maintenance_margin: Decimal


ControlAction = Literal["start", "stop", "pause", "set_params", "halt", "resume", "reduce_only", "force_exit"]
#: The actions on one strategy of an account (the market stages apply them); the rest act on the account.
STRATEGY_ACTIONS: frozenset[str] = frozenset({"start", "stop", "pause", "set_params"})


class ControlCommand(Event):
    """A command to a running pipeline (the ``control`` topic; :mod:`mambo.core.control`): start, stop
    or pause one of an account's strategies, change its parameters (``params``, a JSON object), halt
    the account's entries or resume them, put it in reduce-only mode (``params`` ``{"on": false}``
    ends it), or close its positions (``force_exit``). ``exchange`` and ``symbol`` name one market,
    empty: every market of the account. ``version`` increases per account and strategy: a command at
    or below the version applied there is stale and refused. ``who`` and ``why`` are for the record."""

    command_id: str = Field(min_length=1)
    account: str = Field(DEFAULT_ACCOUNT, min_length=1)
    action: ControlAction
    strategy: str = ""
    exchange: str = ""
    symbol: str = ""
    params: str = Field("{}", description="a JSON object: set_params' parameters, reduce_only's on")
    version: int = Field(ge=1)
    who: str = Field(min_length=1)
    why: str = ""

    @property
    def key(self) -> str:
        """Its Kafka key: ``<account>/<strategy>`` (compaction keeps the last command per target)."""
        return f"{self.account}/{self.strategy}"

    @property
    def market(self) -> str:
        return market_key(self.exchange, self.symbol) if self.symbol else ""


class ControlResult(Event):
    """What became of a :class:`ControlCommand` in one market (strategy actions) or in the account:
    ``applied``, or ``rejected`` with the reason; ``params``, the strategy's parameters in force after
    it (JSON), so the history says what ran with which parameters when."""

    command_id: str
    account: str
    action: ControlAction
    strategy: str = ""
    exchange: str = ""
    symbol: str = ""
    status: Literal["applied", "rejected"]
    reason: str = ""
    params: str = "{}"
    version: int = 0
    who: str = ""


AccountFeed.model_rebuild()  # its funding, mark and control are defined after it
