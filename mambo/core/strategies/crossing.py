"""Building blocks the crossing strategies share: :class:`Crossing`, which tells when a series
crosses a line, and the confidence helpers that turn how far it crossed into a number in (0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["MIN_CONFIDENCE", "Crossing", "clamp_confidence", "gap_confidence"]

#: The smallest confidence of a buy or a sell: a call is never weightless.
MIN_CONFIDENCE = 1e-6


@dataclass
class Crossing:
    """Which side of a line a series is on, and when it crosses it.

    The side is the sign of ``series - line``. A difference of exactly zero keeps the previous side
    (touching a line is not crossing it) and NaN (an input still warming up) changes nothing. The
    first side seen establishes the state without a cross.
    """

    #: +1 above the line, -1 below, 0 not known yet.
    side: int = 0

    def update(self, diff: float) -> int:
        """+1 on an upward cross, -1 on a downward cross, 0 otherwise."""
        if diff > 0:
            new = 1
        elif diff < 0:
            new = -1
        else:  # zero or NaN
            return 0
        crossed = self.side != 0 and new != self.side
        self.side = new
        return new if crossed else 0


def clamp_confidence(x: float) -> float:
    """``x`` clamped into [MIN_CONFIDENCE, 1]: the confidence of a buy or a sell (NaN gives 1)."""
    return 1.0 if math.isnan(x) else min(1.0, max(MIN_CONFIDENCE, x))


def gap_confidence(gap: float, half: float) -> float:
    """Confidence from a relative gap between two lines: ``gap / (gap + half)``, so a gap of ``half``
    gives 0.5, a wider one more, and it never reaches past 1."""
    return clamp_confidence(gap / (gap + half))
