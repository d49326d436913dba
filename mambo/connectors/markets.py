"""Market definitions: where a run's tick size, step size and minimums come from.

Every run trades on an exchange's own rules, never on a silent default. :func:`find_market` looks a
market up, in this order:

1. a markets file the user names (``mambo backtest --markets FILE``);
2. ccxt's markets of the exchange, cached in the data folder (``<data_dir>/markets/<exchange>.json``,
   written by :func:`save_markets` from a client that loaded them);
3. the definitions bundled with Mambo (``mambo/data/markets.json``: Binance's BTC/USDT and ETH/USDT,
   spot and perpetual, the demo's markets).

:func:`market_rules` adds the last resort: with no definition, the tick is inferred from the prices
(:func:`~mambo.core.market.infer_tick`), and the note it returns says so.

A markets file is JSON in one of three shapes:

* ccxt's markets, what ``exchange.load_markets()`` returns: ``{"BTC/USDT": {"precision": ...,
  "limits": ...}, ...}`` (the exchange is the one the run names);
* one exchange's markets with their precision mode, as :func:`save_markets` writes them:
  ``{"exchange": "binance", "precisionMode": "TICK_SIZE", "markets": {...}}``;
* a list of those (several exchanges, as the bundled file).

ccxt gives precision as a tick size (``TICK_SIZE``, Binance's mode in ccxt 4) or as a number of
decimals (``DECIMAL_PLACES``, older files). When a file does not say which, a precision with a
fraction (0.01) means tick sizes, and whole numbers everywhere mean decimals.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy.typing as npt

from mambo.core.market import Market, infer_tick
from mambo.schemas.events import split_key

__all__ = [
    "BUNDLED_MARKETS",
    "MarketRules",
    "bundled_market",
    "cache_path",
    "find_market",
    "market_from_ccxt",
    "market_rules",
    "read_markets",
    "save_markets",
]

#: The definitions shipped with Mambo (see mambo/data/README.md for their origin).
BUNDLED_MARKETS = Path(__file__).resolve().parents[1] / "data" / "markets.json"

# ccxt's precision modes (ccxt.DECIMAL_PLACES, SIGNIFICANT_DIGITS, TICK_SIZE), by number and by name
_MODES = {2: "DECIMAL_PLACES", 3: "SIGNIFICANT_DIGITS", 4: "TICK_SIZE"}


class MarketDefinitionError(ValueError):
    """A markets file cannot be read as ccxt market definitions; the message says why."""


def market_from_ccxt(
    exchange_id: str, market: Mapping[str, Any], precision_mode: str | int = "TICK_SIZE"
) -> Market:
    """Mambo's market rules from a ccxt market (its ``precision`` and ``limits``).

    ``precision_mode``: ccxt's mode of the exchange (``client.precisionMode``, or its name): in
    ``TICK_SIZE`` the precision is the tick and step themselves, in ``DECIMAL_PLACES`` their number of
    decimals. A market without a price or amount precision is refused: no rule is made up.
    """
    mode = _mode(precision_mode)
    precision, limits = market.get("precision") or {}, market.get("limits") or {}
    symbol = market.get("symbol", "?")
    sizes = []
    for what in ("price", "amount"):
        value = precision.get(what)
        if value is None:
            raise MarketDefinitionError(f"{exchange_id}:{symbol} has no {what} precision")
        sizes.append(_size(value, mode))
    tick, step = sizes
    min_qty = (limits.get("amount") or {}).get("min") or 0
    min_cost = (limits.get("cost") or {}).get("min") or 0
    return Market(
        exchange_id,
        symbol,
        market["base"],
        market["quote"],
        tick,
        step,
        Decimal(str(min_qty)),
        Decimal(str(min_cost)),
    )


def _mode(mode: str | int) -> str:
    name = _MODES.get(mode, mode) if isinstance(mode, int) else str(mode).upper()
    if name not in ("TICK_SIZE", "DECIMAL_PLACES"):
        raise MarketDefinitionError(
            f"precision mode {mode!r}: only TICK_SIZE and DECIMAL_PLACES give a tick size"
        )
    return name


def _size(value: float | int | str, mode: str) -> Decimal:
    d = Decimal(str(value))
    if mode == "DECIMAL_PLACES":
        if d != d.to_integral_value() or d < 0:
            raise MarketDefinitionError(f"{value!r} is not a number of decimal places")
        return Decimal(1).scaleb(-int(d))
    if not d > 0:
        raise MarketDefinitionError(f"tick or step {value!r} must be > 0")
    return d


def _guess_mode(markets: Mapping[str, Any]) -> str:
    """TICK_SIZE if any precision has a fraction, else DECIMAL_PLACES (see the module docstring)."""
    for m in markets.values():
        for what in ("price", "amount"):
            value = (m.get("precision") or {}).get(what)
            if value is not None and Decimal(str(value)) % 1:
                return "TICK_SIZE"
    return "DECIMAL_PLACES"


def read_markets(path: str | Path, exchange: str | None = None) -> dict[str, Market]:
    """Every market of a markets file (see the module docstring), by key ``exchange:symbol``.

    ``exchange``: the exchange of a file that holds ccxt's markets alone (it does not name one).
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise MarketDefinitionError(f"{path}: cannot read markets: {e}") from e
    out: dict[str, Market] = {}
    for book in data if isinstance(data, list) else [data]:
        if not isinstance(book, dict):
            raise MarketDefinitionError(
                f"{path}: expected ccxt markets (a JSON object), got {type(book).__name__}"
            )
        if isinstance(book.get("markets"), dict):
            ex, markets, mode = book.get("exchange") or exchange, book["markets"], book.get("precisionMode")
        else:
            ex, markets, mode = exchange, book, None
        if not ex:
            raise MarketDefinitionError(f"{path}: the file names no exchange; give one")
        if not all(isinstance(m, dict) and "symbol" in m for m in markets.values()):
            raise MarketDefinitionError(
                f"{path}: not ccxt markets (each needs a symbol, precision and limits)"
            )
        mode = mode or _guess_mode(markets)
        for m in markets.values():
            market = market_from_ccxt(ex, m, mode)
            out[market.key] = market
    return out


def cache_path(data_dir: Path, exchange: str) -> Path:
    """Where the data folder keeps ccxt's markets of ``exchange``."""
    return data_dir / "markets" / f"{exchange}.json"


def save_markets(
    data_dir: Path, exchange: str, markets: Mapping[str, Any], precision_mode: str | int
) -> Path:
    """Keep a ccxt client's loaded markets (``client.markets``, ``client.precisionMode``) in the data
    folder, where later runs of that exchange find them."""
    path = cache_path(data_dir, exchange)
    path.parent.mkdir(parents=True, exist_ok=True)
    book = {"exchange": exchange, "precisionMode": _mode(precision_mode), "markets": dict(markets)}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(book, default=str))
    tmp.replace(path)
    return path


def bundled_market(exchange: str, symbol: str) -> Market | None:
    """The bundled definition of a market (the demo's Binance markets), None if there is none."""
    return read_markets(BUNDLED_MARKETS).get(f"{exchange}:{symbol}")


def find_market(
    key: str, markets_file: Path | None = None, data_dir: Path | None = None
) -> tuple[Market, str] | None:
    """The definition of market ``key`` and where it was found, or None (see the module docstring).

    A named ``markets_file`` without the market is an error, not a reason to look elsewhere."""
    exchange, _ = split_key(key)
    if markets_file is not None:
        found = read_markets(markets_file, exchange).get(key)
        if found is None:
            raise MarketDefinitionError(f"{markets_file} has no market {key}")
        return found, str(markets_file)
    places = [cache_path(data_dir, exchange)] if data_dir is not None else []
    for path in [*places, BUNDLED_MARKETS]:
        if path.is_file():
            found = read_markets(path, exchange).get(key)
            if found is not None:
                return found, "Mambo's bundled definitions" if path == BUNDLED_MARKETS else str(path)
    return None


@dataclass(frozen=True)
class MarketRules:
    """A run's rules for one market, with the line that tells the trader where they come from."""

    market: Market
    note: str


def market_rules(
    key: str, prices: npt.ArrayLike, markets_file: Path | None = None, data_dir: Path | None = None
) -> MarketRules:
    """The rules of market ``key``: its definition (:func:`find_market`), or else a tick inferred from
    ``prices`` (the run's own prices), the note saying which."""
    found = find_market(key, markets_file, data_dir)
    if found is not None:
        m, source = found
        return MarketRules(
            m,
            f"market {key}: tick {m.tick_size:f}, step {m.step_size:f}, min qty {m.min_qty:f}, "
            f"min notional {m.min_notional:f} (from {source})",
        )
    exchange, symbol = split_key(key)
    m = Market.inferred(exchange, symbol, infer_tick(prices))
    return MarketRules(
        m,
        f"market {key}: no definition found; tick {m.tick_size:f} inferred from the prices' increments, "
        f"step {m.step_size:f}, no minimums (give the exchange's with --markets FILE)",
    )
