"""The operator panel's figures (``GET /metrics/summary``, mambo.api.operator) against independent
readers: a latency quantile worked by hand from a histogram's buckets (Prometheus' interpolation), and
the counters and gauges of ``/metrics`` parsed with prometheus_client's own text parser."""

from __future__ import annotations

import math

from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from mambo.api.main import create_app
from mambo.api.operator import histogram_quantile, summary
from mambo.api.service import SignalService

from .conftest import make_runtime, run_pipeline


def test_quantiles_interpolate_within_the_bucket_as_prometheus_does() -> None:
    registry = CollectorRegistry()
    h = Histogram(
        "mambo_processing_latency_seconds", "t", ["stage"], buckets=(0.1, 0.5, 1.0), registry=registry
    )
    for value in (0.05, 0.2, 0.3, 0.4, 0.7, 2.0):  # buckets: <=0.1: 1, <=0.5: 4, <=1: 5, +Inf: 6
        h.labels("order").observe(value)
    got = summary(registry)["latency"]["order"]
    assert got["count"] == 6
    # p50: rank 3 falls in (0.1, 0.5] holding ranks 2..4: 0.1 + 0.4 * (3 - 1) / (4 - 1)
    assert math.isclose(got["p50"], 0.1 + 0.4 * 2 / 3)
    # p99: rank 5.94 falls in +Inf: the highest finite bound
    assert got["p99"] == 1.0
    assert math.isnan(histogram_quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]))
    assert histogram_quantile(0.1, [(0.1, 1.0), (math.inf, 1.0)]) == 0.1 * 0.1


def test_the_summary_is_what_metrics_serves(service: SignalService) -> None:
    runtime, recording = make_runtime()
    run_pipeline(runtime, recording)
    client = TestClient(create_app(service, None))
    exposition = client.get("/metrics").text
    figures = client.get("/metrics/summary").json()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }
    fills = sum(v for (n, _), v in samples.items() if n == "mambo_fills_total")
    assert figures["fills"] == fills > 0
    new = sum(v for (n, ls), v in samples.items() if n == "mambo_orders_total" and ("status", "new") in ls)
    assert figures["orders"]["new"] == new
    equity = [v for (n, ls), v in samples.items() if n == "mambo_equity" and ("account", "main") in ls]
    assert figures["accounts"]["main"]["equity"] == equity[0]
    trades = sum(
        v for (n, ls), v in samples.items() if n == "mambo_messages_total" and ("topic", "md.trades") in ls
    )
    assert figures["messages"]["md.trades"] == trades
