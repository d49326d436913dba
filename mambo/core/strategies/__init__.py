"""Strategies: from a closed candle and its indicator values to a buy, sell or hold decision.

Start with :mod:`~mambo.core.strategies.base` (:class:`Bar`, :class:`Decision`, :class:`Strategy`,
:func:`make_signal`), then the reference strategy :mod:`~mambo.core.strategies.sma_cross`. The
other built-ins (``ema_cross``, ``rsi_reversion``, ``macd_cross``, ``bollinger_breakout``) follow the
same shape; ``ml_signal`` decides with a model trained by ``mambo train`` (:mod:`mambo.ml`);
:mod:`~mambo.core.strategies.registry` finds them by name, or loads a user's own class from
``package.module:ClassName``.
"""

from mambo.core.strategies.base import (
    SIDE_CODES,
    Bar,
    BatchDecisions,
    Decision,
    Strategy,
    check_periods,
    check_positive,
    make_signal,
)
from mambo.core.strategies.bollinger_breakout import BollingerBreakout
from mambo.core.strategies.crossing import (
    MIN_CONFIDENCE,
    Crossing,
    clamp_confidence,
    clamp_confidences,
    crosses,
    gap_confidence,
    gap_confidences,
)
from mambo.core.strategies.ema_cross import EmaCross
from mambo.core.strategies.macd_cross import MacdCross
from mambo.core.strategies.ml_signal import MlSignal
from mambo.core.strategies.registry import STRATEGIES, StrategyConfigError, load_strategy, strategy_class
from mambo.core.strategies.rsi_reversion import RsiReversion
from mambo.core.strategies.sma_cross import SmaCross

__all__ = [
    "MIN_CONFIDENCE",
    "SIDE_CODES",
    "STRATEGIES",
    "Bar",
    "BatchDecisions",
    "BollingerBreakout",
    "Crossing",
    "Decision",
    "EmaCross",
    "MacdCross",
    "MlSignal",
    "RsiReversion",
    "SmaCross",
    "Strategy",
    "StrategyConfigError",
    "check_periods",
    "check_positive",
    "clamp_confidence",
    "clamp_confidences",
    "crosses",
    "gap_confidence",
    "gap_confidences",
    "load_strategy",
    "make_signal",
    "strategy_class",
]
