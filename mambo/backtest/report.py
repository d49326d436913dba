"""A backtest's files: ``trades.csv``, ``metrics.json`` and ``report.html`` (:func:`write_outputs`).

The report's plots are Plotly figures: interactive (zoom into a week to see each fill against the
price), from a library that is well kept and widely used, and with the plotly.js bundle embedded once
in the page, so the file opens offline and on any machine. Long series are thinned for the plots to
at most :data:`MAX_POINTS` points per line, keeping each bucket's highest and lowest value, so peaks,
troughs and the drawdown's worst point still show; fills are always drawn, all of them.

A perpetual's backtest (``mambo backtest --funding``) adds a Futures section: the ``futures`` figures of
``metrics.json`` as they are there, each liquidation (time, price, what it cost the wallet), and the margin
balance and margin-ratio curves at every bar's close, with the liquidation level (a ratio of 1) drawn and
the liquidations marked on both.
"""

from __future__ import annotations

import csv
import html
import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from mambo.backtest.data import CandleFrame
from mambo.backtest.engine import BacktestResult
from mambo.backtest.futures import FuturesResult
from mambo.backtest.metrics import round_trips
from mambo.backtest.portfolio import PortfolioResult
from mambo.schemas.events import Fill

__all__ = [
    "MAX_POINTS",
    "iso",
    "json_safe",
    "write_outputs",
    "write_portfolio_outputs",
    "write_report",
    "write_trades",
]

#: Most points drawn per line in the report.
MAX_POINTS = 4000


def iso(ts_ns: int) -> str:
    """ISO 8601 UTC with a Z, to the second (or finer when the time has a fraction)."""
    t = pd.Timestamp(ts_ns, unit="ns", tz="UTC")
    text = t.strftime("%Y-%m-%dT%H:%M:%S")
    frac = ts_ns % 1_000_000_000
    return f"{text}.{frac:09d}".rstrip("0") + "Z" if frac else f"{text}Z"


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None (JSON has no infinity: a profit factor with no
    losing trade is written as null)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_trades(fills: Sequence[Fill], path: Path) -> None:
    """One row per fill: ts (ISO 8601 UTC), symbol, side, price, qty, fee (exact decimals)."""
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["ts", "symbol", "side", "price", "qty", "fee"])
        for fill in fills:
            out.writerow([iso(fill.ts_event), fill.symbol, fill.side, fill.price, fill.qty, fill.fee])


def _thin(n: int) -> npt.NDArray[np.intp]:
    """Indices of at most ~MAX_POINTS points of a series of ``n``: every point, or each bucket's ends."""
    if n <= MAX_POINTS:
        return np.arange(n)
    edges = np.linspace(0, n, MAX_POINTS // 2 + 1).astype(np.intp)
    return np.unique(np.concatenate([edges[:-1], np.maximum(edges[1:] - 1, 0)]))


def _thin_extremes(y: npt.NDArray[np.float64]) -> npt.NDArray[np.intp]:
    """Like :func:`_thin`, keeping each bucket's highest and lowest point."""
    n = len(y)
    if n <= MAX_POINTS:
        return np.arange(n)
    edges = np.linspace(0, n, MAX_POINTS // 2 + 1).astype(np.intp)
    keep = [
        idx
        for lo, hi in itertools.pairwise(edges)
        if hi > lo
        for idx in (lo + int(np.argmax(y[lo:hi])), lo + int(np.argmin(y[lo:hi])))
    ]
    return np.unique(np.array(keep, dtype=np.intp))


def _price_and_fills(frame: CandleFrame, fills: Sequence[Fill]) -> Any:
    """A market's close with its buy and sell fills marked."""
    import plotly.graph_objects as go

    times = pd.to_datetime(frame.ts_event, unit="ns", utc=True)
    price = go.Figure()
    idx = _thin_extremes(frame.close)
    price.add_scatter(x=times[idx], y=frame.close[idx], name="close", line={"width": 1})
    for side, symbol, color in (("buy", "triangle-up", "#1a9850"), ("sell", "triangle-down", "#d73027")):
        chosen = [f for f in fills if f.side == side]
        price.add_scatter(
            x=pd.to_datetime([f.ts_event for f in chosen], unit="ns", utc=True),
            y=[float(f.price) for f in chosen],
            mode="markers",
            name=f"{side} fills",
            marker={"symbol": symbol, "size": 9, "color": color},
        )
    return price


def _drawdown(times: Any, equity: npt.NDArray[np.float64]) -> Any:
    import plotly.graph_objects as go

    drawdown = equity / np.maximum.accumulate(equity) - 1.0
    dd = go.Figure()
    idx = _thin_extremes(-drawdown)
    dd.add_scatter(x=times[idx], y=drawdown[idx] * 100, fill="tozeroy", name="drawdown %")
    return dd


def _figures(result: BacktestResult) -> list[tuple[str, Any]]:
    import plotly.graph_objects as go

    frame = result.frame
    times = pd.to_datetime(frame.ts_event, unit="ns", utc=True)
    equity = result.equity
    hold = float(result.ledger.initial_cash) * frame.close / frame.open[0]

    price = _price_and_fills(frame, result.fills)

    eq = go.Figure()
    idx = _thin_extremes(equity)
    eq.add_scatter(x=times[idx], y=equity[idx], name="strategy")
    idx = _thin_extremes(hold)
    eq.add_scatter(x=times[idx], y=hold[idx], name="buy and hold", line={"dash": "dot"})

    dd = _drawdown(times, equity)

    series = pd.Series(np.concatenate([[float(result.ledger.initial_cash)], equity]))
    series.index = pd.DatetimeIndex([times[0] - pd.Timedelta(1, "ns"), *times])
    month_end = series.resample("ME").last()
    monthly = month_end.pct_change()
    monthly.iloc[0] = month_end.iloc[0] / series.iloc[0] - 1.0
    months = go.Figure()
    months.add_bar(
        x=[t.strftime("%Y-%m") for t in monthly.index],
        y=monthly.to_numpy() * 100,
        marker={"color": ["#1a9850" if v >= 0 else "#d73027" for v in monthly.to_numpy()]},
        name="monthly return %",
    )
    months.update_xaxes(type="category")  # one bar per month, not a date axis

    trips = round_trips(result.fills)
    dist = go.Figure()
    dist.add_histogram(x=[float(t.pnl) for t in trips], nbinsx=50, name="round-trip PnL")

    return [
        ("Price and fills", price),
        ("Equity: strategy and buy and hold", eq),
        ("Drawdown (%)", dd),
        ("Monthly returns (%)", months),
        (f"Trade distribution: PnL of {len(trips)} round trips, after fees", dist),
    ]


def _table(title: str, figures: dict[str, Any], other: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_show(v)}</td><td>{_show(other.get(k, ''))}</td></tr>"
        for k, v in figures.items()
    )
    return (
        f"<table><tr><th>{html.escape(title)}</th><th>strategy</th><th>buy and hold</th></tr>{rows}</table>"
    )


def _show(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:,.4f}"
    return html.escape(str(v))


def _futures_figures(futures: FuturesResult) -> list[tuple[str, Any]]:
    """The margin balance and the margin ratio at every bar's close, the liquidations marked on both."""
    import plotly.graph_objects as go

    times = pd.to_datetime(futures.times, unit="ns", utc=True)
    balance = np.array([float(b) for b in futures.margin_balance])
    # a ratio is infinite when the balance is gone: a gap in the line, not a point off the scale
    ratio = np.where(np.isfinite(futures.margin_ratio), futures.margin_ratio, np.nan)
    liqs = futures.liquidations
    # a liquidation is marked at the close of the bar it happened in (or at the funding time's bar)
    at = np.searchsorted(futures.times, [lq.ts_event for lq in liqs]).clip(0, max(len(times) - 1, 0))
    liq_times = pd.to_datetime([lq.ts_event for lq in liqs], unit="ns", utc=True)
    liq_text = [f"{lq.side} {lq.qty} at {lq.price}" for lq in liqs]
    marker = {"symbol": "x", "size": 11, "color": "#d73027"}

    curve = go.Figure()
    idx = _thin_extremes(balance)
    curve.add_scatter(x=times[idx], y=balance[idx], name="margin balance")
    curve.add_scatter(
        x=liq_times, y=balance[at], mode="markers", name="liquidations", marker=marker, text=liq_text
    )

    level = go.Figure()
    idx = _thin_extremes(np.nan_to_num(ratio))
    level.add_scatter(x=times[idx], y=ratio[idx], name="margin ratio")
    level.add_scatter(
        x=liq_times,
        # the ratio that triggered it (a balance gone below zero: drawn on the level)
        y=[float(lq.maintenance_margin / lq.margin_balance) if lq.margin_balance > 0 else 1.0 for lq in liqs],
        mode="markers",
        name="liquidations",
        marker=marker,
        text=liq_text,
    )
    level.add_hline(y=1.0, line={"dash": "dash", "color": "#d73027"}, annotation_text="liquidation (1.0)")
    return [
        ("Margin balance (at each bar's close)", curve),
        ("Margin ratio: maintenance margin / margin balance", level),
    ]


def _futures_section(futures: FuturesResult, figures: dict[str, Any]) -> str:
    """The perpetual's figures (``metrics.json``'s ``futures``), its notes and its liquidations."""
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_show(v)}</td></tr>" for k, v in figures.items() if k != "notes"
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in figures.get("notes", []))
    liqs = "".join(
        f"<tr><td>{iso(lq.ts_event)}</td><td>{lq.side}</td><td>{lq.qty}</td><td>{lq.price}</td>"
        f"<td>{lq.realized_pnl}</td><td>{lq.fee}</td><td>{lq.insurance}</td>"
        f"<td>{lq.fee - lq.realized_pnl - lq.insurance}</td></tr>"
        for lq in futures.liquidations
    )
    liq_table = (
        '<table class="liquidations"><tr><th>liquidated at</th><th>side</th><th>qty</th><th>price</th>'
        "<th>price PnL</th><th>fee</th><th>insurance</th><th>loss</th></tr>"
        f"{liqs}</table>"
        if liqs
        else "<p>No liquidation.</p>"
    )
    return (
        '<h2 id="futures">Futures</h2>'
        f'<table class="futures"><tr><th>futures</th><th></th></tr>{rows}</table>'
        f"<ul>{notes}</ul>{liq_table}"
        "<p>loss: what the liquidation took from the wallet (the fee, less the price PnL and what the "
        "insurance fund covered).</p>"
    )


def _plots(figures: list[tuple[str, Any]], with_js: bool) -> list[str]:
    """Each figure as an HTML fragment; plotly.js embedded in the first when ``with_js``."""
    import plotly.io as pio

    parts = []
    for i, (title, fig) in enumerate(figures):
        fig.update_layout(title=title, height=380, margin={"l": 50, "r": 20, "t": 50, "b": 40})
        parts.append(pio.to_html(fig, full_html=False, include_plotlyjs=with_js and i == 0))
    return parts


def write_report(
    result: BacktestResult, metrics: dict[str, Any], path: Path, futures: FuturesResult | None = None
) -> None:
    """A self-contained HTML page: the metrics and the five plots (plotly.js embedded once); with
    ``futures`` (and ``metrics["futures"]``), the Futures section and its two plots."""
    parts = _plots(_figures(result), with_js=True)
    if futures is not None:
        parts.append(_futures_section(futures, metrics["futures"]))
        parts += _plots(_futures_figures(futures), with_js=False)
    head = (
        f"{html.escape(metrics['market'])} {html.escape(metrics['timeframe'])}, {metrics['bars']:,} bars, "
        f"{iso(metrics['start'])} to {iso(metrics['end'])}, strategies "
        f"{html.escape(', '.join(result.config.strategies))} ({html.escape(result.mode)} path)"
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Mambo backtest</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}td:first-child{{text-align:left}}</style>
</head><body><h1>Backtest</h1><p>{head}</p>
{_table("metric", metrics["strategy"], metrics["buy_and_hold"])}
{"".join(parts)}
</body></html>"""
    path.write_text(page, encoding="utf-8")


def write_portfolio_outputs(result: PortfolioResult, metrics: dict[str, Any], out: Path) -> dict[str, Path]:
    """A portfolio backtest's ``trades.csv`` (every market), ``metrics.json`` (the account and each
    market) and ``report.html`` (the account's equity and drawdown, each market's table and fills)."""
    import plotly.graph_objects as go

    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("trades.csv", "metrics.json", "report.html")}
    write_trades(result.fills, paths["trades.csv"])
    paths["metrics.json"].write_text(json.dumps(json_safe(metrics), indent=2) + "\n")
    times = pd.to_datetime(result.times, unit="ns", utc=True)
    equity = np.array([float(e) for e in result.equity])
    curve = go.Figure()
    idx = _thin_extremes(equity)
    curve.add_scatter(x=times[idx], y=equity[idx], name="account")
    figures = [("Equity of the account", curve), ("Drawdown (%)", _drawdown(times, equity))]
    figures += [
        (f"{key}: price and fills", _price_and_fills(frame, [f for f in result.fills if f.key == key]))
        for key, frame in result.frames.items()
    ]
    parts = _plots(figures, with_js=True)
    account = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_show(v)}</td></tr>" for k, v in metrics["account"].items()
    )
    columns = list(next(iter(metrics["markets"].values())))
    markets = "".join(
        f"<tr><td>{html.escape(key)}</td>{''.join(f'<td>{_show(m[c])}</td>' for c in columns)}</tr>"
        for key, m in metrics["markets"].items()
    )
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Mambo portfolio backtest</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:1em}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}td:first-child{{text-align:left}}</style>
</head><body><h1>Portfolio backtest</h1><p>{len(result.frames)} markets, one account, strategies
{html.escape(", ".join(result.config.strategies))}</p>
<table><tr><th>account</th><th></th></tr>{account}</table>
<table><tr><th>market</th>{head}</tr>{markets}</table>
{"".join(parts)}
</body></html>"""
    paths["report.html"].write_text(page, encoding="utf-8")
    return paths


def write_outputs(
    result: BacktestResult, metrics: dict[str, Any], out: Path, futures: FuturesResult | None = None
) -> dict[str, Path]:
    """``trades.csv``, ``metrics.json`` and ``report.html`` in the folder ``out`` (created); ``futures``:
    the perpetual's run (:func:`~mambo.backtest.futures.run_futures`) for the report's Futures section."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("trades.csv", "metrics.json", "report.html")}
    write_trades(result.fills, paths["trades.csv"])
    paths["metrics.json"].write_text(json.dumps(json_safe(metrics), indent=2) + "\n")
    write_report(result, metrics, paths["report.html"], futures)
    return paths
