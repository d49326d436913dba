"""The local exchange: a real HTTP and WebSocket server that speaks Binance spot (and, apart, Binance
USDⓈ-M futures: :mod:`mambo.exchange.binance.futures`), offline.

ccxt (and ccxt.pro) is pointed at it by replacing its hosts (:func:`mambo.connectors.ccxt_client.
make_exchange` does it), so tests, the demo and a live run use the same connector code. It replays a
recording (the bundled Binance trades and book tops by default) at a chosen speed, matches orders
against the replayed book top and trades, and injects faults on command (disconnects, silent stalls,
gaps, duplicates, malformed frames, 429 and 418 answers).

Start reading at :class:`~mambo.exchange.binance.LocalExchange` (the package's docstring says which module
holds what); ``mambo exchange`` runs one.
"""

from mambo.exchange.binance import FAULTS, LocalExchange, serve

__all__ = ["FAULTS", "LocalExchange", "serve"]
