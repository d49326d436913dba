"""``ema_cross``: a crossover of a fast and a slow exponential moving average."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mambo.core.strategies.sma_cross import SmaCross

__all__ = ["EmaCross"]


@dataclass(kw_only=True)
class EmaCross(SmaCross):
    """Buy when the fast EMA crosses above the slow one, sell when it crosses below.

    The semantics of :class:`~mambo.core.strategies.sma_cross.SmaCross` on TA-Lib's EMA (``ema:N``,
    smoothing 2/(N+1), seeded by the SMA of the first N closes): a cross is a change of sign of
    (fast - slow), a difference of exactly zero keeps the previous sign, the first sign after warm-up
    gives no signal; confidence is the gap relative to the close, ``half_gap`` giving 0.5.

    Values: ``ema_fast``, ``ema_slow``, and the same averages named by their periods (``ema_12``,
    ``ema_26``).
    """

    name: ClassVar[str] = "ema_cross"
    average: ClassVar[str] = "ema"

    fast: int = 12
    slow: int = 26
