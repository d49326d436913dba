"""Fixtures of the command-line tests: a local exchange served by `mambo exchange` in its own process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def exchange_url() -> Iterator[str]:
    """The URL of `mambo exchange` replaying the bundled recording (4 minutes of it already history)."""
    command = ["exchange", "--port", "0", "--speed", "1", "--history-seconds", "240"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mambo.cli", *command],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    url = ""
    while not url and time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, "mambo exchange ended before serving"
        if line.startswith("local exchange on "):
            url = line.split()[3]
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
