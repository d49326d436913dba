"""The indicator arithmetic: one numba kernel per indicator, and the two entry points that run them.

A kernel advances one indicator over a run of bars: it reads its state from a flat float64 array
(the layout is written at each kernel), writes one row per output, and leaves the state for the next
run. :func:`run_all` runs every indicator of a set over arrays of bars; :func:`step_all` wraps one
bar as arrays of length one and calls :func:`run_all`. So the incremental and the batch path are
one code path, and agree bit for bit by construction.

The kernels follow TA-Lib's C source: its warm-up, its seeding, its order of operations (the TA-Lib
0.8 wheels themselves are compiled with reciprocal-style optimisations, so some results differ from
theirs in the last bits). Stochastic and Williams %R take the ratio first and then scale it, as
those wheels do, so they stay within 0..100 and -100..0 exactly. Departures, for long streams and
degenerate windows:

- Window sums are running sums (TA-Lib's order: add the new value, drop the oldest), but each time
  the ring buffer wraps the sum is rebuilt from the ring, so rounding never accumulates over more
  than one window. TA-Lib's running sums drift without bound (WMA's sum of sums fastest), and leave
  residue like 1e-13 where the exact value is 0 (a Stochastic %K of three zeros).
- The Bollinger deviation is the two-pass ``sqrt(mean((x - sma)**2))`` over the window, not
  TA-Lib's ``E[x**2] - sma**2``, which cancels catastrophically on prices like 47,000 and which it
  then zeroes below 1e-14.
- A CCI window of one repeated price gives 0 (see :func:`_cci`).

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
    "step_all",
]

# Indicator kinds.
SMA, EMA, WMA, RSI, MACD, BBANDS, ATR, STOCH, WILLR, CCI, OBV, VWAP, ADX = range(13)

NS_PER_DAY = 86_400_000_000_000
# TA-Lib's TA_IS_ZERO: a denominator this close to zero gives 0 instead of a division.
_EPSILON = 1e-14
_NAN = np.nan


def state_size(kind: int, params: tuple[float, ...]) -> int:
    """Length of the state array of an indicator (the layouts are at the kernels)."""
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
def _window_mean(w, n, x):
    """Push ``x`` into the window ``w``; its mean once it holds ``n`` values, else NaN.

    Layout ``[pushed, partial, ring(n)]``: value number i sits at ``ring[i % n]``; ``partial`` is the
    sum of the newest n-1 values.
    """
    pushed = int(w[0]) + 1
    w[0] = pushed
    pos = (pushed - 1) % n
    w[2 + pos] = x
    total = w[1] + x
    if pushed < n:
        w[1] = total
        return _NAN
    if pos == n - 1:  # wrapped: the oldest sits at ring[0]; rebuild the newest n-1 in time order
        partial = 0.0
        for j in range(1, n):
            partial += w[2 + j]
        w[1] = partial
    else:
        w[1] = total - w[2 + pos + 1]
    return total / n


@njit(cache=True)
def _push_range(w, n, high, low):
    """Push a bar into the high/low rings ``w`` (``[pushed, highs(n), lows(n)]``).

    Returns ``(pushed, highest, lowest)``, the extremes of the last n bars once pushed >= n. (A plain
    scan: for the usual periods it beats tracking where the extreme sits, as TA-Lib does.)
    """
    pushed = int(w[0]) + 1
    w[0] = pushed
    pos = (pushed - 1) % n
    w[1 + pos] = high
    w[1 + n + pos] = low
    highest = w[1]
    lowest = w[1 + n]
    for j in range(1, min(pushed, n)):
        highest = max(highest, w[1 + j])
        lowest = min(lowest, w[1 + n + j])
    return pushed, highest, lowest


# --- kernels: (params, state, input arrays..., out[n_outputs, n_bars]) ------------------------


@njit(cache=True)
def _sma(p, s, close, out):
    """``[pushed, partial, ring(n)]``: TA-Lib SMA."""
    n = int(p[0])
    for i in range(len(close)):
        out[0, i] = _window_mean(s, n, close[i])


@njit(cache=True)
def _ema(p, s, close, out):
    """``[count, value]``: TA-Lib EMA, k = 2/(n+1), seeded by the SMA of the first n closes."""
    n = int(p[0])
    k = 2.0 / (n + 1)
    count, value = s[0], s[1]
    for i in range(len(close)):
        count += 1
        if count < n:
            value += close[i]
            out[0, i] = _NAN
            continue
        value = (value + close[i]) / n if count == n else _ema_next(value, close[i], k)
        out[0, i] = value
    s[0], s[1] = count, value


@njit(cache=True)
def _wma(p, s, close, out):
    """``[count, weighted, plain, ring(n)]``: TA-Lib WMA (weights 1..n, the newest n).

    Between bars ``weighted`` holds the window's sum with every weight already lowered by one and
    ``plain`` its plain sum; both are rebuilt from the ring when it wraps.
    """
    n = int(p[0])
    divider = (n * (n + 1)) // 2
    count, weighted, plain = int(s[0]), s[1], s[2]
    ring = s[3:]
    for i in range(len(close)):
        x = close[i]
        count += 1
        pos = (count - 1) % n
        if count < n:
            ring[pos] = x
            plain += x
            weighted += x * count
            out[0, i] = _NAN
            continue
        trailing = ring[pos] if count > n else 0.0
        ring[pos] = x
        plain += x
        plain -= trailing
        weighted += x * n
        out[0, i] = weighted / divider
        if pos == n - 1:  # wrapped: the ring is in time order, rebuild both sums
            plain = 0.0
            weighted = 0.0
            for j in range(n):
                plain += ring[j]
                weighted += ring[j] * j
        else:
            weighted -= plain
    s[0], s[1], s[2] = count, weighted, plain


@njit(cache=True)
def _rsi(p, s, close, out):
    """``[count, prev_close, avg_gain, avg_loss]``: TA-Lib RSI (Wilder, seeded by n-move means);
    0 when nothing moved."""
    n = int(p[0])
    count, prev, gain, loss = s[0], s[1], s[2], s[3]
    for i in range(len(close)):
        change = close[i] - prev
        prev = close[i]
        count += 1
        out[0, i] = _NAN
        if count == 1:
            continue
        up = change if change >= 0 else 0.0
        down = -change if change < 0 else 0.0
        moves = count - 1
        if moves < n:
            gain += up
            loss += down
            continue
        if moves == n:
            gain = (gain + up) / n
            loss = (loss + down) / n
        else:
            gain = _wilder_next(gain, up, n)
            loss = _wilder_next(loss, down, n)
        total = gain + loss
        out[0, i] = 0.0 if _is_zero(total) else 100.0 * (gain / total)
    s[0], s[1], s[2], s[3] = count, prev, gain, loss


@njit(cache=True)
def _macd(p, s, close, out):
    """``[count, fast_ema, slow_ema, signal]``: TA-Lib MACD.

    As in TA-Lib both EMAs start on bar slow-1, the slow one seeded by the mean of the first
    ``slow`` closes, the fast one by the mean of the ``fast`` closes ending there. The signal is an
    EMA of the MACD line seeded by the mean of its first ``signal`` values; all three outputs start
    when the signal does.
    """
    fast, slow, signal = int(p[0]), int(p[1]), int(p[2])
    k_fast, k_slow, k_signal = 2.0 / (fast + 1), 2.0 / (slow + 1), 2.0 / (signal + 1)
    count, fast_ema, slow_ema, sig = s[0], s[1], s[2], s[3]
    for i in range(len(close)):
        x = close[i]
        count += 1
        out[0, i] = out[1, i] = out[2, i] = _NAN
        if count <= slow:
            slow_ema += x
            if count > slow - fast:
                fast_ema += x
            if count < slow:
                continue
            fast_ema /= fast
            slow_ema /= slow
        else:
            fast_ema = _ema_next(fast_ema, x, k_fast)
            slow_ema = _ema_next(slow_ema, x, k_slow)
        line = fast_ema - slow_ema
        values = count - slow + 1
        if values < signal:
            sig += line
            continue
        sig = (sig + line) / signal if values == signal else _ema_next(sig, line, k_signal)
        out[0, i] = line
        out[1, i] = sig
        out[2, i] = line - sig
    s[0], s[1], s[2], s[3] = count, fast_ema, slow_ema, sig


@njit(cache=True)
def _bbands(p, s, close, out):
    """``[pushed, partial, ring(n)]``: middle = TA-Lib SMA, bands = middle +/- k * population stdev."""
    n, k = int(p[0]), p[1]
    ring = s[2:]
    for i in range(len(close)):
        middle = _window_mean(s, n, close[i])
        if np.isnan(middle):
            out[0, i] = out[1, i] = out[2, i] = _NAN
            continue
        squares = 0.0
        for j in range(n):
            d = ring[j] - middle
            squares += d * d
        width = np.sqrt(squares / n) * k
        out[0, i] = middle + width
        out[1, i] = middle
        out[2, i] = middle - width


@njit(cache=True)
def _atr(p, s, high, low, close, out):
    """``[count, prev_close, value]``: TA-Lib ATR, the Wilder mean of true range seeded by its
    n-bar mean."""
    n = int(p[0])
    count, prev_close, value = s[0], s[1], s[2]
    for i in range(len(close)):
        tr = _true_range(high[i], low[i], prev_close)
        prev_close = close[i]
        count += 1
        out[0, i] = _NAN
        if count == 1:
            continue
        ranges = count - 1
        if ranges < n:
            value += tr
            continue
        value = (value + tr) / n if ranges == n else _wilder_next(value, tr, n)
        out[0, i] = value
    s[0], s[1], s[2] = count, prev_close, value


@njit(cache=True)
def _stoch(p, s, high, low, close, out):
    """``[pushed, highs(k), lows(k), slow_k window, slow_d window]``: TA-Lib STOCH, SMA smoothing.

    Both outputs start when %D does (TA-Lib's convention).
    """
    fast_k, slow_k, slow_d = int(p[0]), int(p[1]), int(p[2])
    k_at = 1 + 2 * fast_k
    d_at = k_at + 2 + slow_k
    ranges, k_window, d_window = s[:k_at], s[k_at:d_at], s[d_at:]
    for i in range(len(close)):
        out[0, i] = out[1, i] = _NAN
        pushed, highest, lowest = _push_range(ranges, fast_k, high[i], low[i])
        if pushed < fast_k:
            continue
        diff = highest - lowest
        raw = (close[i] - lowest) / diff * 100.0 if diff != 0.0 else 0.0
        k = _window_mean(k_window, slow_k, raw)
        if np.isnan(k):
            continue
        d = _window_mean(d_window, slow_d, k)
        if np.isnan(d):
            continue
        out[0, i] = k
        out[1, i] = d


@njit(cache=True)
def _willr(p, s, high, low, close, out):
    """``[pushed, highs(n), lows(n)]``: TA-Lib WILLR (-100..0)."""
    n = int(p[0])
    for i in range(len(close)):
        pushed, highest, lowest = _push_range(s, n, high[i], low[i])
        if pushed < n:
            out[0, i] = _NAN
            continue
        diff = highest - lowest
        out[0, i] = (highest - close[i]) / diff * -100.0 if diff != 0.0 else 0.0


@njit(cache=True)
def _cci(p, s, high, low, close, out):
    """``[pushed, ring(n)]`` of typical prices, bar i at ``ring[i % n]``: TA-Lib CCI.

    The window is summed in ring order, as TA-Lib's circular buffer is. A window of one repeated
    price gives 0, where TA-Lib can give +/-66.7 (its mean misses the price by an ulp).
    """
    n = int(p[0])
    pushed = int(s[0])
    ring = s[1:]
    for i in range(len(close)):
        typical = _typical_price(high[i], low[i], close[i])
        ring[pushed % n] = typical
        pushed += 1
        if pushed < n:
            out[0, i] = _NAN
            continue
        mean = 0.0
        flat = True
        for j in range(n):
            mean += ring[j]
            flat = flat and ring[j] == typical
        if flat:  # TA-Lib would divide rounding residue by rounding residue: +/-66.7
            out[0, i] = 0.0
            continue
        mean /= n
        deviation = 0.0
        for j in range(n):
            deviation += abs(ring[j] - mean)
        above = typical - mean
        out[0, i] = above / (0.015 * (deviation / n)) if above != 0.0 and deviation != 0.0 else 0.0
    s[0] = pushed


@njit(cache=True)
def _obv(s, close, volume, out):
    """``[count, prev_close, obv]``: TA-Lib OBV, starting at the first bar's volume."""
    count, prev, obv = s[0], s[1], s[2]
    for i in range(len(close)):
        if count == 0:
            obv = volume[i]
        elif close[i] > prev:
            obv += volume[i]
        elif close[i] < prev:
            obv -= volume[i]
        count += 1
        prev = close[i]
        out[0, i] = obv
    s[0], s[1], s[2] = count, prev, obv


@njit(cache=True)
def _vwap(s, ts, high, low, close, volume, out):
    """``[utc_day, sum(typical * volume), sum(volume)]``: session VWAP with typical price
    (h+l+c)/3, reset at 00:00 UTC; NaN until the session has traded volume."""
    day, value, traded = s[0], s[1], s[2]
    for i in range(len(close)):
        today = ts[i] // NS_PER_DAY
        if today != day:
            day, value, traded = today, 0.0, 0.0
        value += _typical_price(high[i], low[i], close[i]) * volume[i]
        traded += volume[i]
        out[0, i] = value / traded if traded > 0.0 else _NAN
    s[0], s[1], s[2] = day, value, traded


@njit(cache=True)
def _adx(p, s, high, low, close, out):
    """``[count, prev_high, prev_low, prev_close, plus_dm, minus_dm, tr, dx_sum/adx]``: TA-Lib ADX.

    Outputs ``(adx, plus_di, minus_di)``: the DIs from bar n (TA-Lib PLUS_DI/MINUS_DI), ADX from bar
    2n-1 (the mean of the first n DX, then Wilder smoothing; a bar without DX leaves it unchanged).
    """
    n = int(p[0])
    count, prev_high, prev_low, prev_close = s[0], s[1], s[2], s[3]
    plus_dm, minus_dm, tr, adx = s[4], s[5], s[6], s[7]
    for i in range(len(close)):
        up = high[i] - prev_high
        down = prev_low - low[i]
        bar_tr = _true_range(high[i], low[i], prev_close)
        prev_high, prev_low, prev_close = high[i], low[i], close[i]
        count += 1
        out[0, i] = out[1, i] = out[2, i] = _NAN
        if count == 1:
            continue
        bar_plus = bar_minus = 0.0
        if down > 0 and up < down:
            bar_minus = down
        elif up > 0 and up > down:
            bar_plus = up
        moves = count - 1
        if moves < n:
            plus_dm += bar_plus
            minus_dm += bar_minus
            tr += bar_tr
            continue
        plus_dm = plus_dm - plus_dm / n + bar_plus
        minus_dm = minus_dm - minus_dm / n + bar_minus
        tr = tr - tr / n + bar_tr
        plus_di = minus_di = 0.0
        dx = _NAN
        if not _is_zero(tr):
            minus_di = 100.0 * (minus_dm / tr)
            plus_di = 100.0 * (plus_dm / tr)
            di_sum = minus_di + plus_di
            if not _is_zero(di_sum):
                dx = 100.0 * (abs(minus_di - plus_di) / di_sum)
        out[1, i] = plus_di
        out[2, i] = minus_di
        if moves <= 2 * n - 1:  # first n DX: their sum, then their mean
            if not np.isnan(dx):
                adx += dx
            if moves < 2 * n - 1:
                continue
            adx /= n
        elif not np.isnan(dx):
            adx = _wilder_next(adx, dx, n)
        out[0, i] = adx
    s[0], s[1], s[2], s[3] = count, prev_high, prev_low, prev_close
    s[4], s[5], s[6], s[7] = plus_dm, minus_dm, tr, adx


# --- entry points ------------------------------------------------------------------------------


@njit(cache=True)
def _advance(kind, p, s, ts, open_, high, low, close, volume, out):
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
def run_all(kinds, params, p_off, state, s_off, o_off, ts, open_, high, low, close, volume, out):
    """Advance every indicator of a set over arrays of bars.

    Indicator i owns ``params[p_off[i]:p_off[i+1]]`` and ``state[s_off[i]:s_off[i+1]]``, and writes
    its outputs to rows ``o_off[i]:o_off[i+1]`` of ``out`` (one column per bar).
    """
    for i in range(len(kinds)):
        _advance(
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
def step_all(kinds, params, p_off, state, s_off, o_off, ts, open_, high, low, close, volume, out):
    """Advance every indicator by one bar (scalars), writing the outputs to ``out`` (1-D): the bar
    goes through :func:`run_all` as arrays of length one."""
    run_all(
        kinds,
        params,
        p_off,
        state,
        s_off,
        o_off,
        np.full(1, ts, dtype=np.int64),
        np.full(1, open_),
        np.full(1, high),
        np.full(1, low),
        np.full(1, close),
        np.full(1, volume),
        out.reshape((len(out), 1)),
    )
