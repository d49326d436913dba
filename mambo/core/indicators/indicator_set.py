"""The indicators of one market and timeframe: :class:`IndicatorSet` (bar by bar, or many bars at
once) and :func:`compute` (whole arrays from a fresh state). A single bar goes through the same
kernels as a batch, as arrays of length one, so the two agree bit for bit."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from mambo.core.indicators.kernels import run_all, state_size, step_all
from mambo.core.indicators.specs import Spec, parse_spec

__all__ = ["IndicatorSet", "compute"]


def _offsets(sizes: Iterable[int]) -> npt.NDArray[np.int64]:
    return np.concatenate([[0], np.cumsum(list(sizes), dtype=np.int64)]).astype(np.int64)


class IndicatorSet:
    """The state of a set of indicators, advanced one closed candle at a time.

    ``IndicatorSet(["sma:50", "rsi:14"])`` parses and de-duplicates the specs (see
    :mod:`mambo.core.indicators.specs`); :attr:`names` lists every output in spec order. Instances
    pickle, and compare equal when they compute the same outputs from the same state, so a Faust
    table or a checkpoint can hold one per market and timeframe. Not for sharing between threads.
    """

    def __init__(self, specs: Iterable[str]) -> None:
        self._build(specs)

    def _build(self, specs: Iterable[str]) -> None:
        if isinstance(specs, str):
            raise TypeError(f"IndicatorSet takes a list of specs, e.g. [{specs!r}], not a single string")
        parsed: dict[tuple[str, ...], Spec] = {}
        for text in specs:
            spec = parse_spec(text)
            parsed.setdefault(spec.names, spec)
        self.specs: tuple[str, ...] = tuple(s.text for s in parsed.values())
        self.names: tuple[str, ...] = tuple(n for s in parsed.values() for n in s.names)
        self._kinds = np.array([s.kind for s in parsed.values()], dtype=np.int64)
        self._params = np.array([x for s in parsed.values() for x in s.params], dtype=np.float64)
        self._p_off = _offsets(len(s.params) for s in parsed.values())
        self._s_off = _offsets(state_size(s.kind, s.params) for s in parsed.values())
        self._o_off = _offsets(len(s.names) for s in parsed.values())
        self._state = np.zeros(int(self._s_off[-1]), dtype=np.float64)
        self._out = np.empty(len(self.names), dtype=np.float64)

    def update(
        self, ts: int, open: float, high: float, low: float, close: float, volume: float
    ) -> dict[str, float]:
        """Advance by one closed candle (``ts``: its open time, ns since epoch UTC).

        Returns every output by name; NaN while an indicator is warming up.
        """
        step_all(
            self._kinds,
            self._params,
            self._p_off,
            self._state,
            self._s_off,
            self._o_off,
            int(ts),
            float(open),
            float(high),
            float(low),
            float(close),
            float(volume),
            self._out,
        )
        return dict(zip(self.names, self._out.tolist(), strict=True))

    def update_many(
        self,
        ts: npt.ArrayLike,
        open: npt.ArrayLike,
        high: npt.ArrayLike,
        low: npt.ArrayLike,
        close: npt.ArrayLike,
        volume: npt.ArrayLike,
    ) -> dict[str, npt.NDArray[np.float64]]:
        """Advance by many candles at once: the same values, bit for bit, as :meth:`update` on each
        in turn. ``ts`` is int64 ns (or datetime64); returns one float64 array per output name."""
        times = np.asarray(ts)
        if times.dtype.kind == "M":
            times = times.astype("datetime64[ns]").view(np.int64)
        times = np.ascontiguousarray(times, dtype=np.int64)
        prices = [np.ascontiguousarray(a, dtype=np.float64) for a in (open, high, low, close, volume)]
        if any(a.ndim != 1 or a.shape != times.shape for a in [times, *prices]):
            raise ValueError("ts, open, high, low, close and volume must be 1-D arrays of one length")
        out = np.empty((len(self.names), len(times)), dtype=np.float64)
        run_all(
            self._kinds,
            self._params,
            self._p_off,
            self._state,
            self._s_off,
            self._o_off,
            times,
            prices[0],
            prices[1],
            prices[2],
            prices[3],
            prices[4],
            out,
        )
        return dict(zip(self.names, out, strict=True))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IndicatorSet):
            return NotImplemented
        return self.names == other.names and np.array_equal(self._state, other._state, equal_nan=True)

    def __repr__(self) -> str:
        return f"IndicatorSet({list(self.specs)!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"specs": self.specs, "state": self._state}

    def __setstate__(self, saved: dict[str, Any]) -> None:
        self._build(saved["specs"])
        self._state[:] = saved["state"]


def compute(
    specs: Iterable[str],
    ts: npt.ArrayLike,
    open: npt.ArrayLike,
    high: npt.ArrayLike,
    low: npt.ArrayLike,
    close: npt.ArrayLike,
    volume: npt.ArrayLike,
) -> dict[str, npt.NDArray[np.float64]]:
    """Every output of ``specs`` over whole candle arrays, from a fresh state; bit-identical to feeding
    the candles one at a time through :meth:`IndicatorSet.update`."""
    return IndicatorSet(specs).update_many(ts, open, high, low, close, volume)
