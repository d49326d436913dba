"""Model features from the indicator set: :class:`FeatureSet`, the numbers a learned model reads on
each closed bar, computed the same way in training (:meth:`FeatureSet.matrix`, whole arrays) and in
serving (:meth:`FeatureSet.row`, one bar at a time, bit-identical to the matrix's row).

A feature is a recipe string over the close and the outputs of the indicator specs (see
:mod:`mambo.core.indicators.specs` for the output names):

* ``ret:K``: the return over the last K bars, ``close / close[t-K] - 1``;
* ``dist:NAME``: how far the close is from a price level, ``close / NAME - 1`` (averages, VWAP,
  SuperTrend...);
* ``rel:NAME``: a price difference relative to the close, ``NAME / close`` (ATR, MACD, stddev...);
* ``raw:NAME``: the value as it is (oscillators: RSI, stochastics, ADX, MFI...);
* ``pos:UPPER:LOWER``: where the close sits in a channel, ``(close - LOWER) / (UPPER - LOWER)``
  (0.5 when the channel has no width);
* ``width:UPPER:LOWER``: the channel's width relative to the close.

Every feature of bar t reads bar t and earlier bars only: the indicators are causal and ``ret:K``
looks back. Only ``+ - /`` are used, so the one-bar path gives the batch path's values bit for bit.
A feature that is not finite (an indicator still warming up, a lag not yet seen) leaves the bar
without a prediction.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mambo.core.indicators.specs import parse_spec

__all__ = ["FEATURE_FORMS", "FeatureSet"]

#: The recipe forms a feature can take.
FEATURE_FORMS: tuple[str, ...] = (
    "ret:K",
    "dist:NAME",
    "rel:NAME",
    "raw:NAME",
    "pos:UPPER:LOWER",
    "width:UPPER:LOWER",
)
_ARITY = {"ret": 1, "dist": 1, "rel": 1, "raw": 1, "pos": 2, "width": 2}
_MAX_LAG = 100_000

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class _Feature:
    text: str
    kind: str
    lag: int  # ret only
    names: tuple[str, ...]  # the indicator outputs it reads


def _parse(text: str, known: frozenset[str]) -> _Feature:
    if not isinstance(text, str):
        raise ValueError(f"a feature is a recipe string like 'ret:5' or 'raw:rsi_14', got {text!r}")
    kind, *args = text.split(":")
    if kind not in _ARITY:
        raise ValueError(f"unknown feature {text!r}; the forms: {', '.join(FEATURE_FORMS)}")
    if len(args) != _ARITY[kind]:
        form = next(f for f in FEATURE_FORMS if f.startswith(kind + ":"))
        raise ValueError(f"feature {text!r} should look like {form!r}")
    if kind == "ret":
        if not re.fullmatch(r"[0-9]+", args[0]) or not 1 <= int(args[0]) <= _MAX_LAG:
            raise ValueError(f"feature {text!r}: K must be a whole number from 1 to {_MAX_LAG}")
        return _Feature(text, kind, int(args[0]), ())
    unknown = [a for a in args if a not in known]
    if unknown:
        raise ValueError(
            f"feature {text!r} reads {', '.join(map(repr, unknown))}, which no indicator spec of the set "
            f"gives; their outputs: {', '.join(sorted(known)) or 'none'}"
        )
    return _Feature(text, kind, 0, tuple(args))


class FeatureSet:
    """Feature recipes over the outputs of indicator specs, validated together.

    ``FeatureSet(["ret:5", "raw:rsi_14"], ["rsi:14"])``. :attr:`features` and :attr:`indicators`
    keep the order given; :attr:`max_lag` is how many earlier closes :meth:`row` needs.
    """

    def __init__(self, features: Iterable[str], indicators: Iterable[str]) -> None:
        if isinstance(features, str) or isinstance(indicators, str):
            raise TypeError("FeatureSet takes lists of recipes and of indicator specs, not single strings")
        self.indicators: tuple[str, ...] = tuple(indicators)
        known = frozenset(n for spec in self.indicators for n in parse_spec(spec).names)
        self._features = tuple(_parse(f, known) for f in features)
        if not self._features:
            raise ValueError("a feature set needs at least one feature")
        self.features: tuple[str, ...] = tuple(f.text for f in self._features)
        if len(set(self.features)) != len(self.features):
            raise ValueError(f"repeated features in {list(self.features)}")
        self.max_lag: int = max((f.lag for f in self._features), default=0)

    def __repr__(self) -> str:
        return f"FeatureSet({list(self.features)!r}, {list(self.indicators)!r})"

    def matrix(self, close: npt.ArrayLike, values: Mapping[str, npt.ArrayLike]) -> Array:
        """Every feature on every bar, shape (bars, features), from the closes and the indicator
        outputs over the same bars (as :func:`~mambo.core.indicators.compute` gives them)."""
        c = np.ascontiguousarray(close, dtype=np.float64)
        n = len(c)

        def lagged(k: int) -> Array:
            out = np.full(n, np.nan)
            out[k:] = c[: n - k]
            return out

        def value(name: str) -> Array:
            return np.asarray(values[name], dtype=np.float64)

        out = np.empty((n, len(self._features)))
        with np.errstate(all="ignore"):
            for j, f in enumerate(self._features):
                out[:, j] = _column(f, c, lagged, value)
        return out

    def row(self, closes: Sequence[float], values: Mapping[str, float]) -> Array:
        """The features of one bar: ``closes`` ends with the bar's close, preceded by the earlier ones
        (at least :attr:`max_lag` of them once warm); ``values`` are the bar's indicator outputs (a
        missing one counts as NaN). Equal, bit for bit, to the bar's row of :meth:`matrix`."""
        c = np.array([closes[-1]], dtype=np.float64)

        def lagged(k: int) -> Array:
            return np.array([closes[-1 - k] if len(closes) > k else np.nan], dtype=np.float64)

        def value(name: str) -> Array:
            return np.array([values.get(name, np.nan)], dtype=np.float64)

        out = np.empty(len(self._features))
        with np.errstate(all="ignore"):
            for j, f in enumerate(self._features):
                out[j] = _column(f, c, lagged, value)[0]
        return out


def _column(
    f: _Feature, close: Array, lagged: Callable[[int], Array], value: Callable[[str], Array]
) -> Array:
    """One feature over arrays (the one formula both paths run)."""
    if f.kind == "ret":
        result: Array = close / lagged(f.lag) - 1.0
    elif f.kind == "dist":
        result = close / value(f.names[0]) - 1.0
    elif f.kind == "rel":
        result = value(f.names[0]) / close
    elif f.kind == "raw":
        result = value(f.names[0]).copy()
    elif f.kind == "pos":
        upper, lower = value(f.names[0]), value(f.names[1])
        width = upper - lower
        result = np.where(width == 0.0, 0.5, (close - lower) / width)
    else:  # width
        result = (value(f.names[0]) - value(f.names[1])) / close
    return result
