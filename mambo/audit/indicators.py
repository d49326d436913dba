"""Stored indicators against the project's own :class:`~mambo.core.indicators.IndicatorSet` run over the
stored candles of their market and timeframe, in open-time order, from a fresh state.

The indicator specs are read back from the stored output names (``rsi_14`` comes from ``rsi:14``,
``bb_upper_20_2`` from ``bbands:20:2``), so a history checks itself without the settings that wrote
it. Each spec's state is its own, so recomputing only the specs a history names gives the values the
run computed. A value is stored only once an indicator has warmed up (NaN is left out), so a value
missing where the recomputation has one, or the other way round, is a violation too.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import pairwise
from typing import Any

import numpy as np
from clickhouse_connect.driver.client import Client

from mambo.audit.report import Finding, when
from mambo.core.indicators import FORMS, IndicatorSet, output_names

__all__ = ["RTOL", "indicators_recompute", "spec_of"]

#: Relative tolerance between a stored value and its recomputation.
RTOL = 1e-9


def spec_of(name: str) -> str | None:
    """The indicator spec that produces the output ``name`` (``"macd_signal_12_26_9"`` ->
    ``"macd:12:26:9"``), or None when no spec does."""
    parts = name.split("_")
    for form in FORMS:
        kind, *params = form.split(":")
        if len(params) >= len(parts):
            continue
        spec = ":".join([kind, *parts[len(parts) - len(params) :]]) if params else kind
        try:
            if name in output_names(spec):
                return spec
        except ValueError:
            continue
    return None


def indicators_recompute(client: Client, database: str) -> Finding:
    """Every stored indicator row equals the recomputation at its candle, value by value (see the module
    docstring); a row without its candle is a violation."""
    candles = _candles(client, database)
    checked, bad, example = 0, 0, ""
    for (ex, sym, tf), rows in _indicator_rows(client, database).items():
        checked += len(rows)
        names = sorted({k for r in rows for k in r[1]})
        specs = {n: spec_of(n) for n in names}
        unknown = [n for n, s in specs.items() if s is None]
        bars = candles.get((ex, sym, tf))
        expected = _recompute(bars, [s for s in specs.values() if s]) if bars is not None else {}
        ends = bars["te"] if bars is not None else np.empty(0, np.int64)
        for ts, values in rows:
            i = int(np.searchsorted(ends, ts))
            if unknown or i == len(ends) or ends[i] != ts:
                problem = f"no recipe for {unknown[0]}" if unknown else "no candle ends there"
            else:
                problem = _compare(names, values, {n: float(expected[n][i]) for n in names})
            if problem:
                bad += 1
                example = example or f"{ex}:{sym} {tf} bar ending {when(ts)}: {problem}"
    return Finding("indicators recompute from candles", checked, bad, example)


def _compare(names: list[str], stored: dict[str, float], expected: dict[str, float]) -> str:
    """The first value that differs beyond :data:`RTOL` (or is there on one side only), as text."""
    for n in names:
        got, want = stored.get(n, np.nan), expected[n]
        if np.isnan(got) and np.isnan(want):
            continue
        if np.isnan(got) or np.isnan(want) or abs(got - want) > RTOL * max(abs(got), abs(want)):
            return f"{n} stored {got:.10g}, recomputed {want:.10g}"
    return ""


def _recompute(bars: dict[str, np.ndarray], specs: list[str]) -> dict[str, np.ndarray]:
    return IndicatorSet(specs).update_many(
        bars["ot"], bars["open"], bars["high"], bars["low"], bars["close"], bars["volume"]
    )


def _candles(client: Client, database: str) -> dict[tuple[str, str, str], dict[str, np.ndarray]]:
    """Each market and timeframe's candles in open-time order, one per bar: the candle built from trades
    where an exchange's candle shares its bar (the candle stage drops the exchange's for such a market)."""
    result = client.query(
        "SELECT exchange, symbol, timeframe, toUnixTimestamp64Nano(open_time) AS ot, "
        "toUnixTimestamp64Nano(ts_event) AS te, open, high, low, close, volume "
        f"FROM `{database}`.`candles` FINAL "
        "ORDER BY exchange, symbol, timeframe, open_time, trades > 0 DESC "
        "LIMIT 1 BY exchange, symbol, timeframe, open_time"
    )
    cols: dict[str, Any] = dict(zip(result.column_names, result.result_columns, strict=True))
    if not result.row_count:
        return {}
    keys = list(zip(cols["exchange"], cols["symbol"], cols["timeframe"], strict=True))
    arrays = {c: np.asarray(cols[c], np.int64 if c in ("ot", "te") else np.float64) for c in list(cols)[3:]}
    starts = [0, *(i for i in range(1, len(keys)) if keys[i] != keys[i - 1]), len(keys)]
    return {keys[a]: {c: v[a:b] for c, v in arrays.items()} for a, b in pairwise(starts)}


def _indicator_rows(
    client: Client, database: str
) -> dict[tuple[str, str, str], list[tuple[int, dict[str, float]]]]:
    """Stored indicator rows (one per event id) by market and timeframe: (bar end, values)."""
    result = client.query(
        "SELECT exchange, symbol, timeframe, toUnixTimestamp64Nano(ts_event), values "
        f"FROM `{database}`.`indicators` FINAL ORDER BY exchange, symbol, timeframe, ts_event"
    )
    out: dict[tuple[str, str, str], list[tuple[int, dict[str, float]]]] = defaultdict(list)
    for ex, sym, tf, ts, values in result.result_rows:
        out[(ex, sym, tf)].append((int(ts), values))
    return out
