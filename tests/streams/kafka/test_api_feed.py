"""The API's Kafka live feed against the real broker: events published with the project's producer
reach a real WebSocket client of a real uvicorn server, in order, within a second; a malformed message
is logged with its origin and skipped; what was on the topic before the API started is not replayed;
the feed stops with the server. About 3 s (call 1.5 s, teardown 0.7 s; plus the session broker)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest
import structlog
import uvicorn
import websockets
from clickhouse_connect.driver.client import Client
from confluent_kafka import Producer

from mambo.api.auth import Authorizer
from mambo.api.kafka_feed import FEED_TOPICS, KafkaFeed
from mambo.api.main import create_app
from mambo.api.service import SignalService
from mambo.commands.api import UVICORN
from mambo.schemas.events import AggregatedSignal, make_id
from mambo.schemas.topics import SIGNALS, candle_topic
from mambo.settings import ApiSettings
from mambo.streams.kafka.broker import free_port
from mambo.streams.kafka.codec import headers_for
from mambo.streams.kafka.producer import KafkaPublisher

pytestmark = pytest.mark.kafka

KEY = "binance:BTC/USDT"


def signal(i: int, t0: int) -> AggregatedSignal:
    ts = t0 + i * 1_000_000_000
    return AggregatedSignal(
        event_id=make_id("feed-test", KEY, ts),
        ts_event=ts,
        ts_init=ts,
        exchange="binance",
        symbol="BTC/USDT",
        timeframe="1s",
        side="buy" if i % 2 == 0 else "sell",
        score=0.5 if i % 2 == 0 else -0.25,
        confidence=0.75,
        price=97_000.5 + i,
        weights={"sma_cross": 0.6, "rsi_reversion": 0.4},
        contributions={"sma_cross": 0.3, "rsi_reversion": 0.2},
        lead_strategy="sma_cross",
    )


def test_feed_topics_are_the_served_channels() -> None:
    assert {"signals", "signals.raw", "indicators", "orders", "fills", "positions", "equity"} <= set(
        FEED_TOPICS
    )
    assert candle_topic("1m") in FEED_TOPICS
    assert not {"md.trades", "md.quotes", "signals.dlq"} & set(FEED_TOPICS)


def test_published_signals_reach_a_websocket_client_in_order(
    bootstrap: str, kafka_prefix: str, clickhouse_client: Client, clickhouse_db: str
) -> None:
    service = SignalService(clickhouse_client, clickhouse_db, ApiSettings(auth="open"))
    feed = KafkaFeed(bootstrap, service.on_event_threadsafe, prefix=kafka_prefix)
    app = create_app(service, Authorizer(None), feed)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **UVICORN))
    thread = threading.Thread(target=server.run, daemon=True)
    t0 = time.time_ns()
    sent = [signal(i, t0) for i in range(5)]

    # producers made before the clock starts (an idempotent producer first asks for its id)
    raw = Producer({"bootstrap.servers": bootstrap, "log_level": 3})
    pub = KafkaPublisher(bootstrap, kafka_prefix)
    # history: on the topic before the API starts, so never a live frame (the feed starts at the end)
    pub.publish(SIGNALS, signal(-1, t0))
    pub.flush()

    async def scenario() -> tuple[list[dict[str, Any]], float]:
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
            assert json.loads(await ws.recv())["type"] == "welcome"
            await ws.send(json.dumps({"op": "subscribe", "channels": ["signals"]}))
            assert json.loads(await ws.recv())["type"] == "subscribed"
            # a malformed message first, on the same key (so the same partition): the good ones after
            # it must still come through
            raw.produce(
                kafka_prefix + SIGNALS.name,
                b'{"not": "a signal"',
                KEY.encode(),
                headers=headers_for(AggregatedSignal),
            )
            raw.flush(10)
            start = time.monotonic()
            for s in sent:
                pub.publish(SIGNALS, s)
            pub.flush()
            got: list[dict[str, Any]] = []
            async with asyncio.timeout(5):
                while len(got) < len(sent):
                    frame = json.loads(await ws.recv())
                    if frame["type"] == "event":
                        got.append(frame)
            return got, time.monotonic() - start

    with structlog.testing.capture_logs() as logs:
        thread.start()
        try:
            deadline = time.monotonic() + 10
            while not server.started:
                assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
                time.sleep(0.02)
            assert feed.ready.wait(15), "the feed got no partitions"
            got, elapsed = asyncio.run(scenario())
        finally:
            pub.close()
            server.should_exit = True
            thread.join(10)

    assert [AggregatedSignal.model_validate(f["data"]) for f in got] == sent
    assert {f["channel"] for f in got} == {"signals"}
    assert elapsed < 1.0, f"{elapsed:.3f} s from publish to the last frame"
    assert feed.delivered == len(sent) and feed.skipped == 1
    skipped = [e for e in logs if e["event"] == "kafka feed skipped an undecodable message"]
    assert len(skipped) == 1
    assert skipped[0]["topic"] == SIGNALS.name and skipped[0]["offset"] == 1  # after the history one
    assert isinstance(skipped[0]["partition"], int)
    assert skipped[0]["reason"].startswith("not a AggregatedSignal: message: Invalid JSON")
    # the live view follows the feed: the latest signal comes from memory
    assert service.live and service.latest_signals() == [sent[-1]]
    assert not feed.running  # stopped with the server
