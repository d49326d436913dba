"""The portfolio backtest: one account over several markets, against the single-market event path and
with an account rule that binds across markets."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from mambo.backtest.data import CandleFrame, load_candles
from mambo.backtest.engine import run_events
from mambo.backtest.portfolio import portfolio_metrics, run_portfolio
from mambo.core.risk import RiskConfig
from mambo.core.stages import EngineConfig

FIXTURES = Path(__file__).parents[1] / "fixtures"
SMA = EngineConfig(strategies=("sma_cross",), strategy_params={"sma_cross": {"fast": 10, "slow": 40}})


@pytest.fixture(scope="module")
def frame() -> CandleFrame:
    return load_candles(FIXTURES / "btc_perp_1m_5000.csv", "BTC/USDT", "binance").slice(0, 1500)


def test_one_market_is_the_event_path(frame: CandleFrame) -> None:
    alone, portfolio = run_events(frame, SMA), run_portfolio([frame], SMA)
    assert len(alone.fills) >= 6
    assert portfolio.fills == alone.fills and portfolio.rejections == alone.rejections
    assert portfolio.equity == alone.portfolio_equity
    assert np.array_equal(portfolio.times, frame.ts_event)


def test_max_open_positions_binds_across_markets(frame: CandleFrame) -> None:
    """AAA and BBB have the same prices and cross together; CCC has other prices (a later stretch of the
    history on the same clock). While two markets hold positions, the third's entries are refused."""
    later = load_candles(FIXTURES / "btc_perp_1m_5000.csv", "BTC/USDT", "binance").slice(2000, 3500)
    ccc = replace(later, symbol="CCC/USDT", open_time=frame.open_time)
    frames = [ccc, replace(frame, symbol="BBB/USDT"), replace(frame, symbol="AAA/USDT")]  # any file order
    config = replace(SMA, risk=RiskConfig(max_open_positions=2, position_fraction=Decimal("0.2")))
    result = run_portfolio(frames, config)
    refused = [r for r in result.rejections if r.rule == "max_open_positions"]
    assert "CCC/USDT" in {r.symbol for r in refused}  # (and BBB's, when CCC got in first)
    assert "3 positions would be open, max 2" in refused[0].reason
    held: dict[str, Decimal] = {}
    for f in result.fills:  # never three positions at once
        held[f.symbol] = held.get(f.symbol, Decimal(0)) + (f.qty if f.side == "buy" else -f.qty)
        assert sum(1 for q in held.values() if q) <= 2
    ccc_fills = [f for f in result.fills if f.symbol == "CCC/USDT"]
    assert ccc_fills  # it traded while a place was free
    # alone, CCC would have entered where it was refused
    alone = run_portfolio([ccc], config)
    assert len(alone.fills) > len(ccc_fills)
    assert run_portfolio(list(reversed(frames)), config).fills == result.fills


def test_metrics_per_market_and_for_the_account(frame: CandleFrame) -> None:
    frames = [frame, replace(frame, symbol="ETH/USDT")]
    result = run_portfolio(frames, SMA)
    metrics = portfolio_metrics(result)
    assert set(metrics["markets"]) == {"binance:BTC/USDT", "binance:ETH/USDT"}
    assert (
        metrics["account"]["trades"]
        == len(result.fills)
        == sum(m["trades"] for m in metrics["markets"].values())
    )
    assert Decimal(metrics["account"]["final_equity"]) == result.equity[-1]
    realized = sum(Decimal(m["realized_pnl"]) for m in metrics["markets"].values())
    fees = sum(Decimal(m["fees"]) for m in metrics["markets"].values())
    assert realized == sum((f.realized_pnl for f in result.fills), Decimal(0))
    assert fees == sum((f.fee for f in result.fills), Decimal(0))


def test_bad_inputs_are_refused_with_the_reason(frame: CandleFrame) -> None:
    with pytest.raises(ValueError, match="at least one market"):
        run_portfolio([], SMA)
    with pytest.raises(ValueError, match="binance:BTC/USDT given more than once"):
        run_portfolio([frame, frame], SMA)
    with pytest.raises(ValueError, match="share one timeframe, got 1h, 1m"):
        run_portfolio([frame, replace(frame, symbol="ETH/USDT", timeframe="1h")], SMA)
