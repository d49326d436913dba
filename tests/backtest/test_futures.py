"""Perpetual backtests: funding over freqtrade's recorded Binance XRP/USDT:USDT funding rates and marks,
worked out independently from the files; a leveraged position liquidated at Binance's liquidation
price; the funding-history readers."""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mambo.backtest.data import CandleDataError, CandleFrame, load_candles
from mambo.backtest.engine import BacktestResult, run_backtest
from mambo.backtest.futures import (
    FuturesConfig,
    futures_metrics,
    load_funding_rates,
    load_mark_candles,
    run_futures,
)
from mambo.core.margin import load_brackets
from mambo.core.risk import RiskConfig
from mambo.core.stages import EngineConfig

D = Decimal
FUTURES = Path(__file__).resolve().parents[1] / "fixtures" / "freqtrade" / "futures"
SYMBOL, EXCHANGE = "XRP/USDT:USDT", "binanceusdm"


@pytest.fixture(scope="module")
def frame() -> CandleFrame:
    return load_candles(FUTURES / "XRP_USDT_USDT-1h-futures.feather", SYMBOL, EXCHANGE)


@pytest.fixture(scope="module")
def result(frame: CandleFrame) -> BacktestResult:
    # a fast SMA crossover, long and short, 5,000 XRP a trade (≈ 5,400 USDT) from 1,000 USDT: leveraged
    config = EngineConfig(
        strategies=("sma_cross",),
        strategy_params={"sma_cross": {"fast": 3, "slow": 8}},
        allow_short=True,
        order_qty=D(5000),
        initial_cash=D(1000),
        fee_taker=D("0.0004"),
        risk=RiskConfig(cash_only=False),
    )
    return run_backtest(frame, config)


def rates_and_marks() -> tuple[list, CandleFrame]:
    rates = load_funding_rates(FUTURES / "XRP_USDT_USDT-8h-funding_rate.feather", EXCHANGE, SYMBOL)
    marks = load_mark_candles(FUTURES / "XRP_USDT_USDT-8h-mark.feather", EXCHANGE, SYMBOL)
    return rates, marks


def test_funding_paid_is_the_sum_over_funding_times_of_notional_at_mark_times_rate(
    frame: CandleFrame, result: BacktestResult
) -> None:
    rates, marks = rates_and_marks()
    futures = run_futures(result, rates, FuturesConfig(leverage=10, margin_mode="cross"), marks)
    assert not futures.liquidations and not futures.refused

    # independently, from the files with pandas: at each funding time inside the backtest, the position
    # the fills before it left, the 8h mark candle's open at that time, the rate; longs pay a positive rate
    funding = pd.read_feather(FUTURES / "XRP_USDT_USDT-8h-funding_rate.feather")
    mark = pd.read_feather(FUTURES / "XRP_USDT_USDT-8h-mark.feather").set_index("date")["open"]
    first, last = (
        pd.Timestamp(int(frame.open_time[0]), tz="UTC"),
        pd.Timestamp(int(frame.ts_event[-1]), tz="UTC"),
    )
    expected, held_at = D(0), 0
    for when, rate in zip(funding["date"], funding["open"], strict=True):
        if not first <= when <= last:
            continue
        t = int(when.value)
        qty = sum((f.qty if f.side == "buy" else -f.qty for f in result.fills if f.ts_event < t), D(0))
        if qty:
            held_at += 1
            expected -= qty * D(repr(float(mark[when.floor("8h")]))) * D(repr(float(rate)))
    assert held_at >= 3  # the position was open at several funding times
    assert len(futures.funding) == held_at
    assert sum((p.amount for p in futures.funding), D(0)) == expected
    metrics = futures_metrics(futures)
    assert D(metrics["funding_net"]) == expected and metrics["funding_payments"] == held_at
    # the wallet: fills' realized PnL, their fees and funding, nothing else
    acc = futures.account
    assert acc.wallet_balance == acc.initial_balance + sum(
        (f.realized_pnl - f.fee for f in futures.fills), D(0)
    ) + sum((p.amount for p in futures.funding), D(0))
    assert acc.wallet_balance + acc.unrealized_pnl == acc.margin_balance
    assert len(futures.margin_balance) == len(frame) == len(futures.margin_ratio)
    assert "funding: 10 funding times" in " ".join(metrics["notes"])


def test_a_leveraged_position_liquidates_at_binances_liquidation_price(result: BacktestResult) -> None:
    rates, marks = rates_and_marks()
    futures = run_futures(result, rates, FuturesConfig(leverage=50, margin_mode="isolated"), marks)
    assert futures.liquidations, "50x on XRP's hourly swings should liquidate"
    liq = futures.liquidations[0]
    # the position liquidated, worked out from the strategy's fills: the fill that opened it
    opened = max((f for f in futures.fills if f.ts_event < liq.ts_event), key=lambda f: f.ts_event)
    qty = opened.qty if opened.side == "buy" else -opened.qty
    assert liq.qty == opened.qty and liq.side == ("sell" if qty > 0 else "buy")
    # its isolated wallet: qty × price / 50 moved in, less the fee, plus funding while it was open
    funded = sum((p.amount for p in futures.funding if opened.ts_event < p.ts_event <= liq.ts_event), D(0))
    wallet = opened.qty * opened.price / 50 - opened.fee + funded
    # Binance's formula, XRP's bracket 1 (notional < 10,000: ratio 0.5%, cum 0):
    # LP = (WB + cum − side·|q|·EP) / (|q|·MMR − side·|q|)
    side = 1 if qty > 0 else -1
    tier = load_brackets()[SYMBOL].tiers[0]
    lp = (wallet + tier.cum - side * abs(qty) * opened.price) / (
        abs(qty) * tier.maint_margin_ratio - side * abs(qty)
    )
    assert tier.notional_cap > abs(qty) * lp
    # booked at the price, on the 1e-6 grid on its liquidating side
    assert (liq.price <= lp if side > 0 else liq.price >= lp) and abs(liq.price - lp) < D("1e-6")
    # the bar it happened in reached that price; the loss is the price move and the fee (what was left)
    bar = int((liq.ts_event - int(result.frame.ts_event[0])) // result.frame.step)
    assert (result.frame.low[bar] <= lp) if side > 0 else (result.frame.high[bar] >= lp)
    assert liq.realized_pnl == qty * (liq.price - opened.price)
    notional_fee = abs(qty) * liq.price * D("0.0125")
    assert liq.fee == min(notional_fee, wallet + liq.realized_pnl)
    # the strategy's own exit of the liquidated position never reached the account
    assert futures.dropped and futures.dropped[0].ts_event >= liq.ts_event  # at or after its bar closed
    m = futures_metrics(futures)
    assert m["liquidations"] == len(futures.liquidations) and m["max_margin_ratio"] >= 1.0 - 1e-9


def test_mark_candles_of_the_backtests_timeframe_drive_the_bars(result: BacktestResult) -> None:
    marks = load_mark_candles(FUTURES / "XRP_USDT_USDT-1h-mark.feather", EXCHANGE, SYMBOL)
    futures = run_futures(result, [], FuturesConfig(leverage=5), marks)
    # the 1h mark file covers 2021-11-15 06:00 to 11-19 09:00: 57 of the backtest's bars (11-17 01:00 on)
    assert "mark-price candles on 57 of 100 bars" in futures.notes[0]
    assert not futures.funding


def test_funding_csv_in_binances_columns(tmp_path: Path) -> None:
    path = tmp_path / "funding.csv"
    path.write_text(
        "symbol,fundingTime,fundingRate,markPrice\n"
        "XRPUSDT,1637193600017,0.00010000,1.09590000\nXRPUSDT,1637222400007,-0.00002500,\n"
    )
    first, second = load_funding_rates(path, EXCHANGE, SYMBOL)
    assert (first.ts_event, first.rate, first.mark_price) == (1637193600017000000, 0.0001, 1.0959)
    assert (second.rate, second.mark_price) == (-0.000025, None)
    path.write_text("when,what\n1,2\n")
    with pytest.raises(CandleDataError, match="needs a time column"):
        load_funding_rates(path, EXCHANGE, SYMBOL)
    with pytest.raises(CandleDataError, match="not a funding-rate series"):
        load_funding_rates(FUTURES / "XRP_USDT_USDT-8h-mark.feather", EXCHANGE, SYMBOL)


def test_edge_rounding_is_on_the_liquidating_side() -> None:
    from mambo.core.margin import liquidation_edge as edge

    price = D(1) / D(3)
    assert edge(price, True) == price.quantize(D("1e-6"), rounding=ROUND_FLOOR) < price < edge(price, False)


def test_mambo_backtest_with_a_funding_history_reports_the_futures_section(
    tmp_path: Path, result: BacktestResult
) -> None:
    import json

    from typer.testing import CliRunner

    from mambo.cli import app

    out = tmp_path / "out"
    args = [
        "backtest", "--data", str(FUTURES / "XRP_USDT_USDT-1h-futures.feather"), "--symbols", SYMBOL,
        "--exchange", EXCHANGE, "--strategy", "sma_cross", "--param", "sma_cross.fast=3",
        "--param", "sma_cross.slow=8", "--allow-short", "--qty", "5000", "--cash", "1000",
        "--fee-taker", "0.0004",
        "--funding", str(FUTURES / "XRP_USDT_USDT-8h-funding_rate.feather"),
        "--marks", str(FUTURES / "XRP_USDT_USDT-8h-mark.feather"),
        "--leverage", "50", "--margin-mode", "isolated", "--out", str(out), "--data-dir", str(tmp_path / "d"),
    ]  # fmt: skip
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    assert "futures: 7 funding payments" in done.output
    got = json.loads((out / "metrics.json").read_text())["futures"]
    # the same as run_futures over the engine's own result with the same settings
    rates, marks = rates_and_marks()
    want = futures_metrics(
        run_futures(result, rates, FuturesConfig(leverage=50, margin_mode="isolated"), marks)
    )
    assert got["funding_net"] == want["funding_net"] and got["liquidations"] == want["liquidations"] == 2
    assert got["final_margin_balance"] == want["final_margin_balance"]
    done = CliRunner().invoke(app, [*args[:-4], "--margin-mode", "hedge", "--out", str(out)])
    assert done.exit_code != 0 and "cross or isolated" in done.output


def test_mambo_backtest_takes_funding_and_marks_from_the_history(
    tmp_path: Path,
    clickhouse_dsn: str,
    clickhouse_client: Any,
    clickhouse_db: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--funding history --marks history``: the funding times and the venue's mark prices a source
    kept in ClickHouse (``funding_rates``, ``mark_prices``), the marks built into the backtest's bars.
    The history here holds the XRP files' funding times and, for each 1 h mark candle, four mark frames
    (its open, high, low and close in that order): the run's futures section is the files' run's."""
    import json
    import re

    from typer.testing import CliRunner

    from mambo.cli import app
    from mambo.connectors.clickhouse import ClickHouseSink
    from mambo.schemas.events import MarkPrice, make_id
    from mambo.schemas.topics import FUNDING_RATES, MARK_PRICES

    rates, _ = rates_and_marks()
    marks = load_mark_candles(FUTURES / "XRP_USDT_USDT-1h-mark.feather", EXCHANGE, SYMBOL)
    frames = []
    for i, t in enumerate(marks.open_time.tolist()):
        path = (marks.open[i], marks.high[i], marks.low[i], marks.close[i])
        for j, price in enumerate(path):
            ts = t + j * 1_000_000
            frames.append(MarkPrice(event_id=make_id("mark", SYMBOL, ts), ts_event=ts, ts_init=ts,
                                    exchange=EXCHANGE, symbol=SYMBOL, mark_price=float(price)))  # fmt: skip
    sink = ClickHouseSink(clickhouse_client, clickhouse_db)
    sink.write(FUNDING_RATES.table, rates)
    sink.write(MARK_PRICES.table, frames)
    sink.flush()
    monkeypatch.setenv("MAMBO_CLICKHOUSE__DSN", clickhouse_dsn)
    monkeypatch.setenv("MAMBO_CLICKHOUSE__DATABASE", clickhouse_db)
    base = [
        "backtest", "--data", str(FUTURES / "XRP_USDT_USDT-1h-futures.feather"), "--symbols", SYMBOL,
        "--exchange", EXCHANGE, "--strategy", "sma_cross", "--param", "sma_cross.fast=3",
        "--param", "sma_cross.slow=8", "--allow-short", "--qty", "5000", "--cash", "1000",
        "--fee-taker", "0.0004", "--leverage", "50", "--margin-mode", "isolated",
    ]  # fmt: skip
    sections = []
    for funding, mark in (
        ("history", "history"),
        (
            str(FUTURES / "XRP_USDT_USDT-8h-funding_rate.feather"),
            str(FUTURES / "XRP_USDT_USDT-1h-mark.feather"),
        ),
    ):
        out = tmp_path / f"out{len(sections)}"
        done = CliRunner().invoke(app, [*base, "--funding", funding, "--marks", mark, "--out", str(out)])
        assert done.exit_code == 0, done.output
        sections.append(json.loads((out / "metrics.json").read_text())["futures"])
        if funding == "history":  # those within the candles' range
            assert re.search(r"futures: [1-9]\d* funding times from the history", done.output)
            assert re.search(r"futures: [1-9]\d* mark-price candles from the history's marks", done.output)
    assert sections[0]["funding_payments"] > 0 and sections[0]["liquidations"] > 0
    assert sections[0] == sections[1]
