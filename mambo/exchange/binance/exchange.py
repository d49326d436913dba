"""The local Binance exchange: :class:`LocalExchange` and :func:`serve`."""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from mambo.exchange.binance.rest import SpotRest

__all__ = ["LocalExchange", "serve"]


class LocalExchange(SpotRest):
    """The exchange's state and its aiohttp application (:meth:`app`); run it with :func:`serve`."""


class _Servable(Protocol):
    def app(self) -> web.Application: ...
    def start(self) -> None: ...


async def serve(exchange: _Servable, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Start an exchange's server (spot :class:`LocalExchange`, or USDⓈ-M
    :class:`~mambo.exchange.binance.futures.FuturesExchange`) and its replay; returns the runner and the
    base URL."""
    runner = web.AppRunner(exchange.app())
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # the port the OS chose
    exchange.start()
    return runner, f"http://{host}:{bound}"
