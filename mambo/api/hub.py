"""The WebSocket hub: live events fanned out to subscribers, with sequence numbers and resume.

Whoever sees the live stream calls :meth:`Hub.publish` once per ``(topic, event)``: in the embedded
runtime the bus observer (:meth:`mambo.api.service.SignalService.on_event`), in distributed mode a
Kafka consumer thread through :meth:`~mambo.api.service.SignalService.on_event_threadsafe` (it decodes
with the topic registry's models and hands over the same pairs). Publishing never waits on a client:

* each event is serialized **once** into its frame and given the next sequence number (one counter per
  hub: increasing, not contiguous for a client whose filter skips events);
* the frame goes into a bounded replay buffer (``buffer`` frames), so a client that reconnects with
  its last sequence number gets what it missed, then live frames, with nothing lost or repeated;
* and into the bounded queue of every client whose subscriptions match. A client whose queue is full
  (it reads slower than events arrive) is **dropped**: its queue is cleared, it gets a ``dropped``
  frame and the socket is closed; it may reconnect and resume from its last sequence number. Neither
  the pipeline nor the other clients ever wait for it.

The frames are documented in :data:`PROTOCOL` (served in the OpenAPI description).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mambo.schemas.events import Event

__all__ = ["CHANNELS", "PROTOCOL", "Client", "Hub", "HubMessage", "Subscription", "channel_of"]

#: What a client may subscribe to. ``candles`` carries every closed candle of every timeframe.
CHANNELS: tuple[str, ...] = (
    "signals",
    "signals.raw",
    "candles",
    "indicators",
    "orders",
    "fills",
    "positions",
    "equity",
    "risk.rejections",
)
_CHANNEL_SET = frozenset(CHANNELS)

PROTOCOL = (
    """
**WebSocket `/ws`.** JSON text frames both ways.

Client → server (`op`):

* `{"op": "auth", "api_key": "mambo_..."}`: when the server requires keys and the `X-API-Key` header
  was not sent. Nothing else is accepted before it (close code 4401 for a bad key, 4403 without the
  `signals:read` scope).
* `{"op": "subscribe", "channels": ["signals", "fills"], "symbols": ["binance:BTC/USDT"],
  "strategies": ["sma_cross"], "resume_from": 1234}`: `channels` from """
    + ", ".join(CHANNELS)
    + """;
  `symbols` are `exchange:symbol` keys or bare symbols (`BTC/USDT`), empty for all;
  `strategies` filters the events that carry a strategy (signals.raw, orders, fills, risk.rejections),
  the others pass; `resume_from` (optional) is the last `seq` you received: the frames you missed that
  match this subscription are sent first, then live ones.
* `{"op": "unsubscribe", "channels": ["fills"]}`: stop those channels (no `channels`: all).
* `{"op": "ping"}` → `{"type": "pong", "seq": <current>}`.

Server → client (`type`):

* `welcome`: `{"type": "welcome", "epoch": "...", "seq": <current>, "channels": [...],
  "heartbeat_seconds": 15}`. `epoch` changes when the server restarts: sequence numbers of another
  epoch cannot be resumed.
* `subscribed`: `{"type": "subscribed", "channels": [...], "symbols": [...], "strategies": [...],
  "replayed": <frames resent>, "seq": <current>}`.
* `event`: `{"type": "event", "seq": 1235, "channel": "signals", "topic": "signals",
  "key": "binance:BTC/USDT", "data": {...}}` where `data` is the event exactly as the REST API and the
  topic schemas give it (timestamps in integer nanoseconds UTC, money as decimal strings).
* `gap`: `{"type": "gap", "resume_from": 10, "first_available": 500}`: the frames in between are no
  longer buffered; fetch them over REST (e.g. `/signals?start=...`).
* `heartbeat`: `{"type": "heartbeat", "seq": <current>, "ts": <ns>}` when nothing was sent for
  `heartbeat_seconds` (checked every half of it).
* `error`: `{"type": "error", "reason": "..."}` for a bad client frame; the connection stays open.
* `dropped`: `{"type": "dropped", "reason": "slow consumer: ..."}` then close code 4008: the client
  did not keep up. Reconnect and resume from the last `seq` you processed.
"""
)


def channel_of(topic: str) -> str | None:
    """The client channel of a bus topic, or None for topics not streamed (trades, quotes, dlq)."""
    if topic.startswith("md.candles."):
        return "candles"
    return topic if topic in _CHANNEL_SET else None


@dataclass(frozen=True)
class HubMessage:
    """One published event, serialized once: its frame and what filters match on."""

    seq: int
    channel: str
    key: str
    symbol: str
    strategy: str
    frame: str


@dataclass(frozen=True)
class Subscription:
    """A client's filter: channels, and optionally symbols (keys or bare) and strategies."""

    channels: frozenset[str]
    symbols: frozenset[str] = frozenset()
    strategies: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, request: dict[str, Any]) -> Subscription:
        """From a subscribe frame; ValueError with the reason for a bad one."""

        def names(field_name: str) -> frozenset[str]:
            value = request.get(field_name) or []
            if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
                raise ValueError(f"{field_name} must be a list of non-empty strings")
            return frozenset(value)

        channels = names("channels")
        if not channels:
            raise ValueError(f"channels is required: any of {', '.join(CHANNELS)}")
        unknown = channels - _CHANNEL_SET
        if unknown:
            raise ValueError(f"unknown channels {sorted(unknown)}; use {', '.join(CHANNELS)}")
        return cls(channels, names("symbols"), names("strategies"))

    def matches(self, msg: HubMessage) -> bool:
        return (
            msg.channel in self.channels
            and (not self.symbols or msg.key in self.symbols or msg.symbol in self.symbols)
            and (not self.strategies or not msg.strategy or msg.strategy in self.strategies)
        )

    def describe(self) -> dict[str, list[str]]:
        return {
            "channels": sorted(self.channels),
            "symbols": sorted(self.symbols),
            "strategies": sorted(self.strategies),
        }


@dataclass(eq=False)
class Client:
    """One connected subscriber: its subscriptions and its bounded outgoing queue of frames."""

    queue: asyncio.Queue[str | None]
    subscriptions: list[Subscription] = field(default_factory=list)
    dropped: str = ""  # the reason, once dropped
    sent: int = 0
    last_sent: float = field(default_factory=time.monotonic)  # when its writer last sent a frame

    def wants(self, msg: HubMessage) -> bool:
        return any(s.matches(msg) for s in self.subscriptions)

    def unsubscribe(self, channels: Iterable[str] | None) -> None:
        if channels is None:
            self.subscriptions = []
            return
        gone = frozenset(channels)
        kept = [Subscription(s.channels - gone, s.symbols, s.strategies) for s in self.subscriptions]
        self.subscriptions = [s for s in kept if s.channels]


class Hub:
    """Sequence numbers, the replay buffer and the per-client queues (see the module docstring).

    Not thread-safe by design: :meth:`publish` and the client methods run on the event loop that
    serves the WebSocket (:attr:`loop`); other threads hand events over with
    ``loop.call_soon_threadsafe``.
    """

    def __init__(self, buffer: int = 10_000, queue_size: int = 1_000) -> None:
        self.epoch = secrets.token_hex(4)
        self.seq = 0
        self.queue_size = queue_size
        self.buffer: deque[HubMessage] = deque(maxlen=buffer)
        self.clients: set[Client] = set()
        self.published = 0
        self.dropped_clients = 0
        self.loop: asyncio.AbstractEventLoop | None = None

    # --- publishing ---------------------------------------------------------------------------------

    def publish(self, topic: str, event: Event) -> HubMessage | None:
        """Number, buffer and fan out one event; None for a topic that is not streamed."""
        channel = channel_of(topic)
        if channel is None:
            return None
        self.seq += 1
        key = str(getattr(event, "key", ""))
        frame = (
            f'{{"type":"event","seq":{self.seq},"channel":"{channel}","topic":{json.dumps(topic)},'
            f'"key":{json.dumps(key)},"data":{event.model_dump_json()}}}'
        )
        msg = HubMessage(
            self.seq,
            channel,
            key,
            str(getattr(event, "symbol", "")),
            str(getattr(event, "strategy", "")),
            frame,
        )
        self.buffer.append(msg)
        self.published += 1
        for client in self.clients:
            if not client.dropped and client.wants(msg):
                self.offer(client, frame)
        return msg

    def start(self) -> None:
        """Bind the hub to the running loop (the API's lifespan does it)."""
        self.loop = asyncio.get_running_loop()

    def offer(self, client: Client, frame: str) -> None:
        """Queue a frame for one client without waiting; drops the client if its queue is full."""
        try:
            client.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.drop(client, f"slow consumer: {self.queue_size} frames queued")

    def drop(self, client: Client, reason: str) -> None:
        """Stop feeding a client: clear its queue, tell it why, and let its writer close the socket."""
        if client.dropped:
            return
        client.dropped = reason
        self.dropped_clients += 1
        while not client.queue.empty():
            client.queue.get_nowait()
        client.queue.put_nowait(json.dumps({"type": "dropped", "reason": reason}))
        client.queue.put_nowait(None)

    # --- clients -------------------------------------------------------------------------------------

    def connect(self) -> Client:
        client = Client(asyncio.Queue(maxsize=self.queue_size + 2))  # + room for the dropped frames
        self.clients.add(client)
        return client

    def disconnect(self, client: Client) -> None:
        self.clients.discard(client)

    def subscribe(self, client: Client, sub: Subscription, resume_from: int | None = None) -> int:
        """Add a subscription; with ``resume_from``, first queue the buffered frames after it that
        match ``sub`` (and no earlier subscription, which already delivered them). Returns how many
        were queued. Runs without awaiting, so no live frame can slip between the replay and the
        subscription."""
        replay: list[HubMessage] = []
        if resume_from is not None:
            first = self.buffer[0].seq if self.buffer else self.seq + 1
            if resume_from + 1 < first:
                self.offer(
                    client,
                    json.dumps({"type": "gap", "resume_from": resume_from, "first_available": first}),
                )
            start = max(0, resume_from + 1 - first)
            replay = [
                m
                for m in itertools.islice(self.buffer, start, None)
                if sub.matches(m) and not client.wants(m)
            ]
        for m in replay:
            self.offer(client, m.frame)
        client.subscriptions.append(sub)
        return len(replay)

    async def heartbeats(self, interval: float) -> None:
        """Forever: every ``interval``, a heartbeat frame to each client idle for that long. One task
        for all clients, so a client's writer only ever awaits its queue."""
        while True:
            await asyncio.sleep(interval / 2)
            now = time.monotonic()
            frame = f'{{"type":"heartbeat","seq":{self.seq},"ts":{time.time_ns()}}}'
            for client in list(self.clients):
                if not client.dropped and now - client.last_sent >= interval and client.queue.empty():
                    client.last_sent = now
                    self.offer(client, frame)

    def stats(self) -> dict[str, int]:
        return {
            "seq": self.seq,
            "published": self.published,
            "clients": len(self.clients),
            "dropped_clients": self.dropped_clients,
            "buffered": len(self.buffer),
        }
