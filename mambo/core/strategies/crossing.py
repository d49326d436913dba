"""Building blocks the crossing strategies share: :class:`Crossing`, which tells when a series
crosses a line, and the confidence helpers that turn how far it crossed into a number in (0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numba import njit

__all__ = [
    "MIN_CONFIDENCE",
    "Crossing",
    "clamp_confidence",
    "clamp_confidences",
    "cross_confidences",
    "crosses",
    "gap_confidence",
    "gap_confidences",
]

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


def crosses(diff: npt.NDArray[np.float64]) -> npt.NDArray[np.int8]:
    """What :meth:`Crossing.update` returns on each element of ``diff`` in turn, from a fresh state:
    +1 on an upward cross, -1 on a downward cross, 0 otherwise. Element i depends only on ``diff[:i+1]``."""
    out: npt.NDArray[np.int8] = _crosses(np.ascontiguousarray(diff, dtype=np.float64))
    return out


@njit(cache=True)
def _crosses(diff: npt.NDArray[np.float64]) -> npt.NDArray[np.int8]:
    # Crossing.update element by element, in one pass (whole-array numpy took five passes and four
    # temporaries: ~6 ms per million bars, run several times per backtest by the look-ahead check)
    out = np.zeros(len(diff), dtype=np.int8)
    side = 0
    for i in range(len(diff)):
        d = diff[i]
        if d > 0:
            new = 1
        elif d < 0:
            new = -1
        else:  # zero or NaN
            continue
        if side != 0 and new != side:
            out[i] = new
        side = new
    return out


def cross_confidences(
    sides: npt.NDArray[np.int8], diff: npt.NDArray[np.float64], close: npt.NDArray[np.float64], half: float
) -> npt.NDArray[np.float64]:
    """:func:`gap_confidence` of the gap ``|diff| / close`` on the bars that cross (``sides`` != 0),
    0.0 elsewhere; computed on those bars only (the same operations element by element)."""
    at = np.flatnonzero(sides)
    confidence = np.zeros(len(sides))
    confidence[at] = gap_confidences(np.abs(diff[at]) / close[at], half)
    return confidence


def clamp_confidences(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """:func:`clamp_confidence` elementwise."""
    return np.where(np.isnan(x), 1.0, np.minimum(1.0, np.maximum(MIN_CONFIDENCE, x)))


def gap_confidences(gap: npt.NDArray[np.float64], half: float) -> npt.NDArray[np.float64]:
    """:func:`gap_confidence` elementwise."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return clamp_confidences(gap / (gap + half))
