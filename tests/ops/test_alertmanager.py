"""Alerts through a real Alertmanager (Debian's ``prometheus-alertmanager``) to a webhook.

``amtool check-config`` validates ``deploy/alertmanager/alertmanager.yml``. End to end: a real
Prometheus evaluates the real rules (``deploy/prometheus/alerts.yml``, with its ``for:`` durations
shortened to 0s in the test's copy so they fire in seconds), with a ``mambo-worker`` scrape job at a
port where nothing answers; it sends its alerts to a real Alertmanager, whose webhook receiver is a
local HTTP server. The server receives MamboWorkerDown firing (with its labels and summary) and the
always-firing MamboWatchdog; once a worker answers at that port, MamboWorkerDown arrives resolved.
Cost: ~15 s."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from tests.ops import installed

ROOT = Path(__file__).parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_deployed_config_is_valid() -> None:
    out = subprocess.run(
        [installed("amtool"), "check-config", str(ROOT / "deploy" / "alertmanager" / "alertmanager.yml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 receivers" in out.stdout


class Webhook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class Exposition(BaseHTTPRequestHandler):
    """A worker's /metrics (a valid exposition), so the scrape succeeds."""

    body: ClassVar[bytes] = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(type(self).body)

    def log_message(self, *args: Any) -> None:
        pass


def serve(handler: type[BaseHTTPRequestHandler], port: int) -> HTTPServer:
    server = HTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def alerts(status: str, name: str) -> list[dict[str, Any]]:
    return [
        a
        for message in Webhook.received
        for a in message["alerts"]
        if a["status"] == status and a["labels"]["alertname"] == name
    ]


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def wait_for(what: str, check: Any, seconds: float = 30) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    pytest.fail(f"{what}: not within {seconds} s; received {json.dumps(Webhook.received)[:2000]}")


def test_an_alert_goes_through_alertmanager_to_a_webhook(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    Webhook.received = []
    hook_port, am_port, prom_port, worker_port = free_port(), free_port(), free_port(), free_port()
    hook = serve(Webhook, hook_port)
    # the real rules, firing without waiting (their `for:` durations are promtool-tested elsewhere)
    rules = re.sub(r"for: \d+[smh]", "for: 0s", (ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    (tmp_path / "alerts.yml").write_text(rules)
    (tmp_path / "alertmanager.yml").write_text(
        "route: {receiver: hook, group_by: [alertname], group_wait: 0s, group_interval: 1s,"
        " repeat_interval: 1h}\n"
        f"receivers:\n  - name: hook\n    webhook_configs:\n      - url: http://127.0.0.1:{hook_port}/alerts\n"
        "        send_resolved: true\n"
    )
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "rule_files: [alerts.yml]\n"
        f"alerting: {{alertmanagers: [{{static_configs: [{{targets: ['127.0.0.1:{am_port}']}}]}}]}}\n"
        "scrape_configs:\n  - job_name: mambo-worker\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{worker_port}']}}]\n"
    )
    log = (tmp_path / "alertmanager.log").open("wb")
    processes.append(
        subprocess.Popen(
            [installed("prometheus-alertmanager"), f"--config.file={tmp_path / 'alertmanager.yml'}",
             f"--storage.path={tmp_path / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
             "--cluster.listen-address="],
            stdout=log, stderr=subprocess.STDOUT,
        )
    )  # fmt: skip
    wait_for("Alertmanager ready", lambda: ready(am_port))
    log = (tmp_path / "prometheus.log").open("wb")
    processes.append(
        subprocess.Popen(
            [installed("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}",
             "--rules.alert.resend-delay=1s"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    )  # fmt: skip
    try:
        [down] = wait_for("MamboWorkerDown firing", lambda: alerts("firing", "MamboWorkerDown")[:1])
        assert down["labels"]["severity"] == "critical"
        assert down["labels"]["instance"] == f"127.0.0.1:{worker_port}"
        assert down["annotations"]["summary"] == f"Mambo worker 127.0.0.1:{worker_port} is down"
        wait_for("MamboWatchdog", lambda: alerts("firing", "MamboWatchdog"))
        # a worker answers: the alert resolves, and Alertmanager says so
        registry = CollectorRegistry()
        Gauge("mambo_up_test", "a worker's metric", registry=registry).set(1)
        Exposition.body = generate_latest(registry)
        worker = serve(Exposition, worker_port)
        try:
            wait_for("MamboWorkerDown resolved", lambda: alerts("resolved", "MamboWorkerDown"))
        finally:
            worker.shutdown()
    finally:
        hook.shutdown()
