"""report.html of a perpetual's backtest (``mambo backtest --funding``): the Futures section shows
metrics.json's futures figures as written there, each liquidation as an independent run_futures books it
(inside the candle it happened in), and plots the margin balance and the margin ratio (the level 1 drawn,
the liquidations marked) with the run's own values; a spot run's report has none of it. The page is read
with the standard library's HTML parser and the figures' data decoded from what plotly embedded."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mambo.backtest.data import load_candles
from mambo.backtest.engine import run_backtest
from mambo.backtest.futures import (
    FuturesConfig,
    FuturesResult,
    load_funding_rates,
    load_mark_candles,
    run_futures,
)
from mambo.core.risk import RiskConfig
from mambo.core.stages import EngineConfig

D = Decimal
FUTURES = Path(__file__).resolve().parents[1] / "fixtures" / "freqtrade" / "futures"
SYMBOL, EXCHANGE = "XRP/USDT:USDT", "binanceusdm"
CANDLES = FUTURES / "XRP_USDT_USDT-1h-futures.feather"
SPOT_ARGS = [
    "backtest", "--data", str(CANDLES), "--symbols", SYMBOL, "--exchange", EXCHANGE,
    "--strategy", "sma_cross", "--param", "sma_cross.fast=3", "--param", "sma_cross.slow=8",
    "--allow-short", "--qty", "5000", "--cash", "1000", "--fee-taker", "0.0004",
]  # fmt: skip
PERP_ARGS = [
    "--funding", str(FUTURES / "XRP_USDT_USDT-8h-funding_rate.feather"),
    "--marks", str(FUTURES / "XRP_USDT_USDT-8h-mark.feather"),
    "--leverage", "50", "--margin-mode", "isolated",
]  # fmt: skip


class Page(HTMLParser):
    """The page's h2 headings, its tables (rows of cell texts, by class) and its plots' data and layout."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.scripts: list[str] = []
        self._table: list[list[str]] | None = None
        self._tag = ""
        self.feed(text)
        decoder = json.JSONDecoder()
        self.plots: list[tuple[list[dict[str, Any]], dict[str, Any]]] = []
        for script in self.scripts:
            at = script.find("Plotly.newPlot(")
            if at < 0:
                continue
            # Plotly.newPlot("id", [data], {layout}, {config})
            data, end = decoder.raw_decode(script, _next_value(script, script.index(",", at)))
            layout, _ = decoder.raw_decode(script, _next_value(script, script.index(",", end)))
            self.plots.append((data, layout))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag = tag
        if tag == "table":
            self._table = self.tables.setdefault(dict(attrs).get("class") or f"table{len(self.tables)}", [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._table[-1].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        self._tag = ""

    def handle_data(self, data: str) -> None:
        if self._tag == "h2":
            self.headings.append(data)
        elif self._tag == "script":
            self.scripts.append(data)
        elif self._tag in ("td", "th") and self._table is not None:
            self._table[-1][-1] += data


def _next_value(text: str, comma: int) -> int:
    """Where the JSON value after the comma at ``comma`` starts."""
    return comma + 1 + len(text[comma + 1 :]) - len(text[comma + 1 :].lstrip())


def values(v: Any) -> np.ndarray:
    """A trace's array as plotly wrote it: a list, or typed bytes in base64."""
    if isinstance(v, dict):
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
    return np.array(v, dtype=float)


def times(v: list[str]) -> list[int]:
    return [pd.Timestamp(t).value for t in v]


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from typer.testing import CliRunner

    from mambo.cli import app

    tmp = tmp_path_factory.mktemp("reports")
    out = {"spot": tmp / "spot", "perpetual": tmp / "perpetual"}
    for name, extra in (("spot", []), ("perpetual", PERP_ARGS)):
        args = [*SPOT_ARGS, *extra, "--out", str(out[name]), "--data-dir", str(tmp / "d")]
        done = CliRunner().invoke(app, args)
        assert done.exit_code == 0, done.output
    return out


@pytest.fixture(scope="module")
def perpetual() -> FuturesResult:
    """The same perpetual run, straight from the library."""
    frame = load_candles(CANDLES, SYMBOL, EXCHANGE)
    config = EngineConfig(
        strategies=("sma_cross",),
        strategy_params={"sma_cross": {"fast": 3, "slow": 8}},
        allow_short=True,
        order_qty=D(5000),
        initial_cash=D(1000),
        fee_taker=D("0.0004"),
        risk=RiskConfig(cash_only=False),
    )
    rates = load_funding_rates(FUTURES / "XRP_USDT_USDT-8h-funding_rate.feather", EXCHANGE, SYMBOL)
    marks = load_mark_candles(FUTURES / "XRP_USDT_USDT-8h-mark.feather", EXCHANGE, SYMBOL)
    return run_futures(
        run_backtest(frame, config), rates, FuturesConfig(leverage=50, margin_mode="isolated"), marks
    )


def plot(page: Page, title: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    (found,) = [p for p in page.plots if p[1]["title"]["text"].startswith(title)]
    return found


def test_the_futures_section_and_its_two_plots_only_for_a_perpetual(reports: dict[str, Path]) -> None:
    spot = Page((reports["spot"] / "report.html").read_text())
    perp = Page((reports["perpetual"] / "report.html").read_text())
    assert "futures" not in json.loads((reports["spot"] / "metrics.json").read_text())
    assert spot.headings == [] and "futures" not in spot.tables and "liquidations" not in spot.tables
    assert perp.headings == ["Futures"] and "futures" in perp.tables and "liquidations" in perp.tables
    titles = [layout["title"]["text"] for _, layout in perp.plots]
    assert titles[:5] == [layout["title"]["text"] for _, layout in spot.plots]  # the spot report, then
    assert [t.split(" ")[:2] for t in titles[5:]] == [["Margin", "balance"], ["Margin", "ratio:"]]


def test_the_figures_shown_are_metrics_json_s(reports: dict[str, Path]) -> None:
    page = Page((reports["perpetual"] / "report.html").read_text())
    futures = json.loads((reports["perpetual"] / "metrics.json").read_text())["futures"]
    shown = {row[0]: row[1] for row in page.tables["futures"][1:]}
    assert set(shown) == set(futures) - {"notes"}
    for name, value in futures.items():
        if name == "notes":
            continue
        if isinstance(value, float):  # shown to 4 decimals
            assert float(shown[name].replace(",", "")) == pytest.approx(value, abs=5e-5), name
        else:  # money exactly as metrics.json writes it, counts and words as they are
            assert shown[name] == str(value), name
    html = (reports["perpetual"] / "report.html").read_text()
    assert all(note.replace("'", "&#x27;") in html for note in futures["notes"]) and futures["notes"]


def test_each_liquidation_is_shown_as_booked_inside_its_candle(
    reports: dict[str, Path], perpetual: FuturesResult
) -> None:
    page = Page((reports["perpetual"] / "report.html").read_text())
    futures = json.loads((reports["perpetual"] / "metrics.json").read_text())["futures"]
    header, *rows = page.tables["liquidations"]
    assert header == ["liquidated at", "side", "qty", "price", "price PnL", "fee", "insurance", "loss"]
    assert len(rows) == futures["liquidations"] == len(perpetual.liquidations) == 2
    candles = pd.read_feather(CANDLES).set_index("date")
    for row, liq in zip(rows, perpetual.liquidations, strict=True):
        at, side, qty, price, pnl, fee, insurance, loss = row
        assert (pd.Timestamp(at).value, side) == (liq.ts_event, liq.side)
        assert (D(qty), D(price), D(pnl), D(fee), D(insurance)) == (
            liq.qty,
            liq.price,
            liq.realized_pnl,
            liq.fee,
            liq.insurance,
        )
        assert D(loss) == D(fee) - D(pnl) - D(insurance)
        # the hour that closed at that time reached the price (the high of a short liquidated, low of a long)
        opened = pd.Timestamp(at) - pd.Timedelta(hours=1)
        high, low = (D(repr(x)) for x in candles.loc[opened, ["high", "low"]].to_numpy(float).tolist())
        assert (high >= D(price)) if side == "buy" else (low <= D(price))
    # the rows add up to the totals of metrics.json
    for column, name in ((4, "liquidation_pnl"), (5, "liquidation_fees"), (6, "insurance")):
        assert sum((D(r[column]) for r in rows), D(0)) == D(futures[name])


def test_the_curves_plot_the_runs_margin_balance_and_ratio(
    reports: dict[str, Path], perpetual: FuturesResult
) -> None:
    page = Page((reports["perpetual"] / "report.html").read_text())
    futures = json.loads((reports["perpetual"] / "metrics.json").read_text())["futures"]
    bar_closes = perpetual.times.tolist()
    liq_times = [lq.ts_event for lq in perpetual.liquidations]

    (curve, marked), _ = plot(page, "Margin balance")
    assert times(curve["x"]) == bar_closes  # 100 bars: every one drawn
    assert values(curve["y"]).tolist() == [float(b) for b in perpetual.margin_balance]
    assert values(curve["y"])[-1] == float(D(futures["final_margin_balance"]))
    assert times(marked["x"]) == liq_times and marked["mode"] == "markers"
    # each at the balance of the bar it closed (here the liquidations came at bar closes)
    assert values(marked["y"]).tolist() == [
        float(perpetual.margin_balance[bar_closes.index(t)]) for t in liq_times
    ]

    (ratio, marked), layout = plot(page, "Margin ratio")
    assert times(ratio["x"]) == bar_closes
    assert values(ratio["y"]).tolist() == perpetual.margin_ratio.tolist()
    assert times(marked["x"]) == liq_times and all(r >= 1.0 for r in values(marked["y"]))
    # the highest point drawn is metrics.json's max margin ratio, and the liquidation level is at 1
    drawn = np.concatenate([values(ratio["y"]), values(marked["y"])])
    assert drawn.max() == pytest.approx(futures["max_margin_ratio"], rel=1e-12)
    (level,) = layout["shapes"]
    assert (level["y0"], level["y1"], level["xref"]) == (1.0, 1.0, "x domain")
