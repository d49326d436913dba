"""Making ccxt clients: the one place that knows how to point ccxt at an exchange, a testnet or the
local exchange, and where API keys enter (as ``SecretStr``, never logged).

:func:`make_exchange` returns a ``ccxt.pro`` client (async REST and WebSocket in one object).
:func:`mambo.connectors.markets.market_from_ccxt` turns a ccxt market into Mambo's rules.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import ccxt.pro as ccxtpro
from pydantic import SecretStr

__all__ = ["local_urls", "make_exchange"]


def local_urls(urls: Any, base_url: str) -> Any:
    """ccxt's URL table with every host replaced by the local exchange's: http(s) by ``base_url``,
    ws(s) by its WebSocket twin, paths kept. Nothing the client asks for can leave the machine."""
    local = urlsplit(base_url.rstrip("/"))
    if isinstance(urls, dict):
        return {k: local_urls(v, base_url) for k, v in urls.items()}
    if not isinstance(urls, str) or "://" not in urls:
        return urls
    parts = urlsplit(urls)
    scheme = "ws" if parts.scheme.startswith("ws") else local.scheme
    return urlunsplit((scheme, local.netloc, parts.path, parts.query, parts.fragment))


def make_exchange(
    exchange_id: str,
    *,
    base_url: str | None = None,
    api_key: SecretStr | None = None,
    secret: SecretStr | None = None,
    sandbox: bool = False,
    options: dict[str, Any] | None = None,
) -> Any:
    """A ``ccxt.pro`` client of ``exchange_id``, rate limited by ccxt.

    ``base_url`` points a ``binance`` client at the local exchange (``mambo exchange``), or a
    ``binanceusdm`` one at its futures side (``mambo exchange --usdm``); ``sandbox`` switches to the
    exchange's testnet through ccxt's sandbox mode (Binance spot testnet). Binance's futures testnet
    is gone: ccxt refuses sandbox mode for futures and points to Binance's demo trading, so
    ``binanceusdm`` with ``sandbox`` is refused here with that reason.
    """
    if sandbox and exchange_id == "binanceusdm":
        raise ValueError(
            "Binance's futures testnet is gone (ccxt: sandbox mode is not supported for futures anymore; "
            "it points to Binance's demo trading): trade futures on the local exchange (--base-url, "
            "mambo exchange --usdm) or for real (--live)"
        )
    try:
        cls = getattr(ccxtpro, exchange_id)
    except AttributeError:
        raise ValueError(f"ccxt.pro has no exchange {exchange_id!r}") from None
    config: dict[str, Any] = {"enableRateLimit": True, "options": dict(options or {})}
    if api_key is not None and secret is not None:
        config["apiKey"] = api_key.get_secret_value()
        config["secret"] = secret.get_secret_value()
    if exchange_id == "binance":
        # spot only: the local exchange, and Mambo's spot sources, need no futures market lists
        config["options"].setdefault("fetchMarkets", {"types": ["spot"]})
        config["options"].setdefault("fetchCurrencies", False)
        config["options"].setdefault("fetchMargins", False)
    exchange = cls(config)
    if sandbox:
        exchange.set_sandbox_mode(True)
    if base_url is not None:
        if exchange_id not in ("binance", "binanceusdm"):
            raise ValueError(
                "the local exchange speaks Binance: use --exchange binance (spot) or binanceusdm "
                "(USD-M futures, mambo exchange --usdm) with a base URL"
            )
        exchange.urls["api"] = local_urls(exchange.urls["api"], base_url)
        # a local peer: ccxt's throttle need not pace us, and its 1 ms polling loop costs an order
        # ~45 ms on a busy machine (benchmarks/exchange_venue.py); 429/418 answers are still obeyed
        exchange.enableRateLimit = False
    return exchange
