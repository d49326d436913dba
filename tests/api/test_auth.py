"""API keys: hashed storage, 401/403/429 where they belong, the key CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import structlog
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from mambo.api.auth import TIERS, AuthError, Authorizer, KeyStore, RateLimiter
from mambo.api.main import create_app
from mambo.api.service import SignalService
from mambo.cli import app as cli

from .conftest import api_settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_keys_are_stored_hashed(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    key = store.create(["signals:read"], "pro", "desk")
    text = (tmp_path / "keys.json").read_text()
    secret = key.split("_", 2)[2]
    assert key not in text and secret not in text
    assert (tmp_path / "keys.json").stat().st_mode & 0o777 == 0o600
    record = store.verify(key)
    assert (record.scopes, record.tier, record.name) == (("signals:read",), "pro", "desk")
    for bad in (key[:-1] + ("A" if key[-1] != "A" else "B"), "mambo_" + record.id, "", "nonsense", key + "x"):
        with pytest.raises(AuthError) as err:
            store.verify(bad)
        assert err.value.status == 401
    # another process (mambo keys create) adding a key is seen without a restart
    other = KeyStore(tmp_path / "keys.json").create(["admin"], "enterprise")
    assert store.verify(other).allows("analytics:read")
    assert store.revoke(record.id)
    with pytest.raises(AuthError):
        store.verify(key)
    with pytest.raises(ValueError, match="scopes"):
        store.create(["write:everything"])
    with pytest.raises(ValueError, match="tier"):
        store.create(["admin"], "platinum")


def test_rate_limit_per_tier() -> None:
    clock = Clock()
    store_limiter = RateLimiter(clock)
    from mambo.api.auth import ApiKey

    key = ApiKey("k1", "", ("signals:read",), "basic")
    assert all(store_limiter.check(key) == 0 for _ in range(TIERS["basic"]))
    wait = store_limiter.check(key)
    assert wait == pytest.approx(1.0)  # one token a second at 60/min
    clock.now += 1.0
    assert store_limiter.check(key) == 0
    assert store_limiter.check(key) > 0
    pro = ApiKey("k2", "", ("signals:read",), "pro")
    assert all(store_limiter.check(pro) == 0 for _ in range(TIERS["pro"]))


@pytest.fixture
def keyed(service: SignalService, tmp_path: Path) -> tuple[TestClient, KeyStore, Clock]:
    service.settings = api_settings(auth="keys")
    store = KeyStore(tmp_path / "keys.json")
    clock = Clock()
    return TestClient(create_app(service, Authorizer(store, RateLimiter(clock)))), store, clock


def test_http_status_by_case(keyed: tuple[TestClient, KeyStore, Clock]) -> None:
    api, store, clock = keyed
    reader = store.create(["signals:read"], "basic")
    analyst = store.create(["analytics:read"], "pro")
    admin = store.create(["admin"], "enterprise")
    r = api.get("/fills")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "APIKey"
    assert "X-API-Key" in r.json()["detail"]
    assert api.get("/fills", headers={"X-API-Key": "mambo_00000000_guess"}).status_code == 401
    assert api.get("/fills", headers={"X-API-Key": reader}).status_code == 200
    assert api.get("/fills", headers={"X-API-Key": analyst}).status_code == 403
    sql = {"sql": "SELECT count() FROM fills"}
    r = api.post("/analytics/query", json=sql, headers={"X-API-Key": reader})
    assert r.status_code == 403 and "analytics:read" in r.json()["detail"]
    assert api.post("/analytics/query", json=sql, headers={"X-API-Key": analyst}).status_code == 200
    assert api.post("/analytics/query", json=sql, headers={"X-API-Key": admin}).status_code == 200
    assert api.get("/analytics/reports", headers={"X-API-Key": admin}).status_code == 200
    # health, readiness, docs and the page need no key
    for path in ("/health", "/ready", "/docs", "/openapi.json", "/"):
        assert api.get(path).status_code == 200, path
    # the basic tier: 60 a minute, then 429 with Retry-After
    codes = [api.get("/symbols", headers={"X-API-Key": reader}).status_code for _ in range(TIERS["basic"])]
    assert codes.count(429) == 1  # one request was spent on /fills above
    r = api.get("/symbols", headers={"X-API-Key": reader})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    clock.now += 1.0
    assert api.get("/symbols", headers={"X-API-Key": reader}).status_code == 200


def test_keys_never_reach_the_logs(
    keyed: tuple[TestClient, KeyStore, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    api, store, _ = keyed
    key = store.create(["signals:read"])
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as logs, api:
        assert api.get("/fills", headers={"X-API-Key": key}).status_code == 200
        assert api.get("/fills", headers={"X-API-Key": key + "x"}).status_code == 401
    secret = key.split("_", 2)[2]
    assert logs or caplog.records  # something was logged, and none of it holds the key
    assert secret not in repr(logs) + caplog.text


def test_open_access_refused_off_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        api_settings(auth="open", host="0.0.0.0")


def test_keys_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(
        cli,
        [
            "keys",
            "create",
            "--scopes",
            "signals:read,analytics:read",
            "--tier",
            "pro",
            "--name",
            "desk",
            "--data-dir",
            str(tmp_path),
        ],
    )
    assert r.exit_code == 0, r.output
    key = r.stdout.strip().splitlines()[0]
    assert key.startswith("mambo_")
    store = KeyStore(tmp_path / "api_keys.json")
    record = store.verify(key)
    assert record.scopes == ("signals:read", "analytics:read") and record.tier == "pro"
    assert key not in (tmp_path / "api_keys.json").read_text()
    assert json.loads((tmp_path / "api_keys.json").read_text())["keys"][0]["name"] == "desk"
    listed = runner.invoke(cli, ["keys", "list", "--data-dir", str(tmp_path)])
    assert record.id in listed.stdout and key not in listed.stdout
    bad = runner.invoke(cli, ["keys", "create", "--scopes", "root", "--data-dir", str(tmp_path)])
    assert bad.exit_code == 2 and "scopes must be" in bad.output
    assert runner.invoke(cli, ["keys", "revoke", record.id, "--data-dir", str(tmp_path)]).exit_code == 0
    assert runner.invoke(cli, ["keys", "revoke", record.id, "--data-dir", str(tmp_path)]).exit_code == 1
