"""``sma_cross``: the reference strategy, a crossover of a fast and a slow simple moving average."""

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
from mambo.core.strategies.crossing import Crossing, cross_confidences, crosses, gap_confidence

__all__ = ["SmaCross"]


@dataclass(kw_only=True)
class SmaCross(Strategy):
    """Buy when the fast SMA crosses above the slow one, sell when it crosses below.

    On closed candles' close prices, a cross happens when the sign of (fast - slow) changes; a
    difference of exactly zero keeps the previous sign, and the first sign after warm-up establishes
    the state without a signal. Confidence grows with the gap between the averages relative to the
    close: a gap of ``half_gap`` (default 0.02%) gives 0.5.

    Values: ``sma_fast``, ``sma_slow`` and the same averages named by their periods (``sma_50``,
    ``sma_200``), as clients of ``GET /signal`` read them.

    :class:`~mambo.core.strategies.ema_cross.EmaCross` is this strategy on exponential averages: a
    subclass sets :attr:`average` to another moving-average indicator of the set.
    """

    name: ClassVar[str] = "sma_cross"
    #: The moving-average indicator both lines are (``sma`` here): ``"<average>:<period>"`` specs.
    average: ClassVar[str] = "sma"

    fast: int = 50
    slow: int = 200
    half_gap: float = 0.0002
    _trend: Crossing = field(default_factory=Crossing, init=False)

    def __post_init__(self) -> None:
        check_periods(fast=self.fast, slow=self.slow)
        if self.fast >= self.slow:
            raise ValueError(f"fast ({self.fast}) must be shorter than slow ({self.slow})")
        check_positive(half_gap=self.half_gap)

    def indicators(self) -> tuple[str, ...]:
        return (f"{self.average}:{self.fast}", f"{self.average}:{self.slow}")

    def on_bar(self, bar: Bar) -> Decision:
        avg = self.average
        fast, slow = bar.value(f"{avg}_{self.fast}"), bar.value(f"{avg}_{self.slow}")
        values = {
            f"{avg}_fast": fast,
            f"{avg}_slow": slow,
            f"{avg}_{self.fast}": fast,
            f"{avg}_{self.slow}": slow,
        }
        cross = self._trend.update(fast - slow)
        if not cross:
            return Decision.hold(values)
        confidence = gap_confidence(abs(fast - slow) / bar.close, self.half_gap)
        return Decision("buy" if cross > 0 else "sell", confidence, values)

    def decide_batch(
        self, close: npt.NDArray[np.float64], values: Mapping[str, npt.NDArray[np.float64]]
    ) -> BatchDecisions:
        diff = values[f"{self.average}_{self.fast}"] - values[f"{self.average}_{self.slow}"]
        sides = crosses(diff)
        return sides, cross_confidences(sides, diff, close, self.half_gap)
