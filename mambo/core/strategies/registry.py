"""The strategies Mambo ships, by name, and :func:`load_strategy`, which also loads a user's own
strategy class from ``package.module:ClassName``."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from mambo.core.strategies.base import Strategy
from mambo.core.strategies.bollinger_breakout import BollingerBreakout
from mambo.core.strategies.ema_cross import EmaCross
from mambo.core.strategies.macd_cross import MacdCross
from mambo.core.strategies.ml_signal import MlSignal
from mambo.core.strategies.rsi_reversion import RsiReversion
from mambo.core.strategies.sma_cross import SmaCross

__all__ = ["STRATEGIES", "StrategyConfigError", "load_strategy", "strategy_class"]

#: Built-in strategies by name.
STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (SmaCross, RsiReversion, MacdCross, BollingerBreakout, EmaCross, MlSignal)
}


class StrategyConfigError(ValueError):
    """A strategy reference or its parameters are wrong: fix the configuration, retrying won't help."""


def strategy_class(ref: str) -> type[Strategy]:
    """The class ``ref`` names: a registered name (``"sma_cross"``) or ``"package.module:ClassName"``."""
    if ":" in ref:
        module_name, _, class_name = ref.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise StrategyConfigError(f"strategy {ref!r}: cannot import {module_name!r}: {e}") from e
        found = getattr(module, class_name, None)
        if found is None:
            raise StrategyConfigError(f"strategy {ref!r}: module {module_name!r} has no {class_name!r}")
    elif ref in STRATEGIES:
        found = STRATEGIES[ref]
    else:
        raise StrategyConfigError(
            f"unknown strategy {ref!r}; registered: {', '.join(sorted(STRATEGIES))}; "
            "for your own, give 'package.module:ClassName'"
        )
    if not (isinstance(found, type) and issubclass(found, Strategy)):
        raise StrategyConfigError(f"strategy {ref!r}: {found!r} is not a Strategy subclass")
    if inspect.isabstract(found):
        missing = ", ".join(sorted(found.__abstractmethods__))
        raise StrategyConfigError(f"strategy {ref!r}: {found.__name__} does not implement {missing}")
    if not isinstance(getattr(found, "name", None), str) or not found.name:
        raise StrategyConfigError(f"strategy {ref!r}: {found.__name__} must set the class attribute name")
    return found


def load_strategy(ref: str, **params: Any) -> Strategy:
    """A new strategy instance from a reference (see :func:`strategy_class`) and its parameters;
    :class:`StrategyConfigError` names what is wrong and which parameters the strategy takes."""
    cls = strategy_class(ref)
    signature = inspect.signature(cls)
    try:
        signature.bind(**params)
    except TypeError as e:
        accepted = ", ".join(signature.parameters) or "none"
        raise StrategyConfigError(f"strategy {ref!r}: {e}; its parameters: {accepted}") from None
    try:
        return cls(**params)
    except (TypeError, ValueError) as e:
        raise StrategyConfigError(f"strategy {ref!r}: bad parameters: {e}") from e
