"""The metrics: each counter moves by exactly what the bus carried (counted here independently from
an observer's recording), the gauges hold the last account state, latencies are measured, the health
server and the API serve an exposition that ``promtool check metrics`` accepts, and the lag estimate
matches hand-worked cases."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import REGISTRY

from mambo import metrics
from mambo.connectors.replay import DEMO_TRADES, Recording, load_trades, replay
from mambo.core.market import Market
from mambo.core.risk import RiskConfig
from mambo.core.stages import EngineConfig, Stage
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import (
    AggregatedSignal,
    Candle,
    EquitySnapshot,
    Fill,
    Order,
    Position,
    RiskRejection,
    Signal,
    split_key,
)
from mambo.streams.embedded import EmbeddedRuntime
from mambo.streams.health import HealthServer
from tests.ops import installed, promtool_check

MARKETS = ("binance:BTC/USDT", "binance:ETH/USDT")
STRATEGIES = ("sma_cross", "rsi_reversion", "macd_cross", "bollinger_breakout")


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.trades: Counter[str] = Counter()

    def __call__(self, topic: str, payload: Any) -> None:
        if isinstance(payload, TradeBatch):
            self.trades[topic] += len(payload)
        else:
            self.events.append((topic, payload))

    def of(self, kind: type) -> list[Any]:
        return [e for _, e in self.events if isinstance(e, kind)]


def run(account: str, risk: RiskConfig, metrics_on: bool = True) -> tuple[EmbeddedRuntime, Recorder]:
    trades, _ = load_trades(DEMO_TRADES, set(MARKETS))
    config = EngineConfig(
        timeframes=("1s",), trading_timeframe="1s", strategies=STRATEGIES, account=account, risk=risk
    )
    markets = {k: Market.default(*split_key(k)) for k in MARKETS}
    rt = EmbeddedRuntime(config, markets, known_markets=list(MARKETS), metrics=metrics_on)
    rec = Recorder()
    rt.observe(rec)
    for batch, _ in replay(Recording(trades, []), 2_000):
        rt.ingest_trades(replace(batch, ts_init=time.time_ns()))  # as run_replay stamps it
    return rt, rec


@pytest.fixture(scope="module")
def trading_run() -> Iterator[tuple[EmbeddedRuntime, Recorder, dict[str, float]]]:
    """One run with a kill switch tight enough to trip, and the metrics' moves over it."""
    before = {s.name + repr(sorted(s.labels.items())): s.value for m in REGISTRY.collect() for s in m.samples}
    rt, rec = run("ops-a", RiskConfig(max_drawdown=0.0005, max_open_positions=1))
    after = {s.name + repr(sorted(s.labels.items())): s.value for m in REGISTRY.collect() for s in m.samples}
    delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
    yield rt, rec, delta


def moved(delta: dict[str, float], name: str, **labels: str) -> float:
    return delta.get(name + repr(sorted(labels.items())), 0.0)


def test_messages_per_topic_are_what_the_bus_carried(trading_run: Any) -> None:
    _, rec, delta = trading_run
    expected: Counter[str] = Counter(rec.trades)
    for topic, _ in rec.events:
        expected[topic] += 1
    assert expected["md.trades"] > 10_000 and expected["fills"] > 0
    for topic, n in expected.items():
        assert moved(delta, "mambo_messages_total", topic=topic) == n, topic


def test_orders_fills_rejections_and_signals_by_their_labels(trading_run: Any) -> None:
    _, rec, delta = trading_run
    orders = Counter((o.account, o.strategy, o.status) for o in rec.of(Order))
    fills = Counter((f.account, f.strategy, f.side) for f in rec.of(Fill))
    rejections = Counter((r.account, r.strategy, r.rule) for r in rec.of(RiskRejection))
    signals = Counter((s.strategy, s.side) for s in rec.of(Signal) if s.side != "hold")
    assert orders and fills and signals
    assert {rule for _, _, rule in rejections} >= {"max_drawdown"}, rejections  # the kill switch tripped
    for (account, strategy, status), n in orders.items():
        assert moved(delta, "mambo_orders_total", account=account, strategy=strategy, status=status) == n
    for (account, strategy, side), n in fills.items():
        assert moved(delta, "mambo_fills_total", account=account, strategy=strategy, side=side) == n
    for (account, strategy, rule), n in rejections.items():
        assert moved(delta, "mambo_risk_rejections_total", account=account, strategy=strategy, rule=rule) == n
    for (strategy, side), n in signals.items():
        assert moved(delta, "mambo_signals_total", strategy=strategy, side=side) == n
    assert not any(moved(delta, "mambo_signals_total", strategy=s, side="hold") for s in STRATEGIES)
    total = sum(v for k, v in delta.items() if k.startswith("mambo_fills_total["))
    assert total == len(rec.of(Fill))  # nothing counted that the bus did not carry


def test_account_gauges_hold_the_last_state(trading_run: Any) -> None:
    _, rec, _ = trading_run
    last = rec.of(EquitySnapshot)[-1]
    assert value("mambo_equity", account="ops-a") == pytest.approx(float(last.equity))
    assert value("mambo_drawdown_ratio", account="ops-a") == pytest.approx(last.drawdown)
    assert value("mambo_exposure", account="ops-a") == pytest.approx(float(last.positions_value))
    held = {p.key: p.qty for p in rec.of(Position)}
    assert value("mambo_open_positions", account="ops-a") == sum(1 for q in held.values() if q != 0)
    assert value("mambo_kill_switch_halted", account="ops-a") == 1.0


def test_latency_histograms_count_each_event_once(trading_run: Any) -> None:
    _, rec, delta = trading_run
    kinds = (("candle", Candle), ("signal", AggregatedSignal), ("fill", Fill))
    n = {kind: len(rec.of(cls)) for kind, cls in kinds}
    for stage, count in n.items():
        assert moved(delta, "mambo_processing_latency_seconds_count", stage=stage) == count, stage
        assert moved(delta, "mambo_processing_latency_seconds_sum", stage=stage) > 0
    new_orders = [o for o in rec.of(Order) if o.status == "new"]
    assert moved(delta, "mambo_processing_latency_seconds_count", stage="order") == len(new_orders)
    # every combined signal follows its candle; every new order follows the combined signal of its bar
    assert moved(delta, "mambo_latency_seconds_count", path="candle_to_signal") == n["signal"]
    assert moved(delta, "mambo_latency_seconds_count", path="signal_to_order") == len(new_orders)
    # order -> fill in exchange time: the fill's ts_event minus its order's
    sent = {o.client_order_id: o.ts_event for o in new_orders}
    waits = [(f.ts_event - sent[f.client_order_id]) / 1e9 for f in rec.of(Fill) if f.client_order_id in sent]
    assert moved(delta, "mambo_order_to_fill_seconds_count", account="ops-a") == len(waits)
    assert moved(delta, "mambo_order_to_fill_seconds_sum", account="ops-a") == pytest.approx(sum(waits))


def test_metrics_off_moves_nothing() -> None:
    before = value("mambo_messages_total", topic="md.trades")
    _, rec = run("ops-off", RiskConfig(), metrics_on=False)
    assert rec.trades["md.trades"] > 0
    assert value("mambo_messages_total", topic="md.trades") == before
    assert value("mambo_equity", account="ops-off") == 0.0


class Boom(Stage):
    name = "boom"
    inputs = ("md.candles.1s",)

    def handle(self, topic: str, payload: Any) -> list[tuple[str, Any]]:
        raise ValueError(f"bad candle {payload.event_id}")  # an id in the text: not in the label


def test_dead_letters_by_topic_and_reason_class() -> None:
    trades, _ = load_trades(DEMO_TRADES, set(MARKETS))
    config = EngineConfig(timeframes=("1s",), trading_timeframe="1s", account="ops-dlq")
    rt = EmbeddedRuntime(config, {}, known_markets=[MARKETS[0]])  # the other market is unknown
    rt.bus.add_stage(Boom())
    rec = Recorder()
    rt.observe(rec)
    before_boom = value("mambo_dead_letters_total", topic="md.candles.1s", reason="boom: ValueError")
    before_unknown = value("mambo_dead_letters_total", topic="md.trades", reason="unknown market binance")
    rt.ingest_trades(trades.slice(0, 5_000))
    letters = Counter((t, d.reason.split(" ")[0]) for t, d in rec.events if t.endswith(".dlq"))
    boom = sum(n for (t, r), n in letters.items() if t == "md.candles.1s.dlq")
    unknown = sum(n for (t, r), n in letters.items() if t == "md.trades.dlq")
    assert boom > 0 and unknown > 0
    after_boom = value("mambo_dead_letters_total", topic="md.candles.1s", reason="boom: ValueError")
    after_unknown = value("mambo_dead_letters_total", topic="md.trades", reason="unknown market binance")
    assert after_boom - before_boom == boom
    assert after_unknown - before_unknown == unknown


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        ("risk: ValueError('x 3')", "risk: ValueError"),
        ("execution: decimal.InvalidOperation([<class 'x'>])", "execution: decimal.InvalidOperation"),
        ("unknown market binance:XRP/USDT", "unknown market binance"),
        ("price must be a finite number > 0, got nan", "price must be a finite number"),
        ("123 !!", "other"),
        ("", "other"),
    ],
)
def test_reason_class(reason: str, label: str) -> None:
    assert metrics.reason_class(reason) == label


def test_lag_seconds_interpolate_between_end_offset_samples() -> None:
    """Hand-worked: the end was at 100 at t=10 s and at 200 at t=20 s; a consumer at 150 is where the
    end was at t=15 s, so at t=30 s it is 15 s late; at the end it is not late; behind the oldest
    sample, it is at least that sample's age."""
    clock = metrics.LagClock()
    tp = ("md.trades", 0)
    clock.sample(tp, 100, 10.0)
    clock.sample(tp, 200, 20.0)
    clock.sample(tp, 200, 25.0)  # no new messages: the end's time stays 20 s
    assert clock.seconds(tp, 150, 30.0) == pytest.approx(15.0)
    assert clock.seconds(tp, 100, 30.0) == pytest.approx(20.0)
    assert clock.seconds(tp, 200, 30.0) == 0.0
    assert clock.seconds(tp, 50, 30.0) == pytest.approx(20.0)
    assert clock.seconds(("other", 0), 5, 30.0) == 0.0


def test_group_lag_per_partition_from_committed_and_end_offsets() -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    parts: dict[tuple[str, int], tuple[int, int]] = {
        ("p.md.trades", 0): (40, 100),  # committed 40, end 100
        ("p.md.trades", 1): (7, 7),
        ("p.md.trades", 2): (-1001, 50),  # nothing committed: not told
    }
    fail = [False]

    def offsets() -> dict[tuple[str, int], tuple[int, int]]:
        if fail[0]:
            raise RuntimeError("brokers away")
        return parts

    registry.register(metrics.ConsumerLag("mambo-sink", offsets, prefix="p."))
    labels = {"group": "mambo-sink", "topic": "md.trades"}
    assert registry.get_sample_value("mambo_consumer_lag_messages", labels | {"partition": "0"}) == 60
    assert registry.get_sample_value("mambo_consumer_lag_messages", labels | {"partition": "1"}) == 0
    assert registry.get_sample_value("mambo_consumer_lag_seconds", labels | {"partition": "1"}) == 0
    assert registry.get_sample_value("mambo_consumer_lag_messages", labels | {"partition": "2"}) is None
    fail[0] = True  # no series, no error
    assert registry.get_sample_value("mambo_consumer_lag_messages", labels | {"partition": "0"}) is None


def test_health_server_metrics_pass_promtool(trading_run: Any) -> None:
    server = HealthServer(0, host="127.0.0.1").start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as answer:
            assert answer.headers["Content-Type"].startswith("text/plain; version=")
            body = answer.read()
    finally:
        server.stop()
    text = body.decode()
    for name in ("mambo_orders_total", "mambo_equity", "mambo_processing_latency_seconds_bucket"):
        assert f"\n{name}{{" in text, name
    assert "_created" not in text
    promtool_check(body)


def test_promtool_catches_a_bad_exposition() -> None:
    """The check can fail: a counter without the _total suffix."""
    bad = b"# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests 1\n"
    out = subprocess.run(
        [installed("promtool"), "check", "metrics"], input=bad, capture_output=True, timeout=30
    )
    assert out.returncode != 0
