"""What a market data file's name says: the market, the timeframe and what it holds.

Two naming schemes carry that information:

* freqtrade's data directory (``user_data/data/<exchange>/``): ``ETH_BTC-5m.feather``,
  ``XRP_USDT_USDT-1h-futures.feather``, ``XRP_USDT_USDT-8h-mark.feather``,
  ``XRP_USDT_USDT-8h-funding_rate.feather``, ``ETH_BTC-trades.json.gz``; the pair's ``/`` and ``:``
  are written ``_`` (``XRP/USDT:USDT``), and the folder names the exchange;
* Binance's public bulk data (data.binance.vision): ``BTCUSDT-1m-2024-01.zip``,
  ``BTCUSDT-1m-2024-01-01.csv``, ``BTCUSDT-aggTrades-2024-01.zip``, ``BTCUSDT-trades-2024-01-01.zip``;
  the market id ``BTCUSDT`` is split at a known quote currency.

Any other name says nothing (:data:`UNNAMED`), and the command line names the market.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

__all__ = ["UNNAMED", "FileName", "binance_symbol", "exchange_of", "parse_name"]

Kind = Literal["candles", "trades"]

#: freqtrade's candle types: ``spot`` and ``futures`` are traded candles, the others are series of
#: their own (a mark price, an index, a funding rate in ``open``) that a backtest must not trade on.
CANDLE_TYPES = ("spot", "futures", "mark", "index", "premiumIndex", "funding_rate")
_EXT = r"\.(?:feather|parquet|json|json\.gz|jsongz)"
_PAIR = r"(?P<pair>[A-Za-z0-9]+(?:_[A-Za-z0-9]+)+)"
_FT_CANDLES = re.compile(rf"^{_PAIR}-(?P<tf>\d+[smhdwM])(?:-(?P<type>{'|'.join(CANDLE_TYPES)}))?{_EXT}$")
_FT_TRADES = re.compile(rf"^{_PAIR}-trades(?:-(?P<type>spot|futures))?{_EXT}$")
_BINANCE = re.compile(
    r"^(?P<id>[A-Z0-9]+)-(?:(?P<tf>\d+[smhdwM])|(?P<trades>aggTrades|trades))"
    r"-\d{4}-\d{2}(?:-\d{2})?\.(?:csv|zip|csv\.gz)$"
)
#: Quote currencies a Binance market id ends with, longest first where one ends another.
_QUOTES = ("FDUSD", "USDT", "USDC", "TUSD", "BUSD", "USDP", "DAI", "BTC", "ETH", "BNB", "EUR", "TRY",
           "BRL", "GBP", "AUD", "JPY", "RUB", "UAH", "ZAR", "PLN", "RON", "ARS", "MXN", "COP", "IDR",
           "XRP", "TRX", "DOGE", "SOL")  # fmt: skip


@dataclass(frozen=True)
class FileName:
    """What a file's name says; ``None`` where it says nothing."""

    scheme: Literal["freqtrade", "binance", ""]
    symbol: str | None = None
    timeframe: str | None = None
    kind: Kind | None = None
    candle_type: str = "spot"
    binance_layout: Literal["klines", "aggTrades", "trades", ""] = ""

    @property
    def traded(self) -> bool:
        """Whether the candles are traded prices (not a mark price, an index or a funding rate)."""
        return self.candle_type in ("spot", "futures")


UNNAMED = FileName("")


def _pair(text: str) -> str:
    """freqtrade's file form of a pair back to ccxt's: ``ETH_BTC`` -> ``ETH/BTC``,
    ``XRP_USDT_USDT`` -> ``XRP/USDT:USDT``."""
    parts = text.split("_")
    symbol = f"{parts[0]}/{parts[1]}"
    return f"{symbol}:{'_'.join(parts[2:])}" if len(parts) > 2 else symbol


def binance_symbol(market_id: str) -> str | None:
    """``BTCUSDT`` -> ``BTC/USDT``, split at a known quote currency; None when none fits."""
    for quote in _QUOTES:
        if market_id.endswith(quote) and len(market_id) > len(quote):
            return f"{market_id[: -len(quote)]}/{quote}"
    return None


def parse_name(path: str | Path) -> FileName:
    """What the name of ``path`` says (see the module docstring)."""
    name = Path(path).name
    if m := _FT_TRADES.match(name):
        return FileName("freqtrade", _pair(m["pair"]), None, "trades", m["type"] or "spot")
    if m := _FT_CANDLES.match(name):
        return FileName("freqtrade", _pair(m["pair"]), m["tf"], "candles", m["type"] or "spot")
    if m := _BINANCE.match(name):
        layout = m["trades"] or "klines"
        kind: Kind = "trades" if m["trades"] else "candles"
        return FileName("binance", binance_symbol(m["id"]), m["tf"], kind, "spot", layout)  # type: ignore[arg-type]
    return UNNAMED


@cache
def _is_ccxt_exchange(name: str) -> bool:
    """Whether ccxt has an exchange of that id: a module ``ccxt/<id>.py``. Found without importing
    ccxt, which loads every exchange (0.7 s) to list ``ccxt.exchanges``."""
    spec = importlib.util.find_spec("ccxt")
    places = spec.submodule_search_locations if spec is not None else None
    return (
        name.isidentifier()
        and not name.startswith("_")
        and any((Path(p) / f"{name}.py").is_file() for p in places or ())
    )


def exchange_of(path: str | Path) -> str | None:
    """The exchange a freqtrade data folder names (``user_data/data/binance/futures/X.feather`` ->
    ``binance``): the nearest enclosing folder that is a ccxt exchange id, None if there is none."""
    for folder in list(Path(path).resolve().parents)[:3]:
        if _is_ccxt_exchange(folder.name.lower()):
            return folder.name.lower()
    return None
