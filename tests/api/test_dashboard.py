"""The dashboard in a real headless Chromium (Debian's, driven by Playwright): the chart renders and a
signal the pipeline produces shows on the page within a second. The screenshot is kept under
artifacts/ (gitignored)."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from mambo.api.auth import Authorizer
from mambo.api.hub import Hub
from mambo.api.main import create_app
from mambo.api.service import SignalService
from mambo.connectors.replay import replay
from mambo.schemas.events import AggregatedSignal

from .conftest import MARKETS, LiveServer, Recorded, make_runtime, start_server, stop_server

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parents[2] / "artifacts"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.browser


@pytest.fixture
def live(service: SignalService, clickhouse_db: str) -> Iterator[LiveServer]:
    """A server over an empty database: everything the page shows comes over the WebSocket."""
    service.database = clickhouse_db
    service.hub = Hub()
    server = start_server(create_app(service, Authorizer(None)), service)
    yield server
    stop_server(server)


def test_dashboard_shows_live_signals(live: LiveServer) -> None:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "make test installs Debian's chromium (make browser)"
    runtime, recording = make_runtime()
    recorded = Recorded()
    runtime.observe(recorded)
    runtime.observe(live.publish)
    batches = replay(recording, 500)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(live.url + "/")
        page.wait_for_function("document.getElementById('ws-status').textContent === 'live'", timeout=10_000)
        assert page.locator("#open-banner").is_visible()  # open access says so

        # run the pipeline until it has produced a few buy/sell signals, then time the last one
        wanted = 5
        while sum(1 for t, e in recorded.events if t == "signals" and e.side != "hold") < wanted:
            batch, quotes = next(batches)
            runtime.ingest_quotes(quotes)
            runtime.ingest_trades(batch)
        published = time.monotonic()
        last: AggregatedSignal = [e for t, e in recorded.events if t == "signals" and e.side != "hold"][-1]
        page.wait_for_selector(f'#signals tr[data-event-id="{last.event_id}"]', timeout=1_000)
        seen_after = time.monotonic() - published
        assert seen_after < 1.0

        row = page.locator(f'#signals tr[data-event-id="{last.event_id}"]').inner_text()
        assert last.side.upper() in row and f"{last.exchange}:{last.symbol}" in row
        # the chart: a market was chosen from the signals, and candles were drawn on a canvas
        market, timeframe = page.locator("#chart-title").inner_text().split(" ")
        assert market in MARKETS and timeframe == "1s"
        drawn = page.evaluate(
            """() => {
                const canvases = [...document.querySelectorAll('#chart canvas')];
                return canvases.some(c => {
                    if (!c.width || !c.height) return false;
                    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                    for (let i = 0; i < d.length; i += 4) {
                        // a candle's body: the up (#26a69a) or down (#ef5350) colour
                        if ((d[i] === 0x26 && d[i+1] === 0xa6 && d[i+2] === 0x9a) ||
                            (d[i] === 0xef && d[i+1] === 0x53 && d[i+2] === 0x50)) return true;
                    }
                    return false;
                });
            }"""
        )
        assert drawn, "no candle drawn on the chart"
        assert int(page.locator("#seq").inner_text()) > 0
        page.wait_for_function("document.querySelectorAll('#feed tr').length > 0", timeout=5_000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        browser.close()
    assert errors == []


def test_operator_panel_positions_and_strategy_controls(
    live: LiveServer, clickhouse_client: Any, clickhouse_db: str
) -> None:
    """The operator panel shows what /metrics/summary reads from the registry (the same figures
    /metrics serves), the positions table what /positions holds (liquidation price column included),
    and the strategy controls work: rsi_reversion's parameters form, on one market, is refused a period
    of 0 with the strategy's reason and takes a period of 7 (both answers on the page and in the control
    history), after which that market's rsi_reversion runs RSI(7) and the others RSI(14); clicking stop
    on rsi_reversion is answered "applied", and from then on the strategy holds. Screenshots:
    artifacts/operator.png, artifacts/controls.png."""
    from playwright.sync_api import sync_playwright

    from mambo.api.control import EmbeddedController
    from mambo.connectors.clickhouse import ClickHouseSink
    from mambo.streams.embedded import SinkObserver

    runtime, recording = make_runtime()
    recorded = Recorded()
    sink = ClickHouseSink(clickhouse_client, clickhouse_db)
    for observer in (recorded, live.publish, SinkObserver(sink)):
        runtime.observe(observer)
    live.service.controller = EmbeddedController(runtime)  # the test thread ingests only between clicks
    batches = replay(recording, 2_000)
    for _ in range(4):
        batch, quotes = next(batches)
        runtime.ingest_quotes(quotes)
        runtime.ingest_trades(batch)
    sink.flush()
    summary = json.loads(urllib.request.urlopen(live.url + "/metrics/summary", timeout=10).read())
    positions = json.loads(urllib.request.urlopen(live.url + "/positions", timeout=10).read())
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(live.url + "/")
        page.wait_for_selector('#operator tr[data-figure="fills"]', timeout=10_000)
        fills = page.locator('#operator tr[data-figure="fills"] td').nth(1).inner_text()
        assert int(fills.replace(",", "")) == int(summary["fills"]) > 0
        orders = page.locator('#operator tr[data-figure="orders"] td').nth(1).inner_text()
        assert int(orders.replace(",", "")) == int(summary["orders"]["new"])
        assert page.locator('#operator tr[data-figure="latency_order"]').count() == 1
        open_positions = [p for p in positions if float(p["qty"]) != 0]
        page.wait_for_function(
            f"document.querySelectorAll('#positions tr').length === {len(open_positions)}", timeout=5_000
        )
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator("#operator-panel").screenshot(path=str(ARTIFACTS / "operator.png"))
        # the fills as /fills has them, exactly, without the trailing zeros of the table's scale
        history = json.loads(urllib.request.urlopen(live.url + "/fills?limit=1000", timeout=10).read())
        by_id = {f["event_id"]: f for f in history["items"]}
        shown = page.locator("#fills tr")
        assert shown.count() > 5
        for i in range(shown.count()):
            fill = by_id[shown.nth(i).get_attribute("data-event-id") or ""]
            cells = shown.nth(i).locator("td").all_inner_texts()
            for text, name in zip(cells[3:7], ("price", "qty", "fee", "realized_pnl"), strict=True):
                assert Decimal(text) == Decimal(fill[name]), (name, text)
                assert not re.search(r"\.\d*0$|E", text), (name, text)

        row = page.locator('#strategies tr[data-strategy="rsi_reversion"]')
        row.locator('button[data-action="parameters"]').click()
        row.locator("select.market").select_option("binance:BTC/USDT")
        form = page.locator('form.params[data-strategy="rsi_reversion"]')
        assert form.locator('input[name="period"]').input_value() == "14"  # the declared default
        form.locator('input[name="period"]').fill("0")
        form.locator('button[data-action="set_params"]').click()
        page.wait_for_selector('#control-answer[data-status="rejected"]', timeout=10_000)
        refused = page.locator("#control-answer").inner_text()
        assert refused.startswith(
            "set_params rsi_reversion on binance:BTC/USDT: rejected (invalid parameters"
        )
        assert "period" in refused
        form.locator('input[name="period"]').fill("7")
        form.locator('button[data-action="set_params"]').click()
        page.wait_for_selector('#control-answer[data-status="applied"]', timeout=10_000)
        assert page.locator("#control-answer").inner_text() == (
            "set_params rsi_reversion on binance:BTC/USDT: applied"
        )
        history = page.locator("#control-history tr")
        page.wait_for_function("document.querySelectorAll('#control-history tr').length === 2", timeout=5_000)
        newest = history.nth(0).locator("td").all_inner_texts()
        assert newest[1:6] == [
            "open access (local)",
            "set_params",
            "rsi_reversion",
            "binance:BTC/USDT",
            "applied",
        ]
        assert json.loads(newest[6]) == {"period": 7, "lower": 30, "upper": 70}
        assert '"lower": 30.0' in newest[6] and '"period": 7,' in newest[6]  # each as its declared type
        assert history.nth(1).get_attribute("data-status") == "rejected"
        before = len(recorded.events)
        for _ in range(2):  # the page idle meanwhile: commands come only from clicks
            batch, quotes = next(batches)
            runtime.ingest_quotes(quotes)
            runtime.ingest_trades(batch)
        rsi = {}
        for t, e in recorded.events[before:]:
            if t == "signals.raw" and e.strategy == "rsi_reversion" and e.timeframe == "1s" and e.values:
                rsi.setdefault(e.key, set()).update(k for k in e.values if k[4:].isdigit())
        assert rsi.pop("binance:BTC/USDT") == {"rsi_7"}
        assert rsi and set().union(*rsi.values()) == {"rsi_14"}

        row.locator("select.market").select_option("")  # every market
        stop = row.locator('button[data-action="stop"]')
        stop.click()
        page.wait_for_selector('#control-answer[data-status="applied"]', timeout=10_000)
        assert "stop rsi_reversion: applied" in page.locator("#control-answer").inner_text()
        page.screenshot(path=str(ARTIFACTS / "controls.png"), full_page=True)
        browser.close()
    assert errors == []
    # from the stop on, rsi_reversion holds in every market (its state dropped: no values)
    before = len(recorded.events)
    for _ in range(3):
        batch, quotes = next(batches)
        runtime.ingest_quotes(quotes)
        runtime.ingest_trades(batch)
    after = [e for t, e in recorded.events[before:] if t == "signals.raw" and e.strategy == "rsi_reversion"]
    assert len(after) > 50 and all(s.side == "hold" and s.values == {} for s in after)
