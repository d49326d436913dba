"""Add Binance spot markets to mambo/data/markets.json from a recorded ``exchangeInfo`` response,
parsed offline by ccxt's own ``binance.parse_market``.

ccxt 4 gives Binance's precision as tick sizes (``TICK_SIZE``); the bundled file keeps one book per
exchange in ``DECIMAL_PLACES`` form, so each tick and step (a power of ten on Binance) is written as its
number of decimals, and refused if it is not a power of ten.

Usage: python tools/extract_markets.py ../shared/data/cryptofeed_sample_data/BINANCE.0 ETHBTC XRPETH ...

The recording is cryptofeed's raw-data format: a line ``<url> -> <time>: <json>``. Margin data is not in
``exchangeInfo`` (ccxt fetches it apart), so the markets' ``marginModes`` are left out.
"""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from pathlib import Path

import ccxt

BUNDLED = Path(__file__).resolve().parents[1] / "mambo" / "data" / "markets.json"


def main(recording: str, ids: list[str]) -> None:
    line = next(x for x in Path(recording).read_text().splitlines() if "exchangeInfo" in x.split(": ", 1)[0])
    info = json.loads(line.split(": ", 1)[1])
    client = ccxt.binance()
    client.options["crossMarginPairsData"] = []  # not in exchangeInfo; ccxt loads them apart
    client.options["isolatedMarginPairsData"] = []
    markets = {}
    for entry in info["symbols"]:
        if entry["symbol"] in ids:
            market = client.parse_market(entry)
            market.pop("marginModes", None)
            markets[market["symbol"]] = market
    missing = set(ids) - {m["id"] for m in markets.values()}
    if missing:
        raise SystemExit(f"not in the recording: {sorted(missing)}")
    books = json.loads(BUNDLED.read_text())
    [book] = [b for b in books if b["exchange"] == "binance"]
    assert book["precisionMode"] == "DECIMAL_PLACES"
    for market in markets.values():
        market["precision"] = {k: _places(v) for k, v in market["precision"].items()}
    book["markets"].update(markets)
    BUNDLED.write_text(json.dumps(books, indent=2) + "\n")


def _places(size: float | None) -> int | None:
    """A tick or step of ccxt's TICK_SIZE mode as its number of decimals (DECIMAL_PLACES mode)."""
    if size is None:
        return None
    d = Decimal(str(size)).normalize()
    if d.as_tuple().digits != (1,):
        raise ValueError(f"{size} is not a power of ten")
    return -int(d.as_tuple().exponent)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
