"""``POST /control`` (admin scope) into a running embedded pipeline, and ``GET /control/results``:
the command is checked (400 with the reason for one that cannot apply anywhere), sent where the
markets' streams are, and answered by the stages (applied, or rejected with the strategy's reason);
a key without the admin scope gets 403, and an API with no pipeline to control says so (503)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client
from fastapi.testclient import TestClient

from mambo.api.auth import Authorizer, KeyStore
from mambo.api.control import EmbeddedController
from mambo.api.main import create_app
from mambo.api.service import SignalService

from .conftest import api_settings, make_runtime


def answers(client: TestClient, command_id: str) -> list[dict[str, Any]]:
    reply = client.get("/control/results", params={"command_id": command_id})
    assert reply.status_code == 200, reply.text
    return list(reply.json())


def test_commands_through_the_api_are_applied_or_refused_with_the_reason(
    clickhouse_client: Client, clickhouse_db: str
) -> None:
    runtime, recording = make_runtime()
    service = SignalService(clickhouse_client, clickhouse_db, api_settings())
    runtime.observe(service.on_event)
    service.controller = EmbeddedController(runtime)
    client = TestClient(create_app(service, None))
    batches = [recording.trades.slice(s, s + 2_000) for s in range(0, 12_000, 2_000)]
    for b in batches[:3]:
        runtime.ingest_trades(b)

    bad = client.post("/control", json={"action": "set_params", "strategy": "sma_cross",
                                        "market": "binance:BTC/USDT", "params": {"fast": -1}})  # fmt: skip
    assert bad.status_code == 202, bad.text
    [refused] = answers(client, bad.json()["command_id"])
    assert refused["status"] == "rejected" and "invalid parameters" in refused["reason"]
    assert refused["who"] == "open access (local)"

    stop = client.post("/control", json={"action": "stop", "strategy": "rsi_reversion", "why": "test"})
    assert stop.status_code == 202 and stop.json()["markets"] == 2
    assert [a["status"] for a in answers(client, stop.json()["command_id"])] == ["applied", "applied"]

    halt = client.post("/control", json={"action": "halt"})
    assert halt.status_code == 202 and halt.json()["version"] == 1
    assert answers(client, halt.json()["command_id"]) == []  # in the account's merge: with the next candles
    for b in batches[3:]:
        runtime.ingest_trades(b)
    [halted] = answers(client, halt.json()["command_id"])
    assert halted["status"] == "applied"
    assert client.post("/control", json={"action": "resume"}).json()["version"] == 2

    no_strategy = client.post("/control", json={"action": "start"})
    assert no_strategy.status_code == 400 and "names a strategy" in no_strategy.json()["detail"]
    assert client.post("/control", json={"action": "explode"}).status_code == 422


def test_control_needs_the_admin_scope_and_a_pipeline(
    clickhouse_client: Client, clickhouse_db: str, tmp_path: Path
) -> None:
    service = SignalService(clickhouse_client, clickhouse_db, api_settings())
    store = KeyStore(tmp_path / "keys.json")
    reader, admin = store.create(["signals:read"]), store.create(["admin"])
    client = TestClient(create_app(service, Authorizer(store)))
    body = {"action": "halt"}
    assert client.post("/control", json=body, headers={"X-API-Key": reader}).status_code == 403
    nothing = client.post("/control", json=body, headers={"X-API-Key": admin})
    assert nothing.status_code == 503 and "no running pipeline" in nothing.json()["detail"]
