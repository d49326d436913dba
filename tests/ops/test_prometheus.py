"""A real Prometheus (Debian's package) scrapes a real ``mambo api --demo`` process, which replays the
bundled recording through the embedded pipeline, and answers PromQL over its HTTP API with non-zero
orders, equity and order latency; the alert rules load and evaluate on those series without error."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ops import installed

ROOT = Path(__file__).parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return bytes(answer.read())


def wait_for(what: str, check: Any, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: the process exited with {proc.returncode}")
        try:
            last = check()
            if last:
                return last
        except OSError as ex:
            last = ex
        time.sleep(0.25)
    pytest.fail(f"{what}: not within {timeout} s (last: {last!r})")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "mambo.cli", "api", "--demo", "--speed", "0", "--port", str(port)),
            *("--symbols", "binance:BTC/USDT,binance:ETH/USDT", "--data-dir", str(tmp_path / "data")),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        start_new_session=True,
        env=os.environ | {"MAMBO_LOG_FORMAT": "json"},
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_for("the demo's fills on /metrics", lambda: b"\nmambo_fills_total{" in get(url), 60, proc)
        yield port
    finally:
        stop(proc)
        log.close()


def query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    answer = json.loads(get(url))
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def test_prometheus_scrapes_the_demo_and_answers_promql(api: int, tmp_path: Path) -> None:
    prometheus = installed("prometheus")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    shutil.copy(ROOT / "deploy" / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "rule_files: [alerts.yml]\n"
        "scrape_configs:\n"
        f"  - job_name: mambo-api\n    static_configs: [{{targets: ['127.0.0.1:{api}']}}]\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        up = wait_for("a scrape", lambda: query(port, 'up{job="mambo-api"} == 1'), 20, proc)
        assert up[0]["metric"]["instance"] == f"127.0.0.1:{api}"
        orders = wait_for(
            "orders", lambda: query(port, 'sum(mambo_orders_total{status="new"}) > 0'), 10, proc
        )
        fills = query(port, "sum(mambo_fills_total)")
        assert float(fills[0]["value"][1]) > 0
        assert float(orders[0]["value"][1]) >= float(fills[0]["value"][1]) > 0  # market orders fill once
        equity = query(port, 'mambo_equity{account="main"}')
        assert equity and float(equity[0]["value"][1]) > 0
        latency = query(port, 'sum(mambo_processing_latency_seconds_count{stage="order"})')
        assert float(latency[0]["value"][1]) > 0
        p99 = query(port, "histogram_quantile(0.99, sum by (le) (mambo_latency_seconds_bucket))")
        assert 0 < float(p99[0]["value"][1]) < 60
        served = query(port, 'sum(mambo_http_requests_total{route="/metrics", status="200"})')
        assert float(served[0]["value"][1]) > 0  # the scrapes themselves, counted by the middleware

        def rules_evaluated() -> list[dict[str, Any]]:
            groups = json.loads(get(f"http://127.0.0.1:{port}/api/v1/rules"))["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            return rules if rules and all(r.get("lastEvaluation", "").startswith("2") for r in rules) else []

        rules = wait_for("the rules' evaluation", rules_evaluated, 10, proc)
        assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
        assert {r["name"] for r in rules if r["state"] != "inactive"} >= {"MamboWatchdog"}
    finally:
        stop(proc)
        log.close()
