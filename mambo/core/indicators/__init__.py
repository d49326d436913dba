"""Technical indicators: pure, incremental, checked against TA-Lib.

SMA, EMA, WMA, RSI, MACD, Bollinger Bands, ATR, Stochastic, Williams %R, CCI, OBV, session VWAP,
ADX, standard deviation, MFI, Ichimoku, Donchian and Keltner channels, parabolic SAR, SuperTrend and a
rolling volume profile, named by spec strings (``"sma:50"``, ``"macd:12:26:9"``; see :mod:`.specs`).
Where to start:

- :class:`IndicatorSet`: the per-market state; ``update`` takes one closed candle and returns every
  output by name (NaN while warming up). It pickles and compares, for Faust tables and checkpoints.
- :func:`compute`: the same over whole arrays, for backtests; bit-identical to ``update`` bar by bar.
- :mod:`.kernels`: the arithmetic (numba), one step function per indicator that both paths run, and
  where it follows or departs from TA-Lib.
"""

from mambo.core.indicators.indicator_set import IndicatorSet, compute
from mambo.core.indicators.specs import FORMS, output_names

__all__ = ["FORMS", "IndicatorSet", "compute", "output_names"]
