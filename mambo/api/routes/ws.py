"""WebSocket ``/ws``: subscriptions with sequence numbers, resume and heartbeats (frames: hub.PROTOCOL)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from mambo import metrics
from mambo.api.auth import AuthError, Authorizer
from mambo.api.hub import CHANNELS, Client, Gap, Hub, Subscription
from mambo.api.service import SignalService, iso

router = APIRouter()

AUTH_TIMEOUT_SECONDS = 10.0
CLOSE_DROPPED = 4008


async def _authorize(websocket: WebSocket, authorizer: Authorizer) -> bool:
    """Check the key (header, else a first ``auth`` frame); on failure say why and close."""
    key = websocket.headers.get("x-api-key")
    try:
        if key is None and not authorizer.open:
            try:
                first = json.loads(await asyncio.wait_for(websocket.receive_text(), AUTH_TIMEOUT_SECONDS))
            except (TimeoutError, ValueError, KeyError):
                first = {}
            if not isinstance(first, dict) or first.get("op") != "auth":
                raise AuthError(401, 'send {"op": "auth", "api_key": "..."} first (or the X-API-Key header)')
            key = str(first.get("api_key") or "")
        authorizer.authorize(key, "signals:read")
    except AuthError as ex:
        await websocket.send_text(json.dumps({"type": "error", "reason": ex.reason}))
        await websocket.close(code=4000 + ex.status, reason=ex.reason[:120])
        return False
    return True


#: How many buffered events a catching-up client's writer reads per step before it lets the loop run
#: (publishing, the other clients): a resume of thousands of frames never holds the server up.
CATCH_UP_SCAN = 512

#: The REST request that returns a channel's history (None: no history endpoint), and the filters it
#: takes besides ``start``/``end`` and ``symbol``.
HISTORY: dict[str, tuple[str, tuple[str, ...]] | None] = {
    "signals": ("/signals", ()),
    "signals.raw": ("/signals", ("strategy",)),
    "candles": ("/candles", ()),
    "indicators": ("/indicators", ()),
    "orders": ("/orders", ("strategy",)),
    "fills": ("/fills", ("strategy",)),
    "positions": ("/positions", ()),
    "equity": ("/pnl", ()),
    "risk.rejections": None,
}
_UNTIMED = frozenset({"/positions"})  # the current state: no time range
_UNKEYED = frozenset({"/pnl"})  # the account's: no symbol


def gap_frame(gap: Gap, strategies: Iterable[str]) -> str:
    """The ``gap`` frame (see hub.PROTOCOL): the sequence numbers missed, their time range, and for
    each subscribed channel, symbol and strategy the REST request that returns them; ``strategies``
    are those the hub has seen (raw signals are served one strategy at a time)."""
    when: dict[str, str] = {"end": iso(-(-gap.end // 1000) * 1000)}  # exclusive: round up to the us
    if gap.start is not None:
        when = {"start": iso(gap.start), **when}  # inclusive: iso() rounds down
    fetch: list[dict[str, Any]] = []
    for sub in gap.subscriptions:
        for channel in sorted(sub.channels):
            history = HISTORY[channel]
            if history is None:
                fetch.append({"channel": channel, "path": None, "params": {}})
                continue
            path, filters = history
            symbols: Sequence[str | None] = (
                [None] if path in _UNKEYED or not sub.symbols else sorted(sub.symbols)
            )
            wanted: Sequence[str | None] = [None]
            if "strategy" in filters and sub.strategies:
                wanted = sorted(sub.strategies)
            elif channel == "signals.raw":
                wanted = sorted(strategies)
            for symbol in symbols:
                for strategy in wanted:
                    params = {} if path in _UNTIMED else dict(when)
                    params |= {k: v for k, v in (("symbol", symbol), ("strategy", strategy)) if v}
                    entry = {"channel": channel, "path": path, "params": params}
                    if entry not in fetch:
                        fetch.append(entry)
    return json.dumps(
        {
            "type": "gap",
            "from_seq": gap.first_seq,
            "to_seq": gap.last_seq,
            "resume_from": gap.first_seq - 1,
            "first_available": gap.last_seq + 1,
            "start": gap.start,
            "end": gap.end,
            "fetch": fetch,
        }
    )


async def _writer(websocket: WebSocket, hub: Hub, client: Client) -> None:
    """Send the client's frames: its queue first (replies, live events), else while it catches up,
    the next frames from the hub's buffer, at the pace the socket takes them."""
    queue = client.queue
    while True:
        if queue.empty() and client.cursor is not None:
            for item in hub.catch_up(client, CATCH_UP_SCAN):
                await websocket.send_text(item if isinstance(item, str) else gap_frame(item, hub.strategies))
                client.sent += 1
                metrics.WS_FRAMES.inc()
            client.last_sent = time.monotonic()
            await asyncio.sleep(0)
            continue
        frame = queue.get_nowait() if not queue.empty() else await queue.get()
        if frame is None:
            await websocket.close(code=CLOSE_DROPPED, reason="slow consumer")
            return
        await websocket.send_text(frame)
        client.sent += 1
        metrics.WS_FRAMES.inc()
        client.last_sent = time.monotonic()


def _handle(hub: Hub, client: Client, text: str) -> dict[str, Any] | None:
    """Apply one client frame; the reply to queue, if any."""
    try:
        request = json.loads(text)
        if not isinstance(request, dict):
            raise ValueError("a frame must be a JSON object")
        op = request.get("op")
        if op == "subscribe":
            sub = Subscription.parse(request)
            resume = request.get("resume_from")
            if resume is not None and (not isinstance(resume, int) or isinstance(resume, bool) or resume < 0):
                raise ValueError("resume_from must be a sequence number (an integer >= 0)")
            replayed = hub.subscribe(client, sub, resume)
            return {"type": "subscribed", **sub.describe(), "replayed": replayed, "seq": hub.seq}
        if op == "unsubscribe":
            channels = request.get("channels")
            if channels is not None and not isinstance(channels, list):
                raise ValueError("channels must be a list")
            client.unsubscribe(channels)
            return {"type": "unsubscribed", "channels": channels or list(CHANNELS)}
        if op == "ping":
            return {"type": "pong", "seq": hub.seq}
        if op == "auth":
            return None  # already authorized
        raise ValueError(f"unknown op {op!r}; use subscribe, unsubscribe or ping")
    except ValueError as ex:
        return {"type": "error", "reason": str(ex)}


@router.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket) -> None:
    service: SignalService = websocket.app.state.service
    hub = service.hub
    await websocket.accept()
    try:
        if not await _authorize(websocket, websocket.app.state.authorizer):
            return
    except WebSocketDisconnect:
        return
    heartbeat = service.settings.ws_heartbeat_seconds
    client = hub.connect()
    hub.offer(
        client,
        json.dumps(
            {
                "type": "welcome",
                "epoch": hub.epoch,
                "seq": hub.seq,
                "channels": list(CHANNELS),
                "heartbeat_seconds": heartbeat,
            }
        ),
    )
    writer = asyncio.create_task(_writer(websocket, hub, client))
    try:
        while not writer.done():
            receive = asyncio.ensure_future(websocket.receive())
            await asyncio.wait({receive, writer}, return_when=asyncio.FIRST_COMPLETED)
            if not receive.done():
                receive.cancel()
                break
            message = receive.result()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            reply = (
                _handle(hub, client, text)
                if text is not None
                else {"type": "error", "reason": "send JSON in text frames"}
            )
            if reply is not None:
                hub.offer(client, json.dumps(reply))
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        hub.disconnect(client)
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await writer
