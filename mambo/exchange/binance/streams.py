"""The local Binance exchange's replay clock and its WebSocket streams (``/ws``, ``/stream``, the
``SUBSCRIBE`` protocol; trade, aggTrade, kline, bookTicker and depth frames)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import structlog
from aiohttp import WSMsgType, web

from mambo.exchange.binance.matching import Matching
from mambo.exchange.binance.state import (
    _MS,
    SymbolData,
    _Conn,
    _interval_ms,
    _num,
)

__all__ = ["Streams"]

log = structlog.get_logger(__name__)


class Streams(Matching):
    """The replay (events released in time order, resting orders matched on the way) and the streams."""

    def start(self) -> None:
        """Start releasing events at ``speed`` × real time (call inside the running loop).

        ``speed <= 0`` keeps the exchange paused: time moves only by :meth:`advance`.
        """
        if self._replay_task is None and self.speed > 0:
            self._replay_task = asyncio.get_running_loop().create_task(self._replay())

    async def pause(self) -> None:
        """Stop the replay clock; connections stay open (:meth:`advance` still moves time)."""
        if self._replay_task is not None:
            self._replay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replay_task
            self._replay_task = None

    async def stop(self) -> None:
        await self.pause()
        for conn in list(self._conns):
            await conn.ws.close()

    async def advance(self, seconds: float) -> int:
        """Release (and stream) the next ``seconds`` of the recording now; returns the events released."""
        before = self._cursor
        await self._broadcast(self._release_until(self.now_ms + int(seconds * 1000), emit=True))
        if self._cursor >= len(self._events):
            self.finished.set()
        return self._cursor - before

    async def _replay(self) -> None:
        if self._cursor >= len(self._events):
            self.finished.set()
            return
        wall0, event0 = time.monotonic(), self._events[self._cursor][0]
        while self._cursor < len(self._events):
            due_ms = event0 + (time.monotonic() - wall0) * self.speed * 1000
            nxt = self._events[self._cursor][0]
            if nxt > due_ms:
                await asyncio.sleep(min((nxt - due_ms) / self.speed / 1000, 0.5))
                continue
            # a bounded slice, then yield: a replay running behind must not starve the clients
            frames = self._release_until(int(due_ms), emit=True, limit=500)
            await self._broadcast(frames)
            await asyncio.sleep(0)
        self.finished.set()

    def _release_until(
        self, until_ms: int, emit: bool, limit: int | None = None
    ) -> list[tuple[str, str, dict[str, Any]]]:
        """Release events up to ``until_ms`` (at most ``limit``): (stream, kind, payload) frames to
        send; resting orders are matched on the way."""
        frames: list[tuple[str, str, dict[str, Any]]] = []
        stop = len(self._events) if limit is None else min(len(self._events), self._cursor + limit)
        while self._cursor < stop and self._events[self._cursor][0] <= until_ms:
            _, kind, sid, i = self._events[self._cursor]
            self._cursor += 1
            sym = self.symbols[sid]
            if kind == 1:
                sym.released = i + 1
                self._match_trade(sym, i)
                if emit:
                    frames += self._trade_frames(sym, i)
            elif kind == 2:
                assert sym.book is not None
                update = sym.depth[i]
                sym.book.apply(update)
                if emit:
                    low = sym.id.lower()
                    frames += [(f"{low}@depth", "depth", update), (f"{low}@depth@100ms", "depth", update)]
            else:
                sym.quotes_released = i + 1
                if emit:
                    frames += self._quote_frames(sym, i)
        return frames

    def _trade_frames(self, sym: SymbolData, i: int) -> list[tuple[str, str, dict[str, Any]]]:
        low = sym.id.lower()
        ts, tid = int(sym.ts[i]), int(sym.trade_id[i])
        p, q, m = _num(sym.price[i]), _num(sym.qty[i]), bool(sym.buyer_maker[i])
        out: list[tuple[str, str, dict[str, Any]]] = [
            (
                f"{low}@trade",
                "trade",
                {"e": "trade", "E": ts, "s": sym.id, "t": tid, "p": p, "q": q, "T": ts, "m": m, "M": True},
            ),
            (
                f"{low}@aggTrade",
                "aggTrade",
                {
                    "e": "aggTrade",
                    "E": ts,
                    "s": sym.id,
                    "a": tid,
                    "p": p,
                    "q": q,
                    "f": tid,
                    "l": tid,
                    "T": ts,
                    "m": m,
                    "M": True,
                },
            ),
        ]
        for (sid, interval), state in list(self._kline_state.items()):
            if sid != sym.id:
                continue
            out += self._kline_update(sym, interval, state, i)
        return out

    def _kline_update(
        self, sym: SymbolData, interval: str, state: list[Any], i: int
    ) -> list[tuple[str, str, dict[str, Any]]]:
        step = _interval_ms(interval)
        ts, price, qty = int(sym.ts[i]), float(sym.price[i]), float(sym.qty[i])
        start = ts - ts % step
        out = []
        stream = f"{sym.id.lower()}@kline_{interval}"
        if state and state[0] != start:
            out.append((stream, "kline", self._kline_frame(sym, interval, state, ts, closed=True)))
            state.clear()
        if not state:  # a new candle, or a first subscriber: the candle as it stands, like Binance's
            lo = int(np.searchsorted(sym.ts[: i + 1], start))
            p, q = sym.price[lo : i + 1], sym.qty[lo : i + 1]
            state += [start, float(p[0]), float(p.max()), float(p.min()), price, float(q.sum()), i + 1 - lo,
                      float((p * q).sum())]  # fmt: skip
        else:
            state[2], state[3], state[4] = max(state[2], price), min(state[3], price), price
            state[5] += qty
            state[6] += 1
            state[7] += qty * price
        out.append((stream, "kline", self._kline_frame(sym, interval, state, ts, closed=False)))
        return out

    @staticmethod
    def _kline_frame(sym: SymbolData, interval: str, s: list[Any], ts: int, closed: bool) -> dict[str, Any]:
        step = _interval_ms(interval)
        return {
            "e": "kline", "E": ts, "s": sym.id,
            "k": {"t": s[0], "T": s[0] + step - 1, "s": sym.id, "i": interval, "f": -1, "L": -1,
                  "o": _num(s[1]), "c": _num(s[4]), "h": _num(s[2]), "l": _num(s[3]), "v": _num(s[5]),
                  "n": s[6], "x": closed, "q": _num(s[7]), "V": "0", "Q": "0", "B": "0"},
        }  # fmt: skip

    def _quote_frames(self, sym: SymbolData, i: int) -> list[tuple[str, str, dict[str, Any]]]:
        q = sym.quotes[i]
        low, u, ts = sym.id.lower(), i + 1, q.ts_event // _MS
        bid, ask = _num(q.bid), _num(q.ask)
        book = {"u": u, "s": sym.id, "b": bid, "B": _num(q.bid_qty), "a": ask, "A": _num(q.ask_qty), "E": ts}
        bids, asks = [[_num(q.bid), _num(q.bid_qty)]], [[_num(q.ask), _num(q.ask_qty)]]
        if i:  # a one-level book: a moved level empties the old one
            prev = sym.quotes[i - 1]
            if prev.bid != q.bid:
                bids.append([_num(prev.bid), "0.00000000"])
            if prev.ask != q.ask:
                asks.append([_num(prev.ask), "0.00000000"])
        if sym.book is not None:  # the recorded book has depth streams of its own
            return [(f"{low}@bookTicker", "quote", book)]
        depth = {"e": "depthUpdate", "E": ts, "s": sym.id, "U": u, "u": u, "b": bids, "a": asks}
        return [(f"{low}@bookTicker", "quote", book), (f"{low}@depth", "quote", depth),
                (f"{low}@depth@100ms", "quote", depth)]  # fmt: skip

    async def _broadcast(self, frames: list[tuple[str, str, dict[str, Any]]]) -> None:
        if not frames or not self._conns or time.monotonic() < self._stall_until:
            return  # a stall: the connections stay open and nothing is sent
        for stream, kind, payload in frames:
            copies = 1
            if kind in ("trade", "aggTrade"):
                if self._gap:
                    if kind == "aggTrade":  # the last of a trade's two frames
                        self._gap -= 1
                    continue
                if self._dup:
                    copies = 2
                    if kind == "aggTrade":
                        self._dup -= 1
            for conn in list(self._conns):
                if stream in conn.streams:
                    text = json.dumps({"stream": stream, "data": payload} if conn.combined else payload)
                    for _ in range(copies):
                        await self._send(conn, text)

    async def _send(self, conn: _Conn, text: str) -> None:
        try:
            await conn.ws.send_str(text)
        except (ConnectionError, RuntimeError):
            if conn in self._conns:
                self._conns.remove(conn)

    def subscribed(self, channels: Iterable[str]) -> bool:
        """Whether every market has a subscriber on each of ``channels`` (``aggTrade``, ``bookTicker``):
        a replay started then loses no frame to a client still subscribing."""
        streams = set().union(*(conn.streams for conn in self._conns))
        return all(f"{sid.lower()}@{channel}" in streams for sid in self.symbols for channel in channels)

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        # no permessage-deflate: on loopback it only spends CPU at both ends (in a profile of the
        # exchange demo, three quarters of the server's time sending frames went to compressing them)
        ws = web.WebSocketResponse(autoping=True, heartbeat=None, compress=False)
        await ws.prepare(request)
        conn = _Conn(ws, combined=request.path == "/stream")
        streams = request.query.get("streams", "") if conn.combined else request.match_info.get("stream", "")
        conn.streams = {s for s in streams.split("/") if "@" in s}
        self._subscribe_klines(conn.streams)
        self._conns.append(conn)
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                await self._control(conn, msg.data)
        finally:
            if conn in self._conns:
                self._conns.remove(conn)
        return ws

    async def _control(self, conn: _Conn, text: str) -> None:
        try:
            req = json.loads(text)
            method, params, rid = req["method"], req.get("params", []), req.get("id")
        except (ValueError, KeyError, TypeError):
            await self._send(conn, json.dumps({"error": {"code": 3, "msg": "Invalid JSON"}, "id": None}))
            return
        if method == "SUBSCRIBE":
            conn.streams |= set(params)
            self._subscribe_klines(set(params))
            await self._send(conn, json.dumps({"result": None, "id": rid}))
        elif method == "UNSUBSCRIBE":
            conn.streams -= set(params)
            await self._send(conn, json.dumps({"result": None, "id": rid}))
        elif method == "LIST_SUBSCRIPTIONS":
            await self._send(conn, json.dumps({"result": sorted(conn.streams), "id": rid}))
        else:
            error = {"code": 2, "msg": f"Invalid request: {method}"}
            await self._send(conn, json.dumps({"error": error, "id": rid}))

    def _subscribe_klines(self, streams: set[str]) -> None:
        for s in streams:
            name, _, channel = s.partition("@")
            if channel.startswith("kline_"):
                interval = channel[len("kline_") :]
                _interval_ms(interval)
                sid = name.upper()
                if sid in self.symbols:
                    self._kline_state.setdefault((sid, interval), [])
