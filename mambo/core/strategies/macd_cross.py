"""``macd_cross``: the MACD line crossing its signal line."""

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

__all__ = ["MacdCross"]


@dataclass(kw_only=True)
class MacdCross(Strategy):
    """Buy when the MACD line crosses above its signal line, sell when it crosses below.

    Crosses follow :class:`~mambo.core.strategies.crossing.Crossing` (zero keeps the previous side, the
    first side after warm-up gives no signal). Confidence grows with the gap between the two lines
    relative to the close: a gap of ``half_gap`` (default 0.02%) gives 0.5.

    Values: ``macd_F_S_G``, ``macd_signal_F_S_G`` and ``macd_hist_F_S_G`` (the histogram as the
    indicator set gives it).
    """

    name: ClassVar[str] = "macd_cross"

    fast: int = 12
    slow: int = 26
    signal: int = 9
    half_gap: float = 0.0002
    _momentum: Crossing = field(default_factory=Crossing, init=False)

    def __post_init__(self) -> None:
        check_periods(fast=self.fast, slow=self.slow, signal=self.signal)
        if self.fast >= self.slow:
            raise ValueError(f"fast ({self.fast}) must be shorter than slow ({self.slow})")
        check_positive(half_gap=self.half_gap)

    def indicators(self) -> tuple[str, ...]:
        return (f"macd:{self.fast}:{self.slow}:{self.signal}",)

    def on_bar(self, bar: Bar) -> Decision:
        periods = f"{self.fast}_{self.slow}_{self.signal}"
        macd, signal = bar.value(f"macd_{periods}"), bar.value(f"macd_signal_{periods}")
        values = {
            f"macd_{periods}": macd,
            f"macd_signal_{periods}": signal,
            f"macd_hist_{periods}": bar.value(f"macd_hist_{periods}"),
        }
        cross = self._momentum.update(macd - signal)
        if not cross:
            return Decision.hold(values)
        confidence = gap_confidence(abs(macd - signal) / bar.close, self.half_gap)
        return Decision("buy" if cross > 0 else "sell", confidence, values)

    def decide_batch(
        self, close: npt.NDArray[np.float64], values: Mapping[str, npt.NDArray[np.float64]]
    ) -> BatchDecisions:
        periods = f"{self.fast}_{self.slow}_{self.signal}"
        diff = values[f"macd_{periods}"] - values[f"macd_signal_{periods}"]
        sides = crosses(diff)
        return sides, cross_confidences(sides, diff, close, self.half_gap)
