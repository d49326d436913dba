"""Market rules: rounding never gives the trader a better price than the market did, and a tick read
off prices is the grid they sit on."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mambo.core.market import Market, infer_tick

D = Decimal
ticks = st.sampled_from([D("0.01"), D("0.00001"), D("0.0000025"), D("0.5"), D("1"), D("0.1")])
prices = st.decimals(min_value=D("0.0001"), max_value=D("100000"), places=8)


def market(tick: Decimal) -> Market:
    return Market("binance", "XYZ/USDT", "XYZ", "USDT", tick_size=tick)


@given(ticks, prices)
def test_a_fill_is_never_better_than_its_price_and_a_limit_never_looser(
    tick: Decimal, price: Decimal
) -> None:
    m = market(tick)
    for side in ("buy", "sell"):
        fill, limit = m.round_fill(side, price), m.round_limit(side, price)
        assert fill % tick == 0 and limit % tick == 0
        assert abs(fill - price) < tick and abs(limit - price) < tick
    assert m.round_fill("buy", price) >= price >= m.round_fill("sell", price)
    assert m.round_limit("buy", price) <= price <= m.round_limit("sell", price)


def test_slippage_is_not_rounded_away() -> None:
    """5 bps at 10.00 on a 0.01 tick: half-even put both the buy (10.005) and the sell (9.995) at 10.00."""
    m = market(D("0.01"))
    assert m.round_fill("buy", D("10.005")) == D("10.01")
    assert m.round_fill("sell", D("9.995")) == D("9.99")


@pytest.mark.parametrize(
    ("seen", "tick"),
    [
        ([0.12345, 0.12351, 0.12349], D("0.00001")),
        ([61835.79, 61835.8, 61836.01], D("0.01")),
        ([100.5, 101.0, 99.5], D("0.5")),
        ([0.1 + 0.2, 0.4], D("0.1")),  # float noise is no decimal
        ([3.0, 6.0, 9.0], D("3")),
    ],
)
def test_the_tick_is_the_grid_the_prices_sit_on(seen: list[float], tick: Decimal) -> None:
    assert infer_tick(seen) == tick


@given(ticks, st.lists(st.integers(1, 10**7), min_size=2, max_size=50))
def test_prices_on_a_tick_give_that_tick_or_a_multiple(tick: Decimal, units: list[int]) -> None:
    seen = np.array([float(u * tick) for u in units])
    found = infer_tick(seen)
    assert found % tick == 0
    assert all(D(repr(float(p))) % found == 0 for p in seen)


def test_no_prices_no_tick() -> None:
    with pytest.raises(ValueError, match="no positive prices"):
        infer_tick([np.nan, 0.0])
