"""What a strategy is: the :class:`Bar` it sees, the :class:`Decision` it returns, and the
:class:`Strategy` base class, plus :func:`make_signal`, which turns a decision into a
:class:`~mambo.schemas.events.Signal` event.

A strategy sees one closed candle at a time together with that candle's indicator values, and nothing
else, so it cannot read the future. It keeps its state in its own instance (one per market and
timeframe) and returns a decision for every bar, a hold while it warms up: the aggregator waits for one
signal per strategy per bar. A strategy may also offer :meth:`Strategy.decide_batch`, the same
decisions over whole arrays of closed bars at once, which backtests use when it is there.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from mambo.schemas.events import Candle, Signal, SignalSide, make_id

__all__ = [
    "SIDE_CODES",
    "Bar",
    "BatchDecisions",
    "Decision",
    "Strategy",
    "check_periods",
    "check_positive",
    "make_signal",
]

#: Sides as the codes of :meth:`Strategy.decide_batch`: +1 buy, -1 sell, 0 hold.
SIDE_CODES: dict[int, SignalSide] = {1: "buy", -1: "sell", 0: "hold"}
#: What :meth:`Strategy.decide_batch` returns: side codes (int8) and confidences (float64), per bar.
BatchDecisions = tuple[npt.NDArray[np.int8], npt.NDArray[np.float64]]

_SIDES: frozenset[str] = frozenset(("buy", "sell", "hold"))


@dataclass(frozen=True)
class Bar:
    """A closed candle and the indicator values computed from it (names as the indicator set gives
    them: ``sma_50``, ``rsi_14``, ``macd_12_26_9``...)."""

    candle: Candle
    values: Mapping[str, float]

    def __post_init__(self) -> None:
        if not self.candle.closed:
            raise ValueError("a strategy only sees closed candles; this one is still open")

    @property
    def close(self) -> float:
        return self.candle.close

    def value(self, name: str) -> float:
        """Indicator value ``name``; NaN while it warms up or when the indicator set left it out."""
        return float(self.values.get(name, math.nan))


@dataclass(frozen=True)
class Decision:
    """What a strategy makes of one bar.

    ``confidence`` is in [0, 1] and a buy or a sell needs some (a call with no confidence is a hold).
    ``values`` are the numbers that justify the call; non-finite ones (indicators still warming up) are
    left out, so every signal survives a JSON round trip.
    """

    side: SignalSide
    confidence: float = 0.0
    values: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.side not in _SIDES:
            raise ValueError(f"side must be buy, sell or hold, got {self.side!r}")
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence must be in [0, 1], got {self.confidence!r}")
        if self.side != "hold" and self.confidence == 0.0:
            raise ValueError(f"a {self.side} needs a confidence > 0; with none it is a hold")
        finite = {k: float(v) for k, v in self.values.items() if math.isfinite(v)}
        object.__setattr__(self, "values", finite)

    @classmethod
    def hold(cls, values: Mapping[str, float] | None = None) -> Decision:
        """No call on this bar (confidence 0)."""
        return cls("hold", 0.0, dict(values or {}))


class Strategy(ABC):
    """A trading strategy for one market and timeframe.

    Write one as a ``@dataclass(kw_only=True)`` subclass: its init fields are its parameters (with
    defaults), its state lives in ``field(init=False)`` fields, and the dataclass gives the ``__eq__``
    and plain pickling that let a Faust table or a checkpoint hold it. Set the class attribute
    :attr:`name` (the name its signals carry), validate parameters in ``__post_init__``, and implement
    :meth:`indicators` and :meth:`on_bar`. See :class:`~mambo.core.strategies.sma_cross.SmaCross`.
    """

    #: The name signals carry and the aggregator weighs; unique among the strategies of a market.
    name: ClassVar[str]

    @abstractmethod
    def indicators(self) -> tuple[str, ...]:
        """The indicator specs this strategy reads (``"sma:50"``, ``"macd:12:26:9"``...)."""

    @abstractmethod
    def on_bar(self, bar: Bar) -> Decision:
        """The decision on one closed bar; called once per bar, in time order, never skipped."""

    def decide_batch(
        self, close: npt.NDArray[np.float64], values: Mapping[str, npt.NDArray[np.float64]]
    ) -> BatchDecisions | None:
        """Optional: the sides and confidences :meth:`on_bar` would give, from a fresh instance, on
        every bar of a series of closed bars (``close`` and each indicator output in ``values``,
        indexed by bar), as :data:`BatchDecisions`; a decision's values are not part of it.

        Element i must depend on bars 0..i only (a test checks it on prefixes). The default, None,
        means "not vectorized": backtests then call :meth:`on_bar` bar by bar. Leaves the instance's
        state alone.
        """
        return None


def check_periods(**periods: object) -> None:
    """ValueError unless every keyword is an int >= 1 (for strategies' ``__post_init__``)."""
    for name, period in periods.items():
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {period!r}")


def check_positive(**numbers: object) -> None:
    """ValueError unless every keyword is a finite number > 0 (for strategies' ``__post_init__``)."""
    for name, x in numbers.items():
        if isinstance(x, bool) or not isinstance(x, int | float) or not 0 < x < math.inf:
            raise ValueError(f"{name} must be a number > 0, got {x!r}")


def make_signal(strategy: Strategy | str, bar: Bar, decision: Decision, ts_init: int) -> Signal:
    """The :class:`~mambo.schemas.events.Signal` event of ``strategy``'s (or the strategy named so)
    decision on ``bar``, priced at the candle's close; its id is the same on every replay of that
    candle."""
    c = bar.candle
    name = strategy if isinstance(strategy, str) else strategy.name
    return Signal(
        event_id=make_id("signal", name, c.exchange, c.symbol, c.timeframe, c.ts_event),
        ts_event=c.ts_event,
        ts_init=ts_init,
        exchange=c.exchange,
        symbol=c.symbol,
        strategy=name,
        timeframe=c.timeframe,
        side=decision.side,
        confidence=decision.confidence,
        price=c.close,
        values=dict(decision.values),
    )
