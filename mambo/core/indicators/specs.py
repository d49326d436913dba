"""Indicator specs: the strings that name an indicator and its parameters, and its output names.

``"sma:50"`` gives ``sma_50``; ``"macd:12:26:9"`` gives ``macd_12_26_9``, ``macd_signal_12_26_9`` and
``macd_hist_12_26_9``; ``"bbands:20:2"`` gives ``bb_upper_20_2``, ``bb_middle_20_2``, ``bb_lower_20_2``
(the multiplier as written); ``"obv"`` and ``"vwap"`` take no parameters. Period limits are TA-Lib's.

The rest: ``"stddev:N"`` (``stddev_N``), ``"mfi:N"`` (``mfi_N``), ``"ichimoku:T:K:S"`` (tenkan, kijun,
senkou spans: ``ichimoku_tenkan_9_26_52``, ``ichimoku_kijun_...``, ``ichimoku_senkou_a_...``,
``ichimoku_senkou_b_...``), ``"donchian:N"`` (``dc_upper_N``, ``dc_middle_N``, ``dc_lower_N``),
``"keltner:N:K:A"`` (EMA period, ATR multiplier, ATR period: ``kc_upper_20_2_10``...), ``"sar:A:M"``
(acceleration and its maximum: ``sar_0.02_0.2``), ``"supertrend:N:K"`` (ATR period, multiplier:
``supertrend_10_3``, ``supertrend_dir_10_3``) and ``"vprofile:N:B"`` (window, bins: ``vp_poc_N_B``,
``vp_vah_N_B``, ``vp_val_N_B``). What each computes is written at its kernel in :mod:`.kernels`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from mambo.core.indicators import kernels

__all__ = ["FORMS", "Spec", "output_names", "parse_spec"]

_MAX_PERIOD = 100_000
_INT = re.compile(r"[0-9]+")
_REAL = re.compile(r"[0-9]+(\.[0-9]+)?")


@dataclass(frozen=True)
class _Param:
    name: str
    minimum: int = 2  # periods only; a real parameter (``integer=False``) must be > 0
    integer: bool = True


@dataclass(frozen=True)
class _Form:
    kind: int
    params: tuple[_Param, ...]
    outputs: tuple[str, ...]  # output name prefixes, suffixed with the parameters


_N = (_Param("N"),)
_FORMS: dict[str, _Form] = {
    "sma": _Form(kernels.SMA, _N, ("sma",)),
    "ema": _Form(kernels.EMA, _N, ("ema",)),
    "wma": _Form(kernels.WMA, _N, ("wma",)),
    "rsi": _Form(kernels.RSI, _N, ("rsi",)),
    "macd": _Form(
        kernels.MACD,
        (_Param("F"), _Param("S"), _Param("G", minimum=1)),
        ("macd", "macd_signal", "macd_hist"),
    ),
    "bbands": _Form(
        kernels.BBANDS, (_Param("N"), _Param("K", integer=False)), ("bb_upper", "bb_middle", "bb_lower")
    ),
    "atr": _Form(kernels.ATR, (_Param("N", minimum=1),), ("atr",)),
    "stoch": _Form(
        kernels.STOCH,
        (_Param("K", minimum=1), _Param("S", minimum=1), _Param("D", minimum=1)),
        ("stoch_k", "stoch_d"),
    ),
    "willr": _Form(kernels.WILLR, _N, ("willr",)),
    "cci": _Form(kernels.CCI, _N, ("cci",)),
    "obv": _Form(kernels.OBV, (), ("obv",)),
    "vwap": _Form(kernels.VWAP, (), ("vwap",)),
    "adx": _Form(kernels.ADX, _N, ("adx", "plus_di", "minus_di")),
    "stddev": _Form(kernels.STDDEV, _N, ("stddev",)),
    "mfi": _Form(kernels.MFI, _N, ("mfi",)),
    "ichimoku": _Form(
        kernels.ICHIMOKU,
        (_Param("T", minimum=1), _Param("K", minimum=1), _Param("S", minimum=1)),
        ("ichimoku_tenkan", "ichimoku_kijun", "ichimoku_senkou_a", "ichimoku_senkou_b"),
    ),
    "donchian": _Form(kernels.DONCHIAN, (_Param("N", minimum=1),), ("dc_upper", "dc_middle", "dc_lower")),
    "keltner": _Form(
        kernels.KELTNER,
        (_Param("N"), _Param("K", integer=False), _Param("A", minimum=1)),
        ("kc_upper", "kc_middle", "kc_lower"),
    ),
    "sar": _Form(kernels.SAR, (_Param("A", integer=False), _Param("M", integer=False)), ("sar",)),
    "supertrend": _Form(
        kernels.SUPERTREND,
        (_Param("N", minimum=1), _Param("K", integer=False)),
        ("supertrend", "supertrend_dir"),
    ),
    "vprofile": _Form(
        kernels.VPROFILE, (_Param("N", minimum=1), _Param("B", minimum=1)), ("vp_poc", "vp_vah", "vp_val")
    ),
}

#: Every accepted form, e.g. ``"macd:F:S:G"``.
FORMS: tuple[str, ...] = tuple(":".join([name, *(p.name for p in f.params)]) for name, f in _FORMS.items())


@dataclass(frozen=True)
class Spec:
    """A parsed spec: the kernel kind, its numeric parameters and its output names."""

    text: str
    kind: int
    params: tuple[float, ...]
    names: tuple[str, ...]


def parse_spec(spec: str) -> Spec:
    """Parse ``"name:p1:p2..."``; a malformed spec raises ValueError saying what is wrong."""
    if not isinstance(spec, str):
        raise ValueError(f"indicator spec must be a string like 'sma:20', got {spec!r}")
    name, *args = spec.split(":")
    form = _FORMS.get(name)
    if form is None:
        raise ValueError(f"unknown indicator {name!r} in spec {spec!r}; known forms: {', '.join(FORMS)}")
    usage = ":".join([name, *(p.name for p in form.params)])
    if len(args) != len(form.params):
        raise ValueError(f"indicator spec {spec!r} should look like {usage!r}")
    values: list[float] = []
    texts: list[str] = []
    for param, arg in zip(form.params, args, strict=True):
        value, text = _parse_param(spec, usage, param, arg)
        values.append(value)
        texts.append(text)
    if form.kind == kernels.MACD and not values[0] < values[1]:
        raise ValueError(f"indicator spec {spec!r}: the fast period F must be shorter than the slow S")
    suffix = "".join(f"_{t}" for t in texts)
    return Spec(spec, form.kind, tuple(values), tuple(prefix + suffix for prefix in form.outputs))


def output_names(spec: str) -> tuple[str, ...]:
    """The names of the values an indicator spec produces, e.g. ``"rsi:14"`` -> ``("rsi_14",)``."""
    return parse_spec(spec).names


def _parse_param(spec: str, usage: str, param: _Param, arg: str) -> tuple[float, str]:
    """The value of one parameter and its text in output names (periods canonical, reals as written)."""
    if param.integer:
        if not _INT.fullmatch(arg) or not param.minimum <= int(arg) <= _MAX_PERIOD:
            raise ValueError(
                f"indicator spec {spec!r} ({usage!r}): {param.name} must be a whole number from "
                f"{param.minimum} to {_MAX_PERIOD}, got {arg!r}"
            )
        return float(int(arg)), str(int(arg))
    if not _REAL.fullmatch(arg) or not 0 < float(arg) < math.inf:
        raise ValueError(
            f"indicator spec {spec!r} ({usage!r}): {param.name} must be a positive number like 2 or 2.5, "
            f"got {arg!r}"
        )
    return float(arg), arg
