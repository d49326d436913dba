"""Candles from trades, for any set of timeframes, in event time.

One :class:`CandleBuilder` per market holds the open candle of every timeframe. Trades go in one at a
time (:meth:`CandleBuilder.update`) or as a batch of numpy arrays (:meth:`CandleBuilder.update_batch`);
both run the same compiled kernel, so they give bit-identical candles.

Semantics (the stated policy):

* A candle of timeframe ``tf`` covers ``[open_time, open_time + tf)`` aligned to the Unix epoch. It
  closes when a trade at or after its end arrives (or when :meth:`CandleBuilder.advance` moves the
  watermark past its end). Its ``ts_event`` is its end.
* Intervals without trades produce no candle (a gap), as on most venues' trade-built bars.
* Late trades: once a bar is closed, by a later trade or by a watermark, it never opens again. A trade
  for a closed bar or an earlier one does not change that timeframe's candles; it is counted in
  :attr:`CandleBuilder.late_trades`. A watermark closes every bar that ends at or before it, the empty
  ones too, so a trade behind the watermark is late even where its bar had no trade: each
  (market, timeframe, open time) gives at most one candle, and a candle never arrives after a watermark
  past its end. The trade itself is still valid market data and is kept by the caller (the trades topic
  and table).
* Trades out of order within the open candle are fine: open is the first to arrive, close the last.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from mambo.schemas.events import Candle, make_id, timeframe_ns

__all__ = ["CandleBuilder", "candle_from_row"]

#: Where no bar has closed yet: no trade is late.
_NOTHING_CLOSED = np.iinfo(np.int64).min


@njit(cache=True, nogil=True)
def _aggregate(
    ts: np.ndarray,
    price: np.ndarray,
    qty: np.ndarray,
    tf_ns: np.ndarray,
    istate: np.ndarray,
    fstate: np.ndarray,
    closed_until: np.ndarray,
    late: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feed trades through every timeframe; returns the candles closed on the way.

    istate[k] = (open_time, n_trades) with open_time = -1 while no candle is open; fstate[k] = OHLCV;
    every bar of timeframe k that opens before closed_until[k] is closed (its trades are late).
    Out: (trade index that closed it, timeframe index, open_time, n) and OHLCV rows.
    """
    k = tf_ns.shape[0]
    cap = 16
    out_i = np.empty((cap, 4), np.int64)
    out_f = np.empty((cap, 5), np.float64)
    m = 0
    for i in range(ts.shape[0]):
        t = ts[i]
        p = price[i]
        q = qty[i]
        for j in range(k):
            ot = istate[j, 0]
            if ot >= 0 and ot <= t < ot + tf_ns[j]:  # the common case: inside the open candle
                istate[j, 1] += 1
                if p > fstate[j, 1]:
                    fstate[j, 1] = p
                if p < fstate[j, 2]:
                    fstate[j, 2] = p
                fstate[j, 3] = p
                fstate[j, 4] += q
                continue
            start = t - t % tf_ns[j]
            if start < closed_until[j]:
                late[j] += 1
                continue
            if ot >= 0:
                if m == cap:
                    cap *= 2
                    ni = np.empty((cap, 4), np.int64)
                    nf = np.empty((cap, 5), np.float64)
                    ni[:m] = out_i[:m]
                    nf[:m] = out_f[:m]
                    out_i = ni
                    out_f = nf
                out_i[m, 0] = i
                out_i[m, 1] = j
                out_i[m, 2] = ot
                out_i[m, 3] = istate[j, 1]
                out_f[m, :] = fstate[j, :]
                m += 1
            istate[j, 0] = start
            istate[j, 1] = 1
            closed_until[j] = start
            fstate[j, 0] = p
            fstate[j, 1] = p
            fstate[j, 2] = p
            fstate[j, 3] = p
            fstate[j, 4] = q
    return out_i[:m], out_f[:m], late


def candle_from_row(
    exchange: str,
    symbol: str,
    timeframe: str,
    tf_len: int,
    open_time: int,
    ohlcv: Iterable[float],
    n: int,
    ts_init: int,
) -> Candle:
    """The Candle event of one closed kernel row (ids are deterministic from the bar's identity)."""
    o, h, lo, c, v = (float(x) for x in ohlcv)
    end = open_time + tf_len
    return Candle.model_construct(
        event_id=make_id("candle", exchange, symbol, timeframe, open_time),
        ts_event=end,
        ts_init=ts_init,
        exchange=exchange,
        symbol=symbol,
        timeframe=timeframe,
        open_time=open_time,
        open=o,
        high=h,
        low=lo,
        close=c,
        volume=v,
        trades=n,
        closed=True,
    )


@dataclass(eq=False)
class CandleBuilder:
    """Open candles of one market for a set of timeframes (the per-partition state)."""

    exchange: str
    symbol: str
    timeframes: tuple[str, ...]
    _tf_ns: np.ndarray = field(init=False, repr=False)
    _istate: np.ndarray = field(init=False, repr=False)
    _fstate: np.ndarray = field(init=False, repr=False)
    _closed_until: np.ndarray = field(init=False, repr=False)
    _late: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.timeframes = tuple(sorted(set(self.timeframes), key=timeframe_ns))
        if not self.timeframes:
            raise ValueError("a CandleBuilder needs at least one timeframe")
        self._tf_ns = np.array([timeframe_ns(tf) for tf in self.timeframes], np.int64)
        k = len(self.timeframes)
        self._istate = np.full((k, 2), -1, np.int64)
        self._fstate = np.zeros((k, 5), np.float64)
        self._closed_until = np.full(k, _NOTHING_CLOSED, np.int64)
        self._late = np.zeros(k, np.int64)

    def __setstate__(self, state: dict[str, object]) -> None:
        """Restore pickled state (a changelog's); state pickled before closed bars were remembered
        (issue 12 #7) knows only that the bars before each open one are closed."""
        self.__dict__.update(state)
        if "_closed_until" not in state:
            ot = self._istate[:, 0]
            self._closed_until = np.where(ot >= 0, ot, _NOTHING_CLOSED).astype(np.int64)

    @property
    def late_trades(self) -> dict[str, int]:
        """Trades that arrived after their bar had closed (by a later trade or a watermark), per timeframe."""
        return dict(zip(self.timeframes, self._late.tolist(), strict=True))

    def update_batch(
        self, ts: np.ndarray, price: np.ndarray, qty: np.ndarray, ts_init: int = 0
    ) -> list[tuple[int, Candle]]:
        """Feed a batch of valid trades; returns ``(index of the closing trade, candle)`` in order."""
        rows_i, rows_f, _ = _aggregate(
            np.ascontiguousarray(ts, np.int64),
            np.ascontiguousarray(price, np.float64),
            np.ascontiguousarray(qty, np.float64),
            self._tf_ns,
            self._istate,
            self._fstate,
            self._closed_until,
            self._late,
        )
        return [
            self._candle(ri, rf, ts_init) for ri, rf in zip(rows_i.tolist(), rows_f.tolist(), strict=True)
        ]

    def update(self, ts: int, price: float, qty: float, ts_init: int = 0) -> list[Candle]:
        """Feed one trade; returns the candles it closed (shortest timeframe first)."""
        closed = self.update_batch(
            np.array([ts], np.int64), np.array([price], np.float64), np.array([qty], np.float64), ts_init
        )
        return [c for _, c in closed]

    def advance(self, watermark: int, ts_init: int = 0) -> list[Candle]:
        """Close every bar that ends at or before ``watermark`` (no trade needed): the open candles
        among them are returned, and a later trade for any of them is late."""
        out = []
        for j in range(len(self.timeframes)):
            ot, n = self._istate[j]
            tf = self._tf_ns[j]
            if ot >= 0 and ot + tf <= watermark:
                out.append(self._candle((0, j, int(ot), int(n)), self._fstate[j].tolist(), ts_init)[1])
                self._istate[j, 0] = -1
            # the bar holding the watermark is the first that may still take trades
            self._closed_until[j] = max(self._closed_until[j], watermark - watermark % tf)
        return out

    def open_candles(self) -> list[Candle]:
        """The candles still open (``closed=False``), e.g. for a live chart."""
        out = []
        for j in range(len(self.timeframes)):
            ot, n = self._istate[j]
            if ot >= 0:
                c = self._candle((0, j, int(ot), int(n)), self._fstate[j].tolist(), 0)[1]
                out.append(c.model_copy(update={"closed": False}))
        return out

    def _candle(self, ri: Iterable[int], rf: list[float], ts_init: int) -> tuple[int, Candle]:
        idx, j, ot, n = ri
        tf = self.timeframes[j]
        return idx, candle_from_row(self.exchange, self.symbol, tf, int(self._tf_ns[j]), ot, rf, n, ts_init)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CandleBuilder):
            return NotImplemented
        return (
            (self.exchange, self.symbol, self.timeframes) == (other.exchange, other.symbol, other.timeframes)
            and np.array_equal(self._istate, other._istate)
            and np.array_equal(self._fstate, other._fstate)
            and np.array_equal(self._closed_until, other._closed_until)
            and np.array_equal(self._late, other._late)
        )
