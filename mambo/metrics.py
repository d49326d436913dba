"""Prometheus metrics: every metric Mambo exports, defined once, and the few hooks that feed them.

Names follow Prometheus' conventions: the ``mambo_`` prefix, base units (seconds, the account's quote
currency, ratios), ``_total`` on counters, and labels of low cardinality only (topic, stage, account,
strategy, rule, table, route, status...), never an event id, a price or a free-text reason.

Where they are measured:

* the event bus (:class:`~mambo.streams.bus.EventBus`, so the embedded runtime and each Kafka worker's
  per-market pipelines alike) hands every message to a :class:`BusMetrics`: messages per topic, dead
  letters per topic and reason class, trade batch sizes, a batch's time through every stage and each
  stage's time over a batch, and the trading events: signals, orders, fills, risk rejections, account
  gauges, feed health, and latencies. The per-message path costs a dictionary lookup or two (see
  ``benchmarks/metrics_overhead.py``);
* the ClickHouse sink: rows and insert time per table;
* the API: requests by route and status (a middleware), WebSocket clients, frames and drops (the hub);
* Kafka consumer groups: lag per topic and partition, in messages and in seconds (:class:`ConsumerLag`,
  from the brokers at scrape time); the workers' transaction commit time and outcomes (exactly once),
  rebalances and the partitions they hold (``runtime``: ``worker`` or ``faust``).

Latency, from the events' own timestamps (``ts_init``: when the data behind an event entered Mambo,
inherited by every event derived from it; ``ts_event``: exchange time):

* ``mambo_processing_latency_seconds{stage}``: wall clock when the bus sees a candle, a market's
  combined signal, a new order or a fill, minus its ``ts_init``: the time since its trade entered
  Mambo (across processes in the Kafka runtime, since ``ts_init`` travels with the events);
* ``mambo_latency_seconds{path}``: ``candle_to_signal`` and ``signal_to_order``, wall time between
  the bus seeing a candle (the combined signal) and the combined signal (the order) it caused,
  matched by market and bar end (dispatch is depth first: a candle's signal comes before the next
  candle; an order comes when the account stage takes its signal, which may wait for the account's
  other markets to come as far in event time: that wait is part of it);
  ``order_to_fill``, the fill's ``ts_event`` minus its order's: the venue's time to fill (on a real
  exchange, its acknowledgement time).

``MAMBO_METRICS=0`` turns the bus's instrumentation off (the overhead benchmark compares both); the
backtester always runs without it.
"""

from __future__ import annotations

import os
import re
import threading
import time
import weakref
from bisect import bisect_left
from collections import Counter as CounterType
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import (
    FINAL_STATUSES,
    AggregatedSignal,
    Candle,
    DeadLetter,
    EquitySnapshot,
    FeedHealth,
    Fill,
    Order,
    Position,
    RiskRejection,
    Signal,
)

__all__ = [
    "BUSES",
    "CONTENT_TYPE_LATEST",
    "ENABLED",
    "BusMetrics",
    "ConsumerLag",
    "LagClock",
    "exposition",
    "group_offsets",
    "reason_class",
    "watch_group",
]

# No ``*_created`` series: they double the exposition and Mambo's queries use none of them.
disable_created_metrics()

#: Whether event buses instrument themselves (``MAMBO_METRICS=0``: off).
ENABLED = os.environ.get("MAMBO_METRICS", "1").strip().lower() not in ("0", "false", "off", "no")

_NS = 1e-9
#: Latency buckets, seconds: 100 us to 1 min (a stage call, a hop through Kafka, a fill).
LATENCY_BUCKETS = (
    1e-4,
    2.5e-4,
    5e-4,
    1e-3,
    2.5e-3,
    5e-3,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)
#: Stage time buckets, seconds: 10 us to 1 s.
STAGE_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
#: Order to fill in exchange time, seconds: a next-trade paper fill to a resting limit order.
FILL_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 14400, 86400)

# --- the bus -------------------------------------------------------------------------------------------
DEAD_LETTERS = Counter(
    "mambo_dead_letters_total",
    "Messages sent to a dead-letter topic, by the topic they came from and the reason's class.",
    ["topic", "reason"],
)
BATCH_TRADES = Histogram(
    "mambo_batch_trades",
    "Trades per batch published on the bus.",
    ["topic"],
    buckets=(1, 10, 100, 1_000, 5_000, 10_000, 20_000, 50_000, 100_000),
)
BATCH_SECONDS = Histogram(
    "mambo_batch_seconds",
    "Time one trade batch takes through every stage, with the events it causes.",
    ["topic"],
    buckets=(1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
# --- trading -------------------------------------------------------------------------------------------
HALTED = Gauge(
    "mambo_kill_switch_halted",
    "1 once the drawdown kill switch has denied an entry (until the process restarts), else 0.",
    ["account"],
)
# --- feeds ---------------------------------------------------------------------------------------------
FEED_AGE = Gauge(
    "mambo_feed_age_seconds",
    "Seconds since a feed stream's last message, as last reported.",
    ["exchange", "stream"],
)
FEED_REPORTED = Gauge(
    "mambo_feed_report_timestamp_seconds",
    "Unix time of a feed stream's last health report (a stale one means the source is silent).",
    ["exchange", "stream"],
)
FEED_EVENTS = Counter(
    "mambo_feed_events_total",
    "Feed stream changes: stalled, disconnected, reconnected, gap_filled.",
    ["exchange", "status"],
)
# --- Kafka ---------------------------------------------------------------------------------------------
TRANSACTION_SECONDS = Histogram(
    "mambo_kafka_transaction_commit_seconds",
    "Exactly once: time from sending a batch's offsets to the transaction's commit returning.",
    ["runtime"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TRANSACTIONS = Counter(
    "mambo_kafka_transactions_total",
    "Exactly once: transactions by outcome (committed, aborted: undone and replayed from the last commit).",
    ["runtime", "outcome"],
)
REBALANCES = Counter(
    "mambo_kafka_rebalances_total",
    "Consumer group rebalances seen by this process, by what it got (assigned, revoked).",
    ["runtime", "event"],
)
ASSIGNED_PARTITIONS = Gauge(
    "mambo_kafka_assigned_partitions", "Input partitions this process holds.", ["runtime"]
)
# --- ClickHouse ------------------------------------------------------------------------------------------
SINK_ROWS = Counter("mambo_sink_rows_total", "Rows inserted into ClickHouse, by table.", ["table"])
SINK_SECONDS = Histogram(
    "mambo_sink_insert_seconds",
    "Time of one ClickHouse insert, by table.",
    ["table"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SINK_FAILURES = Counter("mambo_sink_insert_failures_total", "Failed ClickHouse inserts, by table.", ["table"])
# --- the API ---------------------------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "mambo_http_requests_total",
    "HTTP requests, by route template, method and status.",
    ["route", "method", "status"],
)
HTTP_SECONDS = Histogram(
    "mambo_http_request_duration_seconds",
    "HTTP request time, by route template.",
    ["route"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WS_CLIENTS = Gauge("mambo_ws_clients", "WebSocket clients connected.")
WS_FRAMES = Counter("mambo_ws_frames_sent_total", "WebSocket frames sent to clients.")
WS_DROPPED = Counter("mambo_ws_clients_dropped_total", "WebSocket clients dropped (slow consumers).")

_REASON_HEAD = re.compile(r"[A-Za-z_][A-Za-z_ ]*")
_EXCEPTION = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.]*)\(")


def reason_class(reason: str) -> str:
    """A dead letter's reason reduced to a label of low cardinality: ``"risk: ValueError('x 3')"`` ->
    ``"risk: ValueError"``, ``"unknown market binance:X/Y"`` -> ``"unknown market binance"``, and
    anything without such a head -> ``"other"``."""
    head, sep, tail = reason.partition(": ")
    if sep:
        exc = _EXCEPTION.match(tail)
        if exc and _REASON_HEAD.fullmatch(head):
            return f"{head}: {exc.group(1)}"[:80]
    m = _REASON_HEAD.match(reason)
    return m.group(0).strip()[:80] if m and m.group(0).strip() else "other"


class _Hist:
    """A histogram's buckets (not cumulative; the last is +Inf) and sum, as plain numbers: observing
    costs a bisection and two additions, a tenth of a prometheus_client histogram's locked update."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def add(self, other: _Hist) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.sum += other.sum


#: The counters kept as plain numbers: key -> (name without _total, help, label names).
_COUNTERS = {
    "signals": (
        "mambo_signals",
        "Strategy signals (buy and sell), by strategy and side.",
        ("strategy", "side"),
    ),
    "orders": (
        "mambo_orders",
        "Order events (a new order, then its later states), by account, strategy and status.",
        ("account", "strategy", "status"),
    ),
    "fills": ("mambo_fills", "Fills, by account, strategy and side.", ("account", "strategy", "side")),
    "rejections": (
        "mambo_risk_rejections",
        "Order intents denied by a risk rule, by account, strategy and rule.",
        ("account", "strategy", "rule"),
    ),
}


class _BusState:
    """One bus's hot-path numbers: what :class:`BusCollector` exports, summed over every bus."""

    __slots__ = ("counters", "equity", "fill_wait", "latency", "messages", "paths", "positions", "stages")

    def __init__(self, messages: CounterType[str]) -> None:
        self.messages = messages  # the bus's own count per topic: nothing more to do per message
        self.stages: dict[str, _Hist] = {}
        self.counters: dict[str, CounterType[tuple[str, ...]]] = {k: CounterType() for k in _COUNTERS}
        self.fill_wait: dict[str, _Hist] = {}  # account -> order to fill, exchange time
        self.latency = {s: _Hist(LATENCY_BUCKETS) for s in ("candle", "signal", "order", "fill")}
        self.paths = {p: _Hist(LATENCY_BUCKETS) for p in ("candle_to_signal", "signal_to_order")}
        self.equity: dict[str, EquitySnapshot] = {}  # account -> its latest snapshot
        self.positions: dict[str, set[str]] = {}  # account -> markets where it holds a position

    def add(self, other: _BusState) -> None:
        self.messages.update(other.messages)
        for account, snap in other.equity.items():  # the latest of each account's, by event time
            if account not in self.equity or snap.ts_event >= self.equity[account].ts_event:
                self.equity[account] = snap
                self.positions[account] = set(other.positions.get(account, ()))
        for key, counts in other.counters.items():
            self.counters[key].update(counts)
        for account, hist in other.fill_wait.items():
            self.fill_wait.setdefault(account, _Hist(FILL_BUCKETS)).add(hist)
        for name, hist in other.stages.items():
            self.stages.setdefault(name, _Hist(STAGE_BUCKETS)).add(hist)
        for mine, theirs in ((self.latency, other.latency), (self.paths, other.paths)):
            for name, hist in theirs.items():
                mine[name].add(hist)


class BusCollector(Collector):
    """Exports the hot-path metrics of every bus in the process (live ones, plus what the buses
    already gone had counted, so the counters never go back)."""

    def __init__(self) -> None:
        self._live: weakref.WeakSet[BusMetrics] = weakref.WeakSet()
        self._retired = _BusState(CounterType())
        self._lock = threading.Lock()

    def track(self, bus: BusMetrics) -> None:
        with self._lock:
            self._live.add(bus)
        weakref.finalize(bus, self._retire, bus.state)

    def _retire(self, state: _BusState) -> None:
        with self._lock:
            self._retired.add(state)

    def total(self) -> _BusState:
        with self._lock:
            total = _BusState(CounterType())
            total.add(self._retired)
            for bus in list(self._live):
                total.add(bus.state)
        return total

    def collect(self) -> Iterator[Any]:
        t = self.total()
        messages = CounterMetricFamily(
            "mambo_messages", "Messages published on the event bus (trades one by one).", labels=["topic"]
        )
        for topic, n in sorted(t.messages.items()):
            messages.add_metric([topic], n)
        yield messages
        for key, (name, doc, labels) in _COUNTERS.items():
            family = CounterMetricFamily(name, doc, labels=list(labels))
            for values, n in sorted(t.counters[key].items()):
                family.add_metric(list(values), n)
            yield family
        gauges = {
            name: GaugeMetricFamily(name, doc, labels=["account"])
            for name, doc in (
                ("mambo_equity", "Account equity (cash + positions at market), quote currency."),
                ("mambo_drawdown_ratio", "Account drawdown from its equity peak (0..1)."),
                ("mambo_exposure", "Value of the account's positions at market, quote currency."),
                ("mambo_open_positions", "Markets where the account holds a position."),
            )
        }
        for account, snap in sorted(t.equity.items()):
            gauges["mambo_equity"].add_metric([account], float(snap.equity))
            gauges["mambo_drawdown_ratio"].add_metric([account], snap.drawdown)
            gauges["mambo_exposure"].add_metric([account], float(snap.positions_value))
            gauges["mambo_open_positions"].add_metric([account], len(t.positions.get(account, ())))
        yield from gauges.values()
        yield _family(
            "mambo_order_to_fill_seconds",
            "Exchange time from an order to its fill (the fill's ts_event minus the order's).",
            "account",
            t.fill_wait,
        )
        yield _family(
            "mambo_stage_seconds", "Time a stage takes over one message or batch.", "stage", t.stages
        )
        yield _family(
            "mambo_processing_latency_seconds",
            "Wall time from an event's ts_init (its trade entering Mambo) to the bus seeing it, by event.",
            "stage",
            t.latency,
        )
        yield _family(
            "mambo_latency_seconds",
            "Wall time candle to signal and signal to order, as the bus sees them.",
            "path",
            t.paths,
        )


def _family(name: str, doc: str, label: str, hists: dict[str, _Hist]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=[label])
    for value, h in sorted(hists.items()):
        cumulative, buckets = 0, []
        for bound, n in zip((*map(floatToGoString, h.bounds), "+Inf"), h.counts, strict=True):
            cumulative += n
            buckets.append((bound, cumulative))
        family.add_metric([value], buckets, h.sum)
    return family


BUSES = BusCollector()
REGISTRY.register(BUSES)


class BusMetrics:
    """What a bus's messages say, into the metrics above: ``on_message`` for each message (before the
    stages), ``on_batch`` and ``on_stage`` for the times. ``messages``: the bus's own count per topic
    (then the bus calls :attr:`handlers` and :meth:`on_trades` itself, a call less per message).

    Every message only touches plain numbers (:class:`_BusState`, exported by :data:`BUSES` at scrape
    time: counters, histograms, the latest equity snapshot per account); the rare events (the kill
    switch, feed health, dead letters, batches) go straight to prometheus_client's metrics. State:
    the orders in flight, and the last candle and combined signal (dispatch is depth first, so what a
    candle causes comes before the next candle)."""

    _MAX_OPEN = 10_000  # orders remembered for order -> fill; past it the oldest are forgotten
    _MAX_SIGNALS = 4_096  # combined signals remembered for signal -> order (a few bars per market)

    def __init__(self, messages: CounterType[str] | None = None) -> None:
        self.state = _BusState(messages if messages is not None else CounterType())
        self._own_count = messages is None
        self._batches: dict[str, Any] = {}
        self._batch_seconds: dict[str, Any] = {}
        # the last candle (symbol, timeframe, bar end, wall ns when seen) and combined signal
        self._candle_symbol, self._candle_tf, self._candle_ts, self._candle_seen = "", "", -1, 0
        # (exchange, symbol, bar end) -> when the combined signal was seen: the account stage may take
        # it after other markets' signals (it waits for them in event time), so not only the last
        self._signals_seen: dict[tuple[str, str, int], int] = {}
        self._order_ts: dict[str, int] = {}  # client order id -> the order's ts_event
        #: what to do with a message, by its type (the bus calls these directly)
        self.handlers: dict[type, Callable[[Any], None]] = {
            Candle: self._candle,
            Signal: self._signal,
            AggregatedSignal: self._aggregated,
            Order: self._order,
            Fill: self._fill,
            RiskRejection: self._rejection,
            EquitySnapshot: self._equity,
            Position: self._position,
            FeedHealth: self._feed,
            DeadLetter: self._dead_letter,
        }
        self._latency = self.state.latency
        self._signals = self.state.counters["signals"]
        self._orders = self.state.counters["orders"]
        self._fills = self.state.counters["fills"]
        self._rejections = self.state.counters["rejections"]
        self._lat_candle = self._latency["candle"]
        self._lat_signal = self._latency["signal"]
        self._candle_to_signal = self.state.paths["candle_to_signal"]
        self._signal_to_order = self.state.paths["signal_to_order"]
        BUSES.track(self)

    def on_message(self, topic: str, payload: Any) -> None:
        """Count and read one message (a bus counts its messages itself and calls :attr:`handlers`)."""
        if self._own_count:
            self.state.messages[topic] += len(payload) if isinstance(payload, TradeBatch) else 1
        handler = self.handlers.get(type(payload))
        if handler is not None:
            handler(payload)
        elif isinstance(payload, TradeBatch):
            self.on_trades(topic, payload)

    def on_trades(self, topic: str, batch: TradeBatch) -> None:
        hist = self._batches.get(topic)
        if hist is None:
            hist = self._batches[topic] = BATCH_TRADES.labels(topic)
        hist.observe(len(batch))

    def on_batch(self, topic: str, seconds: float) -> None:
        hist = self._batch_seconds.get(topic)
        if hist is None:
            hist = self._batch_seconds[topic] = BATCH_SECONDS.labels(topic)
        hist.observe(seconds)

    def on_stage(self, stage: str, seconds: float) -> None:
        hist = self.state.stages.get(stage)
        if hist is None:
            hist = self.state.stages[stage] = _Hist(STAGE_BUCKETS)
        hist.observe(seconds)

    # The handlers run for every candle and signal: a few dictionary operations each, no labels().

    def _candle(self, c: Candle) -> None:
        now = time.time_ns()
        init = c.ts_init
        if 0 < init <= now:
            self._lat_candle.observe((now - init) * _NS)
        # dispatch is depth first: the combined signal a candle causes comes before the next candle.
        # (Attributes, not a tuple: no allocation the garbage collector would count.)
        self._candle_symbol, self._candle_tf, self._candle_ts, self._candle_seen = (
            c.symbol,
            c.timeframe,
            c.ts_event,
            now,
        )

    def _signal(self, s: Signal) -> None:
        if s.side != "hold":  # holds: mambo_messages_total{topic="signals.raw"} less the others
            self._signals[(s.strategy, s.side)] += 1

    def _aggregated(self, s: AggregatedSignal) -> None:
        """The combined signal of a market's bar (after every strategy's): where latency is measured."""
        now = time.time_ns()
        init = s.ts_init
        if 0 < init <= now:
            self._lat_signal.observe((now - init) * _NS)
        if (
            self._candle_ts == s.ts_event
            and self._candle_symbol == s.symbol
            and self._candle_tf == s.timeframe
        ):
            self._candle_to_signal.observe((now - self._candle_seen) * _NS)
        seen = self._signals_seen
        if len(seen) >= self._MAX_SIGNALS:
            seen.pop(next(iter(seen)))
        seen[(s.exchange, s.symbol, s.ts_event)] = now

    def _order(self, o: Order) -> None:
        self._orders[(o.account, o.strategy, o.status)] += 1
        if o.status == "new":
            now = time.time_ns()
            if 0 < o.ts_init <= now:
                self._latency["order"].observe((now - o.ts_init) * _NS)
            seen = self._signals_seen.pop((o.exchange, o.symbol, o.ts_event), 0)
            if seen:
                self._signal_to_order.observe((now - seen) * _NS)
            if len(self._order_ts) >= self._MAX_OPEN:
                self._order_ts.pop(next(iter(self._order_ts)))
            self._order_ts[o.client_order_id] = o.ts_event
        elif o.status in FINAL_STATUSES:
            self._order_ts.pop(o.client_order_id, None)

    def _fill(self, f: Fill) -> None:
        self._fills[(f.account, f.strategy, f.side)] += 1
        now = time.time_ns()
        if 0 < f.ts_init <= now:
            self._latency["fill"].observe((now - f.ts_init) * _NS)
        sent = self._order_ts.get(f.client_order_id)
        if sent is not None and f.ts_event >= sent:
            wait = self.state.fill_wait.get(f.account)
            if wait is None:
                wait = self.state.fill_wait[f.account] = _Hist(FILL_BUCKETS)
            wait.observe((f.ts_event - sent) * _NS)

    def _rejection(self, r: RiskRejection) -> None:
        self._rejections[(r.account, r.strategy, r.rule)] += 1
        if r.rule == "max_drawdown":
            HALTED.labels(r.account).set(1)

    def _equity(self, e: EquitySnapshot) -> None:
        if e.account not in self.state.equity:
            HALTED.labels(e.account).inc(0)  # the series exists (0) from the first snapshot on
        self.state.equity[e.account] = e  # the gauges read the latest at scrape time

    def _position(self, p: Position) -> None:
        held = self.state.positions.setdefault(p.account, set())
        if p.qty:
            held.add(p.key)
        else:
            held.discard(p.key)

    def _feed(self, h: FeedHealth) -> None:
        FEED_AGE.labels(h.exchange, h.stream).set(h.age_seconds)
        FEED_REPORTED.labels(h.exchange, h.stream).set(time.time())
        if h.status != "alive":
            FEED_EVENTS.labels(h.exchange, h.status).inc()

    def _dead_letter(self, d: DeadLetter) -> None:
        DEAD_LETTERS.labels(d.topic, reason_class(d.reason)).inc()


# --- consumer lag ------------------------------------------------------------------------------------------


class LagClock:
    """Lag in seconds the way Kafka Lag Exporter estimates it: each partition's end offset is sampled
    with the time it was seen; a consumer at offset ``o`` is as late as the time the end was at ``o``
    (interpolated between the two samples around it), measured to now. Behind the oldest sample, the
    lag is at least the oldest sample's age (what it reports)."""

    def __init__(self, samples: int = 60) -> None:
        self._samples: dict[tuple[str, int], deque[tuple[int, float]]] = {}
        self._size = samples

    def sample(self, tp: tuple[str, int], end: int, now: float) -> None:
        points = self._samples.setdefault(tp, deque(maxlen=self._size))
        if points and points[-1][0] == end:
            return  # no new messages: the first time the end was here stays its time
        points.append((end, now))

    def seconds(self, tp: tuple[str, int], position: int, now: float) -> float:
        points = self._samples.get(tp)
        if not points or position >= points[-1][0]:
            return 0.0
        if position < points[0][0]:
            return now - points[0][1]
        for (o1, t1), (o2, t2) in zip(points, list(points)[1:], strict=False):
            if o1 <= position < o2:
                return now - (t1 + (position - o1) / (o2 - o1) * (t2 - t1))
        return 0.0


#: A group's partitions: (topic, partition) -> (committed offset, end offset).
GroupOffsets = Callable[[], dict[tuple[str, int], tuple[int, int]]]


class ConsumerLag(Collector):
    """A consumer group's lag per topic and partition, in messages and in seconds, the way Kafka Lag
    Exporter measures it: the group's committed offsets against the partitions' ends, from the
    brokers (admin API) at scrape time. The process's own consumer is never called from the scrape
    thread: confluent-kafka's consumer calls keep the GIL while librdkafka waits on locks that a
    rebalance callback in the polling thread holds while it waits for the GIL (a hang, seen here).

    ``offsets()`` gives the group's partitions (see :func:`group_offsets`); ``prefix`` (the
    topology's namespace) is taken off topic names. Every process of a group exports the whole
    group's lag: query it with ``max by (group, topic, partition)``."""

    def __init__(self, group: str, offsets: GroupOffsets, prefix: str = "") -> None:
        self.group = group
        self.offsets = offsets
        self.prefix = prefix
        self.clock = LagClock()
        self._lock = threading.Lock()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        messages = GaugeMetricFamily(
            "mambo_consumer_lag_messages",
            "Messages between a consumer group's committed offset and the partition's end.",
            labels=["group", "topic", "partition"],
        )
        seconds = GaugeMetricFamily(
            "mambo_consumer_lag_seconds",
            "How long ago the partition's end was where the group is (Kafka Lag Exporter's estimate).",
            labels=["group", "topic", "partition"],
        )
        with self._lock:
            try:
                parts = self.offsets()
            except Exception:  # brokers away: no lag to tell (the up and heartbeat alerts say more)
                parts = {}
            now = time.time()
            for (topic, part), (committed, end) in sorted(parts.items()):
                if end < 0 or committed < 0:
                    continue
                self.clock.sample((topic, part), end, now)
                labels = [self.group, topic.removeprefix(self.prefix), str(part)]
                messages.add_metric(labels, max(0, end - committed))
                seconds.add_metric(labels, self.clock.seconds((topic, part), committed, now))
        yield messages
        yield seconds


def group_offsets(bootstrap: str, group: str, topics: Sequence[str], timeout: float = 5.0) -> GroupOffsets:
    """The committed and end offsets (last stable: what ``read_committed`` reaches) of the group's
    partitions of ``topics`` (full names) that it has committed on: a metadata request and two
    batched admin requests."""
    from confluent_kafka import ConsumerGroupTopicPartitions, IsolationLevel, TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec

    # made in the caller's (main) thread, as the health checks' clients are
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})

    def read() -> dict[tuple[str, int], tuple[int, int]]:
        known = admin.list_topics(timeout=timeout).topics
        parts = [TopicPartition(t, p) for t in topics if t in known for p in sorted(known[t].partitions)]
        if not parts:
            return {}
        request = [ConsumerGroupTopicPartitions(group, parts)]
        answer = admin.list_consumer_group_offsets(request, request_timeout=timeout)[group]
        committed = {
            (tp.topic, tp.partition): tp.offset
            for tp in answer.result(timeout=2 * timeout).topic_partitions
            if tp.offset >= 0
        }
        if not committed:
            return {}
        futures = admin.list_offsets(
            {TopicPartition(t, p): OffsetSpec.latest() for t, p in committed},
            isolation_level=IsolationLevel.READ_COMMITTED,
            request_timeout=timeout,
        )
        ends = {(tp.topic, tp.partition): f.result(timeout=2 * timeout).offset for tp, f in futures.items()}
        return {k: (offset, ends.get(k, -1)) for k, offset in committed.items()}

    return read


def watch_group(
    bootstrap: str, group: str, topics: Sequence[str], active: Callable[[], bool], prefix: str = ""
) -> ConsumerLag:
    """Export a consumer group's lag on ``topics`` (without the prefix) from this process's ``/metrics``,
    once ``active()`` (the process holds partitions or has consumed: asking the brokers for a group
    still joining crashed confluent-kafka here, a segmentation fault in one run of three)."""
    read = group_offsets(bootstrap, group, [prefix + t for t in topics])
    lag = ConsumerLag(group, lambda: read() if active() else {}, prefix)
    REGISTRY.register(lag)
    return lag


def exposition(registry: CollectorRegistry = REGISTRY) -> bytes:
    """The registry in Prometheus' text format (what ``/metrics`` serves)."""
    return generate_latest(registry)
