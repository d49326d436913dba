"""The dashboard in a real headless Chromium (Debian's, driven by Playwright): the chart renders and a
signal the pipeline produces shows on the page within a second. The screenshot is kept under
artifacts/ (gitignored)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

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
