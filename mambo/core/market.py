"""Market rules: tick size, step size and minimums, and the rounding that respects them.

A :class:`Market` is data (ccxt's ``markets`` precision and limits become one of these at the
connector), so exchange quirks never become branches in the trading logic.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal

__all__ = ["Market", "to_decimal"]


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

    def round_price(self, price: float | Decimal) -> Decimal:
        """Nearest tick (half to even)."""
        p = to_decimal(price)
        return (p / self.tick_size).quantize(Decimal(1), rounding=ROUND_HALF_EVEN) * self.tick_size

    def round_qty(self, qty: float | Decimal) -> Decimal:
        """Down to the step, so an order never exceeds what was sized."""
        q = to_decimal(qty)
        return (q / self.step_size).quantize(Decimal(1), rounding=ROUND_DOWN) * self.step_size

    @classmethod
    def default(cls, exchange: str, symbol: str) -> Market:
        """A permissive market for a symbol that has no loaded rules (tests, file replays)."""
        base, _, rest = symbol.partition("/")
        quote = rest.split(":")[0] or "USDT"
        return cls(exchange, symbol, base, quote)
