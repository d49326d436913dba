"""The topic registry: every topic's name, key, event model, ClickHouse table and retention.

Both runtimes take topic names from here: the embedded bus and Kafka use the same names, so a
consumer written against one works against the other. ``<topic>.dlq`` topics hold
:class:`~mambo.schemas.events.DeadLetter` events for their topic.

Partitions: market data and what is computed per market from it (candles, indicators, raw signals)
are keyed over ``kafka.partitions``, which is how workers scale. The trading streams from the
aggregated signal on (signals, intents, rejections, orders, fills, positions, equity) have ONE
partition: they carry a few events per market per bar, an account-level reader gets them in one
order, and a worker's exactly-once transaction writes one partition of each instead of one per
market (a transaction costs per partition it writes: :mod:`mambo.streams.kafka.worker`).
"""

from __future__ import annotations

from dataclasses import dataclass

from mambo.schemas.backtests import BacktestRun, BacktestTrial
from mambo.schemas.events import (
    TIMEFRAMES,
    AccountFeed,
    AggregatedSignal,
    Candle,
    ControlCommand,
    ControlResult,
    DeadLetter,
    EquitySnapshot,
    Event,
    FeedHealth,
    Fill,
    FundingPayment,
    FundingRate,
    IndicatorValues,
    Liquidation,
    MarkPrice,
    Notification,
    Order,
    OrderIntent,
    Position,
    Quote,
    RiskRejection,
    Signal,
    Trade,
)

__all__ = [
    "ACCOUNT_FEED",
    "ALL_TOPICS",
    "CONTROL",
    "CONTROL_MARKETS",
    "CONTROL_RESULTS",
    "DLQ_SUFFIX",
    "INTERNAL_TOPICS",
    "TABLES",
    "Topic",
    "by_name",
    "candle_topic",
    "dlq_topic",
]

DAY_MS = 86_400_000
DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True)
class Topic:
    """One stream: its name, the model of its events, the ClickHouse table they land in."""

    name: str
    model: type[Event]
    table: str
    key_field: str = "key"  # attribute of the event that gives the partition key
    partitions: int = 6
    retention_ms: int = 7 * DAY_MS
    compacted: bool = False

    def key_of(self, event: Event) -> str:
        return str(getattr(event, self.key_field))


def candle_topic(timeframe: str) -> str:
    """Topic of the candles Mambo builds for a timeframe, e.g. ``md.candles.1m``."""
    return f"md.candles.{timeframe}"


def dlq_topic(topic: str) -> str:
    return topic + DLQ_SUFFIX


TRADES = Topic("md.trades", Trade, "trades")
QUOTES = Topic("md.quotes", Quote, "quotes", retention_ms=DAY_MS)
EXCHANGE_CANDLES = Topic("md.candles", Candle, "candles")
INDICATORS = Topic("indicators", IndicatorValues, "indicators")
SIGNALS_RAW = Topic("signals.raw", Signal, "signals_raw")
SIGNALS = Topic("signals", AggregatedSignal, "signals", partitions=1, retention_ms=30 * DAY_MS)
INTENTS = Topic("orders.intents", OrderIntent, "order_intents", partitions=1, retention_ms=30 * DAY_MS)
REJECTIONS = Topic(
    "risk.rejections", RiskRejection, "risk_rejections", partitions=1, retention_ms=30 * DAY_MS
)
ORDERS = Topic("orders", Order, "orders", partitions=1, retention_ms=365 * DAY_MS)
FILLS = Topic("fills", Fill, "fills", partitions=1, retention_ms=365 * DAY_MS)
POSITIONS = Topic("positions", Position, "positions", partitions=1, compacted=True)
EQUITY = Topic(
    "equity", EquitySnapshot, "equity", key_field="account", partitions=1, retention_ms=365 * DAY_MS
)
#: Sources' stream health (periodic ages, stalls, reconnects, gap fills), keyed by exchange.
FEED_HEALTH = Topic("feeds.health", FeedHealth, "feed_health", key_field="exchange", partitions=1)
#: Perpetuals: mark prices and funding rates are market data (keyed by market); the funding an account
#: pays or receives and its liquidations are account events, one partition like fills.
MARK_PRICES = Topic("md.mark", MarkPrice, "mark_prices", retention_ms=DAY_MS)
FUNDING_RATES = Topic("md.funding", FundingRate, "funding_rates", retention_ms=365 * DAY_MS)
FUNDING = Topic("funding", FundingPayment, "funding_payments", partitions=1, retention_ms=365 * DAY_MS)
LIQUIDATIONS = Topic("liquidations", Liquidation, "liquidations", partitions=1, retention_ms=365 * DAY_MS)
#: The outbox of messages for people (:mod:`mambo.notify`): ``mambo notify`` delivers it, never the
#: pipeline, so a channel that is down holds nothing up. Keyed by account, one partition (in order).
NOTIFICATIONS = Topic(
    "notifications",
    Notification,
    "notifications",
    key_field="account",
    partitions=1,
    retention_ms=30 * DAY_MS,
)

#: Commands to a running pipeline (:mod:`mambo.core.control`), compacted by target (account/strategy),
#: and what became of them: the record of what ran with which parameters when.
CONTROL = Topic("control", ControlCommand, "control", partitions=1, compacted=True)
CONTROL_RESULTS = Topic(
    "control.results",
    ControlResult,
    "control_results",
    key_field="account",
    partitions=1,
    retention_ms=365 * DAY_MS,
)

_MAIN: tuple[Topic, ...] = (
    TRADES,
    QUOTES,
    EXCHANGE_CANDLES,
    *(Topic(candle_topic(tf), Candle, "candles") for tf in TIMEFRAMES),
    INDICATORS,
    SIGNALS_RAW,
    SIGNALS,
    INTENTS,
    REJECTIONS,
    ORDERS,
    FILLS,
    POSITIONS,
    EQUITY,
    FEED_HEALTH,
    MARK_PRICES,
    FUNDING_RATES,
    FUNDING,
    LIQUIDATIONS,
    NOTIFICATIONS,
    CONTROL,
    CONTROL_RESULTS,
)
#: The market stages' feed to the account stages (:class:`~mambo.schemas.events.AccountFeed`), keyed by
#: account (``account/<id>``): a repartition topic between the two stage groups, like Kafka Streams'
#: ``-repartition`` topics. Internal: no ClickHouse table (``table`` empty), no API channel; what the
#: account stage makes of it (orders, fills, equity) is in the history.
ACCOUNT_FEED = Topic("account.feed", AccountFeed, "", key_field="stream_key")
INTERNAL_TOPICS: tuple[Topic, ...] = (ACCOUNT_FEED,)
_DLQ: tuple[Topic, ...] = tuple(
    Topic(dlq_topic(t.name), DeadLetter, "dead_letters", partitions=1, retention_ms=30 * DAY_MS)
    for t in (*_MAIN, ACCOUNT_FEED)  # the feed's dead letters are history like any other
)
ALL_TOPICS: tuple[Topic, ...] = _MAIN + _DLQ
#: A control command's copy for one market (:func:`mambo.core.control.expand`), as the stages take it
#: in line with the market's stream: a name on the in-process bus only (on Kafka the copy is a record
#: in line on md.trades); the command itself is on ``control``.
CONTROL_MARKETS = Topic("control.markets", ControlCommand, "", key_field="market")
_BUS_ONLY: tuple[Topic, ...] = (
    CONTROL_MARKETS,
    Topic(dlq_topic(CONTROL_MARKETS.name), DeadLetter, "dead_letters", partitions=1),
)
_BY_NAME = {t.name: t for t in (*ALL_TOPICS, *INTERNAL_TOPICS, *_BUS_ONLY)}
#: ClickHouse table name -> model. Several topics may share one table (all candle topics -> candles).
TABLES: dict[str, type[Event]] = {t.table: t.model for t in ALL_TOPICS}
# Tables no topic feeds: the records of parameter searches (mambo optimize).
TABLES.update({"backtest_runs": BacktestRun, "backtest_trials": BacktestTrial})


def by_name(name: str) -> Topic:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown topic {name!r}") from None
