"""The Kafka runtime against the real broker: parity with the in-process pipeline, dead letters.

Cost: ~25 s (the whole bundled recording, 69,808 trades of 4 markets, through the broker twice)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson
import pandas as pd
import pytest
from clickhouse_connect.driver.client import Client

from mambo.connectors.clickhouse import ClickHouseSink, ensure_schema
from mambo.connectors.replay import load_trades
from mambo.core.control import expand
from mambo.core.stages import Account
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import ControlCommand, Event, Quote
from mambo.schemas.topics import ACCOUNT_FEED, CONTROL, FILLS, ORDERS, REJECTIONS, TABLES, TRADES
from mambo.streams.embedded import EmbeddedRuntime, SinkObserver
from mambo.streams.kafka.producer import KafkaPublisher
from mambo.streams.kafka.replay import publish_recording
from mambo.streams.kafka.sink import KafkaSink
from mambo.streams.kafka.worker import Worker
from mambo.streams.markets import MarketPipelines

from .conftest import MARKETS, engine_config, notify_stages, read_topic

pytestmark = pytest.mark.kafka
SLICE = 2_000


@pytest.fixture(scope="module")
def recording() -> TradeBatch:
    batch, _ = load_trades()
    return batch


def reference(
    config: Sequence[Account],
    batch: TradeBatch,
    sink: ClickHouseSink | None = None,
    watermarks: bool = False,
    notify: bool = False,
    commands: Sequence[tuple[int, ControlCommand]] = (),
) -> list[tuple[str, Any]]:
    """Every event the market and account stages publish for the recording, in one process, no
    Kafka (the account feed looped back, and left out: its watermarks depend on the batching).
    ``watermarks``: after each slice every market has come that far, as ``mambo kafka replay`` says.
    ``notify``: with the notifications outbox, as ``mambo worker`` runs it. ``commands``: (i, command)
    given before the i-th slice, in line in each market of the tests' account (as ``publish_control``
    puts them)."""
    out: list[tuple[str, Any]] = []
    observer = SinkObserver(sink) if sink is not None else None

    def emit(topic: str, event: Any) -> None:
        if topic == ACCOUNT_FEED.name:
            return
        out.append((topic, event))
        if observer is not None:
            observer(topic, event)

    mp = MarketPipelines(config, emit, loopback=True, extra=notify_stages() if notify else None)
    for i, start in enumerate(range(0, len(batch), SLICE)):
        for _, cmd in (c for c in commands if c[0] == i):
            if observer is not None:
                observer(CONTROL.name, cmd)
            mp.ingest_control(expand(cmd, list(MARKETS)))
        piece = batch.slice(start, start + SLICE)
        if observer is not None:
            observer(TRADES.name, piece)
        mp.ingest_trades(piece)
        if watermarks and len(piece):
            mp.advance([(k, int(piece.ts[-1]), piece.ts_init) for k in batch.keys])
    if sink is not None:
        sink.flush()
    return out


def of(events: list[tuple[str, Any]], topic: str) -> list[Event]:
    return sorted((e for t, e in events if t == topic), key=lambda e: e.event_id)


def run_kafka(
    bootstrap: str, prefix: str, batches: list[TradeBatch] | None = None, raw: list[bytes] = ()
) -> Worker:
    """Publish, then run one worker until the input is drained; the worker."""
    with KafkaPublisher(bootstrap, prefix) as pub:
        for b in batches or []:
            pub.publish_trades(b)
    worker = Worker(bootstrap, engine_config(), prefix=prefix, batch_size=5_000)
    worker.run(idle_exit=3.0)
    return worker


def test_the_reference_is_the_embedded_runtime(recording: TradeBatch) -> None:
    """The stage groups in one process are the embedded runtime to the event (the account over the
    four markets, its limits binding: tests/streams/test_account_stage.py interleaves them more)."""
    config = engine_config()
    rt = EmbeddedRuntime(config)
    got: list[tuple[str, Any]] = []
    rt.observe(lambda t, e: got.append((t, e)) if t not in (TRADES.name, ACCOUNT_FEED.name) else None)
    for start in range(0, len(recording), SLICE):
        rt.ingest_trades(recording.slice(start, start + SLICE))
    ref = reference(config, recording)
    assert len(of(ref, ORDERS.name)) > 10
    assert "max_open_positions" in {r.rule for r in of(ref, REJECTIONS.name)}
    for topic in {t for t, _ in got} | {t for t, _ in ref}:
        assert of(got, topic) == of(ref, topic), topic


def test_kafka_gives_the_same_orders_fills_and_clickhouse_rows(
    bootstrap: str, kafka_prefix: str, recording: TradeBatch, clickhouse_client: Client, clickhouse_db: str
) -> None:
    config = engine_config()
    ref_db = clickhouse_db + "_ref"
    ensure_schema(clickhouse_client, ref_db)
    ref = reference(config, recording, ClickHouseSink(clickhouse_client, ref_db))

    slices = [recording.slice(s, s + SLICE) for s in range(0, len(recording), SLICE)]
    worker = run_kafka(bootstrap, kafka_prefix, slices)
    assert worker.processed == len(recording)

    for topic in (ORDERS.name, FILLS.name):
        got = sorted(read_topic(bootstrap, topic, kafka_prefix), key=lambda e: e.event_id)
        assert got == of(ref, topic), topic
    assert len(of(ref, FILLS.name)) > 50
    counts = Counter(t for t, _ in ref)
    for topic, n in counts.items():
        assert len(read_topic(bootstrap, topic, kafka_prefix)) == n, topic

    sink = KafkaSink(bootstrap, ClickHouseSink(clickhouse_client, clickhouse_db), prefix=kafka_prefix)
    sink.run(idle_exit=3.0)
    try:
        for table in TABLES:
            sql = f"SELECT * FROM {{db:Identifier}}.{table} FINAL ORDER BY event_id"
            a = clickhouse_client.query_df(sql, parameters={"db": clickhouse_db})
            b = clickhouse_client.query_df(sql, parameters={"db": ref_db})
            pd.testing.assert_frame_equal(a, b, obj=table)
        n_trades = clickhouse_client.command(f"SELECT count() FROM `{clickhouse_db}`.trades FINAL")
        assert n_trades == len(recording)
    finally:
        clickhouse_client.command(f"DROP DATABASE IF EXISTS `{ref_db}`")


def malformed(i: int) -> bytes | None:
    """Ten kinds of bad trade message: undecodable ones, and decodable ones with invalid values."""
    good = {
        "event_id": "x",
        "ts_event": 1723161000000000000 + i,
        "ts_init": 0,
        "exchange": "binance",
        "symbol": "BTC/USDT",
        "trade_id": f"bad{i}",
        "price": 60000.0,
        "qty": 0.1,
        "side": "buy",
    }
    kind = i % 10
    if kind == 0:
        return b"\xff\xfe not json"
    if kind == 1:
        return b"[1, 2, 3]"
    if kind == 2:
        return None
    if kind == 3:
        return orjson.dumps({k: v for k, v in good.items() if k != "price"})
    if kind == 4:
        return orjson.dumps({**good, "ts_event": "yesterday"})
    if kind == 5:
        return orjson.dumps({**good, "side": "long"})
    if kind == 6:
        return orjson.dumps({**good, "colour": "red"})
    if kind == 7:  # decodes, then fails validation
        return orjson.dumps({**good, "price": -1.0})
    if kind == 8:
        return orjson.dumps({**good, "qty": 0})
    return orjson.dumps({**good, "exchange": "nowhere"})  # an unknown market


def test_a_thousand_malformed_messages_land_in_dead_letters_and_the_rest_is_processed(
    bootstrap: str, kafka_prefix: str, recording: TradeBatch, clickhouse_client: Client, clickhouse_db: str
) -> None:
    config = engine_config()
    ref = reference(config, recording)
    known = list(recording.keys)
    slices = [recording.slice(s, s + SLICE) for s in range(0, len(recording), SLICE)]
    headers = [("mambo-schema", b"1"), ("mambo-type", b"Trade")]
    sent_bad = 0
    with KafkaPublisher(bootstrap, kafka_prefix) as pub:
        for piece in slices:
            pub.publish_trades(piece)
            for j in range(28):  # 1,000 bad messages, spread over the stream and every market's partition
                if sent_bad < 980:
                    key = known[j % len(known)].encode()
                    pub._producer.produce(
                        kafka_prefix + TRADES.name, malformed(sent_bad), key, headers=headers
                    )
                    sent_bad += 1
        for j in range(20):  # and the sink's side: a bad quote and a quote of a newer schema version
            value = b"{}" if j % 2 else Quote.model_construct().model_dump_json().encode()
            version = b"1" if j % 2 else b"99"
            pub._producer.produce(
                kafka_prefix + "md.quotes", value, b"k", headers=[("mambo-schema", version)]
            )
            sent_bad += 1
    assert sent_bad == 1_000
    worker = Worker(bootstrap, config, known_markets=known, prefix=kafka_prefix, batch_size=5_000)
    worker.run(idle_exit=3.0)
    assert worker.processed == len(recording)
    for topic in (ORDERS.name, FILLS.name):  # the rest is processed exactly as without the bad input
        got = sorted(read_topic(bootstrap, topic, kafka_prefix), key=lambda e: e.event_id)
        assert got == of(ref, topic), topic

    ch = ClickHouseSink(clickhouse_client, clickhouse_db)
    KafkaSink(bootstrap, ch, prefix=kafka_prefix, known_markets=known).run(idle_exit=3.0)
    trade_letters = read_topic(bootstrap, "md.trades.dlq", kafka_prefix)
    quote_letters = read_topic(bootstrap, "md.quotes.dlq", kafka_prefix)
    assert len(trade_letters) == 980 and len(quote_letters) == 20
    for d in trade_letters + quote_letters:
        assert d.reason and d.partition >= 0 and d.offset >= 0 and d.topic in ("md.trades", "md.quotes")
    reasons = Counter(d.reason.split(":")[0] for d in trade_letters)
    assert reasons["not JSON"] == 98 and reasons["unknown market binance"] == 0
    assert sum("unknown market nowhere:BTC/USDT" in d.reason for d in trade_letters) == 98
    assert sum("price must be a finite number > 0" in d.reason for d in trade_letters) == 98
    assert sum("qty must be a finite number > 0" in d.reason for d in trade_letters) == 98
    assert sum("schema version" in d.reason for d in quote_letters) == 10
    rows = clickhouse_client.command(f"SELECT count() FROM `{clickhouse_db}`.dead_letters FINAL")
    assert rows == 1_000
    assert clickhouse_client.command(f"SELECT count() FROM `{clickhouse_db}`.trades FINAL") == len(recording)


def test_a_replay_s_watermarks_let_an_account_trade_on_after_a_market_went_quiet(
    bootstrap: str, kafka_prefix: str, recording: TradeBatch
) -> None:
    """The recording's futures markets end at 344 s, its spot markets at 650 s: with nothing but the
    markets' own trades, the account (waiting for every market) would take no spot step after 344 s.
    ``mambo kafka replay`` says after each slice that every market has come that far (a watermark
    record on md.trades), as the embedded replay does: the same orders and fills on Kafka as
    embedded, and the spot markets traded to the end."""
    config = engine_config()
    rt = EmbeddedRuntime(config, known_markets=recording.keys)
    ref: list[tuple[str, Any]] = []
    rt.observe(lambda t, e: ref.append((t, e)) if t not in (TRADES.name, ACCOUNT_FEED.name) else None)
    for start in range(0, len(recording), SLICE):
        piece = recording.slice(start, start + SLICE)
        rt.ingest_trades(piece)
        rt.close_candles(int(piece.ts[-1]), 0)  # as run_replay does
    quiet = max(int(recording.ts[recording.market == c].max()) for c in (2, 3))  # the futures' last
    late = [o for o in of(ref, ORDERS.name) if o.ts_event > quiet]
    assert late and {o.exchange for o in late} == {"binance"}, "spot traded after the futures went quiet"

    n = publish_recording(bootstrap, prefix=kafka_prefix, quotes=None)
    assert n == len(recording)
    worker = Worker(bootstrap, config, prefix=kafka_prefix, batch_size=5_000)
    worker.run(idle_exit=3.0)
    assert worker.processed == len(recording)
    for topic in (ORDERS.name, FILLS.name):
        got = sorted(read_topic(bootstrap, topic, kafka_prefix), key=lambda e: e.event_id)
        want = of(ref, topic)
        assert [e.model_dump(exclude={"ts_init"}) for e in got] == [
            e.model_dump(exclude={"ts_init"}) for e in want
        ], topic
    assert len(read_topic(bootstrap, TRADES.name, kafka_prefix)) == len(recording)  # beside the marks
