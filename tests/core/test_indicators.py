"""Indicators against TA-Lib on real candles, the batch path against the incremental one, and the
spec language."""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest
import talib
from hypothesis import given, settings
from hypothesis import strategies as st

from mambo.core.indicators import FORMS, IndicatorSet, compute, output_names

FIXTURE = Path(__file__).parents[1] / "fixtures" / "btc_perp_1m_5000.csv"
NS_PER_MINUTE = 60_000_000_000
# 2022-01-01 00:00 UTC
NEW_YEAR = 1_640_995_200_000_000_000

Array = npt.NDArray[np.float64]


class Candles(NamedTuple):
    ts: npt.NDArray[np.int64]
    open: Array
    high: Array
    low: Array
    close: Array
    volume: Array


@pytest.fixture(scope="module")
def btc() -> Candles:
    df = pd.read_csv(FIXTURE)
    ts = pd.to_datetime(df["timestamp"], utc=True).to_numpy(dtype="datetime64[ns]").view(np.int64)
    return Candles(
        ts, *(df[c].to_numpy(dtype=np.float64) for c in ["open", "high", "low", "close", "volume"])
    )


def run(specs: list[str], c: Candles) -> dict[str, Array]:
    return compute(specs, c.ts, c.open, c.high, c.low, c.close, c.volume)


def run_incrementally(specs: list[str], c: Candles) -> dict[str, Array]:
    state = IndicatorSet(specs)
    rows = [state.update(*bar) for bar in zip(*(a.tolist() for a in c), strict=True)]
    return {name: np.array([row[name] for row in rows], dtype=np.float64) for name in state.names}


# --- against TA-Lib ------------------------------------------------------------------------------


def talib_outputs(spec: str, c: Candles) -> tuple[Array, ...]:
    """TA-Lib's outputs for a spec, in the spec's output order (SMA smoothing, unstable period 0)."""
    kind, *args = spec.split(":")
    n = [int(a) for a in args if a.isdigit()]
    hlc = (c.high, c.low, c.close)
    sma = talib.MA_Type.SMA
    match kind:
        case "sma":
            return (talib.SMA(c.close, n[0]),)
        case "ema":
            return (talib.EMA(c.close, n[0]),)
        case "wma":
            return (talib.WMA(c.close, n[0]),)
        case "rsi":
            return (talib.RSI(c.close, n[0]),)
        case "macd":
            return tuple(talib.MACD(c.close, *n))
        case "bbands":
            k = float(args[1])
            return tuple(talib.BBANDS(c.close, n[0], k, k, sma))
        case "atr":
            return (talib.ATR(*hlc, n[0]),)
        case "stoch":
            return tuple(talib.STOCH(*hlc, n[0], n[1], sma, n[2], sma))
        case "willr":
            return (talib.WILLR(*hlc, n[0]),)
        case "cci":
            return (talib.CCI(*hlc, n[0]),)
        case "obv":
            return (talib.OBV(c.close, c.volume),)
        case "adx":
            return talib.ADX(*hlc, n[0]), talib.PLUS_DI(*hlc, n[0]), talib.MINUS_DI(*hlc, n[0])
        case "stddev":
            return (talib.STDDEV(c.close, n[0], 1.0),)
        case "mfi":
            return (talib.MFI(*hlc, c.volume, n[0]),)
        case "sar":
            return (talib.SAR(c.high, c.low, float(args[0]), float(args[1])),)
    raise AssertionError(spec)


# Several parameter sets per indicator, including the shortest periods TA-Lib accepts.
TALIB_SPECS = [
    *("sma:2", "sma:20", "sma:200", "ema:2", "ema:12", "ema:50", "wma:2", "wma:20", "wma:100"),
    *("rsi:2", "rsi:14", "rsi:50", "macd:12:26:9", "macd:5:35:5", "macd:3:10:1"),
    *("bbands:20:2", "bbands:5:1", "bbands:50:2.5", "atr:1", "atr:14", "atr:50"),
    *("stoch:14:3:3", "stoch:5:1:1", "stoch:21:5:7", "willr:2", "willr:14", "willr:50"),
    *("cci:2", "cci:20", "cci:100", "obv", "adx:2", "adx:14", "adx:30"),
    *("stddev:2", "stddev:20", "stddev:100", "mfi:2", "mfi:14", "mfi:50"),
    # the usual SAR, a slow one, and an acceleration above its maximum (TA-Lib lowers it)
    *("sar:0.02:0.2", "sar:0.01:0.1", "sar:0.3:0.2"),
]

RTOL = 1e-9
# Values within 1e-2 of zero are compared absolutely, to 1e-11: TA-Lib's running sums leave residue
# of order 1e-13 where the exact value is 0 (a Stochastic %K of three zero readings; ours are rebuilt
# each window), and a MACD line near zero carries the rounding of the prices it is the difference of
# (one ulp of 47,000 is 7e-12).
ATOL = 1e-11


def relative_error(ours: Array, ref: Array) -> float:
    """The largest relative difference where TA-Lib has a value, both warming up alike."""
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref), err_msg="warm-up differs")
    both = ~np.isnan(ref)
    if not both.any():
        return 0.0
    diff = np.abs(ours[both] - ref[both])
    return float(np.max(diff / np.maximum(np.abs(ref[both]), ATOL / RTOL)))


@pytest.mark.parametrize("spec", TALIB_SPECS)
def test_matches_talib(spec: str, btc: Candles) -> None:
    ours = run([spec], btc)
    refs = talib_outputs(spec, btc)
    names = output_names(spec)
    assert len(refs) == len(names)
    for name, ref in zip(names, refs, strict=True):
        assert not np.isnan(ref[-1]), "reference never warmed up"
        assert relative_error(ours[name], ref) <= RTOL, name


def test_vwap_is_the_session_vwap_of_typical_price(btc: Candles) -> None:
    ours = run(["vwap"], btc)["vwap"]
    df = pd.DataFrame(btc._asdict())
    day = pd.to_datetime(df["ts"], utc=True).dt.date
    typical = (df["high"] + df["low"] + df["close"]) / 3
    ref = (typical * df["volume"]).groupby(day).cumsum() / df["volume"].groupby(day).cumsum()
    assert day.nunique() == 5  # 2021-12-31 23:01 to 2022-01-04 10:20: four UTC midnights
    np.testing.assert_allclose(ours, ref.to_numpy(), rtol=1e-12, atol=0)


def test_vwap_resets_at_utc_midnight_and_waits_for_volume() -> None:
    ts = np.array([-1, 0, 1, 2]) * NS_PER_MINUTE + NEW_YEAR
    high = np.array([12.0, 30.0, 40.0, 50.0])
    low = np.array([6.0, 30.0, 40.0, 20.0])
    close = np.array([9.0, 30.0, 40.0, 35.0])
    volume = np.array([1.0, 0.0, 3.0, 1.0])
    vwap = compute(["vwap"], ts, close, high, low, close, volume)["vwap"]
    np.testing.assert_array_equal(vwap[:3], [9.0, np.nan, 40.0])
    assert vwap[3] == pytest.approx((40.0 * 3 + 35.0) / 4, rel=1e-15)


# --- against pandas and hand-worked references, where TA-Lib has no such indicator ----------------


def midpoint(df: pd.DataFrame, n: int) -> pd.Series:
    return (df["high"].rolling(n).max() + df["low"].rolling(n).min()) / 2


def ichimoku_reference(c: Candles, tenkan: int, kijun: int, senkou: int) -> tuple[Array, ...]:
    """Tenkan and kijun; the spans displaced kijun bars forward, as the chart draws them at each bar."""
    df = pd.DataFrame(c._asdict())
    t, k = midpoint(df, tenkan), midpoint(df, kijun)
    a = ((t + k) / 2).shift(kijun)
    b = midpoint(df, senkou).shift(kijun)
    return tuple(x.to_numpy() for x in (t, k, a, b))


def donchian_reference(c: Candles, n: int) -> tuple[Array, ...]:
    upper = pd.Series(c.high).rolling(n).max()
    lower = pd.Series(c.low).rolling(n).min()
    return upper.to_numpy(), ((upper + lower) / 2).to_numpy(), lower.to_numpy()


def keltner_reference(c: Candles, n: int, k: float, a: int) -> tuple[Array, ...]:
    """TA-Lib's EMA(n) +/- k * TA-Lib's ATR(a) (Wilder), all three NaN until both have started."""
    middle = talib.EMA(c.close, n)
    atr = talib.ATR(c.high, c.low, c.close, a)
    middle = np.where(np.isnan(atr), np.nan, middle)
    return middle + k * atr, middle, middle - k * atr


def supertrend_reference(c: Candles, n: int, k: float) -> tuple[Array, Array]:
    """TradingView's ``ta.supertrend`` written out (on TA-Lib's ATR): the trend starts down, and the
    previous bar's trend is read off which final band the previous SuperTrend equals."""
    atr = talib.ATR(c.high, c.low, c.close, n)
    hl2 = (c.high + c.low) / 2
    basic_upper, basic_lower = hl2 + k * atr, hl2 - k * atr
    st_out, dir_out = np.full(len(atr), np.nan), np.full(len(atr), np.nan)
    upper = lower = trend = math.nan
    for i in range(len(atr)):
        if np.isnan(atr[i]):
            continue
        if i == 0 or np.isnan(atr[i - 1]):
            upper, lower, direction = basic_upper[i], basic_lower[i], -1
        else:
            prev_upper, prev_lower = upper, lower
            if basic_upper[i] < prev_upper or c.close[i - 1] > prev_upper:
                upper = basic_upper[i]
            if basic_lower[i] > prev_lower or c.close[i - 1] < prev_lower:
                lower = basic_lower[i]
            if trend == prev_upper:
                direction = 1 if c.close[i] > upper else -1
            else:
                direction = -1 if c.close[i] < lower else 1
        trend = lower if direction == 1 else upper
        st_out[i], dir_out[i] = trend, direction
    return st_out, dir_out


def value_area(volume_by_bin: Array, share: float = 0.7) -> tuple[int, int, int]:
    """(point of control, lowest bin, highest bin) of a volume histogram: from the fullest bin (the
    lowest of equals) add the fuller neighbour (up on a tie) until ``share`` of the volume is in."""
    poc = int(np.argmax(volume_by_bin))
    low = high = poc
    held, total = volume_by_bin[poc], volume_by_bin.sum()
    while held < share * total and (low > 0 or high < len(volume_by_bin) - 1):
        up = volume_by_bin[high + 1] if high < len(volume_by_bin) - 1 else -1.0
        down = volume_by_bin[low - 1] if low > 0 else -1.0
        if up >= down:
            high, held = high + 1, held + up
        else:
            low, held = low - 1, held + down
    return poc, low, high


def vprofile_reference(c: Candles, n: int, bins: int) -> tuple[Array, ...]:
    """Each window's volume by the bin of each bar's typical price, over the window's low..high."""
    typical = (c.high + c.low + c.close) / 3
    poc, vah, val = (np.full(len(c.close), np.nan) for _ in range(3))
    for end in range(n, len(c.close) + 1):
        window = slice(end - n, end)
        lo, hi = c.low[window].min(), c.high[window].max()
        at = np.minimum(((typical[window] - lo) / (hi - lo) * bins).astype(int), bins - 1)
        volume_by_bin = np.bincount(at, weights=c.volume[window], minlength=bins)
        p, low, high = value_area(volume_by_bin)
        edges = lo + (hi - lo) * np.array([p + 0.5, high + 1, low]) / bins
        poc[end - 1], vah[end - 1], val[end - 1] = edges
    return poc, vah, val


def reference_outputs(spec: str, c: Candles) -> tuple[Array, ...]:
    kind, *args = spec.split(":")
    match kind:
        case "ichimoku":
            return ichimoku_reference(c, *map(int, args))
        case "donchian":
            return donchian_reference(c, int(args[0]))
        case "keltner":
            return keltner_reference(c, int(args[0]), float(args[1]), int(args[2]))
        case "supertrend":
            return supertrend_reference(c, int(args[0]), float(args[1]))
        case "vprofile":
            return vprofile_reference(c, int(args[0]), int(args[1]))
    raise AssertionError(spec)


REFERENCE_SPECS = [
    *("ichimoku:9:26:52", "ichimoku:1:2:3", "ichimoku:20:60:120", "donchian:1", "donchian:20"),
    *("donchian:55", "keltner:20:2:10", "keltner:2:1.5:1", "keltner:50:3:50", "supertrend:10:3"),
    *("supertrend:1:1", "supertrend:20:2.5", "vprofile:60:24", "vprofile:240:50", "vprofile:5:1"),
]


@pytest.mark.parametrize("spec", REFERENCE_SPECS)
def test_matches_independent_reference(spec: str, btc: Candles) -> None:
    ours = run([spec], btc)
    refs = reference_outputs(spec, btc)
    names = output_names(spec)
    assert len(refs) == len(names)
    for name, ref in zip(names, refs, strict=True):
        assert not np.isnan(ref[-1]), "reference never warmed up"
        assert relative_error(ours[name], ref) <= RTOL, name


def test_references_see_movement(btc: Candles) -> None:
    """The real candles exercise what the references check: trend flips, a value area narrower than
    the window's range, a displaced cloud that differs from the undisplaced one."""
    out = run(["supertrend:10:3", "vprofile:60:24", "ichimoku:9:26:52"], btc)
    flips = np.count_nonzero(np.diff(out["supertrend_dir_10_3"][10:]))
    assert flips >= 20
    width = out["vp_vah_60_24"] - out["vp_val_60_24"]
    dc = run(["donchian:60"], btc)
    full = dc["dc_upper_60"] - dc["dc_lower_60"]
    assert np.nanmean(width / full) < 0.9
    a = out["ichimoku_senkou_a_9_26_52"]
    undisplaced = (out["ichimoku_tenkan_9_26_52"] + out["ichimoku_kijun_9_26_52"]) / 2
    np.testing.assert_array_equal(a[26:], undisplaced[:-26])


def test_volume_profile_by_hand() -> None:
    # typical prices 10, 15 and 6 with volumes 5, 1 and 2, over a window range of 4..16 in 4 bins of 3:
    # bins [4, 7) [7, 10) [10, 13) [13, 16] hold 2, 0, 5, 1. The point of control is the bin at 10..13
    # (11.5); it holds 5 of 8, under 70%, so the value area takes the fuller neighbour: above (1 > 0).
    high, low, close = np.array([12.0, 16.0, 9.0]), np.array([8.0, 14.0, 4.0]), np.array([10.0, 15.0, 5.0])
    volume = np.array([5.0, 1.0, 2.0])
    ts = NEW_YEAR + np.arange(3) * NS_PER_MINUTE
    out = compute(["vprofile:3:4"], ts, close, high, low, close, volume)
    assert [out[n].tolist()[2] for n in ("vp_poc_3_4", "vp_vah_3_4", "vp_val_3_4")] == [11.5, 16.0, 10.0]
    assert np.isnan(out["vp_poc_3_4"][:2]).all()
    # no volume: no profile; one price: that price
    none = compute(["vprofile:3:4"], ts, close, high, low, close, np.zeros(3))
    assert np.isnan(none["vp_poc_3_4"]).all()
    flat = compute(["vprofile:2:4"], ts, np.full(3, 7.0), *(np.full(3, 7.0) for _ in range(3)), volume)
    assert flat["vp_vah_2_4"].tolist()[1:] == [7.0, 7.0] and flat["vp_val_2_4"][2] == 7.0


def test_new_indicators_never_read_later_bars(btc: Candles) -> None:
    """An output at bar i is the same whether or not the bars after i exist (Ichimoku's spans
    included: chikou, the close plotted kijun bars back, reads the future by definition and is left
    out)."""
    specs = ["ichimoku:9:26:52", "vprofile:60:24", "supertrend:10:3", "sar:0.02:0.2", "keltner:20:2:10"]
    whole = run(specs, btc)
    for cut in (100, 2345):
        part = run(specs, Candles(*(a[:cut] for a in btc)))
        for name in whole:
            np.testing.assert_array_equal(part[name], whole[name][:cut], err_msg=name)


# --- one code path: batch == incremental, bit for bit --------------------------------------------

ALL_SPECS = [*TALIB_SPECS, *REFERENCE_SPECS, "vwap"]


def test_batch_equals_incremental_on_real_candles(btc: Candles) -> None:
    batch = run(ALL_SPECS, btc)
    incremental = run_incrementally(ALL_SPECS, btc)
    assert list(batch) == list(incremental)
    for name in batch:
        np.testing.assert_array_equal(batch[name], incremental[name], err_msg=name)


def test_batches_resume_where_the_state_left_off(btc: Candles) -> None:
    whole = run(ALL_SPECS, btc)
    state = IndicatorSet(ALL_SPECS)
    first = state.update_many(*(a[:1234] for a in btc))
    state = pickle.loads(pickle.dumps(state))  # a checkpoint in between
    rest = state.update_many(*(a[1234:] for a in btc))
    for name in whole:
        np.testing.assert_array_equal(np.concatenate([first[name], rest[name]]), whole[name], err_msg=name)


def test_state_pickles_and_compares(btc: Candles) -> None:
    a, b = IndicatorSet(["rsi:14", "bbands:20:2"]), IndicatorSet(["rsi:14", "bbands:20:2"])
    assert a == b
    for bar in zip(*(x[:30].tolist() for x in btc), strict=True):
        a.update(*bar)
    assert a != b
    restored = pickle.loads(pickle.dumps(a))
    assert restored == a
    assert repr(restored) == "IndicatorSet(['rsi:14', 'bbands:20:2'])"
    bar = tuple(x[30].item() for x in btc)
    assert restored.update(*bar) == a.update(*bar)
    assert restored == a
    assert IndicatorSet(["rsi:14"]) != IndicatorSet(["rsi:15"])


def test_update_names_every_output_and_accepts_datetimes(btc: Candles) -> None:
    state = IndicatorSet(["macd:12:26:9", "obv", "adx:14"])
    assert state.names == (
        "macd_12_26_9",
        "macd_signal_12_26_9",
        "macd_hist_12_26_9",
        "obv",
        "adx_14",
        "plus_di_14",
        "minus_di_14",
    )
    out = state.update(*(x[0].item() for x in btc))
    assert list(out) == list(state.names)
    assert out["obv"] == btc.volume[0] and np.isnan(out["adx_14"])
    by_datetime = compute(["sma:3"], btc.ts.view("datetime64[ns]"), *btc[1:])
    np.testing.assert_array_equal(by_datetime["sma_3"], run(["sma:3"], btc)["sma_3"])


def test_batch_rejects_ragged_arrays(btc: Candles) -> None:
    with pytest.raises(ValueError, match="one length"):
        compute(["sma:3"], btc.ts, btc.open, btc.high, btc.low, btc.close[:-1], btc.volume)


# --- properties ----------------------------------------------------------------------------------

SMALL_SPECS = [
    "sma:2",
    "sma:5",
    "ema:3",
    "wma:4",
    "rsi:3",
    "macd:2:5:3",
    "macd:3:4:1",
    "bbands:4:2",
    "bbands:3:0.5",
    "atr:1",
    "atr:3",
    "stoch:3:2:2",
    "stoch:1:1:1",
    "willr:3",
    "cci:4",
    "obv",
    "vwap",
    "adx:2",
    "adx:3",
    "stddev:3",
    "mfi:3",
    "ichimoku:2:3:5",
    "donchian:3",
    "keltner:3:2:2",
    "sar:0.02:0.2",
    "supertrend:3:2",
    "vprofile:4:3",
]

prices = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def candle_series(draw: st.DrawFn, constant: bool = False) -> Candles:
    """Positive OHLCV bars, a minute to several hours apart (so sessions roll over)."""
    n = draw(st.integers(min_value=1, max_value=80))
    closes = [draw(prices)] * n if constant else draw(st.lists(prices, min_size=n, max_size=n))
    spread = draw(st.lists(st.floats(min_value=0, max_value=0.05), min_size=2 * n, max_size=2 * n))
    close = np.array(closes)
    open_ = np.concatenate([close[:1], close[:-1]])
    high = np.maximum(open_, close) * (1 + np.array(spread[:n]))
    low = np.minimum(open_, close) * (1 - np.array(spread[n:]))
    if constant:
        open_ = high = low = close
    volumes = st.one_of(st.just(0.0), st.floats(min_value=1e-8, max_value=1e9))
    volume = np.array(draw(st.lists(volumes, min_size=n, max_size=n)))
    gaps = draw(st.lists(st.integers(min_value=1, max_value=600), min_size=n, max_size=n))
    ts = NEW_YEAR + np.cumsum(gaps).astype(np.int64) * NS_PER_MINUTE
    return Candles(ts, open_, high, low, close, volume)


@settings(max_examples=60, deadline=None)
@given(candles=candle_series(), specs=st.lists(st.sampled_from(SMALL_SPECS), min_size=1, max_size=6))
def test_property_batch_equals_incremental(candles: Candles, specs: list[str]) -> None:
    batch = run(specs, candles)
    incremental = run_incrementally(specs, candles)
    for name in batch:
        np.testing.assert_array_equal(batch[name], incremental[name], err_msg=name)


# Small periods against TA-Lib on random candles, to the scale of the data: prices (a MACD line or a
# band can be far smaller than the prices it comes from), 100 for oscillators, total volume for OBV.
RANDOM_TALIB = ["sma:3", "ema:3", "wma:4", "rsi:3", "macd:2:5:3", "bbands:4:2", "atr:3", "stoch:3:2:2"]
RANDOM_TALIB += ["willr:3", "adx:3", "obv", "stddev:3", "mfi:3", "sar:0.02:0.2", "sar:0.3:0.2"]
OSCILLATORS = ("rsi", "stoch", "willr", "adx", "plus_di", "minus_di", "mfi")


@settings(max_examples=60, deadline=None)
@given(candles=candle_series())
def test_property_matches_talib_on_random_candles(candles: Candles) -> None:
    ours = run(RANDOM_TALIB, candles)
    for spec in RANDOM_TALIB:
        for name, ref in zip(output_names(spec), talib_outputs(spec, candles), strict=True):
            if name.startswith(OSCILLATORS):
                scale = 100.0
            elif name == "obv":
                scale = float(candles.volume.sum())
            else:
                scale = float(candles.high.max())
            np.testing.assert_array_equal(np.isnan(ours[name]), np.isnan(ref), err_msg=name)
            if name == "mfi_3":  # TA-Lib's running sums carry residue: to the scale of the window
                warm = ~np.isnan(ref)
                miss = np.abs(ours[name] - ref)[warm]
                assert np.all(miss <= mfi_tolerance(candles, 3)[warm]), name
                continue
            np.testing.assert_allclose(ours[name], ref, rtol=RTOL, atol=RTOL * scale, err_msg=name)


def mfi_tolerance(c: Candles, n: int) -> Array:
    """How far TA-Lib's MFI may sit from the exact one: its running sums carry the rounding residue
    of every flow so far (at most 1e-12 of the largest) into later windows, so a window holding
    little flow after a burst is off by that residue over the window's own flow (infinite with none)."""
    typical = (c.high + c.low + c.close) / 3
    moved = np.diff(typical, prepend=np.nan) != 0
    flow = np.where(moved, typical * c.volume, 0.0)
    window = pd.Series(flow).rolling(n).sum().to_numpy()
    residue = np.maximum.accumulate(typical * c.volume) * 1e-12
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = 100.0 * residue / window
    return np.where(window > 0, bound, np.inf) + 100.0 * RTOL


@settings(max_examples=60, deadline=None)
@given(candles=candle_series())
def test_property_outputs_stay_in_their_ranges(candles: Candles) -> None:
    out = run(SMALL_SPECS, candles)

    def within(name: str, low: float, high: float, slack: float = 1e-9) -> None:
        values = out[name][~np.isnan(out[name])]
        assert np.all((values >= low - slack) & (values <= high + slack)), name

    for name in ("rsi_3", "stoch_k_3_2_2", "stoch_d_3_2_2", "adx_3", "plus_di_3", "minus_di_3", "mfi_3"):
        within(name, 0, 100)
    within("stddev_3", 0, np.inf)
    within("willr_3", -100, 0)
    within("atr_3", 0, np.inf)
    low, high = float(candles.low.min()), float(candles.high.max())
    for name in ("sma_5", "ema_3", "wma_4", "bb_middle_4_2", "vwap", "dc_upper_3", "dc_lower_3"):
        within(name, low, high, slack=high * 1e-12)
    for name in ("ichimoku_tenkan_2_3_5", "ichimoku_senkou_a_2_3_5", "ichimoku_senkou_b_2_3_5"):
        within(name, low, high, slack=high * 1e-12)
    for name in ("vp_poc_4_3", "vp_vah_4_3", "vp_val_4_3"):
        within(name, low, high, slack=high * 1e-12)
    warm = ~np.isnan(out["vp_poc_4_3"])
    assert np.all(out["vp_val_4_3"][warm] < out["vp_poc_4_3"][warm] + high * 1e-12)
    assert np.all(out["vp_poc_4_3"][warm] < out["vp_vah_4_3"][warm] + high * 1e-12)
    assert set(out["supertrend_dir_3_2"][~np.isnan(out["supertrend_dir_3_2"])]) <= {-1.0, 1.0}
    kc = ~np.isnan(out["kc_middle_3_2_2"])
    assert np.all(out["kc_lower_3_2_2"][kc] <= out["kc_middle_3_2_2"][kc])
    assert np.all(out["kc_middle_3_2_2"][kc] <= out["kc_upper_3_2_2"][kc])
    upper, lower = out["bb_upper_4_2"], out["bb_lower_4_2"]
    warm = ~np.isnan(upper)
    assert np.all(lower[warm] <= out["bb_middle_4_2"][warm])
    assert np.all(out["bb_middle_4_2"][warm] <= upper[warm])


@settings(max_examples=40, deadline=None)
@given(candles=candle_series(constant=True))
def test_property_constant_prices(candles: Candles) -> None:
    out = run(SMALL_SPECS, candles)
    price = candles.close[0]
    for name in ("sma_5", "ema_3", "wma_4", "bb_upper_4_2", "bb_middle_4_2", "bb_lower_4_2"):
        values = out[name][~np.isnan(out[name])]
        np.testing.assert_allclose(values, price, rtol=1e-13, err_msg=name)
    for name in ("macd_2_5_3", "macd_hist_2_5_3"):
        values = out[name][~np.isnan(out[name])]
        np.testing.assert_allclose(values, 0.0, atol=price * 1e-13, err_msg=name)
    for name in ("rsi_3", "willr_3", "stoch_k_3_2_2", "cci_4", "atr_3", "adx_3", "plus_di_3", "mfi_3"):
        values = out[name][~np.isnan(out[name])]
        np.testing.assert_array_equal(values, 0.0, err_msg=name)
    stddev = out["stddev_3"][~np.isnan(out["stddev_3"])]  # the mean of three equal prices may miss by an ulp
    np.testing.assert_allclose(stddev, 0.0, atol=price * 1e-15)
    for name in ("dc_middle_3", "ichimoku_kijun_2_3_5", "kc_upper_3_2_2", "supertrend_3_2", "vp_poc_4_3"):
        values = out[name][~np.isnan(out[name])]
        np.testing.assert_allclose(values, price, rtol=1e-13, err_msg=name)


# --- specs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        ("sma:50", ("sma_50",)),
        ("ema:20", ("ema_20",)),
        ("wma:10", ("wma_10",)),
        ("rsi:14", ("rsi_14",)),
        ("macd:12:26:9", ("macd_12_26_9", "macd_signal_12_26_9", "macd_hist_12_26_9")),
        ("bbands:20:2", ("bb_upper_20_2", "bb_middle_20_2", "bb_lower_20_2")),
        ("bbands:20:2.5", ("bb_upper_20_2.5", "bb_middle_20_2.5", "bb_lower_20_2.5")),
        ("atr:14", ("atr_14",)),
        ("stoch:14:3:3", ("stoch_k_14_3_3", "stoch_d_14_3_3")),
        ("willr:14", ("willr_14",)),
        ("cci:20", ("cci_20",)),
        ("obv", ("obv",)),
        ("vwap", ("vwap",)),
        ("adx:14", ("adx_14", "plus_di_14", "minus_di_14")),
        ("stddev:20", ("stddev_20",)),
        ("mfi:14", ("mfi_14",)),
        (
            "ichimoku:9:26:52",
            (
                "ichimoku_tenkan_9_26_52",
                "ichimoku_kijun_9_26_52",
                "ichimoku_senkou_a_9_26_52",
                "ichimoku_senkou_b_9_26_52",
            ),
        ),
        ("donchian:20", ("dc_upper_20", "dc_middle_20", "dc_lower_20")),
        ("keltner:20:2:10", ("kc_upper_20_2_10", "kc_middle_20_2_10", "kc_lower_20_2_10")),
        ("sar:0.02:0.2", ("sar_0.02_0.2",)),
        ("supertrend:10:3", ("supertrend_10_3", "supertrend_dir_10_3")),
        ("vprofile:60:24", ("vp_poc_60_24", "vp_vah_60_24", "vp_val_60_24")),
    ],
)
def test_output_names(spec: str, names: tuple[str, ...]) -> None:
    assert output_names(spec) == names
    assert IndicatorSet([spec]).names == names


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "unknown indicator"),
        ("kama:10", "unknown indicator"),
        ("SMA:20", "unknown indicator"),
        ("sma", "should look like 'sma:N'"),
        ("sma:20:1", "should look like 'sma:N'"),
        ("obv:3", "should look like 'obv'"),
        ("sma:", "whole number"),
        ("sma:x", "whole number"),
        ("sma:-3", "whole number"),
        ("sma:2.5", "whole number"),
        ("sma:1", "from 2 to"),
        ("sma:100001", "from 2 to"),
        ("atr:0", "from 1 to"),
        ("macd:26:12:9", "fast period"),
        ("macd:12:12:9", "fast period"),
        ("bbands:20:0", "positive number"),
        ("bbands:20:-2", "positive number"),
        ("bbands:20:nan", "positive number"),
        ("bbands:20:inf", "positive number"),
        ("stddev:1", "from 2 to"),
        ("mfi:1", "from 2 to"),
        ("ichimoku:9:26", "should look like 'ichimoku:T:K:S'"),
        ("ichimoku:0:26:52", "from 1 to"),
        ("donchian:0", "from 1 to"),
        ("keltner:20:0:10", "positive number"),
        ("sar:0.02", "should look like 'sar:A:M'"),
        ("sar:0:0.2", "positive number"),
        ("supertrend:10:-3", "positive number"),
        ("vprofile:60:0", "from 1 to"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        output_names(spec)
    with pytest.raises(ValueError, match=message):
        IndicatorSet(["sma:5", spec])


def test_specs_are_deduplicated_in_order() -> None:
    state = IndicatorSet(["rsi:14", "sma:20", "rsi:14", "sma:020"])
    assert state.specs == ("rsi:14", "sma:20")
    assert state.names == ("rsi_14", "sma_20")
    assert IndicatorSet([]).names == ()


def test_a_single_string_is_not_a_list_of_specs() -> None:
    with pytest.raises(TypeError, match="list of specs"):
        IndicatorSet("sma:20")


def test_every_form_is_tested() -> None:
    tested = {spec.split(":")[0] for spec in ALL_SPECS}
    assert tested == {form.split(":")[0] for form in FORMS}
