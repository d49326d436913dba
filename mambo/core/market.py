"""Market rules: tick size, step size and minimums, and the rounding that respects them.

A :class:`Market` is data (ccxt's ``markets`` precision and limits become one of these at the
connector, :mod:`mambo.connectors.markets`), so exchange quirks never become branches in the trading
logic. Where no definition exists, :func:`infer_tick` reads the tick off the prices themselves.

Rounding a price to the tick always leans against the trader, never in their favour:

* a **fill** (:meth:`Market.round_fill`): a buy rounds up, a sell down, so a simulated fill is never
  better than the market price it came from (and slippage can never be rounded away);
* a **limit** (:meth:`Market.round_limit`): a buy rounds down, a sell up, so the order never trades
  at a price the trader did not accept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, Decimal

import numpy as np
import numpy.typing as npt

from mambo.schemas.events import OrderSide

__all__ = ["Market", "infer_tick", "to_decimal"]

#: The finest tick :func:`infer_tick` reports: prices are read to at most this many decimals.
MAX_DECIMALS = 12
#: The step assumed for a market whose rules are inferred from prices (they say nothing of quantities):
#: 1e-8, the finest unit Binance and most ccxt exchanges keep a balance in.
INFERRED_STEP = Decimal("1e-8")


def to_decimal(x: float | int | str | Decimal) -> Decimal:
    """Exact decimal of the shortest repr of a float (``0.1`` -> ``Decimal('0.1')``)."""
    if isinstance(x, Decimal):
        return x
    return Decimal(repr(x)) if isinstance(x, float) else Decimal(x)


@dataclass(frozen=True)
class Market:
    exchange: str
    symbol: str
    base: str
    quote: str
    tick_size: Decimal = Decimal("0.01")
    step_size: Decimal = Decimal("0.00001")
    min_qty: Decimal = Decimal(0)
    min_notional: Decimal = Decimal(0)

    @property
    def key(self) -> str:
        return f"{self.exchange}:{self.symbol}"

    def round_fill(self, side: OrderSide, price: float | Decimal) -> Decimal:
        """A fill price on the tick, never better for the trader than ``price``: a buy rounds up,
        a sell down."""
        return self._to_tick(price, ROUND_CEILING if side == "buy" else ROUND_FLOOR)

    def round_limit(self, side: OrderSide, price: float | Decimal) -> Decimal:
        """A limit price on the tick, never looser than ``price``: a buy limit rounds down (it never
        pays more than the trader allowed), a sell limit up (it never takes less)."""
        return self._to_tick(price, ROUND_FLOOR if side == "buy" else ROUND_CEILING)

    def _to_tick(self, price: float | Decimal, rounding: str) -> Decimal:
        p = to_decimal(price)
        return (p / self.tick_size).quantize(Decimal(1), rounding=rounding) * self.tick_size

    def round_qty(self, qty: float | Decimal) -> Decimal:
        """Down to the step, so an order never exceeds what was sized."""
        q = to_decimal(qty)
        return (q / self.step_size).quantize(Decimal(1), rounding=ROUND_DOWN) * self.step_size

    @classmethod
    def default(cls, exchange: str, symbol: str) -> Market:
        """A permissive market for a symbol that has no loaded rules (tests, file replays)."""
        base, quote = _assets(symbol)
        return cls(exchange, symbol, base, quote)

    @classmethod
    def inferred(cls, exchange: str, symbol: str, tick_size: Decimal) -> Market:
        """The rules of a market with no definition: ``tick_size`` (from :func:`infer_tick`), the
        finest step (:data:`INFERRED_STEP`) and no minimums."""
        base, quote = _assets(symbol)
        return cls(exchange, symbol, base, quote, tick_size, INFERRED_STEP)


def _assets(symbol: str) -> tuple[str, str]:
    base, _, rest = symbol.partition("/")
    return base, rest.split(":")[0] or "USDT"


def infer_tick(prices: npt.ArrayLike) -> Decimal:
    """The largest tick every one of ``prices`` sits on: the greatest common divisor of the prices
    (exactly, in integer units of their finest decimal), so a market's real tick, or a multiple of it
    when the prices seen never used the finer steps.

    Float noise does not count as a decimal (``0.1 + 0.2`` is read as 0.3): each price is read to
    the fewest decimals (at most :data:`MAX_DECIMALS`) that give it back within a relative 1e-12.
    """
    p = np.asarray(prices, dtype=np.float64).ravel()
    p = p[np.isfinite(p) & (p > 0)]
    if not len(p):
        raise ValueError("no positive prices to infer a tick from")
    decimals = MAX_DECIMALS
    for d in range(MAX_DECIMALS + 1):
        if np.all(np.abs(np.round(p, d) - p) <= 1e-12 * p):
            decimals = d
            break
    scaled = np.round(p * 10.0**decimals)
    if scaled.max() < 2.0**53:  # exact as float64 and int64: gcd in numpy
        units = int(np.gcd.reduce(scaled.astype(np.int64)))
    else:
        units = math.gcd(*(int(x) for x in np.unique(scaled)))
    return Decimal(units).scaleb(-decimals)
