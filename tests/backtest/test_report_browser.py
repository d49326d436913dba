"""report.html in a real browser (Debian's chromium through Playwright), offline: every plot draws,
nothing is fetched, no script error, and the fills drawn are the run's fills; a perpetual's report draws
its two Futures plots too, with the liquidations the run booked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mambo.backtest.data import load_candles
from mambo.backtest.engine import run_vectorized
from mambo.backtest.metrics import compute_metrics
from mambo.backtest.report import write_outputs
from mambo.core.stages import EngineConfig

CHROMIUM = Path("/usr/bin/chromium")
FIXTURE = Path(__file__).parents[1] / "fixtures" / "btc_perp_1m_5000.csv"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.browser


def open_report(report: Path, plots: int, script: str) -> tuple[Any, list[str], list[str]]:
    """``report`` in the real browser, offline: once ``plots`` plots are drawn, what ``script`` (a JS
    function) gives, the page's script errors and every URL it asked for."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "make test installs Debian's chromium (make browser)"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors: list[str] = []
        fetched: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: fetched.append(r.url))
        page.goto(report.as_uri())
        page.wait_for_function(f"document.querySelectorAll('.plotly-graph-div .main-svg').length >= {plots}")
        answer = page.evaluate(script)
        browser.close()
    return answer, errors, fetched


def test_report_draws_every_plot_offline(tmp_path: Path) -> None:
    result = run_vectorized(load_candles(FIXTURE), EngineConfig())
    paths = write_outputs(result, compute_metrics(result), tmp_path)
    # the markers plotly drew for the buy and sell fills, counted from the figure's data
    drawn, errors, fetched = open_report(
        paths["report.html"],
        5,
        "() => document.querySelectorAll('.plotly-graph-div')[0].data"
        ".filter(t => t.mode === 'markers').map(t => t.x.length)",
    )
    assert errors == []
    assert [u for u in fetched if not u.startswith("file:")] == []
    assert drawn == [sum(f.side == "buy" for f in result.fills), sum(f.side == "sell" for f in result.fills)]


def test_a_perpetuals_report_draws_its_futures_plots_offline(tmp_path: Path) -> None:
    from decimal import Decimal

    from mambo.backtest.engine import run_backtest
    from mambo.backtest.futures import FuturesConfig, futures_metrics, load_funding_rates, run_futures
    from mambo.core.risk import RiskConfig

    futures = FIXTURE.parent / "freqtrade" / "futures"
    symbol, exchange = "XRP/USDT:USDT", "binanceusdm"
    config = EngineConfig(
        strategy_params={"sma_cross": {"fast": 3, "slow": 8}},
        allow_short=True,
        order_qty=Decimal(5000),
        initial_cash=Decimal(1000),
        risk=RiskConfig(cash_only=False),
    )
    result = run_backtest(
        load_candles(futures / "XRP_USDT_USDT-1h-futures.feather", symbol, exchange), config
    )
    rates = load_funding_rates(futures / "XRP_USDT_USDT-8h-funding_rate.feather", exchange, symbol)
    perpetual = run_futures(result, rates, FuturesConfig(leverage=50, margin_mode="isolated"))
    assert perpetual.liquidations
    metrics = {**compute_metrics(result), "futures": futures_metrics(perpetual)}
    paths = write_outputs(result, metrics, tmp_path, perpetual)
    # the liquidation markers drawn on the two Futures plots (the last two), as plotly holds them
    marked, errors, fetched = open_report(
        paths["report.html"],
        7,
        "() => [...document.querySelectorAll('.plotly-graph-div')].slice(-2)"
        ".map(d => d.querySelectorAll('.scatterlayer .trace:last-child .point').length)",
    )
    assert errors == []
    assert [u for u in fetched if not u.startswith("file:")] == []
    assert marked == [len(perpetual.liquidations)] * 2
