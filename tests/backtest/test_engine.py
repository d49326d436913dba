"""The backtester: reference semantics, and the vectorized path against the event path on real candles."""

from __future__ import annotations

import gc
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import ClassVar

import numpy as np
import numpy.typing as npt
import pytest

from mambo.backtest.data import CandleFrame, load_candles
from mambo.backtest.engine import (
    BacktestResult,
    LookAheadError,
    Mode,
    run_backtest,
    run_events,
    run_vectorized,
    vector_refusal,
)
from mambo.backtest.metrics import compute_metrics
from mambo.core.risk import RiskConfig
from mambo.core.stages import EngineConfig
from mambo.core.strategies import BatchDecisions, RsiReversion, SmaCross, Strategy
from tests.streams.test_embedded import reference_sma_trades

FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.fixture(scope="module")
def frame() -> CandleFrame:
    return load_candles(FIXTURES / "btc_perp_1m_5000.csv", "BTC/USDT", "binance")


def assert_same(events: BacktestResult, vector: BacktestResult) -> None:
    """Identical trades, rejections and signals, and identical equity at every bar."""
    assert events.mode == "events" and vector.mode == "vectorized"
    assert vector.fills == events.fills  # every field: ids, prices, qty, fees, realized PnL
    assert vector.rejections == events.rejections
    # signal values are left out on the vectorized path (no order depends on them)
    strip = [s.model_copy(update={"values": {}}) for s in events.signals]
    assert vector.signals == strip
    # the event path's own portfolio, bar by bar, against the vectorized path's ledger: exact
    assert events.portfolio_equity is not None
    exact = [vector.equity_at(i) for i in range(len(vector.frame))]
    assert exact == events.portfolio_equity
    expected = np.array([float(e) for e in events.portfolio_equity])
    np.testing.assert_allclose(vector.equity, expected, rtol=1e-13, atol=0)
    n = len(vector.frame)
    assert vector.ledger.held_bars(n) == np.count_nonzero(vector.position) > 0
    # the one-pass curve is the whole-array formula, bit for bit
    ledger, seg = vector.ledger, vector.ledger.segment(n) + 1
    cash = np.array([float(ledger.initial_cash), *map(float, ledger.cash)])
    qty = np.array([0.0, *map(float, ledger.qty)])
    assert np.array_equal(vector.equity, cash[seg] + qty[seg] * vector.frame.close)


def test_sma_crossover_on_both_paths_gives_the_reference_trades(frame: CandleFrame) -> None:
    qty, fee = Decimal("0.5"), Decimal("0.001")
    config = EngineConfig(
        strategies=("sma_cross",),
        order_qty=qty,
        fee_taker=fee,
        initial_cash=Decimal(10**9),
        risk=RiskConfig(position_fraction=1.0, max_exposure_per_symbol=1.0, max_total_exposure=1.0),
    )
    expected = reference_sma_trades(frame.candles(), qty, fee)
    assert len(expected) >= 10
    for result in (run_vectorized(frame, config), run_events(frame, config)):
        got = [(f.side, f.ts_event, f.price, f.qty, f.fee) for f in result.fills]
        assert got == expected, result.mode
        # no fill uses the candle it was decided on: each fills at a later candle's open
        decided = {s.ts_event for s in result.signals}
        assert all(f.ts_event in decided for f in result.fills)  # decided at t's close == t+1's open


CONFIGS = {
    # risk sizes each entry from equity (position_fraction of it)
    "sma_sized_by_risk": EngineConfig(strategies=("sma_cross",)),
    # three strategies weighed by the aggregator, shorts, slippage, maker/taker fees, a threshold
    "three_strategies_short_slippage": EngineConfig(
        strategies=("sma_cross", "macd_cross", "bollinger_breakout"),
        strategy_params={"sma_cross": {"fast": 10, "slow": 40}},
        allow_short=True,
        slippage_bps=Decimal("2.5"),
        fee_taker=Decimal("0.0004"),
        aggregation_threshold=0.1,
        initial_cash=Decimal("25000"),
    ),
    # RSI reversion's batch form, with shorts
    "rsi_reversion_short": EngineConfig(
        strategies=("rsi_reversion",),
        strategy_params={"rsi_reversion": {"period": 7, "lower": 35.0, "upper": 65.0}},
        allow_short=True,
    ),
    # the EMA crossover, with shorts
    "ema_cross_short": EngineConfig(
        strategies=("ema_cross",),
        strategy_params={"ema_cross": {"fast": 9, "slow": 21}},
        allow_short=True,
    ),
    # limits that reject entries: rejections must match too
    "rejections": EngineConfig(
        strategies=("macd_cross",),
        order_qty=Decimal("2.5"),
        initial_cash=Decimal("150000"),
        risk=RiskConfig(max_exposure_per_symbol=Decimal("0.79"), max_orders_per_minute=1),
    ),
    # a fixed qty the cash pays for only at some prices: buying power refuses the rest
    "buying_power": EngineConfig(strategies=("macd_cross",), order_qty=Decimal("2.09")),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_vectorized_path_equals_event_path_on_real_candles(frame: CandleFrame, name: str) -> None:
    config = CONFIGS[name]
    data = frame.slice(0, 2500)  # the event path runs ~4k candles/s; half the file keeps this at ~1 s
    events, vector = run_events(data, config), run_vectorized(data, config)
    assert len(events.fills) >= 6
    if name in ("rejections", "buying_power"):
        assert events.rejections
    assert_same(events, vector)


def test_configs_the_vectorized_path_cannot_match_fall_back_to_the_event_path(frame: CandleFrame) -> None:
    data = frame.slice(0, 600)
    no_batch = EngineConfig(strategies=("sma_cross", "tests.backtest.test_engine:BarByBarRsi"))
    stops = EngineConfig(strategies=("sma_cross",), risk=RiskConfig(stop_loss=Decimal("0.01")))
    assert vector_refusal(EngineConfig()) == ""
    assert "BarByBarRsi has no decide_batch" in vector_refusal(no_batch)
    assert "stop_loss" in vector_refusal(stops)
    for config in (no_batch, stops):
        result = run_backtest(data, config)
        assert result.mode == "events" and result.fallback == vector_refusal(config)
        with pytest.raises(ValueError, match="cannot run this config"):
            run_backtest(data, config, mode="vectorized")
    assert run_backtest(data, EngineConfig()).mode == "vectorized"


@pytest.mark.parametrize("name", ["sma_sized_by_risk", "rejections"])
def test_the_vectorized_path_leaves_no_reference_cycles(frame: CandleFrame, name: str) -> None:
    """It pauses the cyclic garbage collector while the operators run: that loses nothing only if
    they make no cycles (signals, orders, fills, rejections raised and caught inside risk)."""
    run_vectorized(frame, CONFIGS[name])  # warm: first calls may build caches
    gc.collect()
    gc.disable()
    try:
        result = run_vectorized(frame, CONFIGS[name])
        assert result.fills and (result.rejections or name != "rejections")
        assert gc.collect() == 0
    finally:
        gc.enable()
    run_vectorized(frame.slice(0, 300), CONFIGS[name])
    assert gc.isenabled()  # turned on again after the run


def test_progress_is_reported_to_the_end(frame: CandleFrame) -> None:
    seen: list[tuple[int, int]] = []
    run_vectorized(frame, EngineConfig(), progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (len(frame), len(frame))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


@dataclass(kw_only=True)
class BarByBarRsi(RsiReversion):
    """rsi_reversion without its batch form, as a user's strategy without decide_batch is."""

    name: ClassVar[str] = "bar_by_bar_rsi"
    decide_batch = Strategy.decide_batch  # type: ignore[assignment]


@dataclass(kw_only=True)
class PeekingCross(SmaCross):
    """An SMA cross whose batch form reads the next bar's close: the backtester must refuse it."""

    name: ClassVar[str] = "peeking_cross"

    def decide_batch(
        self, close: npt.NDArray[np.float64], values: Mapping[str, npt.NDArray[np.float64]]
    ) -> BatchDecisions:
        sides, confidence = super().decide_batch(close, values)
        tomorrow = np.append(close[1:], np.nan)
        return np.where(tomorrow > close, sides, 0).astype(np.int8), confidence


def test_a_batch_decision_that_reads_later_bars_is_refused(frame: CandleFrame) -> None:
    config = EngineConfig(strategies=("tests.backtest.test_engine:PeekingCross",))
    with pytest.raises(LookAheadError, match="peeking_cross: decide_batch reads the future"):
        run_backtest(frame.slice(0, 1000), config)


@dataclass(kw_only=True)
class WeightlessCross(SmaCross):
    """An SMA cross whose batch form calls without confidence, which a Decision refuses."""

    name: ClassVar[str] = "weightless_cross"

    def decide_batch(
        self, close: npt.NDArray[np.float64], values: Mapping[str, npt.NDArray[np.float64]]
    ) -> BatchDecisions:
        sides, _ = super().decide_batch(close, values)
        return sides, np.zeros(len(close))


def test_batch_calls_without_a_confidence_are_refused(frame: CandleFrame) -> None:
    config = EngineConfig(strategies=("tests.backtest.test_engine:WeightlessCross",))
    with pytest.raises(ValueError, match=r"weightless_cross: decide_batch gives bar \d+ side code -?1 with"):
        run_backtest(frame.slice(0, 1000), config)


@pytest.mark.parametrize("mode", ["events", "vectorized"])
def test_a_run_without_a_fill_has_metrics(frame: CandleFrame, mode: Mode) -> None:
    """Held bars over no fills used to raise (zip strict over [] and [n]): a quiet strategy's run
    is still a result, with nothing held."""
    config = EngineConfig(strategies=("sma_cross",), strategy_params={"sma_cross": {"fast": 50, "slow": 200}})
    head = frame.slice(0, 150)  # fewer bars than the slow average needs: no signal, no fill
    result = run_backtest(head, config, mode=mode)
    assert result.fills == [] and result.ledger.held_bars(len(head)) == 0
    metrics = compute_metrics(result)
    assert metrics["strategy"]["exposure"] == 0.0 and metrics["strategy"]["trades"] == 0
