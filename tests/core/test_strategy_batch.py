"""Strategy.decide_batch: the same sides and confidences as on_bar bar by bar, and no look-ahead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mambo.core.indicators import compute
from mambo.core.strategies import (
    SIDE_CODES,
    Bar,
    Crossing,
    RsiReversion,
    Strategy,
    crosses,
    load_strategy,
)
from mambo.schemas.events import Candle

FIXTURE = Path(__file__).parents[1] / "fixtures" / "btc_perp_1m_5000.csv"
MINUTE = 60 * 10**9


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    df = pd.read_csv(FIXTURE).iloc[:3000]
    df["ts"] = pd.to_datetime(df.timestamp, utc=True).dt.as_unit("ns").astype("int64")
    return df


def on_bar_decisions(name: str, params: dict[str, Any], df: pd.DataFrame) -> tuple[list[str], list[float]]:
    strategy = load_strategy(name, **params)
    values = compute(strategy.indicators(), df.ts, df.open, df.high, df.low, df.close, df.volume)
    sides, confidences = [], []
    for i, row in enumerate(df.itertuples()):
        candle = Candle(
            event_id="c",
            ts_event=row.ts + MINUTE,
            ts_init=0,
            exchange="binance",
            symbol="BTC/USDT",
            timeframe="1m",
            open_time=row.ts,
            open=row.open,
            high=row.high,
            low=row.low,
            close=row.close,
            volume=row.volume,
            trades=0,
        )
        # as the indicator stage hands them: NaN (warming up) left out
        decision = strategy.on_bar(Bar(candle, {k: float(v[i]) for k, v in values.items() if v[i] == v[i]}))
        sides.append(decision.side)
        confidences.append(decision.confidence)
    return sides, confidences


CASES = [
    ("sma_cross", {}),
    ("sma_cross", {"fast": 5, "slow": 21, "half_gap": 0.001}),
    ("macd_cross", {}),
    ("ema_cross", {}),
    ("ema_cross", {"fast": 5, "slow": 21, "half_gap": 0.001}),
    ("bollinger_breakout", {"period": 14, "k": 1.5}),
    ("rsi_reversion", {}),
    ("rsi_reversion", {"period": 5, "lower": 40.0, "upper": 60.0}),
]


@pytest.mark.parametrize(("name", "params"), CASES)
def test_decide_batch_equals_on_bar_bar_by_bar(name: str, params: dict[str, Any], bars: pd.DataFrame) -> None:
    strategy = load_strategy(name, **params)
    values = compute(strategy.indicators(), bars.ts, bars.open, bars.high, bars.low, bars.close, bars.volume)
    made = strategy.decide_batch(bars.close.to_numpy(), values)
    assert made is not None
    sides, confidences = made
    expected_sides, expected_conf = on_bar_decisions(name, params, bars)
    assert [SIDE_CODES[int(s)] for s in sides] == expected_sides
    assert confidences.tolist() == expected_conf  # bit for bit
    assert sum(s != "hold" for s in expected_sides) >= 10
    assert strategy == load_strategy(name, **params)  # the instance's state was left alone


@pytest.mark.parametrize(("name", "params"), CASES)
def test_decide_batch_never_reads_later_bars(name: str, params: dict[str, Any], bars: pd.DataFrame) -> None:
    """A decision on bar i is the same whether or not the bars after i exist."""
    strategy = load_strategy(name, **params)
    close = bars.close.to_numpy()
    values = compute(strategy.indicators(), bars.ts, bars.open, bars.high, bars.low, close, bars.volume)
    full = strategy.decide_batch(close, values)
    assert full is not None
    for cut in (1, 250, 1234, 2999):
        part = strategy.decide_batch(close[:cut], {k: v[:cut] for k, v in values.items()})
        assert part is not None
        assert np.array_equal(part[0], full[0][:cut]) and np.array_equal(part[1], full[1][:cut])


def test_a_strategy_without_decide_batch_says_so() -> None:
    class BarByBar(RsiReversion):
        decide_batch = Strategy.decide_batch

    assert BarByBar().decide_batch(np.ones(3), {"rsi_14": np.ones(3)}) is None


# RSI paths that sit on, dip under and jump over the levels (30 and 70), with warm-up NaNs
_RSI = st.sampled_from([float("nan"), 10.0, 25.0, 29.5, 30.0, 31.0, 50.0, 69.0, 70.0, 70.5, 85.0, 100.0])


@given(st.lists(_RSI, max_size=80))
def test_rsi_reversion_batch_equals_on_bar_on_any_rsi_path(path: list[float]) -> None:
    """Touches, double dips, jumps from oversold to overbought: the batch form agrees bar by bar."""
    strategy, rsi = RsiReversion(), np.array(path, dtype=np.float64)
    made = RsiReversion().decide_batch(np.full(len(rsi), 100.0), {"rsi_14": rsi})
    # as the indicator stage hands them: NaN (warming up) left out
    expected = [strategy.on_bar(Bar(_candle(i), {"rsi_14": v} if v == v else {})) for i, v in enumerate(path)]
    assert [SIDE_CODES[int(s)] for s in made[0]] == [d.side for d in expected]
    assert made[1].tolist() == [d.confidence for d in expected]


def _candle(i: int) -> Candle:
    return Candle(
        event_id=str(i),
        ts_event=(i + 1) * MINUTE,
        ts_init=0,
        exchange="binance",
        symbol="BTC/USDT",
        timeframe="1m",
        open_time=i * MINUTE,
        open=100.0,
        high=100.0,
        low=100.0,
        close=100.0,
        volume=1.0,
        trades=0,
    )


@given(st.lists(st.sampled_from([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0, float("nan")]), max_size=60))
def test_crosses_equals_crossing_update_element_by_element(diffs: list[float]) -> None:
    crossing = Crossing()
    expected = [crossing.update(d) for d in diffs]
    assert crosses(np.array(diffs, dtype=np.float64)).tolist() == expected
