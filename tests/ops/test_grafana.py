"""The Grafana dashboards (deploy/grafana/dashboards): Grafana cannot run here, so their files are
checked as Grafana reads them, and every panel's PromQL runs on a real Prometheus.

* the files are what ``tools/render_dashboards.py`` writes, with unique uids and panel ids, the
  provisioned datasource, and only template variables they define;
* every metric a query names is one Mambo exports (the registry of mambo/metrics.py, with the
  consumer-lag collector's families, and Prometheus' own ``up``): a misspelled one is caught;
* every query runs without error on a real Prometheus scraping ``mambo api --demo``, and the trading
  dashboard's equity and orders panels show data."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from mambo import metrics
from tests.ops import installed
from tests.ops.test_prometheus import api, free_port, get, stop, wait_for  # noqa: F401 (api: a fixture)

ROOT = Path(__file__).parents[2]
BOARDS = ROOT / "deploy" / "grafana" / "dashboards"
DATASOURCE_UID = "prometheus"  # deploy/grafana/provisioning/datasources/prometheus.yml
FUNCTIONS = {"sum", "max", "rate", "increase", "histogram_quantile", "label_values", "by", "le"}


def boards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(BOARDS.glob("*.json"))}


def targets() -> list[tuple[str, str, str]]:
    """(dashboard, panel, expr) of every query."""
    return [
        (b["uid"], p["title"], t["expr"])
        for b in boards().values()
        for p in b["panels"]
        for t in p["targets"]
    ]


def exported() -> set[str]:
    """Every sample name Mambo's processes export: the registry's, and the consumer-lag collector's."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    lag = metrics.ConsumerLag("g", lambda: {("t", 0): (1, 2)})
    families = [*metrics.REGISTRY.collect(), *lag.collect()]  # a labelled family has no sample yet
    names = {f.name + suffix for f in families for suffix in suffixes.get(f.type, ("",))}
    return {n for n in names if n.startswith("mambo_")} | {"up"}


def unknown_metrics(expr: str, known: set[str]) -> list[str]:
    """The metric names of ``expr`` (Mambo's prefix, or ``up``) that no Mambo process exports."""
    named = set(re.findall(r"\b(mambo_[a-z0-9_]+|up)\b(?=\s*[{\[)]|\s*$|\s)", expr))
    return sorted(n for n in named if n not in known)


def test_the_files_are_what_the_generator_writes() -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from render_dashboards import render
    finally:
        sys.path.remove(str(ROOT / "tools"))
    assert {name: (BOARDS / name).read_text() for name in render()} == render()


def test_the_dashboards_are_well_formed() -> None:
    uids = [b["uid"] for b in boards().values()]
    assert len(uids) == len(set(uids)) == 2
    for board in boards().values():
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))
        defined = {v["name"] for v in board["templating"]["list"]}
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == DATASOURCE_UID and panel["targets"]
            assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
            for t in panel["targets"]:
                used = set(re.findall(r"\$(\w+)", t["expr"])) - {"__rate_interval"}
                assert used <= defined, (panel["title"], used - defined)


def test_every_query_names_only_metrics_mambo_exports() -> None:
    known = exported()
    bad = {(b, p): unknown_metrics(e, known) for b, p, e in targets() if unknown_metrics(e, known)}
    assert bad == {}
    # the check itself catches a misspelled metric
    assert unknown_metrics("sum(rate(mambo_fill_total[5m]))", known) == ["mambo_fill_total"]


def prometheus(tmp_path: Path, api_port: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n  - job_name: mambo-api\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{api_port}']}}]\n"
    )
    proc = subprocess.Popen(
        [installed("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=(tmp_path / "prometheus.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    return proc, port


def run_query(port: int, expr: str) -> list[dict[str, Any]]:
    promql = expr.replace("$__rate_interval", "1m").replace("$account", ".*")
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        answer = json.loads(get(url))
    except urllib.error.HTTPError as ex:  # a query error: 400 with Prometheus' reason
        pytest.fail(f"{expr}: {ex.read().decode()}")
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def test_every_panel_s_query_runs_on_a_real_prometheus(api: int, tmp_path: Path) -> None:  # noqa: F811
    assert shutil.which("prometheus")
    proc, port = prometheus(tmp_path, api)
    try:
        wait_for("a scrape with fills", lambda: run_query(port, "sum(mambo_fills_total) > 0"), 30, proc)
        for _board, _panel, expr in targets():
            run_query(port, expr)  # fails the test on a query error
        trading = {p["title"]: p["targets"][0]["expr"] for p in boards()["mambo-trading.json"]["panels"]}
        assert run_query(port, trading["Equity"])
        assert run_query(port, trading["Orders by strategy"])
    finally:
        stop(proc)
