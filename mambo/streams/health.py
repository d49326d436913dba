"""``/health`` and ``/ready`` over HTTP for Mambo's long-running processes (worker, sink, source).

One small server per process, on a port of its own (``--health-port`` or ``MAMBO_HEALTH_PORT``; none
by default): what Kubernetes' probes, compose's healthchecks and the image's ``HEALTHCHECK`` ask.

- ``GET /health``: 200 while the process's main thread runs (liveness: restart me if not).
- ``GET /ready``: 200 when every readiness check the process registered passes, 503 otherwise, with
  each check's answer as JSON (readiness: send me no work, do not count me as up, if not).
- ``GET /metrics``: the process's Prometheus metrics (:mod:`mambo.metrics`), in the text format.

A check is a function returning ``(ok, detail)``; the factories here build the ones the commands use:
:func:`kafka_lag_check` (partitions assigned, and their lag under a bound),
:func:`clickhouse_check` (the server answers) and :func:`kafka_check` (the brokers answer). The server
is a stdlib :class:`~http.server.ThreadingHTTPServer` on a daemon thread, so it needs no event loop and
answers while the process's own loop is busy. ``python -m mambo.streams.health [PATH]`` probes the
local server (``MAMBO_HEALTH_PORT``, default 8080) and exits 0 when it answers 200: the image's and
compose's healthcheck command.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "DEFAULT_PORT",
    "Check",
    "HealthServer",
    "clickhouse_check",
    "kafka_check",
    "kafka_lag_check",
    "probe",
]

#: A readiness check: ``(ok, detail)``. An exception counts as not ready, its message as the detail.
Check = Callable[[], tuple[bool, str]]
#: The port probes use when ``MAMBO_HEALTH_PORT`` is not set (the chart and compose set it).
DEFAULT_PORT = 8080


class HealthServer:
    """Serves ``/health`` and ``/ready`` on ``host:port`` (port 0: any free port, see :attr:`port`)."""

    def __init__(self, port: int, host: str = "0.0.0.0", cache_seconds: float = 5.0) -> None:
        """``cache_seconds``: a readiness answer is reused this long, and a probe arriving while the
        checks run gets the last answer at once (not ready before there is one) instead of starting
        another run or waiting for this one (a lag check over a hundred partitions took seconds, at
        times over a minute, on a loaded machine: probes every few seconds must neither pile up
        behind it nor time out)."""
        if not 0 <= port < 65536:
            raise ValueError(f"health port {port}: must be 0..65535")
        self._checks: dict[str, Check] = {}
        self._lock = threading.Lock()
        self._running = threading.Lock()  # one run of the checks at a time
        self._cache_seconds = cache_seconds
        self._answer: tuple[float, tuple[bool, dict[str, dict[str, Any]]]] | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/health":
                    alive = threading.main_thread().is_alive()
                    self._answer(200 if alive else 503, {"alive": alive})
                elif path == "/ready":
                    ok, checks = server.readiness()
                    self._answer(200 if ok else 503, {"ready": ok, "checks": checks})
                elif path == "/metrics":
                    from mambo.metrics import CONTENT_TYPE_LATEST, exposition

                    self._send(200, exposition(), CONTENT_TYPE_LATEST)
                else:
                    self._answer(404, {"error": f"no {path}: /health, /ready or /metrics"})

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                self._send(status, json.dumps(body).encode(), "application/json")

            def _send(self, status: int, data: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: quiet
                pass

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def add_check(self, name: str, check: Check) -> None:
        """Register a readiness check (``/ready`` passes when all pass)."""
        with self._lock:
            self._checks[name] = check
        self._answer = None  # the next probe runs the new set

    def readiness(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        """Whether every check passes, and each one's answer: from a run at most ``cache_seconds``
        old, else from a new run; while another probe's run goes on, the last answer."""
        answer = self._answer
        if answer is not None and time.monotonic() - answer[0] < self._cache_seconds:
            return answer[1]
        if not self._running.acquire(blocking=False):  # a run is under way: do not wait for it
            if answer is not None:
                return answer[1]
            return False, {"checks": {"ok": False, "detail": "the first readiness checks are running"}}
        try:
            result = self._run_checks()
            self._answer = (time.monotonic(), result)
            return result
        finally:
            self._running.release()

    def _run_checks(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        with self._lock:
            checks = dict(self._checks)
        answers: dict[str, dict[str, Any]] = {}
        for name, check in checks.items():
            try:
                ok, detail = check()
            except Exception as ex:  # a check that cannot run is a check that fails, with the reason
                ok, detail = False, f"{type(ex).__name__}: {ex}"
            answers[name] = {"ok": ok, "detail": detail}
        return all(a["ok"] for a in answers.values()), answers

    def start(self) -> HealthServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="health", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() waits for serve_forever: only when it runs
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()


def kafka_lag_check(
    bootstrap: str, group: str, assigned: Callable[[], Collection[tuple[str, int]]], max_lag: int
) -> Check:
    """Ready when the process holds partitions (``assigned()``: topic and partition pairs) and the
    group's committed offsets on them are at most ``max_lag`` messages behind the partitions' ends
    (the last stable offsets: what a ``read_committed`` consumer can reach). A partition with no
    commit yet counts from its beginning.

    Offsets come from the admin API in two batched requests (three with uncommitted partitions), so
    the check neither joins the group nor costs a request per partition."""
    from confluent_kafka import ConsumerGroupTopicPartitions, IsolationLevel, TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})

    def offsets(parts: list[TopicPartition], spec: OffsetSpec) -> dict[tuple[str, int], int]:
        futures = admin.list_offsets(
            {tp: spec for tp in parts}, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=5
        )
        return {(tp.topic, tp.partition): f.result(timeout=10).offset for tp, f in futures.items()}

    def check() -> tuple[bool, str]:
        parts = [TopicPartition(t, p) for t, p in sorted(set(assigned()))]
        if not parts:
            return False, "no partitions assigned"
        request = [ConsumerGroupTopicPartitions(group, parts)]
        answer = admin.list_consumer_group_offsets(request, request_timeout=5)[group].result(timeout=10)
        committed = {(tp.topic, tp.partition): tp.offset for tp in answer.topic_partitions}
        ends = offsets(parts, OffsetSpec.latest())
        fresh = [tp for tp in parts if committed.get((tp.topic, tp.partition), -1) < 0]
        starts = offsets(fresh, OffsetSpec.earliest()) if fresh else {}
        lag = sum(
            max(0, end - (committed[k] if committed.get(k, -1) >= 0 else starts[k]))
            for k, end in ends.items()
        )
        return lag <= max_lag, f"{len(parts)} partitions assigned, lag {lag} (bound {max_lag})"

    return check


def clickhouse_check(dsn: str) -> Check:
    """Ready when ClickHouse answers ``SELECT 1`` (chdb, in this process: always)."""
    if dsn.startswith("chdb://"):
        return lambda: (True, "embedded chdb")
    import clickhouse_connect

    client: list[Any] = []

    def check() -> tuple[bool, str]:
        if not client:
            client.append(clickhouse_connect.get_client(dsn=dsn, connect_timeout=5, send_receive_timeout=5))
        return client[0].command("SELECT 1") == 1, "answers"

    return check


def kafka_check(bootstrap: str) -> Check:
    """Ready when the Kafka cluster answers a metadata request."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})

    def check() -> tuple[bool, str]:
        brokers = len(admin.list_topics(timeout=5).brokers)
        return brokers > 0, f"{brokers} brokers answer"

    return check


def probe(path: str = "/health", port: int | None = None, timeout: float = 5.0) -> bool:
    """Whether the local health server answers 200 on ``path``."""
    port = port or int(os.environ.get("MAMBO_HEALTH_PORT") or DEFAULT_PORT)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


if __name__ == "__main__":  # the healthcheck: python -m mambo.streams.health [/health|/ready]
    sys.exit(0 if probe(sys.argv[1] if len(sys.argv) > 1 else "/health") else 1)
