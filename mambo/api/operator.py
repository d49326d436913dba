"""The operator panel's figures, read from the same Prometheus registry ``/metrics`` serves (no second
bookkeeping): throughput and dead letters per topic, consumer lag, processing latency quantiles per
stage, orders, fills and rejections, each account's gauges, feed ages and the WebSocket hub.

Latency quantiles are interpolated within their histogram bucket as Prometheus' ``histogram_quantile``
does (:func:`histogram_quantile`), so the panel and a Grafana panel over the same buckets agree.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

__all__ = ["histogram_quantile", "summary"]


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """The ``q`` quantile of cumulative ``(upper bound, count)`` buckets (the last one ``+Inf``), as
    Prometheus computes it: linear within the bucket the rank falls in, from the previous bound (0 for
    the first); the highest finite bound when it falls in ``+Inf``; NaN with no observation."""
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0.0
    if not total:
        return math.nan
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def summary(registry: CollectorRegistry = REGISTRY) -> dict[str, Any]:
    """The panel's figures (see the module)."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in registry.collect():
        for s in family.samples:
            samples[s.name].append((s.labels, s.value))

    def by(name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for labels, value in samples.get(name, []):
            out[labels.get(label, "")] += value
        return dict(sorted(out.items()))

    latency: dict[str, Any] = {}
    stages: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for labels, value in samples.get("mambo_processing_latency_seconds_bucket", []):
        stages[labels["stage"]].append((float(labels["le"]), value))
    for stage, buckets in sorted(stages.items()):
        latency[stage] = {
            "count": max(c for _, c in buckets),
            "p50": histogram_quantile(0.5, buckets),
            "p99": histogram_quantile(0.99, buckets),
        }
    accounts: dict[str, dict[str, float]] = defaultdict(dict)
    for name, field in (
        ("mambo_equity", "equity"),
        ("mambo_drawdown_ratio", "drawdown"),
        ("mambo_exposure", "exposure"),
        ("mambo_open_positions", "open_positions"),
        ("mambo_kill_switch_halted", "halted"),
    ):
        for labels, value in samples.get(name, []):
            accounts[labels.get("account", "")][field] = value
    return {
        "messages": by("mambo_messages_total", "topic"),
        "dead_letters": [
            {"topic": lb["topic"], "reason": lb["reason"], "count": v}
            for lb, v in samples.get("mambo_dead_letters_total", [])
        ],
        "lag": [
            {"group": lb["group"], "topic": lb["topic"], "partition": lb["partition"], "messages": v}
            for lb, v in samples.get("mambo_consumer_lag_messages", [])
        ],
        "latency": latency,
        "orders": by("mambo_orders_total", "status"),
        "fills": sum(v for _, v in samples.get("mambo_fills_total", [])),
        "rejections": by("mambo_risk_rejections_total", "rule"),
        "accounts": dict(sorted(accounts.items())),
        "feeds": [
            {"exchange": lb["exchange"], "stream": lb["stream"], "age": v}
            for lb, v in samples.get("mambo_feed_age_seconds", [])
        ],
        "ws": {
            "clients": sum(v for _, v in samples.get("mambo_ws_clients", [])),
            "frames": sum(v for _, v in samples.get("mambo_ws_frames_sent_total", [])),
            "dropped": sum(v for _, v in samples.get("mambo_ws_clients_dropped_total", [])),
        },
    }
