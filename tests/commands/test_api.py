"""``mambo api --demo`` as a user runs it: a subprocess with its own data folder serves the API while
the pipeline replays one market (about 15 s)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2

from tests.api.conftest import free_port


def test_api_demo_serves_the_pipeline(tmp_path: Path) -> None:
    port = free_port()
    mambo = Path(sys.executable).with_name("mambo")
    proc = subprocess.Popen(
        [
            str(mambo),
            "api",
            "--demo",
            "--speed",
            "0",
            "--symbols",
            "binance:BTC/USDT",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "140"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        body = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = httpx2.get(f"{base}/health", timeout=2).json()
                if health["feed"].get("signals", {}).get("messages", 0) > 250:  # sma200 warmed up
                    body = httpx2.get(f"{base}/signal", timeout=5).json()
                    break
            except httpx2.TransportError:
                pass
            time.sleep(0.3)
        assert body is not None, proc.stderr.read() if proc.poll() is not None else "no signal in time"
        assert set(body) >= {"symbol", "sma50", "sma200", "signal", "timestamp"}
        assert body["symbol"] == "BTC/USDT" and body["signal"] in ("BUY", "SELL", "HOLD")
        assert body["sma50"] > 0 and body["sma200"] > 0 and body["timestamp"].startswith("2024-08-0")
        assert httpx2.get(f"{base}/", timeout=5).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert "OPEN" in err  # open access says so loudly
    assert f"API at {base}" in out
