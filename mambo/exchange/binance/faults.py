"""Faults the local Binance exchange injects on command: disconnects, stalls, gaps, duplicates,
malformed frames, 429 and 418 answers (:data:`FAULTS`)."""

from __future__ import annotations

import math
import time

import structlog
from aiohttp import web

from mambo.exchange.binance.state import (
    _REST,
    FAULTS,
    _ApiError,
    _error,
    _Handler,
)
from mambo.exchange.binance.streams import Streams

__all__ = ["FAULTS", "Faults"]

log = structlog.get_logger(__name__)


class Faults(Streams):
    """Fault injection (:meth:`inject`, ``POST /mambo/faults``) and the REST middleware that applies
    the HTTP faults and logs requests."""

    async def inject(self, kind: str, count: int = 1, seconds: float = 1.0) -> None:
        """Inject a fault now: ``disconnect`` (close every WebSocket), ``stall`` (send nothing for
        ``seconds``, connections stay open), ``gap`` (drop the next ``count`` trades from the streams),
        ``duplicate`` (send the next ``count`` trades twice), ``malformed`` (send ``count`` frames that
        are not JSON), ``429`` / ``418`` (answer the next ``count`` REST requests with that status and
        ``Retry-After: seconds``; a 418 bans every request for ``seconds``)."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; one of {', '.join(FAULTS)}")
        log.warning("exchange.fault", kind=kind, count=count, seconds=seconds)
        if kind == "disconnect":
            for conn in list(self._conns):
                await conn.ws.close()
            self._conns.clear()
        elif kind == "stall":
            self._stall_until = time.monotonic() + seconds
        elif kind == "gap":
            self._gap += count
        elif kind == "duplicate":
            self._dup += count
        elif kind == "malformed":
            for conn in list(self._conns):
                for _ in range(count):
                    await self._send(conn, '{"e": "trade", "s": BROKEN')
        else:
            self._http_faults += [(int(kind), seconds)] * count

    @web.middleware
    async def _middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        now = time.monotonic()
        path = request.path
        if path.startswith(_REST):
            if now < self._banned_until:
                retry = math.ceil(self._banned_until - now)
                return self._log(now, path, _error(418, -1003, "Way too many requests; IP banned.", retry))
            if self._http_faults:
                status, seconds = self._http_faults.pop(0)
                if status == 418:
                    self._banned_until = now + seconds
                msg = "Too many requests." if status == 429 else "Way too many requests; IP banned."
                return self._log(now, path, _error(status, -1003, msg, math.ceil(seconds)))
        try:
            response = await handler(request)
        except _ApiError as exc:
            response = _error(exc.status, exc.code, exc.msg)
        return self._log(now, path, response)

    def _log(self, now: float, path: str, response: web.StreamResponse) -> web.StreamResponse:
        if path.startswith(_REST):
            self.request_log.append((now, path, response.status))
            del self.request_log[:-1000]
        return response

    async def _fault_route(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            await self.inject(str(body["kind"]), int(body.get("count", 1)), float(body.get("seconds", 1.0)))
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True})
