"""The WebSocket hub: a real client on a real server receives the pipeline's signals in order, resumes
without a gap, gets heartbeats; slow clients are dropped without holding anyone up."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import websockets

from mambo.api.auth import Authorizer, KeyStore
from mambo.api.hub import Hub, Subscription
from mambo.api.main import create_app
from mambo.api.service import SignalService
from mambo.schemas.events import AggregatedSignal

from .conftest import MARKETS, LiveServer, Pipeline, api_settings, start_server, stop_server


async def frames_until(ws: Any, stop: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Frames until ``stop(frame)`` is true (that frame included)."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await ws.recv())
            out.append(frame)
            if stop(frame):
                return out


def events(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] == "event"]


@pytest.fixture
def live(service: SignalService) -> Iterator[LiveServer]:
    service.settings = api_settings(ws_buffer=200_000, ws_heartbeat_seconds=0.3)
    service.hub = Hub(buffer=200_000, queue_size=50_000)
    server = start_server(create_app(service, Authorizer(None)), service)
    yield server
    stop_server(server)


def test_subscribe_disconnect_resume_without_a_gap(live: LiveServer, pipeline: Pipeline) -> None:
    published = pipeline.recorded.events
    signals = [e for t, e in published if t == "signals"]
    half = len(published) // 2
    first_half = sum(1 for t, _ in published[:half] if t == "signals")

    async def scenario() -> list[dict[str, Any]]:
        async with websockets.connect(live.ws_url) as ws:
            welcome = json.loads(await ws.recv())
            assert welcome["type"] == "welcome" and welcome["seq"] == 0
            await ws.send(json.dumps({"op": "subscribe", "channels": ["signals"]}))
            await frames_until(ws, lambda f: f["type"] == "subscribed")
            for topic, event in published[:half]:  # the pipeline runs on; the client reads live
                live.publish(topic, event)
            got = await frames_until(
                ws,
                lambda f: f["type"] == "event" and f["data"]["event_id"] == signals[first_half // 2].event_id,
            )
        # disconnected: the pipeline goes on without this client
        for topic, event in published[half:]:
            live.publish(topic, event)
        last_seq = events(got)[-1]["seq"]
        async with websockets.connect(live.ws_url) as ws:
            await ws.recv()  # welcome
            await ws.send(json.dumps({"op": "subscribe", "channels": ["signals"], "resume_from": last_seq}))
            subscribed = json.loads(await ws.recv())
            assert subscribed["type"] == "subscribed"
            assert subscribed["replayed"] == len(signals) - len(events(got))
            rest = await frames_until(ws, lambda f: f.get("data", {}).get("event_id") == signals[-1].event_id)
        return events(got) + events(rest)

    received = asyncio.run(scenario())
    assert [f["data"]["event_id"] for f in received] == [s.event_id for s in signals]
    seqs = [f["seq"] for f in received]
    assert seqs == sorted(set(seqs))  # increasing, no repeats
    assert AggregatedSignal.model_validate(received[0]["data"]) == signals[0]
    assert {f["channel"] for f in received} == {"signals"}


def test_filters_unsubscribe_ping_heartbeat_errors(live: LiveServer, pipeline: Pipeline) -> None:
    rec = pipeline.recorded
    eth_fills = [f for f in rec.of("fills") if f.key == MARKETS[1] and f.strategy == "macd_cross"]
    assert eth_fills

    async def scenario() -> None:
        async with websockets.connect(live.ws_url) as ws:
            await ws.recv()
            sub = {
                "op": "subscribe",
                "channels": ["fills"],
                "symbols": ["ETH/USDT"],
                "strategies": ["macd_cross"],
            }
            await ws.send(json.dumps(sub))
            await frames_until(ws, lambda f: f["type"] == "subscribed")
            for topic, event in rec.events:
                live.publish(topic, event)
            got = await frames_until(
                ws, lambda f: f.get("data", {}).get("event_id") == eth_fills[-1].event_id
            )
            assert [f["data"]["event_id"] for f in events(got)] == [f.event_id for f in eth_fills]
            await ws.send(json.dumps({"op": "ping"}))
            pong = await frames_until(ws, lambda f: f["type"] == "pong")
            assert pong[-1]["seq"] == live.call(lambda: live.service.hub.seq)
            await ws.send(json.dumps({"op": "unsubscribe"}))
            await frames_until(ws, lambda f: f["type"] == "unsubscribed")
            live.publish("fills", eth_fills[0])
            quiet = await frames_until(ws, lambda f: f["type"] == "heartbeat", timeout=3)
            assert events(quiet) == []  # unsubscribed: only the heartbeat came
            for bad, reason in (
                ("not json", "Expecting value"),
                ("[1]", "JSON object"),
                ('{"op": "subscribe", "channels": ["trades"]}', "unknown channels"),
                ('{"op": "subscribe", "channels": []}', "channels is required"),
                ('{"op": "subscribe", "channels": ["fills"], "resume_from": -1}', "resume_from"),
                ('{"op": "fly"}', "unknown op"),
                (b"\x00binary", "text frames"),
            ):
                await ws.send(bad)
                err = await frames_until(ws, lambda f: f["type"] == "error")
                assert reason in err[-1]["reason"]
            await ws.send(json.dumps({"op": "ping"}))  # still connected after the errors
            await frames_until(ws, lambda f: f["type"] == "pong")

    asyncio.run(scenario())


def test_resume_past_the_buffer_reports_the_gap(service: SignalService, pipeline: Pipeline) -> None:
    service.hub = Hub(buffer=10, queue_size=100)
    live = start_server(create_app(service, Authorizer(None)), service)
    try:
        candles = pipeline.recorded.of("md.candles.1s")[:30]

        async def scenario() -> list[dict[str, Any]]:
            for c in candles:
                live.publish("md.candles.1s", c)
            async with websockets.connect(live.ws_url) as ws:
                welcome = json.loads(await ws.recv())
                while welcome["seq"] < 30:  # the publications reached the hub before us? wait for them
                    await asyncio.sleep(0.01)
                    welcome["seq"] = live.call(lambda: live.service.hub.seq)
                await ws.send(json.dumps({"op": "subscribe", "channels": ["candles"], "resume_from": 5}))
                return await frames_until(
                    ws, lambda f: f.get("data", {}).get("event_id") == candles[-1].event_id
                )

        frames = asyncio.run(scenario())
        gap = frames[1]
        fetched = [httpx2.get(live.url + f["path"], params=f["params"]).json() for f in gap["fetch"]]
    finally:
        stop_server(live)
    assert frames[0]["type"] == "subscribed" and frames[0]["replayed"] == 10
    assert (gap["type"], gap["from_seq"], gap["to_seq"], gap["resume_from"], gap["first_available"]) == (
        "gap",
        6,
        20,
        5,
        21,
    )
    missed = [c.ts_event for c in candles[5:20]]
    assert gap["start"] <= min(missed) and max(missed) < gap["end"]
    assert [(f["channel"], f["path"]) for f in gap["fetch"]] == [("candles", "/candles")]
    # the REST request the gap names returns the candles it stands for (and ones around it, by time)
    assert {c.event_id for c in candles[5:20]} <= {c["event_id"] for c in fetched[0]["items"]}
    assert [f["data"]["event_id"] for f in events(frames)] == [c.event_id for c in candles[20:]]


def test_websocket_auth(service: SignalService, tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    reader = store.create(["signals:read"])
    analyst = store.create(["analytics:read"])
    live = start_server(create_app(service, store), service)

    async def attempt(first: dict[str, Any] | None, headers: dict[str, str] | None = None) -> tuple[Any, Any]:
        async with websockets.connect(live.ws_url, additional_headers=headers) as ws:
            if first is not None:
                await ws.send(json.dumps(first))
            frame = json.loads(await ws.recv())
            if frame["type"] == "welcome":
                return frame["type"], None
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            return frame["reason"], ws.close_code

    try:
        assert asyncio.run(attempt({"op": "auth", "api_key": reader})) == ("welcome", None)
        assert asyncio.run(attempt(None, {"X-API-Key": reader})) == ("welcome", None)
        assert asyncio.run(attempt({"op": "auth", "api_key": reader + "x"})) == ("invalid API key", 4401)
        reason, code = asyncio.run(attempt({"op": "subscribe", "channels": ["signals"]}))
        assert code == 4401 and "auth" in reason
        reason, code = asyncio.run(attempt({"op": "auth", "api_key": analyst}))
        assert code == 4403 and "signals:read" in reason
    finally:
        stop_server(live)


def test_slow_client_reads_on_from_the_buffer_and_nobody_waits(pipeline: Pipeline) -> None:
    """Hub level: a client that reads nothing while more frames come than its queue holds is not
    dropped: it falls back to the shared buffer and, once it reads, gets every frame in order, then is
    live again. The others get everything as it comes, and publish() returned every time without
    waiting (it is synchronous: it cannot await a client)."""

    async def scenario() -> None:
        hub = Hub(buffer=1000, queue_size=20)
        slow, fast = hub.connect(), hub.connect()
        for c in (slow, fast):
            hub.subscribe(c, Subscription(frozenset({"candles"})))
        candles = pipeline.recorded.of("md.candles.1s")[:100]
        received = []
        for c in candles:
            hub.publish("md.candles.1s", c)
            while not fast.queue.empty():  # the fast client keeps up
                received.append(json.loads(fast.queue.get_nowait())["data"]["event_id"])
        assert received == [c.event_id for c in candles]
        assert slow.cursor == 21 and slow.queue.qsize() == 20  # the 21st did not fit: from the buffer
        frames = [slow.queue.get_nowait() for _ in range(20)]
        while slow.cursor is not None:
            frames += [f for f in hub.catch_up(slow, 7) if isinstance(f, str)]
        assert [json.loads(f)["data"]["event_id"] for f in frames] == [c.event_id for c in candles]
        hub.publish("md.candles.1s", candles[0])
        assert slow.queue.qsize() == 1  # live again
        assert hub.dropped_clients == 0 and not slow.dropped

    asyncio.run(scenario())


def test_subscription_matching() -> None:
    sub = Subscription.parse(
        {
            "channels": ["signals.raw", "fills"],
            "symbols": ["binance:BTC/USDT", "ETH/USDT"],
            "strategies": ["sma_cross"],
        }
    )
    from mambo.api.hub import HubMessage

    def msg(channel: str, key: str, strategy: str = "") -> HubMessage:
        return HubMessage(1, channel, key, key.partition(":")[2], strategy, "")

    assert sub.matches(msg("fills", "binance:BTC/USDT", "sma_cross"))
    assert sub.matches(msg("fills", "binanceusdm:ETH/USDT", "sma_cross"))  # a bare symbol: any venue
    assert not sub.matches(msg("fills", "binance:BTC/USDT", "macd_cross"))
    assert not sub.matches(msg("fills", "binanceusdm:BTC/USDT:USDT", "sma_cross"))
    assert not sub.matches(msg("candles", "binance:BTC/USDT"))
    everything = Subscription.parse({"channels": ["signals"]})
    assert everything.matches(msg("signals", "kraken:XBT/EUR"))
    with pytest.raises(ValueError, match="list"):
        Subscription.parse({"channels": "signals"})
