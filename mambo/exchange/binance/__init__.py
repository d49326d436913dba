"""A Binance-spot-speaking exchange that replays a recording: REST, WebSocket streams, orders, faults.

What it answers (the requests and streams ccxt's ``binance`` and ``pro.binance`` use for spot):

* REST ``/api/v3/``: ``ping``, ``time``, ``exchangeInfo``, ``klines``, ``trades``, ``aggTrades``,
  ``depth``, ``ticker/24hr``, ``ticker/bookTicker``; signed (HMAC-SHA256 of the query string and
  body with the configured secret, any API key): ``order`` (new, cancel, query, by ``orderId`` or
  ``origClientOrderId``), ``openOrders``, ``myTrades``, ``account``.
* What a ccxt ``binance`` client with default options asks besides, in Binance's shapes: the wallet's
  coins (``/sapi/v1/capital/config/getall``, signed: the recording's assets with the account's
  balances, no deposit or withdrawal network), the margin pairs (``/sapi/v1/margin/allPairs`` and
  ``isolated/allPairs``: none, this is a spot exchange) and the futures markets
  (``/fapi/v1/exchangeInfo``, ``/dapi/v1/exchangeInfo``: none).
* WebSocket ``/ws/<stream>`` and ``/stream?streams=a/b`` (combined frames), plus ``SUBSCRIBE`` /
  ``UNSUBSCRIBE`` / ``LIST_SUBSCRIPTIONS`` messages: ``<sym>@trade``, ``@aggTrade``,
  ``@kline_<interval>``, ``@bookTicker``, ``@depth`` (``@depth@100ms``).

Replay: events (trades and book tops of the recording's ``binance`` spot markets) are released in
event-time order at ``speed`` × real time. REST answers from what has been released so far, so every
trade a REST call returns was already streamed (unless a fault dropped the frame). ``history_seconds``
of the recording are released at start, as the exchange's past.

Simplifications, stated: each recorded trade is its own aggregate trade (``aggTrades`` id = trade id,
so REST and ``@aggTrade``/``@trade`` ids agree); the book is one level deep (the recorded best bid
and ask) unless a recorded multi-level book is given (``depth``, :mod:`mambo.exchange.depth`: REST
``depth`` and the ``@depth`` streams then replay it, with Binance's update ids); commissions are
charged in the quote asset; a ``newClientOrderId`` is refused only while an open order holds it (as
Binance does). One addition: a ``@bookTicker`` frame carries its recorded time as ``E``, as Binance's
futures frames do (its spot frames carry no time), so a client (ccxt reads it) stamps each book top
with the time it held on the exchange, the time its fills are stamped with.

Matching: a market order, or a limit order that crosses the book top, fills at once as taker at the
book top; a resting limit order fills as maker when a replayed trade crosses it, through
:class:`mambo.core.execution.PaperBroker` (price-time priority, volume-limited).

Layout, one concern a module, each class built on the one before: :mod:`.state` (markets, orders,
balances, wire formats) → :mod:`.matching` (orders) → :mod:`.streams` (replay clock, WebSocket) →
:mod:`.faults` → :mod:`.rest` (spot REST, the aiohttp app) → :mod:`.exchange` (:class:`LocalExchange`).
USDⓈ-M futures (``/fapi``) are a server of their own, :mod:`.futures` (:class:`~.futures.FuturesExchange`),
on the same wire helpers and the margin core (:mod:`mambo.core.margin`).
"""

from mambo.exchange.binance.exchange import LocalExchange, serve
from mambo.exchange.binance.state import FAULTS, SymbolData

__all__ = ["FAULTS", "LocalExchange", "SymbolData", "serve"]
