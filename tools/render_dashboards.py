# ruff: noqa: E501  (PromQL reads better on one line)
"""Write Mambo's Grafana dashboards (deploy/grafana/dashboards/*.json) from the panels listed here.

Two dashboards over the metrics of mambo/metrics.py: ``mambo-pipeline`` (lag, latency heat maps,
throughput, dead letters, feeds, the sink, the API, Kafka transactions) and ``mambo-trading`` (equity,
drawdown, exposure, positions, the kill switch, orders, fills, rejections, signals). Every panel's
PromQL is run against a real Prometheus by tests/ops/test_grafana.py, which also checks the files
are what this script writes. Run: ``.venv/bin/python tools/render_dashboards.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).parents[1] / "deploy" / "grafana" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}  # deploy/grafana/provisioning/datasources

# (title, kind, unit, [(legend, expr)])
Panel = tuple[str, str, str, list[tuple[str, str]]]

PIPELINE: list[Panel] = [
    ("Processes up", "stat", "none", [("{{job}}", 'sum by (job) (up{job=~"mambo-.*"})')]),
    (
        "Consumer lag (messages)",
        "timeseries",
        "none",
        [("{{group}} {{topic}}", "max by (group, topic) (mambo_consumer_lag_messages)")],
    ),
    (
        "Consumer lag (seconds)",
        "timeseries",
        "s",
        [("{{group}} {{topic}}", "max by (group, topic) (mambo_consumer_lag_seconds)")],
    ),
    (
        "Trade to order latency (heat map)",
        "heatmap",
        "s",
        [
            (
                "{{le}}",
                'sum by (le) (rate(mambo_processing_latency_seconds_bucket{stage="order"}[$__rate_interval]))',
            )
        ],
    ),
    (
        "Processing latency p99 by stage",
        "timeseries",
        "s",
        [
            (
                "{{stage}}",
                "histogram_quantile(0.99, sum by (le, stage) "
                "(rate(mambo_processing_latency_seconds_bucket[$__rate_interval])))",
            )
        ],
    ),
    (
        "Candle to signal, signal to order p99",
        "timeseries",
        "s",
        [
            (
                "{{path}}",
                "histogram_quantile(0.99, sum by (le, path) (rate(mambo_latency_seconds_bucket[$__rate_interval])))",
            )
        ],
    ),
    (
        "Order to fill p50 (exchange time)",
        "timeseries",
        "s",
        [
            (
                "{{account}}",
                "histogram_quantile(0.5, sum by (le, account) "
                "(rate(mambo_order_to_fill_seconds_bucket[$__rate_interval])))",
            )
        ],
    ),
    (
        "Messages per second by topic",
        "timeseries",
        "ops",
        [("{{topic}}", "sum by (topic) (rate(mambo_messages_total[$__rate_interval]))")],
    ),
    (
        "Dead letters per second",
        "timeseries",
        "ops",
        [
            (
                "{{topic}}: {{reason}}",
                "sum by (topic, reason) (rate(mambo_dead_letters_total[$__rate_interval]))",
            )
        ],
    ),
    (
        "Stage time per batch p99",
        "timeseries",
        "s",
        [
            (
                "{{stage}}",
                "histogram_quantile(0.99, sum by (le, stage) (rate(mambo_stage_seconds_bucket[$__rate_interval])))",
            )
        ],
    ),
    (
        "Trades per batch p50",
        "timeseries",
        "none",
        [
            (
                "{{topic}}",
                "histogram_quantile(0.5, sum by (le, topic) (rate(mambo_batch_trades_bucket[$__rate_interval])))",
            )
        ],
    ),
    (
        "Feed age",
        "timeseries",
        "s",
        [("{{exchange}} {{stream}}", "max by (exchange, stream) (mambo_feed_age_seconds)")],
    ),
    (
        "Feed events",
        "timeseries",
        "ops",
        [
            (
                "{{exchange}} {{status}}",
                "sum by (exchange, status) (rate(mambo_feed_events_total[$__rate_interval]))",
            )
        ],
    ),
    (
        "Sink rows per second",
        "timeseries",
        "ops",
        [("{{table}}", "sum by (table) (rate(mambo_sink_rows_total[$__rate_interval]))")],
    ),
    (
        "Sink insert time p99, failures",
        "timeseries",
        "s",
        [
            (
                "p99 {{table}}",
                "histogram_quantile(0.99, sum by (le, table) (rate(mambo_sink_insert_seconds_bucket[$__rate_interval])))",
            ),
            (
                "failures {{table}}",
                "sum by (table) (increase(mambo_sink_insert_failures_total[$__rate_interval]))",
            ),
        ],
    ),
    (
        "Kafka transactions",
        "timeseries",
        "ops",
        [
            (
                "{{runtime}} {{outcome}}",
                "sum by (runtime, outcome) (rate(mambo_kafka_transactions_total[$__rate_interval]))",
            ),
            (
                "rebalances {{runtime}}",
                "sum by (runtime) (increase(mambo_kafka_rebalances_total[$__rate_interval]))",
            ),
        ],
    ),
    (
        "Transaction commit p99",
        "timeseries",
        "s",
        [
            (
                "{{runtime}}",
                "histogram_quantile(0.99, sum by (le, runtime) "
                "(rate(mambo_kafka_transaction_commit_seconds_bucket[$__rate_interval])))",
            )
        ],
    ),
    (
        "API requests per second",
        "timeseries",
        "reqps",
        [
            (
                "{{route}} {{status}}",
                "sum by (route, status) (rate(mambo_http_requests_total[$__rate_interval]))",
            )
        ],
    ),
    (
        "WebSocket clients, frames, drops",
        "timeseries",
        "none",
        [
            ("clients", "sum(mambo_ws_clients)"),
            ("frames/s", "sum(rate(mambo_ws_frames_sent_total[$__rate_interval]))"),
            ("dropped", "sum(increase(mambo_ws_clients_dropped_total[$__rate_interval]))"),
        ],
    ),
]

TRADING: list[Panel] = [
    (
        "Equity",
        "timeseries",
        "currencyUSD",
        [("{{account}}", 'max by (account) (mambo_equity{account=~"$account"})')],
    ),
    (
        "Drawdown",
        "timeseries",
        "percentunit",
        [("{{account}}", 'max by (account) (mambo_drawdown_ratio{account=~"$account"})')],
    ),
    (
        "Exposure",
        "timeseries",
        "currencyUSD",
        [("{{account}}", 'max by (account) (mambo_exposure{account=~"$account"})')],
    ),
    (
        "Open positions",
        "stat",
        "none",
        [("{{account}}", 'max by (account) (mambo_open_positions{account=~"$account"})')],
    ),
    (
        "Kill switch",
        "stat",
        "none",
        [("{{account}}", 'max by (account) (mambo_kill_switch_halted{account=~"$account"})')],
    ),
    (
        "Orders by status",
        "timeseries",
        "none",
        [
            (
                "{{status}}",
                'sum by (status) (increase(mambo_orders_total{account=~"$account"}[$__rate_interval]))',
            )
        ],
    ),
    (
        "Orders by strategy",
        "bargauge",
        "none",
        [("{{strategy}}", 'sum by (strategy) (mambo_orders_total{account=~"$account", status="new"})')],
    ),
    (
        "Fills per interval",
        "timeseries",
        "none",
        [("fills", "sum(increase(mambo_fills_total[$__rate_interval]))")],
    ),
    (
        "Risk rejections by rule",
        "timeseries",
        "none",
        [
            (
                "{{rule}}",
                'sum by (rule) (increase(mambo_risk_rejections_total{account=~"$account"}[$__rate_interval]))',
            )
        ],
    ),
    (
        "Signals by strategy and side",
        "timeseries",
        "none",
        [
            (
                "{{strategy}} {{side}}",
                "sum by (strategy, side) (increase(mambo_signals_total[$__rate_interval]))",
            )
        ],
    ),
]


def dashboard(uid: str, title: str, panels: list[Panel], account_variable: bool) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for n, (name, kind, unit, targets) in enumerate(panels):
        width = 12 if kind in ("timeseries", "heatmap") else 6
        out.append(
            {
                "id": n + 1,
                "title": name,
                "type": kind,
                "datasource": DATASOURCE,
                "gridPos": {"h": 8, "w": width, "x": (n % 2) * 12, "y": (n // 2) * 8},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"calculate": False} if kind == "heatmap" else {},
                "targets": [
                    {
                        "refId": chr(ord("A") + i),
                        "datasource": DATASOURCE,
                        "expr": expr,
                        "legendFormat": legend,
                        **({"format": "heatmap"} if kind == "heatmap" else {}),
                    }
                    for i, (legend, expr) in enumerate(targets)
                ],
            }
        )
    variables = []
    if account_variable:
        variables.append(
            {
                "name": "account",
                "label": "Account",
                "type": "query",
                "datasource": DATASOURCE,
                "query": {"query": "label_values(mambo_equity, account)", "refId": "accounts"},
                "definition": "label_values(mambo_equity, account)",
                "includeAll": True,
                "allValue": ".*",
                "multi": True,
                "refresh": 2,
                "current": {"text": "All", "value": "$__all"},
            }
        )
    return {
        "uid": uid,
        "title": title,
        "tags": ["mambo"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": variables},
        "panels": out,
    }


def render() -> dict[str, str]:
    """File name -> its JSON text."""
    boards = {
        "mambo-pipeline.json": dashboard("mambo-pipeline", "Mambo pipeline", PIPELINE, False),
        "mambo-trading.json": dashboard("mambo-trading", "Mambo trading", TRADING, True),
    }
    return {name: json.dumps(board, indent=2) + "\n" for name, board in boards.items()}


if __name__ == "__main__":
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(f"rendered {OUT / name}")
