"""The supervisor behind ``mambo up``, with plain Python children: a failing one-shot task is reported
and left, a dying service is restarted with doubling backoff, stop ends every child, the last started
first, and a child that ignores SIGTERM is killed after its grace period. Cost: ~5 s."""

from __future__ import annotations

import os
import re
import sys
import threading
from pathlib import Path

import pytest

from mambo.streams.kafka.supervisor import ChildSpec, Supervisor


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_restarts_reports_and_stops_in_reverse_order(tmp_path: Path) -> None:
    lines: list[str] = []
    logs = tmp_path / "logs"
    sup = Supervisor(logs, lines.append, backoff=0.1, max_backoff=0.4)
    sup.start(ChildSpec("task", py("print('working'); raise SystemExit(3)"), restart=False))
    sup.start(ChildSpec("flaky", py("raise SystemExit(1)")))
    sup.start(ChildSpec("service", py("import time; time.sleep(60)")))
    ignores_term = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    sup.start(ChildSpec("stubborn", py(ignores_term), grace_seconds=0.5))
    stop = threading.Event()
    threading.Timer(4.0, stop.set).start()
    sup.run(stop, interval=0.02)
    pids = sup.pids()
    sup.stop()

    assert f"task: FAILED (exit 3), see {logs / 'task.log'}" in lines
    assert (logs / "task.log").read_text() == "working\n"
    assert sum(line.startswith("task: started") for line in lines) == 1  # a one-shot is not restarted
    delays = [
        re.search(r"restarting in ([\d.]+) s", x)[1] for x in lines if x.startswith("flaky: DIED (exit 1)")
    ]  # type: ignore[index]
    assert delays[:4] == ["0.1", "0.2", "0.4", "0.4"], lines
    started = sum(line.startswith("flaky: started") for line in lines)
    assert started in (len(delays), len(delays) + 1)  # the last restart may still have been pending
    stops = [x for x in lines if x.split(": ")[1].startswith(("stopped", "did not stop"))]
    assert stops[:2] == ["stubborn: did not stop within 0.5 s, killed", "service: stopped"], lines
    assert len(pids) >= 2 and sup.pids() == []
    for pid in pids:  # every child that ran at the stop is gone (and reaped)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
