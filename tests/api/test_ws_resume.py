"""WebSocket resume past the client's queue, and the close handshake, with a real client (``websockets``)
on a real server (uvicorn on loopback), at the API's default sizes (ws_queue 1,000, ws_buffer 10,000).

Before the fix a resume pushed the whole replay into the client's queue: a client away for more than
``ws_queue`` matching frames was dropped as a slow consumer the moment it resumed, and every reconnect
ended the same way (issue 12 #9). The hub-level property test drives random interleavings of
publications, resumes, slow reads and drops against a model of what a client must receive.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from hypothesis import event as note_case
from hypothesis import given, settings
from hypothesis import strategies as st

from mambo.api.auth import Authorizer
from mambo.api.hub import Gap, Hub, Subscription, channel_of
from mambo.api.main import create_app
from mambo.api.service import SignalService
from mambo.schemas.events import Candle
from mambo.settings import ApiSettings

from .conftest import LiveServer, Pipeline, api_settings, start_server, stop_server

DEFAULTS = ApiSettings()


@pytest.fixture
def live(service: SignalService) -> Iterator[LiveServer]:
    """The API at its default WebSocket sizes."""
    service.settings = api_settings()
    service.hub = Hub(DEFAULTS.ws_buffer, DEFAULTS.ws_queue)
    server = start_server(create_app(service, Authorizer(None)), service)
    yield server
    stop_server(server)


def streamed_events(pipeline: Pipeline) -> list[tuple[str, Any]]:
    """The pipeline's events on the topics the hub streams (each gets a ``seq``)."""
    return [(t, e) for t, e in pipeline.recorded.events if channel_of(t) is not None]


def wait_published(live: LiveServer, seq: int) -> None:
    """Until the hub has numbered ``seq`` events (publications reach it on its own loop)."""
    deadline = time.monotonic() + 60  # a failure guard
    while live.call(lambda: live.service.hub.seq) < seq:
        assert time.monotonic() < deadline, "the publications never reached the hub"


async def read_until(ws: Any, done: Any, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Frames until ``done(frames)`` holds; a ``dropped`` frame fails at once."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):  # a failure guard, not a timing
        while not done(out):
            frame = json.loads(await ws.recv())
            assert frame["type"] != "dropped", frame
            out.append(frame)
    return out


async def close_reading(ws: Any) -> list[dict[str, Any]]:
    """Close as the protocol says (keep reading until the close completes); the frames read meanwhile."""
    closing = asyncio.ensure_future(ws.close())
    rest: list[dict[str, Any]] = []
    async with asyncio.timeout(60):
        async for text in ws:
            rest.append(json.loads(text))
        await closing
    return rest


def raw_events(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] == "event"]


def published_until(events: list[tuple[str, Any]], topic: str, count: int) -> int:
    """How many of ``events`` to publish for ``count`` of ``topic`` to be among them."""
    seen = 0
    for i, (t, _) in enumerate(events):
        seen += t == topic
        if seen == count:
            return i + 1
    raise AssertionError(f"fewer than {count} {topic} events")


def test_a_client_away_longer_than_its_queue_resumes_every_frame(
    live: LiveServer, pipeline: Pipeline
) -> None:
    streamed = streamed_events(pipeline)
    raw = [e.event_id for t, e in streamed if t == "signals.raw"]
    live_part = published_until(streamed, "signals.raw", 100)
    away_part = published_until(streamed, "signals.raw", 100 + 3 * DEFAULTS.ws_queue)
    assert away_part < DEFAULTS.ws_buffer  # all it missed is still buffered: no gap here

    async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        async with websockets.connect(live.ws_url) as ws:
            await ws.recv()  # welcome
            await ws.send(json.dumps({"op": "subscribe", "channels": ["signals.raw"]}))
            await read_until(ws, lambda f: f and f[-1]["type"] == "subscribed")
            for topic, event in streamed[:live_part]:
                live.publish(topic, event)
            first = await read_until(ws, lambda f: len(raw_events(f)) == 100)
            await close_reading(ws)
        for topic, event in streamed[live_part:away_part]:  # 3,000 raw signals while it is away
            live.publish(topic, event)
        wait_published(live, away_part)
        async with websockets.connect(live.ws_url) as ws:
            await ws.recv()
            last = raw_events(first)[-1]["seq"]
            await ws.send(json.dumps({"op": "subscribe", "channels": ["signals.raw"], "resume_from": last}))
            rest = await read_until(ws, lambda f: f and f[-1]["type"] == "subscribed")
            for topic, event in streamed[away_part:]:  # the pipeline goes on while it catches up
                live.publish(topic, event)
            rest += await read_until(ws, lambda f: f and f[-1].get("data", {}).get("event_id") == raw[-1])
            stats = live.call(lambda: live.service.hub.stats())
            await close_reading(ws)
        return first + rest, stats

    frames, stats = asyncio.run(scenario())
    subscribed = next(f for f in frames if f["type"] == "subscribed")
    assert subscribed["replayed"] == 3 * DEFAULTS.ws_queue
    received = raw_events(frames)
    assert [f["data"]["event_id"] for f in received] == raw  # every one, in order, once
    seqs = [f["seq"] for f in received]
    assert all(a < b for a, b in itertools.pairwise(seqs))
    assert not [f for f in frames if f["type"] == "gap"]
    assert stats["dropped_clients"] == 0 and stats["catching_up"] == 0  # live again at the end


def test_reconnecting_again_and_again_is_never_dropped(live: LiveServer, pipeline: Pipeline) -> None:
    """Round after round: 1,100 raw signals (more than the queue holds) published while the client is
    away, 1,100 more in one burst once it is back; it reads 200 frames and leaves again. The last round
    reads to the end: every raw signal once, in order, and the client was never dropped."""
    streamed = streamed_events(pipeline)
    raw = [e.event_id for t, e in streamed if t == "signals.raw"]
    marks = [published_until(streamed, "signals.raw", n) for n in range(1_100, len(raw), 1_100)]
    marks = [*marks[: len(marks) // 2 * 2], len(streamed)]  # back, away, back, ..., away, back to the end

    async def scenario() -> list[dict[str, Any]]:
        frames: list[dict[str, Any]] = []
        published = 0
        for away, back in zip([0, *marks[1::2]], marks[::2], strict=False):
            for topic, event in streamed[published:away]:
                live.publish(topic, event)
            wait_published(live, away)
            async with websockets.connect(live.ws_url) as ws:
                await ws.recv()
                sub: dict[str, Any] = {"op": "subscribe", "channels": ["signals.raw"]}
                if raw_events(frames):
                    sub["resume_from"] = raw_events(frames)[-1]["seq"]
                await ws.send(json.dumps(sub))
                frames += await read_until(ws, lambda f: f and f[-1]["type"] == "subscribed")
                for topic, event in streamed[away:back]:  # a burst faster than the socket
                    live.publish(topic, event)
                published = back
                if back == len(streamed):
                    frames += await read_until(
                        ws, lambda f: f and f[-1].get("data", {}).get("event_id") == raw[-1]
                    )
                else:
                    frames += await read_until(ws, lambda f: len(raw_events(f)) >= 200)
                frames += await close_reading(ws)
        return frames

    frames = asyncio.run(scenario())
    assert len([f for f in frames if f["type"] == "subscribed"]) >= 3
    assert not [f for f in frames if f["type"] in ("dropped", "gap")]
    assert [f["data"]["event_id"] for f in raw_events(frames)] == raw
    assert live.call(lambda: live.service.hub.dropped_clients) == 0


def test_a_client_close_completes_with_1000_while_frames_flow(live: LiveServer, pipeline: Pipeline) -> None:
    """The server answers a client's close frame at once: the handshake completes with 1000 both ways
    while events stream, whether the client reads on while closing or unsubscribes first."""
    streamed = streamed_events(pipeline)

    async def close_with(unsubscribe_first: bool) -> tuple[int | None, int | None]:
        async with websockets.connect(live.ws_url) as ws:
            await ws.recv()
            await ws.send(json.dumps({"op": "subscribe", "channels": ["candles", "signals", "signals.raw"]}))
            await read_until(ws, lambda f: f and f[-1]["type"] == "subscribed")
            for topic, event in streamed:
                live.publish(topic, event)
            await read_until(ws, lambda f: len(raw_events(f)) == 50)  # mid-stream
            if unsubscribe_first:
                await ws.send(json.dumps({"op": "unsubscribe"}))
                await read_until(ws, lambda f: f and f[-1]["type"] == "unsubscribed")
                async with asyncio.timeout(60):
                    await ws.close()
            else:
                await close_reading(ws)
            assert ws.protocol.close_rcvd is not None
            return ws.close_code, ws.protocol.close_rcvd.code

    assert asyncio.run(close_with(unsubscribe_first=False)) == (1000, 1000)
    assert asyncio.run(close_with(unsubscribe_first=True)) == (1000, 1000)


# --- the hub against a model, over random interleavings ------------------------------------------------


def candle(i: int, market: str) -> Candle:
    return Candle(
        event_id=f"{market}-{i}",
        ts_event=(i + 1) * 1_000_000_000,
        ts_init=0,
        exchange="binance",
        symbol=market,
        timeframe="1s",
        open_time=i * 1_000_000_000,
        open=1.0,
        high=1.0,
        low=1.0,
        close=1.0,
        volume=1.0,
        trades=1,
    )


ops = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(1, 60)),
        st.tuples(st.just("read"), st.integers(1, 40)),  # the writer's steps: the socket takes that many
        st.tuples(st.just("reconnect"), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(5, 80), st.integers(1, 30), st.integers(1, 64))
def test_hub_resume_delivers_each_wanted_event_once_or_reports_it(
    steps: list[tuple[str, int]], buffer: int, queue: int, scan: int
) -> None:
    """A client on BTC/USDT candles (ETH/USDT ones are published too), reading at random paces, away
    at times and back with ``resume_from`` its last ``seq``: every BTC event after its first
    subscription is delivered exactly once in ``seq`` order or lies in a reported gap; a gap reports
    only events the buffer had evicted, with their times within [start, end); the client is never
    dropped, not even with more than ``queue`` frames unread."""

    async def scenario() -> None:
        hub = Hub(buffer, queue)
        sub = Subscription(frozenset({"candles"}), frozenset({"binance:BTC/USDT"}))
        published: list[Candle] = []
        delivered: list[int] = []
        gaps: list[Gap] = []
        client = hub.connect()
        hub.subscribe(client, sub)
        first_seq = hub.seq + 1
        behind = 0

        def send(steps: int | None) -> None:
            """The client's writer for ``steps`` steps (None: until it has nothing more to send)."""
            while steps is None or steps > 0:
                steps = None if steps is None else steps - 1
                if not client.queue.empty():
                    frame = json.loads(client.queue.get_nowait() or "null")
                    assert frame["type"] == "event"
                    delivered.append(frame["seq"])
                elif client.cursor is not None:
                    for gap_or_frame in hub.catch_up(client, scan):
                        if isinstance(gap_or_frame, Gap):
                            assert gap_or_frame.last_seq < hub.buffer[0].seq  # only what was evicted
                            gaps.append(gap_or_frame)
                        else:
                            delivered.append(json.loads(gap_or_frame)["seq"])
                else:
                    return

        for op, n in steps:
            if op == "publish":
                was_live = client.cursor is None
                for _ in range(n):
                    i = len(published)
                    published.append(candle(i, "BTC/USDT" if i % 3 else "ETH/USDT"))
                    hub.publish("md.candles.1s", published[-1])
                behind += was_live and client.cursor is not None
            elif op == "read":
                send(n)
            else:  # away and back
                hub.disconnect(client)
                client = hub.connect()
                hub.subscribe(client, sub, delivered[-1] if delivered else first_seq - 1)
        send(None)  # the client stays until it has all the hub will still give it
        assert hub.dropped_clients == 0
        note_case(f"gaps: {min(len(gaps), 2)}, fell behind its queue: {behind > 0}")

        wanted = [s for s, c in enumerate(published, 1) if c.symbol == "BTC/USDT" and s >= first_seq]
        assert delivered == sorted(set(delivered))  # in order, none twice
        assert set(delivered) <= set(wanted)
        in_gaps = {s for g in gaps for s in range(g.first_seq, g.last_seq + 1)}
        assert set(wanted) - set(delivered) <= in_gaps and not in_gaps & set(delivered)
        for g in gaps:
            times = [published[s - 1].ts_event for s in range(g.first_seq, g.last_seq + 1)]
            assert g.start is None or g.start <= min(times)
            assert max(times) < g.end

    asyncio.run(scenario())
