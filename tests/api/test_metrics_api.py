"""The API's metrics: /metrics without a key, requests counted by route template (never the raw path)
and status, and WebSocket clients, frames and drops, on a real server with real clients."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import websockets
from prometheus_client import REGISTRY

from mambo.api.auth import Authorizer, KeyStore
from mambo.api.hub import Hub
from mambo.api.main import create_app
from mambo.api.service import SignalService
from tests.ops import promtool_check

from .conftest import LiveServer, Pipeline, api_settings, start_server, stop_server


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def live(service: SignalService) -> Iterator[LiveServer]:
    service.settings = api_settings(ws_heartbeat_seconds=30)
    service.hub = Hub(buffer=10_000, queue_size=1_000)
    server = start_server(create_app(service, Authorizer(None)), service)
    yield server
    stop_server(server)


def get(url: str, key: str | None = None) -> tuple[int, bytes, str]:
    request = urllib.request.Request(url, headers={"X-API-Key": key} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read(), answer.headers["Content-Type"]
    except urllib.error.HTTPError as ex:
        return ex.code, ex.read(), ex.headers["Content-Type"]


def test_requests_by_route_template_and_status(service: SignalService, tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    key = store.create(["signals:read"], "pro", "metrics test")
    live = start_server(create_app(service, Authorizer(store)), service)
    counted = {
        "health": ("/health", "200"),
        "no_key": ("/signals/latest", "401"),
        "key": ("/signals/latest", "200"),
        "scope": ("/analytics/reports/{name}", "403"),  # by its template, whatever the name
        "unmatched": ("unmatched", "404"),
        "metrics": ("/metrics", "200"),
    }

    def counts() -> dict[str, float]:
        return {
            k: value("mambo_http_requests_total", route=r, method="GET", status=s)
            for k, (r, s) in counted.items()
        }

    try:
        before = counts()
        for _ in range(3):
            assert get(live.url + "/health")[0] == 200
        assert get(live.url + "/signals/latest")[0] == 401
        assert get(live.url + "/signals/latest", key)[0] == 200
        assert get(live.url + "/analytics/reports/daily_pnl", key)[0] == 403
        assert get(live.url + "/analytics/reports/anything", key)[0] == 403
        for i in range(2):
            assert get(live.url + f"/no/such/path/{i}")[0] == 404
        status, body, content_type = get(live.url + "/metrics")  # no key needed
        assert status == 200 and content_type.startswith("text/plain")
        moved = {k: v - before[k] for k, v in counts().items()}
        assert moved == {"health": 3, "no_key": 1, "key": 1, "scope": 2, "unmatched": 2, "metrics": 1}
        text = body.decode()
        assert "/no/such/path" not in text and "daily_pnl" not in text  # raw paths never become labels
        assert value("mambo_http_request_duration_seconds_count", route="/health") >= 3
        promtool_check(body)
    finally:
        stop_server(live)


def test_websocket_clients_and_frames(live: LiveServer, pipeline: Pipeline) -> None:
    signals = [(t, e) for t, e in pipeline.recorded.events if t == "signals"][:5]
    assert len(signals) == 5
    frames_before = value("mambo_ws_frames_sent_total")
    clients_before = value("mambo_ws_clients")

    async def scenario() -> tuple[int, float]:
        async with websockets.connect(live.ws_url) as a, websockets.connect(live.ws_url) as b:
            for ws in (a, b):
                assert json.loads(await ws.recv())["type"] == "welcome"
            during = live.call(lambda: value("mambo_ws_clients"))
            await a.send(json.dumps({"op": "subscribe", "channels": ["signals"]}))
            assert json.loads(await a.recv())["type"] == "subscribed"
            for topic, event in signals:
                live.publish(topic, event)
            async with asyncio.timeout(10):
                for _ in signals:
                    assert json.loads(await a.recv())["type"] == "event"
        return 2 + 1 + len(signals), during  # welcomes, subscribed, events

    sent, during = asyncio.run(scenario())
    assert during == clients_before + 2
    assert value("mambo_ws_frames_sent_total") - frames_before == sent
    assert asyncio.run(_settle(lambda: value("mambo_ws_clients") == clients_before))


def test_a_dropped_client_is_counted() -> None:
    hub = Hub(queue_size=2)
    before, clients = value("mambo_ws_clients_dropped_total"), value("mambo_ws_clients")
    client = hub.connect()
    assert value("mambo_ws_clients") == clients + 1
    for _ in range(5):  # replies it never reads: dropped once, at the third
        hub.offer(client, "{}")
    assert client.dropped and hub.dropped_clients == 1
    assert value("mambo_ws_clients_dropped_total") == before + 1
    hub.disconnect(client)
    hub.disconnect(client)  # twice: counted once
    assert value("mambo_ws_clients") == clients


async def _settle(ok: Callable[[], bool], timeout: float = 5.0) -> bool:
    async with asyncio.timeout(timeout):
        while not ok():
            await asyncio.sleep(0.05)
    return True
