"""The local exchange: a real HTTP and WebSocket server that speaks Binance spot, offline.

ccxt (and ccxt.pro) is pointed at it by replacing its hosts (:func:`mambo.connectors.ccxt_client.
make_exchange` does it), so tests, the demo and a live run use the same connector code. It replays a
recording (the bundled Binance trades and book tops by default) at a chosen speed, matches orders
against the replayed book top and trades, and injects faults on command (disconnects, silent stalls,
gaps, duplicates, malformed frames, 429 and 418 answers).

Start reading at :class:`~mambo.exchange.server.LocalExchange`; ``mambo exchange`` runs one.
"""

from mambo.exchange.server import FAULTS, LocalExchange, serve

__all__ = ["FAULTS", "LocalExchange", "serve"]
