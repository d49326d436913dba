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
- MFI sums its window afresh each bar, so a window without flow gives exactly 0 (see :func:`_mfi`).

Indicators TA-Lib lacks (Ichimoku, Donchian and Keltner channels, SuperTrend, the volume profile) are
defined at their kernels; the tests check them against pandas and hand-worked references.

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
    "DONCHIAN",
    "EMA",
    "ICHIMOKU",
    "KELTNER",
    "MACD",
    "MFI",
    "OBV",
    "RSI",
    "SAR",
    "SMA",
    "STDDEV",
    "STOCH",
    "SUPERTREND",
    "VPROFILE",
    "VWAP",
    "WILLR",
    "WMA",
    "run_all",
    "state_size",
    "step_all",
]

# Indicator kinds.
SMA, EMA, WMA, RSI, MACD, BBANDS, ATR, STOCH, WILLR, CCI, OBV, VWAP, ADX = range(13)
STDDEV, MFI, ICHIMOKU, DONCHIAN, KELTNER, SAR, SUPERTREND, VPROFILE = range(13, 21)
#: The share of a window's volume the volume profile's value area holds.
VALUE_AREA = 0.7

NS_PER_DAY = 86_400_000_000_000
# TA-Lib's TA_IS_ZERO: a denominator this close to zero gives 0 instead of a division.
_EPSILON = 1e-14
_NAN = np.nan


def state_size(kind: int, params: tuple[float, ...]) -> int:
    """Length of the state array of an indicator (the layouts are at the kernels)."""
    n = int(params[0]) if params else 0
    if kind in (SMA, BBANDS, STDDEV):
        return 2 + n
    if kind == MFI:
        return 2 + 2 * n
    if kind == ICHIMOKU:
        tenkan, kijun, senkou = (int(x) for x in params)
        return (1 + 2 * tenkan) + (1 + 2 * kijun) + (1 + 2 * senkou) + (1 + 2 * kijun)
    if kind == DONCHIAN:
        return 1 + 2 * n
    if kind == VPROFILE:
        return 1 + 4 * n
    if kind == WMA:
        return 3 + n
    if kind == STOCH:
        fast_k, slow_k, slow_d = (int(x) for x in params)
        return 1 + 2 * fast_k + (2 + slow_k) + (2 + slow_d)
    if kind == WILLR:
        return 1 + 2 * n
    if kind == CCI:
        return 1 + n
    return {EMA: 2, RSI: 4, MACD: 4, ATR: 3, OBV: 3, VWAP: 3, ADX: 8, KELTNER: 5, SAR: 7, SUPERTREND: 7}[kind]


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


@njit(cache=True)
def _window_deviation(ring, n, mean):
    """The population standard deviation of a full window ``ring`` of n values about ``mean``:
    ``sqrt(mean((x - mean)**2))``, two passes."""
    squares = 0.0
    for j in range(n):
        d = ring[j] - mean
        squares += d * d
    return np.sqrt(squares / n)


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
        width = _window_deviation(ring, n, middle) * k
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


@njit(cache=True)
def _stddev(p, s, close, out):
    """``[pushed, partial, ring(n)]``: TA-Lib STDDEV with nbdev 1, the population deviation, taken in
    two passes as the Bollinger bands take it."""
    n = int(p[0])
    for i in range(len(close)):
        mean = _window_mean(s, n, close[i])
        out[0, i] = _NAN if np.isnan(mean) else _window_deviation(s[2:], n, mean)


@njit(cache=True)
def _mfi(p, s, high, low, close, volume, out):
    """``[count, prev_typical, positive flows(n), negative flows(n)]``: TA-Lib MFI.

    A bar's money flow is typical price times volume, positive when the typical price rose, negative
    when it fell, neither when it stayed; MFI = 100 * positive / (positive + negative) over the last n
    flows, from bar n; 0 for a window without flow (as the TA-Lib 0.8 C library does; its older
    releases gave 0 below a total flow of 1.0). The sums are taken from the rings each bar (n
    additions): TA-Lib's running sums leave residue after a burst of volume, up to an MFI of 100
    where the window has no flow at all.
    """
    n = int(p[0])
    count, prev = s[0], s[1]
    ups, downs = s[2 : 2 + n], s[2 + n :]
    for i in range(len(close)):
        typical = _typical_price(high[i], low[i], close[i])
        change = typical - prev
        prev = typical
        count += 1
        out[0, i] = _NAN
        if count == 1:
            continue
        flows = int(count) - 1
        pos = (flows - 1) % n
        flow = typical * volume[i]
        ups[pos] = flow if change > 0 else 0.0
        downs[pos] = flow if change < 0 else 0.0
        if flows < n:
            continue
        positive = 0.0
        negative = 0.0
        for j in range(n):
            positive += ups[j]
            negative += downs[j]
        total = positive + negative
        out[0, i] = 0.0 if _is_zero(total) else 100.0 * (positive / total)
    s[0], s[1] = count, prev


@njit(cache=True)
def _midpoint(w, n, high, low):
    """Push a bar into the high/low rings ``w`` (see :func:`_push_range`); the midpoint of the last n
    bars' highest high and lowest low, NaN until n bars were pushed."""
    pushed, highest, lowest = _push_range(w, n, high, low)
    return (highest + lowest) / 2.0 if pushed >= n else _NAN


@njit(cache=True)
def _ichimoku(p, s, high, low, out):
    """``[tenkan rings, kijun rings, senkou B rings, pushed, span A ring(kijun), span B ring(kijun)]``.

    Outputs ``(tenkan, kijun, senkou_a, senkou_b)``. Tenkan and kijun are the midpoints of the last
    ``tenkan`` and ``kijun`` bars' ranges. The spans are displaced ``kijun`` bars forward, as charts
    draw them, and given as known at the bar: the cloud that sits under bar t, computed from bars up
    to t - kijun (span A = the mean of tenkan and kijun then, span B = the midpoint of the
    ``senkou`` bars then). Nothing reads past bar t. (The other convention, the spans computed at t
    that the chart draws at t + kijun, is these outputs kijun bars later; span A of it is simply
    (tenkan + kijun) / 2 at t.) The chikou span, the close drawn kijun bars back, is left out: its
    value at bar t is the close of bar t + kijun, the future by definition.
    """
    tenkan, kijun, senkou = int(p[0]), int(p[1]), int(p[2])
    at_k = 1 + 2 * tenkan
    at_s = at_k + 1 + 2 * kijun
    at_d = at_s + 1 + 2 * senkou
    t_ring, k_ring, s_ring, delay = s[:at_k], s[at_k:at_s], s[at_s:at_d], s[at_d:]
    for i in range(len(high)):
        t_mid = _midpoint(t_ring, tenkan, high[i], low[i])
        k_mid = _midpoint(k_ring, kijun, high[i], low[i])
        s_mid = _midpoint(s_ring, senkou, high[i], low[i])
        pushed = int(delay[0])
        pos = pushed % kijun
        out[0, i] = t_mid
        out[1, i] = k_mid
        # the value pushed kijun bars ago sits where today's goes
        out[2, i] = delay[1 + pos] if pushed >= kijun else _NAN
        out[3, i] = delay[1 + kijun + pos] if pushed >= kijun else _NAN
        delay[1 + pos] = (t_mid + k_mid) / 2.0
        delay[1 + kijun + pos] = s_mid
        delay[0] = pushed + 1


@njit(cache=True)
def _donchian(p, s, high, low, out):
    """``[pushed, highs(n), lows(n)]``: outputs ``(upper, middle, lower)``, the highest high and lowest
    low of the last n bars (this one included) and their midpoint."""
    n = int(p[0])
    for i in range(len(high)):
        pushed, highest, lowest = _push_range(s, n, high[i], low[i])
        if pushed < n:
            out[0, i] = out[1, i] = out[2, i] = _NAN
            continue
        out[0, i] = highest
        out[1, i] = (highest + lowest) / 2.0
        out[2, i] = lowest


@njit(cache=True)
def _keltner(p, s, high, low, close, out):
    """``[ema state(2), atr state(3)]``: outputs ``(upper, middle, lower)``.

    middle = EMA(close, n) as :func:`_ema` (TA-Lib's, seeded by the SMA); bands = middle +/- k *
    ATR(a), the ATR as :func:`_atr` (TA-Lib's: Wilder's smoothing seeded by the mean of the first a
    true ranges). All three start when both the EMA and the ATR have.
    """
    k = p[1]
    _ema(p[0:1], s[0:2], close, out[1:2])
    _atr(p[2:3], s[2:5], high, low, close, out[2:3])
    for i in range(len(close)):
        middle, width = out[1, i], out[2, i] * k
        if np.isnan(middle) or np.isnan(width):
            out[0, i] = out[1, i] = out[2, i] = _NAN
            continue
        out[0, i] = middle + width
        out[2, i] = middle - width


@njit(cache=True)
def _sar(p, s, high, low, out):
    """``[count, is_long, af, ep, sar, last_high, last_low]``: TA-Lib SAR, from bar 1.

    As TA-Lib: the first trend is short if bar 1's minus DM (period 1) is positive, else long; the
    first SAR is bar 0's low (long) or high (short) and the extreme point bar 1's high or low; an
    acceleration above the maximum is lowered to it. The SAR output on bar t is the stop in force
    during bar t (computed at t-1), or on a reversal the overriding extreme point.
    """
    step = min(p[0], p[1])
    maximum = p[1]
    count, is_long, af, ep, sar, last_high, last_low = s[0], s[1], s[2], s[3], s[4], s[5], s[6]
    for i in range(len(high)):
        count += 1
        new_high, new_low = high[i], low[i]
        if count == 1:
            last_high, last_low = new_high, new_low
            out[0, i] = _NAN
            continue
        if count == 2:
            up, down = new_high - last_high, last_low - new_low
            is_long = 0.0 if (down > 0 and up < down) else 1.0
            af = step
            if is_long == 1.0:
                ep, sar = new_high, last_low
            else:
                ep, sar = new_low, last_high
            last_high, last_low = new_high, new_low  # TA-Lib's first step sees bar 1 as yesterday
        prev_high, prev_low = last_high, last_low
        last_high, last_low = new_high, new_low
        if is_long == 1.0:
            if new_low <= sar:  # reversal to short
                is_long = 0.0
                sar = max(ep, prev_high, new_high)
                out[0, i] = sar
                af = step
                ep = new_low
                sar = max(sar + af * (ep - sar), prev_high, new_high)
            else:
                out[0, i] = sar
                if new_high > ep:
                    ep = new_high
                    af = min(af + step, maximum)
                sar = min(sar + af * (ep - sar), prev_low, new_low)
        elif new_high >= sar:  # reversal to long
            is_long = 1.0
            sar = min(ep, prev_low, new_low)
            out[0, i] = sar
            af = step
            ep = new_high
            sar = min(sar + af * (ep - sar), prev_low, new_low)
        else:
            out[0, i] = sar
            if new_low < ep:
                ep = new_low
                af = min(af + step, maximum)
            sar = max(sar + af * (ep - sar), prev_high, new_high)
    s[0], s[1], s[2], s[3], s[4], s[5], s[6] = count, is_long, af, ep, sar, last_high, last_low


@njit(cache=True)
def _supertrend(p, s, high, low, close, out):
    """``[atr state(3), upper, lower, prev_close, direction]``: outputs ``(supertrend, direction)``.

    With the ATR as :func:`_atr` (TA-Lib's, Wilder) and hl2 = (high + low) / 2, the basic bands are
    hl2 +/- k * ATR. The final upper band only falls (it takes the basic one when that is lower, or
    when the previous close broke above the previous final band), the final lower band only rises
    (mirror). On the first bar with an ATR the trend is down (as TradingView's ``ta.supertrend``); a
    down trend turns up when the close ends above the final upper band, an up trend turns down when
    it ends below the final lower band; as there, a last value equal to the last upper band counts as
    a down trend (the two bands can meet). SuperTrend is the final lower band in an up trend (direction
    +1) and the final upper band in a down trend (direction -1).
    """
    k = p[1]
    _atr(p[0:1], s[0:3], high, low, close, out[0:1])
    upper, lower, prev_close, direction = s[3], s[4], s[5], s[6]
    for i in range(len(close)):
        atr = out[0, i]
        if np.isnan(atr):
            out[0, i] = out[1, i] = _NAN
            prev_close = close[i]
            continue
        mid = (high[i] + low[i]) / 2.0
        basic_upper, basic_lower = mid + k * atr, mid - k * atr
        if direction == 0.0:  # the first bar with an ATR
            upper, lower, direction = basic_upper, basic_lower, -1.0
        else:
            # TradingView reads the last trend off the last value: down if it was the upper band
            # (so also up-trend bands that met: lower == upper)
            was_down = direction < 0 or lower == upper
            if basic_upper < upper or prev_close > upper:
                upper = basic_upper
            if basic_lower > lower or prev_close < lower:
                lower = basic_lower
            up = close[i] > upper if was_down else close[i] >= lower
            direction = 1.0 if up else -1.0
        out[0, i] = lower if direction > 0 else upper
        out[1, i] = direction
        prev_close = close[i]
    s[3], s[4], s[5], s[6] = upper, lower, prev_close, direction


@njit(cache=True)
def _vprofile(p, s, high, low, close, volume, out):
    """``[pushed, highs(n), lows(n), typicals(n), volumes(n)]``: the volume profile of the last n bars.

    Outputs ``(poc, vah, val)``. The window's range, lowest low to highest high, is cut into b equal
    bins, edge j at ``lo + (hi - lo) * j / b``; each bar puts its whole volume in the bin of its
    typical price (h+l+c)/3 (bin ``floor((typical - lo) / (hi - lo) * b)``, the top edge in the top
    bin). The point of control is the middle of the fullest bin (the lowest of equals). The value area
    grows from it one bin at a time towards the fuller neighbour (up on a tie) until it holds 70%
    (:data:`VALUE_AREA`) of the window's volume; vah and val are its outer edges. NaN until n bars,
    and for a window without volume. A window of one price gives that price for all three.
    """
    n, b = int(p[0]), int(p[1])
    ring = s[1:]
    bins = np.zeros(b)
    for i in range(len(close)):
        pushed, hi, lo = _push_range(s[: 1 + 2 * n], n, high[i], low[i])
        pos = (pushed - 1) % n
        ring[2 * n + pos] = _typical_price(high[i], low[i], close[i])
        ring[3 * n + pos] = volume[i]
        out[0, i] = out[1, i] = out[2, i] = _NAN
        if pushed < n:
            continue
        span = hi - lo
        bins[:] = 0.0
        total = 0.0
        for j in range(n):
            at = 0
            if span > 0.0:
                at = min(int((ring[2 * n + j] - lo) / span * b), b - 1)
            bins[at] += ring[3 * n + j]
            total += ring[3 * n + j]
        if not total > 0.0:
            continue
        poc = 0
        for j in range(1, b):
            if bins[j] > bins[poc]:
                poc = j
        bottom, top, held = poc, poc, bins[poc]
        while held < VALUE_AREA * total and (bottom > 0 or top < b - 1):
            above = bins[top + 1] if top < b - 1 else -1.0
            below = bins[bottom - 1] if bottom > 0 else -1.0
            if above >= below:
                top += 1
                held += above
            else:
                bottom -= 1
                held += below
        if span > 0.0:
            out[0, i] = lo + span * (poc + 0.5) / b
            out[1, i] = lo + span * (top + 1) / b
            out[2, i] = lo + span * bottom / b
        else:
            out[0, i] = out[1, i] = out[2, i] = lo


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
    elif kind == STDDEV:
        _stddev(p, s, close, out)
    elif kind == MFI:
        _mfi(p, s, high, low, close, volume, out)
    elif kind == ICHIMOKU:
        _ichimoku(p, s, high, low, out)
    elif kind == DONCHIAN:
        _donchian(p, s, high, low, out)
    elif kind == KELTNER:
        _keltner(p, s, high, low, close, out)
    elif kind == SAR:
        _sar(p, s, high, low, out)
    elif kind == SUPERTREND:
        _supertrend(p, s, high, low, close, out)
    elif kind == VPROFILE:
        _vprofile(p, s, high, low, close, volume, out)


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
