"""Configuration cannot double-count: each candle advances each indicator set once, each strategy
decides once per bar, whatever timeframes, strategies and indicators are configured.

Found from the outside: ``mambo demo`` listed its 1s timeframe twice, the indicator stage read
md.candles.1s twice, and every 1s candle advanced the indicators twice (3,911 indicator rows for
1,972 candles, two rows per event id with different values)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from mambo.cli import demo_timeframes
from mambo.core.stages import DEFAULT_INDICATORS, EngineConfig, IndicatorStage
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import Candle, IndicatorValues, Signal
from mambo.schemas.topics import INDICATORS, SIGNALS_RAW, candle_topic
from mambo.settings import EngineSettings
from mambo.streams.bus import EventBus
from mambo.streams.embedded import EmbeddedRuntime

SECOND = 10**9
TIMEFRAMES = ("1s", "5s", "1m", "5m")
STRATEGIES = ("sma_cross", "rsi_reversion", "macd_cross", "bollinger_breakout")
INDICATORS_POOL = (*DEFAULT_INDICATORS, "sma:5", "macd:12:26:9", "adx:14")


def _trades() -> TradeBatch:
    """Ten minutes of a random walk on two markets, a trade every 0.1-0.9 s, with quiet gaps."""
    rng = np.random.default_rng(7)
    n = 1_500
    ts = 1_700_000_000 * SECOND + np.cumsum(rng.integers(SECOND // 10, SECOND, n)).astype(np.int64)
    ts[700:] += 40 * SECOND  # a gap with no trades: candles skip intervals
    market = rng.integers(0, 2, n).astype(np.int32)
    price = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    return TradeBatch(
        keys=("binance:BTC/USDT", "binance:ETH/USDT"),
        market=market,
        ts=ts,
        price=price,
        qty=rng.uniform(0.01, 1.0, n),
        side=rng.choice(np.array([1, -1], np.int8), n),
        trade_id=np.array([str(i) for i in range(n)], dtype=object),
    )


TRADES = _trades()


def _run(config: EngineConfig) -> list[tuple[str, Any]]:
    runtime = EmbeddedRuntime(config)
    seen: list[tuple[str, Any]] = []
    runtime.observe(lambda topic, payload: seen.append((topic, payload)))
    for start in range(0, len(TRADES), 250):
        runtime.ingest_trades(TRADES.slice(start, min(start + 250, len(TRADES))))
    return seen


configs = st.fixed_dictionaries(
    {
        "timeframes": st.lists(st.sampled_from(TIMEFRAMES), min_size=1, max_size=3, unique=True),
        "trading_timeframe": st.sampled_from(TIMEFRAMES),
        "strategies": st.lists(st.sampled_from(STRATEGIES), min_size=1, max_size=4, unique=True),
        "indicators": st.lists(st.sampled_from(INDICATORS_POOL), max_size=4, unique=True),
    }
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_each_candle_gives_one_indicator_event_and_each_strategy_one_decision(cfg: dict[str, Any]) -> None:
    config = EngineConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    seen = _run(config)
    candles = [
        (c.key, c.timeframe, c.open_time)
        for topic, c in seen
        if isinstance(c, Candle) and topic == candle_topic(c.timeframe)
    ]
    assert candles, "the recording closes candles"
    assert len(set(candles)) == len(candles), "a candle was published twice"
    indicators = Counter(
        (e.key, e.timeframe, e.event_id)
        for t, e in seen
        if t == INDICATORS.name and isinstance(e, IndicatorValues)
    )
    assert set(indicators.values()) == {1}
    assert len(indicators) == len(candles)
    assert Counter(tf for _, tf, _ in indicators) == Counter(tf for _, tf, _ in candles)

    trading = Counter(key for key, tf, _ in candles if tf == config.trading_timeframe)
    decisions = Counter(
        (s.key, s.strategy) for t, s in seen if t == SIGNALS_RAW.name and isinstance(s, Signal)
    )
    assert decisions == Counter({(key, name): n for key, n in trading.items() for name in config.strategies})
    bars = Counter((s.key, s.strategy, s.ts_event) for t, s in seen if t == SIGNALS_RAW.name)
    assert set(bars.values()) == {1}


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(["timeframes", "strategies", "indicators"]),
    st.lists(st.integers(0, 3), min_size=2, max_size=5).filter(lambda xs: len(set(xs)) < len(xs)),
)
def test_a_repeated_timeframe_strategy_or_indicator_is_refused(field: str, picks: list[int]) -> None:
    pool = {"timeframes": TIMEFRAMES, "strategies": STRATEGIES, "indicators": INDICATORS_POOL}[field]
    values = tuple(pool[i] for i in picks)
    with pytest.raises(ValueError, match="more than once"):
        EngineConfig(**{field: values})
    with pytest.raises(ValidationError, match="more than once"):
        EngineSettings.model_validate({field: ",".join(values)})


@pytest.mark.parametrize("timeframe", ["1s", "1m", "5m"])
def test_the_demo_lists_each_timeframe_once(timeframe: str) -> None:
    tfs = demo_timeframes(timeframe)
    assert len(set(tfs)) == len(tfs)
    assert {"1s", "1m", timeframe} == set(tfs)
    EngineSettings(timeframes=tfs, trading_timeframe=timeframe)  # accepted


def test_a_stage_reads_each_topic_once() -> None:
    stage = IndicatorStage(("1s", "1m"), ["ema:20"])
    stage.inputs = (*stage.inputs, candle_topic("1s"))
    with pytest.raises(ValueError, match="input topic twice"):
        EventBus().add_stage(stage)
    bus = EventBus()
    ok = IndicatorStage(("1s",), ["ema:20"])
    bus.add_stage(ok)
    with pytest.raises(ValueError, match="already subscribed"):
        bus.add_stage(ok)
