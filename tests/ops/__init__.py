"""Tests of what an operator runs: metrics, alert rules, a real Prometheus.

The Prometheus tools come from Debian's ``prometheus`` package, which ``make test`` installs (``make
prometheus``); a test that needs one fails without it, never skips."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def installed(name: str) -> str:
    """The path of ``name`` (``promtool``, ``prometheus``); the test fails when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} missing: `make test` installs it (make prometheus)")
    return path


def promtool_check(exposition: bytes) -> None:
    """``promtool check metrics`` passes on a Prometheus exposition."""
    out = subprocess.run(
        [installed("promtool"), "check", "metrics"], input=exposition, capture_output=True, timeout=30
    )
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
