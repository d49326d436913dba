"""The WebSocket hub: live events fanned out to subscribers, with sequence numbers and resume.

Whoever sees the live stream calls :meth:`Hub.publish` once per ``(topic, event)``: in the embedded
runtime the bus observer (:meth:`mambo.api.service.SignalService.on_event`), in distributed mode a
Kafka consumer thread through :meth:`~mambo.api.service.SignalService.on_event_threadsafe` (it decodes
with the topic registry's models and hands over the same pairs). Publishing never waits on a client:

* each event is serialized **once** into its frame and given the next sequence number (one counter per
  hub: increasing, not contiguous for a client whose filter skips events);
* the frame goes into a bounded replay buffer (``buffer`` frames), shared by every client;
* and into the bounded queue of every **live** client whose subscriptions match.

A client that resumes (``resume_from``, the last sequence number it received), or whose queue is
full (it reads slower than events arrive), is **catching up**: it is a cursor into the shared buffer,
not a copy in its queue. Its writer takes the frames it missed from the buffer a batch at a time, at
the pace the socket takes them (:meth:`Hub.catch_up`); events published meanwhile join the buffer and
the cursor reaches them in turn; once the cursor reaches the newest event the client is live again, in
the same synchronous step, so nothing is lost or repeated between the two. What the buffer no longer
holds (evicted while the client was away, or while it read too slowly) is reported as a :class:`Gap`:
the sequence numbers missed and the event-time range that covers them, for the client to fetch over
REST. Neither the pipeline nor the other clients ever wait for a client, and no client is dropped for
being away or slow (before, a resume pushed the whole replay into the client's queue: a client away
for more frames than its queue holds was dropped at once, and every reconnect ended the same way).
Only a client whose queue fills with replies (it sends requests and reads nothing) is **dropped**.

The frames are documented in :data:`PROTOCOL` (served in the OpenAPI description).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from mambo import metrics
from mambo.schemas.events import Event

__all__ = ["CHANNELS", "PROTOCOL", "Client", "Gap", "Hub", "HubMessage", "Subscription", "channel_of"]

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
    "control.results",
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
  match this subscription are sent first, in `seq` order, then live ones, with none lost or repeated,
  however long you were away: the replay is read from the server's buffer at the pace you read it;
  what the buffer no longer holds comes as a `gap` frame.
* `{"op": "unsubscribe", "channels": ["fills"]}`: stop those channels (no `channels`: all).
* `{"op": "ping"}` → `{"type": "pong", "seq": <current>}`.

Server → client (`type`):

* `welcome`: `{"type": "welcome", "epoch": "...", "seq": <current>, "channels": [...],
  "heartbeat_seconds": 15}`. `epoch` changes when the server restarts: sequence numbers of another
  epoch cannot be resumed.
* `subscribed`: `{"type": "subscribed", "channels": [...], "symbols": [...], "strategies": [...],
  "replayed": <frames>, "seq": <current>}`, at once; with `resume_from`, `replayed` buffered frames
  (those with `seq` up to this `seq`) follow it before the live ones.
* `event`: `{"type": "event", "seq": 1235, "channel": "signals", "topic": "signals",
  "key": "binance:BTC/USDT", "data": {...}}` where `data` is the event exactly as the REST API and the
  topic schemas give it (timestamps in integer nanoseconds UTC, money as decimal strings).
* `gap`: `{"type": "gap", "from_seq": 11, "to_seq": 499, "resume_from": 10, "first_available": 500,
  "start": <ns>, "end": <ns>, "fetch": [{"channel": "candles", "path": "/candles",
  "params": {"start": "2024-...Z", "end": "2024-...Z"}}, ...]}`: the events numbered `from_seq` to
  `to_seq` (inclusive) are no longer buffered (you were away, or read the replay, longer than the
  buffer lasts). Their event times (`ts_event`) lie in [`start`, `end`) (`start` null: older than the
  server remembers; fetch from the beginning); each `fetch` entry is the REST request that returns
  them for one of your channels, symbols and strategies (`params` as query parameters; page with
  `next_cursor`); the range may hold events you already have (it is by time, not by `seq`): drop
  repeats by `event_id`. `path` is null for a channel with no history endpoint (`risk.rejections`);
  `/positions` is the current state, which supersedes the positions you missed. The frames after the
  gap follow on, from `first_available`.
* `heartbeat`: `{"type": "heartbeat", "seq": <current>, "ts": <ns>}` when nothing was sent for
  `heartbeat_seconds` (checked every half of it).
* `error`: `{"type": "error", "reason": "..."}` for a bad client frame; the connection stays open.
* `dropped`: `{"type": "dropped", "reason": "slow consumer: ..."}` then close code 4008: the client
  sent requests and read none of the replies. (A client that reads events slower than they come is not
  dropped: it reads on from the buffer, as after a resume, with a `gap` where the buffer has moved on.)

**Closing.** The server answers your close frame at once, with your code (1000 for a normal close).
The answer comes behind the frames already on their way to you, so keep reading until the close
completes: a client that stops reading with more frames unread than its library holds (python
`websockets`: `max_queue`, 16 frames by default) stops reading the socket, never sees the answer, and
gives up after its close timeout with code 1006. To stop the flow first, send `{"op": "unsubscribe"}`
and read up to the `unsubscribed` reply.
"""
)

#: How many evicted sequence numbers share one entry of a hub's time index (:class:`_EvictedTimes`).
_TIME_BLOCK = 1024


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
    ts_event: int = 0


@dataclass(frozen=True)
class Subscription:
    """A client's filter: channels, and optionally symbols (keys or bare) and strategies; ``since``
    is the last sequence number before it (it covers the events after it)."""

    channels: frozenset[str]
    symbols: frozenset[str] = frozenset()
    strategies: frozenset[str] = frozenset()
    since: int = 0

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

    def covers(self, msg: HubMessage) -> bool:
        """Whether ``msg`` is this subscription's to deliver: it matches and came after ``since``."""
        return msg.seq > self.since and self.matches(msg)

    def describe(self) -> dict[str, list[str]]:
        return {
            "channels": sorted(self.channels),
            "symbols": sorted(self.symbols),
            "strategies": sorted(self.strategies),
        }


@dataclass(frozen=True)
class Gap:
    """Events a catching-up client missed because the buffer no longer held them: sequence numbers
    ``first_seq`` to ``last_seq``, event times in [``start``, ``end``) (``start`` None: older than the
    hub remembers), and the client's subscriptions that cover some of them."""

    first_seq: int
    last_seq: int
    start: int | None
    end: int
    subscriptions: tuple[Subscription, ...]


class _EvictedTimes:
    """The event-time range of the sequence numbers the buffer has evicted, in blocks of
    :data:`_TIME_BLOCK` (``blocks`` of them: 16 bytes a block), so a gap can say which times to fetch.
    A range is widened to whole blocks: a superset of the events, never a subset."""

    def __init__(self, blocks: int = 4096) -> None:
        self.blocks: deque[list[int]] = deque(maxlen=blocks)  # [block number, min ts, max ts]

    def add(self, seq: int, ts: int) -> None:
        block = seq // _TIME_BLOCK
        if self.blocks and self.blocks[-1][0] == block:
            entry = self.blocks[-1]
            entry[1] = min(entry[1], ts)
            entry[2] = max(entry[2], ts)
        else:
            self.blocks.append([block, ts, ts])

    def span(self, first_seq: int, last_seq: int) -> tuple[int | None, int]:
        """(earliest ts or None if forgotten, latest ts + 1) of the evicted events in the range."""
        lo, hi = first_seq // _TIME_BLOCK, last_seq // _TIME_BLOCK
        hit = [e for e in self.blocks if lo <= e[0] <= hi]
        remembered = bool(self.blocks) and self.blocks[0][0] <= lo
        start = min(e[1] for e in hit) if hit and remembered else None
        end = max((e[2] for e in hit), default=0) + 1
        return start, end


@dataclass(eq=False)
class Client:
    """One connected subscriber: its subscriptions, its bounded outgoing queue of frames, and while it
    catches up, ``cursor``: the next sequence number to read from the hub's buffer (None: live)."""

    queue: asyncio.Queue[str | None]
    subscriptions: list[Subscription] = field(default_factory=list)
    cursor: int | None = None
    dropped: str = ""  # the reason, once dropped
    sent: int = 0
    last_sent: float = field(default_factory=time.monotonic)  # when its writer last sent a frame

    def wants(self, msg: HubMessage) -> bool:
        return any(s.covers(msg) for s in self.subscriptions)

    def unsubscribe(self, channels: Iterable[str] | None) -> None:
        if channels is None:
            self.subscriptions = []
            return
        gone = frozenset(channels)
        kept = [replace(s, channels=s.channels - gone) for s in self.subscriptions]
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
        self.evicted = _EvictedTimes()
        self.clients: set[Client] = set()
        self.strategies: set[str] = set()  # every strategy seen on an event (a gap names them)
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
            int(getattr(event, "ts_event", 0)),
        )
        if msg.strategy:
            self.strategies.add(msg.strategy)
        if len(self.buffer) == self.buffer.maxlen:
            oldest = self.buffer[0]
            self.evicted.add(oldest.seq, oldest.ts_event)
        self.buffer.append(msg)
        self.published += 1
        for client in self.clients:
            if client.cursor is None and not client.dropped and client.wants(msg):
                if client.queue.qsize() < self.queue_size:
                    client.queue.put_nowait(frame)
                else:  # behind: it reads on from the buffer, from this event
                    client.cursor = msg.seq
        return msg

    def start(self) -> None:
        """Bind the hub to the running loop (the API's lifespan does it)."""
        self.loop = asyncio.get_running_loop()

    def offer(self, client: Client, frame: str) -> None:
        """Queue a frame (a reply, a heartbeat) for one client without waiting; drops the client if its
        queue is full."""
        try:
            client.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.drop(client, f"slow consumer: {self.queue_size} frames queued")

    def drop(self, client: Client, reason: str) -> None:
        """Stop feeding a client: clear its queue, tell it why, and let its writer close the socket."""
        if client.dropped:
            return
        client.dropped = reason
        client.cursor = None
        self.dropped_clients += 1
        metrics.WS_DROPPED.inc()
        while not client.queue.empty():
            client.queue.get_nowait()
        client.queue.put_nowait(json.dumps({"type": "dropped", "reason": reason}))
        client.queue.put_nowait(None)

    # --- clients -------------------------------------------------------------------------------------

    def connect(self) -> Client:
        client = Client(asyncio.Queue(maxsize=self.queue_size + 2))  # + room for the dropped frames
        self.clients.add(client)
        metrics.WS_CLIENTS.inc()
        return client

    def disconnect(self, client: Client) -> None:
        if client in self.clients:
            self.clients.discard(client)
            metrics.WS_CLIENTS.dec()

    def subscribe(self, client: Client, sub: Subscription, resume_from: int | None = None) -> int:
        """Add a subscription covering the events after ``resume_from`` (default: from now on).

        Resuming makes the client catch up (:meth:`catch_up`) from there: its cursor moves back if
        needed, and its earlier subscriptions skip what they already delivered. Returns how many
        buffered frames the client gets for it before the live ones (what no earlier subscription
        covers). Runs without awaiting, so no live frame can slip between the replay and the
        subscription."""
        since = self.seq if resume_from is None else min(resume_from, self.seq)
        delivered = self.seq if client.cursor is None else client.cursor - 1
        replayed = 0
        if since < delivered:
            replayed = sum(1 for m in self.buffer if since < m.seq and sub.matches(m) and not client.wants(m))
            client.subscriptions = [replace(s, since=max(s.since, delivered)) for s in client.subscriptions]
            client.cursor = since + 1
        client.subscriptions.append(replace(sub, since=since))
        return replayed

    def catch_up(self, client: Client, scan: int = 512) -> list[str | Gap]:
        """The next frames of a catching-up client, reading at most ``scan`` buffered events past its
        cursor: event frames it wants, and a :class:`Gap` where the buffer no longer holds its cursor.
        When the cursor passes the newest event, the client is live (``cursor`` None) from then on."""
        out: list[str | Gap] = []
        while client.cursor is not None and scan > 0:
            first = self.buffer[0].seq if self.buffer else self.seq + 1
            if client.cursor < first:
                gap = self._gap(client, client.cursor, first - 1)
                if gap is not None:
                    out.append(gap)
                client.cursor = first
            if client.cursor > self.seq:
                client.cursor = None
                break
            msg = self.buffer[client.cursor - first]
            client.cursor += 1
            scan -= 1
            if client.wants(msg):
                out.append(msg.frame)
        return out

    def _gap(self, client: Client, first_seq: int, last_seq: int) -> Gap | None:
        subs = tuple(s for s in client.subscriptions if s.since < last_seq)
        if not subs:
            return None
        first_seq = max(first_seq, min(s.since for s in subs) + 1)
        start, end = self.evicted.span(first_seq, last_seq)
        return Gap(first_seq, last_seq, start, end, subs)

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
            "catching_up": sum(1 for c in self.clients if c.cursor is not None),
            "dropped_clients": self.dropped_clients,
            "buffered": len(self.buffer),
        }
