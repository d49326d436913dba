"""The indicator arithmetic: one numba step function per indicator, and the loops that drive them.

An indicator's state is a flat float64 array (its layout is written at its step function) and its
parameters another; :func:`step` advances one indicator by one bar. The incremental path
(:func:`step_all`, one bar for every indicator of a set) and the batch path (:func:`run_all`, many
bars) both call that one compiled function, so they do the same float operations in the same order
and agree bit for bit.

The steps follow TA-Lib's arithmetic (its warm-up, its seeding, its order of operations), so they
agree with it to the last bits or nearly. Two deliberate departures, both for long streams:

- Window sums are running sums (TA-Lib's order: add the new value, drop the oldest), but each time
  the ring buffer wraps the sum is rebuilt from the ring, so rounding never accumulates over more
  than one window. TA-Lib's running sums (and WMA's sum of sums) drift without bound.
- The Bollinger deviation is the two-pass ``sqrt(mean((x - sma)**2))`` over the window, not
  TA-Lib's ``E[x**2] - sma**2``, which cancels catastrophically on prices like 47,000 and which it
  then zeroes below 1e-14.

Inputs must be finite; counts are kept as float64 (exact up to 2**53 bars).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = [
    "ADX",
    "ATR",
    "BBANDS",
    "CCI",
    "EMA",
    "MACD",
    "OBV",
    "RSI",
    "SMA",
    "STOCH",
    "VWAP",
    "WILLR",
    "WMA",
    "run_all",
    "state_size",
    "step",
    "step_all",
]

# Indicator kinds (the first argument of `step`).
SMA, EMA, WMA, RSI, MACD, BBANDS, ATR, STOCH, WILLR, CCI, OBV, VWAP, ADX = range(13)

NS_PER_DAY = 86_400_000_000_000
# TA-Lib's TA_IS_ZERO: a denominator this close to zero gives 0 instead of a division.
_EPSILON = 1e-14
_NAN = np.nan


def state_size(kind: int, params: tuple[float, ...]) -> int:
    """Length of the state array of an indicator (the layouts are at the step functions)."""
    n = int(params[0]) if params else 0
    if kind in (SMA, BBANDS):
        return 2 + n
    if kind == WMA:
        return 3 + n
    if kind == STOCH:
        fast_k, slow_k, slow_d = (int(x) for x in params)
        return 1 + 2 * fast_k + (2 + slow_k) + (2 + slow_d)
    if kind == WILLR:
        return 1 + 2 * n
    if kind == CCI:
        return 1 + n
    return {EMA: 2, RSI: 4, MACD: 4, ATR: 3, OBV: 3, VWAP: 3, ADX: 8}[kind]


# --- shared pieces -----------------------------------------------------------------------------


@njit(cache=True)
def _is_zero(x: float) -> bool:
    return -_EPSILON < x < _EPSILON


@njit(cache=True)
def _ema_next(prev: float, x: float, k: float) -> float:
    return ((x - prev) * k) + prev


@njit(cache=True)
def _wilder_next(prev: float, x: float, n: int) -> float:
    return (prev * (n - 1) + x) / n


@njit(cache=True)
def _true_range(high: float, low: float, prev_close: float) -> float:
    out = high - low
    up = abs(high - prev_close)
    if up > out:
        out = up
    down = abs(low - prev_close)
    if down > out:
        out = down
    return out


@njit(cache=True)
def _typical_price(high: float, low: float, close: float) -> float:
    return (high + low + close) / 3.0


@njit(cache=True)
def _window_mean(s, off, n, x):
    """Push ``x`` into the window at ``s[off:]``; its mean once it holds ``n`` values, else NaN.

    Layout ``[pushed, partial, ring(n)]``: value number i sits at ``ring[i % n]``; ``partial`` is the
    sum of the newest n-1 values.
    """
    pushed = int(s[off]) + 1
    s[off] = pushed
    ring = off + 2
    pos = (pushed - 1) % n
    s[ring + pos] = x
    total = s[off + 1] + x
    if pushed < n:
        s[off + 1] = total
        return _NAN
    if pos == n - 1:  # wrapped: the oldest sits at ring[0]; rebuild the newest n-1 in time order
        partial = 0.0
        for j in range(1, n):
            partial += s[ring + j]
        s[off + 1] = partial
    else:
        s[off + 1] = total - s[ring + pos + 1]
    return total / n


@njit(cache=True)
def _push_range(s, n, high, low):
    """Push a bar into the high/low rings at ``s[0:1+2n]`` (``[pushed, highs(n), lows(n)]``).

    Returns ``(pushed, highest, lowest)``; the extremes are over the last n bars once pushed >= n.
    """
    pushed = int(s[0]) + 1
    s[0] = pushed
    pos = (pushed - 1) % n
    s[1 + pos] = high
    s[1 + n + pos] = low
    highest = s[1]
    lowest = s[1 + n]
    for j in range(1, min(pushed, n)):
        if s[1 + j] > highest:
            highest = s[1 + j]
        if s[1 + n + j] < lowest:
            lowest = s[1 + n + j]
    return pushed, highest, lowest


# --- one step per indicator: (params, state, inputs..., out) -----------------------------------


@njit(cache=True)
def _sma(p, s, close, out):
    """``[pushed, partial, ring(n)]``; TA-Lib SMA."""
    out[0] = _window_mean(s, 0, int(p[0]), close)


@njit(cache=True)
def _ema(p, s, close, out):
    """``[count, value]``; TA-Lib EMA: k = 2/(n+1), seeded by the SMA of the first n closes."""
    n = int(p[0])
    count = s[0] + 1
    s[0] = count
    if count < n:
        s[1] += close
        out[0] = _NAN
        return
    if count == n:
        s[1] = (s[1] + close) / n
    else:
        s[1] = _ema_next(s[1], close, 2.0 / (n + 1))
    out[0] = s[1]


@njit(cache=True)
def _wma(p, s, close, out):
    """``[count, weighted, plain, ring(n)]``; TA-Lib WMA (weights 1..n, newest n).

    Between bars ``weighted`` holds the window's sum with every weight already lowered by one and
    ``plain`` the window's plain sum; both are rebuilt from the ring when it wraps.
    """
    n = int(p[0])
    count = int(s[0]) + 1
    s[0] = count
    ring = 3
    pos = (count - 1) % n
    if count < n:
        s[ring + pos] = close
        s[2] += close
        s[1] += close * count
        out[0] = _NAN
        return
    trailing = s[ring + pos] if count > n else 0.0
    s[ring + pos] = close
    s[2] += close
    s[2] -= trailing
    s[1] += close * n
    out[0] = s[1] / ((n * (n + 1)) // 2)
    if pos == n - 1:  # wrapped: the ring is in time order, rebuild both sums
        plain = 0.0
        weighted = 0.0
        for j in range(n):
            plain += s[ring + j]
            weighted += s[ring + j] * j
        s[1] = weighted
        s[2] = plain
    else:
        s[1] -= s[2]


@njit(cache=True)
def _rsi(p, s, close, out):
    """``[count, prev_close, avg_gain, avg_loss]``; TA-Lib RSI (Wilder, seeded by n-bar means)."""
    n = int(p[0])
    count = s[0] + 1
    s[0] = count
    change = close - s[1]
    s[1] = close
    out[0] = _NAN
    if count == 1:
        return
    gain = change if change >= 0 else 0.0
    loss = -change if change < 0 else 0.0
    moves = count - 1
    if moves < n:
        s[2] += gain
        s[3] += loss
        return
    if moves == n:
        s[2] = (s[2] + gain) / n
        s[3] = (s[3] + loss) / n
    else:
        s[2] = _wilder_next(s[2], gain, n)
        s[3] = _wilder_next(s[3], loss, n)
    total = s[2] + s[3]
    out[0] = 0.0 if _is_zero(total) else 100.0 * (s[2] / total)


@njit(cache=True)
def _macd(p, s, close, out):
    """``[count, fast_ema, slow_ema, signal]``; TA-Lib MACD.

    As in TA-Lib, both EMAs start on bar slow-1: the slow one seeded by the mean of the first
    ``slow`` closes, the fast one by the mean of the ``fast`` closes ending there. The signal is an
    EMA of the MACD line seeded by the mean of its first ``signal`` values; all three outputs start
    when the signal does.
    """
    fast, slow, signal = int(p[0]), int(p[1]), int(p[2])
    count = s[0] + 1
    s[0] = count
    out[0] = out[1] = out[2] = _NAN
    if count <= slow:
        s[2] += close
        if count > slow - fast:
            s[1] += close
        if count < slow:
            return
        s[1] /= fast
        s[2] /= slow
    else:
        s[1] = _ema_next(s[1], close, 2.0 / (fast + 1))
        s[2] = _ema_next(s[2], close, 2.0 / (slow + 1))
    line = s[1] - s[2]
    values = count - slow + 1
    if values < signal:
        s[3] += line
        return
    if values == signal:
        s[3] = (s[3] + line) / signal
    else:
        s[3] = _ema_next(s[3], line, 2.0 / (signal + 1))
    out[0] = line
    out[1] = s[3]
    out[2] = line - s[3]


@njit(cache=True)
def _bbands(p, s, close, out):
    """``[pushed, partial, ring(n)]``; middle = TA-Lib SMA, bands = middle +/- k * population stdev."""
    n = int(p[0])
    middle = _window_mean(s, 0, n, close)
    if np.isnan(middle):
        out[0] = out[1] = out[2] = _NAN
        return
    sq = 0.0
    for j in range(n):
        d = s[2 + j] - middle
        sq += d * d
    width = np.sqrt(sq / n) * p[1]
    out[0] = middle + width
    out[1] = middle
    out[2] = middle - width


@njit(cache=True)
def _atr(p, s, high, low, close, out):
    """``[count, prev_close, value]``; TA-Lib ATR: Wilder mean of true range seeded by its n-bar mean."""
    n = int(p[0])
    count = s[0] + 1
    s[0] = count
    prev_close = s[1]
    s[1] = close
    out[0] = _NAN
    if count == 1:
        return
    tr = _true_range(high, low, prev_close)
    ranges = count - 1
    if ranges < n:
        s[2] += tr
        return
    s[2] = (s[2] + tr) / n if ranges == n else _wilder_next(s[2], tr, n)
    out[0] = s[2]


@njit(cache=True)
def _stoch(p, s, high, low, close, out):
    """``[pushed, highs(k), lows(k), slow_k window, slow_d window]``; TA-Lib STOCH with SMA smoothing.

    Both outputs start when %D does (TA-Lib's convention).
    """
    fast_k, slow_k, slow_d = int(p[0]), int(p[1]), int(p[2])
    out[0] = out[1] = _NAN
    pushed, highest, lowest = _push_range(s, fast_k, high, low)
    if pushed < fast_k:
        return
    diff = (highest - lowest) / 100.0
    raw = (close - lowest) / diff if diff != 0.0 else 0.0
    k_off = 1 + 2 * fast_k
    k = _window_mean(s, k_off, slow_k, raw)
    if np.isnan(k):
        return
    d = _window_mean(s, k_off + 2 + slow_k, slow_d, k)
    if np.isnan(d):
        return
    out[0] = k
    out[1] = d


@njit(cache=True)
def _willr(p, s, high, low, close, out):
    """``[pushed, highs(n), lows(n)]``; TA-Lib WILLR (-100..0)."""
    n = int(p[0])
    pushed, highest, lowest = _push_range(s, n, high, low)
    if pushed < n:
        out[0] = _NAN
        return
    diff = (highest - lowest) / -100.0
    out[0] = (highest - close) / diff if diff != 0.0 else 0.0


@njit(cache=True)
def _cci(p, s, high, low, close, out):
    """``[pushed, ring(n)]`` of typical prices, bar i at ``ring[i % n]``; TA-Lib CCI.

    The window is summed in ring order, as TA-Lib's circular buffer is.
    """
    n = int(p[0])
    pushed = int(s[0]) + 1
    s[0] = pushed
    typical = _typical_price(high, low, close)
    s[1 + (pushed - 1) % n] = typical
    if pushed < n:
        out[0] = _NAN
        return
    mean = 0.0
    for j in range(n):
        mean += s[1 + j]
    mean /= n
    dev = 0.0
    for j in range(n):
        dev += abs(s[1 + j] - mean)
    above = typical - mean
    out[0] = above / (0.015 * (dev / n)) if above != 0.0 and dev != 0.0 else 0.0


@njit(cache=True)
def _obv(s, close, volume, out):
    """``[count, prev_close, obv]``; TA-Lib OBV, starting at the first bar's volume."""
    if s[0] == 0:
        s[2] = volume
    elif close > s[1]:
        s[2] += volume
    elif close < s[1]:
        s[2] -= volume
    s[0] += 1
    s[1] = close
    out[0] = s[2]


@njit(cache=True)
def _vwap(s, ts, high, low, close, volume, out):
    """``[utc_day, sum(typical * volume), sum(volume)]``; session VWAP, reset at 00:00 UTC.

    NaN until the session has traded volume.
    """
    day = ts // NS_PER_DAY
    if day != s[0]:
        s[0] = day
        s[1] = 0.0
        s[2] = 0.0
    s[1] += _typical_price(high, low, close) * volume
    s[2] += volume
    out[0] = s[1] / s[2] if s[2] > 0.0 else _NAN


@njit(cache=True)
def _adx(p, s, high, low, close, out):
    """``[count, prev_high, prev_low, prev_close, plus_dm, minus_dm, tr, dx_sum/adx]``; TA-Lib ADX.

    Outputs ``(adx, plus_di, minus_di)``: the DIs from bar n, ADX from bar 2n-1 (the mean of the
    first n DX values, then Wilder smoothing; a bar whose DX is undefined leaves it unchanged).
    """
    n = int(p[0])
    count = s[0] + 1
    s[0] = count
    out[0] = out[1] = out[2] = _NAN
    up = high - s[1]
    down = s[2] - low
    prev_close = s[3]
    s[1] = high
    s[2] = low
    s[3] = close
    if count == 1:
        return
    plus_dm = 0.0
    minus_dm = 0.0
    if down > 0 and up < down:
        minus_dm = down
    elif up > 0 and up > down:
        plus_dm = up
    tr = _true_range(high, low, prev_close)
    moves = count - 1
    if moves < n:
        s[4] += plus_dm
        s[5] += minus_dm
        s[6] += tr
        return
    s[4] = s[4] - s[4] / n + plus_dm
    s[5] = s[5] - s[5] / n + minus_dm
    s[6] = s[6] - s[6] / n + tr
    plus_di = minus_di = 0.0
    dx = _NAN
    if not _is_zero(s[6]):
        minus_di = 100.0 * (s[5] / s[6])
        plus_di = 100.0 * (s[4] / s[6])
        di_sum = minus_di + plus_di
        if not _is_zero(di_sum):
            dx = 100.0 * (abs(minus_di - plus_di) / di_sum)
    out[1] = plus_di
    out[2] = minus_di
    if moves < 2 * n - 1:
        if not np.isnan(dx):
            s[7] += dx
        return
    if moves == 2 * n - 1:
        if not np.isnan(dx):
            s[7] += dx
        s[7] /= n
    elif not np.isnan(dx):
        s[7] = _wilder_next(s[7], dx, n)
    out[0] = s[7]


# --- drivers -----------------------------------------------------------------------------------


@njit(cache=True)
def step(kind, p, s, ts, open_, high, low, close, volume, out):
    """Advance one indicator by one bar, writing its outputs to ``out[:n_outputs]``."""
    if kind == SMA:
        _sma(p, s, close, out)
    elif kind == EMA:
        _ema(p, s, close, out)
    elif kind == WMA:
        _wma(p, s, close, out)
    elif kind == RSI:
        _rsi(p, s, close, out)
    elif kind == MACD:
        _macd(p, s, close, out)
    elif kind == BBANDS:
        _bbands(p, s, close, out)
    elif kind == ATR:
        _atr(p, s, high, low, close, out)
    elif kind == STOCH:
        _stoch(p, s, high, low, close, out)
    elif kind == WILLR:
        _willr(p, s, high, low, close, out)
    elif kind == CCI:
        _cci(p, s, high, low, close, out)
    elif kind == OBV:
        _obv(s, close, volume, out)
    elif kind == VWAP:
        _vwap(s, ts, high, low, close, volume, out)
    elif kind == ADX:
        _adx(p, s, high, low, close, out)


@njit(cache=True)
def step_all(kinds, params, p_off, state, s_off, o_off, ts, open_, high, low, close, volume, out):
    """One bar through every indicator of a set; indicator i owns ``params[p_off[i]:p_off[i+1]]``,
    ``state[s_off[i]:s_off[i+1]]`` and ``out[o_off[i]:o_off[i+1]]``."""
    for i in range(len(kinds)):
        step(
            kinds[i],
            params[p_off[i] : p_off[i + 1]],
            state[s_off[i] : s_off[i + 1]],
            ts,
            open_,
            high,
            low,
            close,
            volume,
            out[o_off[i] : o_off[i + 1]],
        )


@njit(cache=True)
def run_all(kinds, params, p_off, state, s_off, o_off, ts, open_, high, low, close, volume, out):
    """Many bars through every indicator of a set: ``out[o_off[i] + j, bar]`` is output j of
    indicator i. Indicator by indicator, each bar through the same :func:`step` as
    :func:`step_all`."""
    scratch = np.empty(out.shape[0])
    for i in range(len(kinds)):
        kind = kinds[i]
        p = params[p_off[i] : p_off[i + 1]]
        s = state[s_off[i] : s_off[i + 1]]
        first, last = o_off[i], o_off[i + 1]
        for bar in range(len(close)):
            step(kind, p, s, ts[bar], open_[bar], high[bar], low[bar], close[bar], volume[bar], scratch)
            for j in range(first, last):
                out[j, bar] = scratch[j - first]
