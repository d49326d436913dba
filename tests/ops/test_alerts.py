"""The alert rules: ``promtool check rules`` and ``promtool test rules`` (tests/ops/alerts_test.yml),
every alert covered firing and not firing, and a broken rule caught by the same tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.ops import installed

ROOT = Path(__file__).parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
TESTS = Path(__file__).parent / "alerts_test.yml"


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([installed("promtool"), *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def alerts() -> list[str]:
    return [r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_rules_and_config_check() -> None:
    out = promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(alerts())} rules found" in out.stdout
    out = promtool("check", "config", str(RULES.parent / "prometheus.yml"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_rule_unit_tests_pass() -> None:
    out = promtool("test", "rules", TESTS.name, cwd=TESTS.parent)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    assert {
        "MamboWorkerDown",
        "MamboConsumerLagHigh",
        "MamboFeedStale",
        "MamboDeadLetters",
        "MamboKillSwitchHalted",
        "MamboSinkBehind",
        "MamboNoHeartbeat",
    } <= set(alerts())
    cases = [c for t in yaml.safe_load(TESTS.read_text())["tests"] for c in t["alert_rule_test"]]
    for name in alerts():
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in mine), f"{name} never tested firing"
        if name != "MamboWatchdog":  # always fires, by design
            assert any(not c["exp_alerts"] for c in mine), f"{name} never tested not firing"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("mambo_kill_switch_halted == 1", "mambo_kill_switch_halted == 2"),
        ('(mambo_consumer_lag_seconds{group=~".*sink"}) > 300', "(mambo_consumer_lag_seconds) > 300"),
        ("> 0.1", "> 0.01"),
        ("for: 1m", "for: 10s"),
    ],
)
def test_a_broken_rule_fails_the_tests(tmp_path: Path, old: str, new: str) -> None:
    """The rule tests can fail: the same tests over a rule file with one change."""
    text = RULES.read_text()
    assert old in text
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "alerts.yml").write_text(text.replace(old, new, 1))
    (tmp_path / "tests").mkdir()
    tests = TESTS.read_text().replace("../../deploy/prometheus/alerts.yml", "../rules/alerts.yml")
    (tmp_path / "tests" / TESTS.name).write_text(tests)
    out = promtool("test", "rules", TESTS.name, cwd=tmp_path / "tests")
    assert out.returncode != 0, out.stdout
