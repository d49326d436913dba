"""``rsi_reversion``: buy when the RSI comes back from oversold, sell when it comes back from
overbought."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from mambo.core.strategies.base import Bar, BatchDecisions, Decision, Strategy, check_periods
from mambo.core.strategies.crossing import Crossing, clamp_confidence, clamp_confidences, crosses

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

    def decide_batch(
        self, close: npt.NDArray[np.float64], values: Mapping[str, npt.NDArray[np.float64]]
    ) -> BatchDecisions:
        # A buy is an upward cross of ``lower``; its trough is the lowest RSI below ``lower`` since
        # the previous buy (where on_bar last reset it). Every such cross has a trough: the cross
        # needs an RSI below ``lower`` since the last upward cross. Likewise sells, peaks and
        # ``upper``. No bar crosses both levels: one below ``lower`` since the last bar above
        # ``upper`` has put the upper crossing on the lower side, and the other way round.
        rsi = values[f"rsi_{self.period}"]
        buys = np.flatnonzero(crosses(rsi - self.lower) > 0)
        sells = np.flatnonzero(crosses(rsi - self.upper) < 0)
        sides = np.zeros(len(rsi), dtype=np.int8)
        sides[buys], sides[sells] = 1, -1
        confidence = np.zeros(len(rsi))
        with np.errstate(invalid="ignore"):
            trough = _extremes(np.minimum, np.where(rsi < self.lower, rsi, np.inf), buys)
            peak = _extremes(np.maximum, np.where(rsi > self.upper, rsi, -np.inf), sells)
        confidence[buys] = clamp_confidences((self.lower - trough) / self.lower)
        confidence[sells] = clamp_confidences((peak - self.upper) / (100.0 - self.upper))
        return sides, confidence


def _extremes(
    ufunc: np.ufunc, x: npt.NDArray[np.float64], at: npt.NDArray[np.intp]
) -> npt.NDArray[np.float64]:
    """``ufunc``'s reduction of ``x`` over each stretch after the previous entry of ``at`` (or the
    start) up to and including the entry itself: ``x[at[k-1] + 1 : at[k] + 1]``."""
    if not len(at):
        return np.empty(0)
    starts = np.concatenate(([0], at[:-1] + 1))
    result: npt.NDArray[np.float64] = ufunc.reduceat(x[: at[-1] + 1], starts)
    return result
