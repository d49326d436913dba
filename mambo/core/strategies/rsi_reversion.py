"""``rsi_reversion``: buy when the RSI comes back from oversold, sell when it comes back from
overbought."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from mambo.core.strategies.base import Bar, Decision, Strategy, check_periods
from mambo.core.strategies.crossing import Crossing, clamp_confidence

__all__ = ["RsiReversion"]


@dataclass(kw_only=True)
class RsiReversion(Strategy):
    """Buy when RSI(``period``) crosses back above ``lower``, sell when it crosses back below
    ``upper``.

    Crosses follow the same rule as :class:`~mambo.core.strategies.crossing.Crossing`: touching a
    level is not crossing it, and the first side seen after warm-up gives no signal. Confidence is how
    deep the excursion went: ``(lower - trough) / lower`` for a buy, ``(peak - upper) / (100 - upper)``
    for a sell, where trough and peak are the RSI extremes while beyond the level.

    Values: ``rsi_<period>``, and ``rsi_trough`` on a buy or ``rsi_peak`` on a sell.
    """

    name: ClassVar[str] = "rsi_reversion"

    period: int = 14
    lower: float = 30.0
    upper: float = 70.0
    _oversold: Crossing = field(default_factory=Crossing, init=False)
    _overbought: Crossing = field(default_factory=Crossing, init=False)
    _trough: float | None = field(default=None, init=False)
    _peak: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        check_periods(period=self.period)
        if not 0 < self.lower < self.upper < 100:
            raise ValueError(f"need 0 < lower < upper < 100, got lower={self.lower!r} upper={self.upper!r}")

    def indicators(self) -> tuple[str, ...]:
        return (f"rsi:{self.period}",)

    def on_bar(self, bar: Bar) -> Decision:
        rsi = bar.value(f"rsi_{self.period}")
        values = {f"rsi_{self.period}": rsi}
        if rsi < self.lower:
            self._trough = rsi if self._trough is None else min(self._trough, rsi)
        if rsi > self.upper:
            self._peak = rsi if self._peak is None else max(self._peak, rsi)
        out_of_oversold = self._oversold.update(rsi - self.lower) > 0
        out_of_overbought = self._overbought.update(rsi - self.upper) < 0
        if out_of_oversold and self._trough is not None:
            trough, self._trough = self._trough, None
            confidence = clamp_confidence((self.lower - trough) / self.lower)
            return Decision("buy", confidence, {**values, "rsi_trough": trough})
        if out_of_overbought and self._peak is not None:
            peak, self._peak = self._peak, None
            confidence = clamp_confidence((peak - self.upper) / (100.0 - self.upper))
            return Decision("sell", confidence, {**values, "rsi_peak": peak})
        return Decision.hold(values)
