"""The health server: /health, /ready with registered checks, and the probe command the image's
HEALTHCHECK and compose run, over real HTTP on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from mambo.streams.health import HealthServer, probe


@pytest.fixture
def server() -> Iterator[HealthServer]:
    s = HealthServer(0, host="127.0.0.1", cache_seconds=0).start()  # every probe runs the checks
    yield s
    s.stop()


def get(server: HealthServer, path: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as ex:
        return ex.code, json.loads(ex.read())


def test_alive_and_ready_with_no_checks(server: HealthServer) -> None:
    assert get(server, "/health") == (200, {"alive": True})
    assert get(server, "/ready") == (200, {"ready": True, "checks": {}})
    assert get(server, "/nope")[0] == 404  # (/metrics is served: tests/ops)


def test_ready_only_when_every_check_passes_and_says_why_not(server: HealthServer) -> None:
    state = {"lag": 50}
    server.add_check("partitions", lambda: (state["lag"] <= 10, f"lag {state['lag']}"))
    server.add_check("clickhouse", lambda: (True, "answers"))
    status, body = get(server, "/ready")
    assert status == 503
    assert body["checks"] == {
        "partitions": {"ok": False, "detail": "lag 50"},
        "clickhouse": {"ok": True, "detail": "answers"},
    }
    state["lag"] = 3
    assert get(server, "/ready")[0] == 200
    assert get(server, "/health")[0] == 200  # liveness does not depend on readiness


def test_probes_share_one_run_of_the_checks_within_the_cache_time() -> None:
    """A slow check (a lag check over many partitions) runs once for the probes that come while it
    runs and within the cache time, not once per probe; those that come while it runs are answered
    at once, not ready, rather than waiting for it."""
    calls = []

    def slow() -> tuple[bool, str]:
        calls.append(time.monotonic())
        time.sleep(0.3)
        return True, "fine"

    s = HealthServer(0, host="127.0.0.1", cache_seconds=30).start()
    try:
        s.add_check("lag", slow)
        answers: list[tuple[int, float]] = []

        def probe_once() -> None:
            start = time.monotonic()
            status, _ = get(s, "/ready")
            answers.append((status, time.monotonic() - start))

        first = threading.Thread(target=probe_once)
        first.start()
        time.sleep(0.1)  # the first probe's run is under way
        others = [threading.Thread(target=probe_once) for _ in range(4)]
        for p in others:
            p.start()
        for p in [first, *others]:
            p.join()
        assert sorted(status for status, _ in answers) == [200, 503, 503, 503, 503]
        assert all(took < 0.25 for status, took in answers if status == 503)  # not held behind the run
        assert get(s, "/ready")[0] == 200  # from the cache
        assert len(calls) == 1
        s.add_check("clickhouse", lambda: (False, "down"))  # a new check: the next probe runs them
        assert get(s, "/ready")[0] == 503 and len(calls) == 2
    finally:
        s.stop()


def test_a_check_that_raises_is_not_ready_with_the_error(server: HealthServer) -> None:
    def broken() -> tuple[bool, str]:
        raise ConnectionError("broker down")

    server.add_check("kafka", broken)
    status, body = get(server, "/ready")
    assert status == 503
    assert body["checks"] == {"kafka": {"ok": False, "detail": "ConnectionError: broker down"}}


def test_the_probe_command_exits_by_the_answer(server: HealthServer) -> None:
    env = {**os.environ, "MAMBO_HEALTH_PORT": str(server.port)}
    command = [sys.executable, "-m", "mambo.streams.health"]
    assert subprocess.run([*command, "/health"], env=env, timeout=60).returncode == 0
    server.add_check("never", lambda: (False, "no"))
    assert subprocess.run([*command, "/ready"], env=env, timeout=60).returncode == 1
    assert probe("/health", server.port) and not probe("/ready", server.port)


def test_nothing_listening_is_not_healthy() -> None:
    s = HealthServer(0, host="127.0.0.1")
    port = s.port
    s.stop()  # bound, never served, closed: nothing listens there now
    assert probe("/health", port, timeout=2) is False


def test_a_bad_port_is_refused() -> None:
    with pytest.raises(ValueError, match="health port 70000"):
        HealthServer(70000)
