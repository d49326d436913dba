"""Market definitions from ccxt's markets: the file shapes, the precision modes, where they are found."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from mambo.connectors.markets import (
    MarketDefinitionError,
    find_market,
    market_rules,
    read_markets,
    save_markets,
)

D = Decimal
TICK_MODE = {
    "symbol": "XYZ/USDT",
    "base": "XYZ",
    "quote": "USDT",
    "precision": {"price": 0.0001, "amount": 0.1},
    "limits": {"amount": {"min": 0.1}, "cost": {"min": 5}},
}


def test_ccxt_markets_in_either_precision_mode(tmp_path: Path) -> None:
    ticks = tmp_path / "ticks.json"
    ticks.write_text(json.dumps({"XYZ/USDT": TICK_MODE}))
    m = read_markets(ticks, "binance")["binance:XYZ/USDT"]
    assert (m.tick_size, m.step_size, m.min_qty, m.min_notional) == (D("0.0001"), D("0.1"), D("0.1"), D(5))
    places = tmp_path / "places.json"
    decimals = {**TICK_MODE, "precision": {"price": 4, "amount": 1}}
    places.write_text(
        json.dumps([{"exchange": "kraken", "precisionMode": "DECIMAL_PLACES", "markets": {"X": decimals}}])
    )
    k = read_markets(places)["kraken:XYZ/USDT"]
    assert (k.tick_size, k.step_size) == (D("0.0001"), D("0.1"))


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("not json", "cannot read markets"),
        (
            json.dumps({"XYZ/USDT": {"symbol": "XYZ/USDT", "base": "X", "quote": "Y", "precision": {}}}),
            "no price precision",
        ),
        (json.dumps({"XYZ/USDT": 3}), "not ccxt markets"),
        (
            json.dumps(
                {"exchange": "binance", "precisionMode": "SIGNIFICANT_DIGITS", "markets": {"X": TICK_MODE}}
            ),
            "precision mode",
        ),
    ],
)
def test_a_bad_markets_file_says_why(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "m.json"
    path.write_text(content)
    with pytest.raises(MarketDefinitionError, match=reason):
        read_markets(path, "binance")


def test_where_a_market_is_found(tmp_path: Path) -> None:
    # bundled: the demo's Binance spot markets
    m, source = find_market("binance:BTC/USDT") or (None, "")
    assert m is not None and (m.tick_size, m.step_size) == (D("0.01"), D("0.00001"))
    assert source == "Mambo's bundled definitions"
    # ccxt's markets cached in the data folder come before the bundled ones
    save_markets(tmp_path, "binance", {"BTC/USDT": {**TICK_MODE, "symbol": "BTC/USDT", "base": "BTC"}}, 4)
    m, source = find_market("binance:BTC/USDT", data_dir=tmp_path) or (None, "")
    assert m is not None and m.tick_size == D("0.0001") and source.endswith("binance.json")
    assert find_market("binance:XYZ/USDT", data_dir=tmp_path) is None


def test_no_definition_infers_the_tick_and_says_so() -> None:
    rules = market_rules("binance:XYZ/USDT", np.array([0.12345, 0.1235, 0.12347]))
    assert rules.market.tick_size == D("0.00001")
    assert "no definition found; tick 0.00001 inferred" in rules.note
