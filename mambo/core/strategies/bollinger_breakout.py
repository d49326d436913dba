"""``bollinger_breakout``: buy a close above the upper Bollinger band, sell when the close falls back
below the middle band."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from mambo.core.strategies.base import (
    Bar,
    BatchDecisions,
    Decision,
    Strategy,
    check_periods,
    check_positive,
)
from mambo.core.strategies.crossing import Crossing, clamp_confidence, clamp_confidences, crosses

__all__ = ["BollingerBreakout"]


@dataclass(kw_only=True)
class BollingerBreakout(Strategy):
    """Buy when the close crosses above the upper band, sell when it crosses below the middle band.

    Bands are Bollinger(``period``, ``k``): the middle band is the SMA of the close, the others ``k``
    standard deviations away. Crosses follow :class:`~mambo.core.strategies.crossing.Crossing`
    (touching a band is not crossing it, the first side after warm-up gives no signal); the close
    crossing the middle band upwards, or the upper band downwards, is a hold. Confidence is how far the
    close went past the band in half-band widths: ``(close - upper) / (upper - middle)`` for a buy,
    ``(middle - close) / (middle - lower)`` for a sell, at most 1 (and 1 when the bands have collapsed).

    Values: ``bb_upper_N_K``, ``bb_middle_N_K``, ``bb_lower_N_K`` and ``close``.
    """

    name: ClassVar[str] = "bollinger_breakout"

    period: int = 20
    k: float = 2.0
    _upper: Crossing = field(default_factory=Crossing, init=False)
    _middle: Crossing = field(default_factory=Crossing, init=False)

    def __post_init__(self) -> None:
        check_periods(period=self.period)
        check_positive(k=self.k)

    @property
    def _suffix(self) -> str:
        """``N_K`` as in the indicator names, with K written as in the spec (``2``, ``2.5``)."""
        return f"{self.period}_{self.k:g}"

    def indicators(self) -> tuple[str, ...]:
        return (f"bbands:{self.period}:{self.k:g}",)

    def on_bar(self, bar: Bar) -> Decision:
        close = bar.close
        upper, middle, lower = (
            bar.value(f"bb_{band}_{self._suffix}") for band in ("upper", "middle", "lower")
        )
        values = {
            f"bb_upper_{self._suffix}": upper,
            f"bb_middle_{self._suffix}": middle,
            f"bb_lower_{self._suffix}": lower,
            "close": close,
        }
        breakout = self._upper.update(close - upper) > 0
        breakdown = self._middle.update(close - middle) < 0
        if breakout:
            return Decision("buy", _beyond(close - upper, upper - middle), values)
        if breakdown:
            return Decision("sell", _beyond(middle - close, middle - lower), values)
        return Decision.hold(values)

    def decide_batch(
        self, close: npt.NDArray[np.float64], values: Mapping[str, npt.NDArray[np.float64]]
    ) -> BatchDecisions:
        upper, middle, lower = (values[f"bb_{band}_{self._suffix}"] for band in ("upper", "middle", "lower"))
        breakout = crosses(close - upper) > 0
        breakdown = crosses(close - middle) < 0
        sides = np.where(breakout, 1, np.where(breakdown, -1, 0)).astype(np.int8)
        with np.errstate(invalid="ignore", divide="ignore"):
            buy = np.where(upper - middle > 0, clamp_confidences((close - upper) / (upper - middle)), 1.0)
            sell = np.where(middle - lower > 0, clamp_confidences((middle - close) / (middle - lower)), 1.0)
        return sides, np.where(breakout, buy, np.where(breakdown, sell, 0.0))


def _beyond(distance: float, half_width: float) -> float:
    return clamp_confidence(distance / half_width) if half_width > 0 else 1.0
