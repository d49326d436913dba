"""Running a set of ``mambo`` processes as one: what ``mambo up`` does on one machine.

:class:`Supervisor` starts each :class:`ChildSpec` as a subprocess with its output in
``<log_dir>/<name>.log``, watches them, and restarts a child that dies with exponential backoff
(1 s doubling to 30 s; a child that ran a minute starts again from 1 s), reporting each death and
restart. A one-shot child (``restart=False``, e.g. a replay) that exits 0 is done; one that fails is
reported and not restarted. :meth:`Supervisor.stop` stops the children in the reverse order of
their start (sources before workers, workers before the sink), each with SIGTERM and a grace period,
then SIGKILL.

Children run in their own sessions, so a Ctrl-C in the terminal reaches only the supervisor, which
then stops them in order; and each asks the kernel to send it SIGTERM if the supervisor itself dies
(``PR_SET_PDEATHSIG``), so no child outlives it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ChildSpec", "Supervisor"]

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class ChildSpec:
    """One process: its name (and log file), command line, extra environment, restart policy."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    restart: bool = True  # False: a one-shot task, done when it exits 0
    grace_seconds: float = 20.0  # after SIGTERM, before SIGKILL


@dataclass
class _Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = 1.0
    restart_at: float | None = None
    done: bool = False
    restarts: int = 0


class Supervisor:
    """Starts, watches, restarts and stops children; ``echo`` receives the status lines."""

    def __init__(
        self,
        log_dir: Path,
        echo: Callable[[str], None],
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        stable_seconds: float = 60.0,
    ) -> None:
        self.log_dir = log_dir
        self.echo = echo
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.stable_seconds = stable_seconds
        self.children: list[_Child] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def log_file(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def start(self, spec: ChildSpec) -> subprocess.Popen[bytes]:
        child = _Child(spec, backoff=self.backoff)
        self.children.append(child)
        self._spawn(child)
        assert child.proc is not None
        return child.proc

    def _spawn(self, child: _Child) -> None:
        spec = child.spec
        with self.log_file(spec.name).open("ab") as out:
            child.proc = subprocess.Popen(
                spec.argv,
                env={**os.environ, **spec.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # a ctypes call only: safe after fork
            )
        child.started = time.monotonic()
        child.restart_at = None
        self.echo(f"{spec.name}: started (pid {child.proc.pid}), log {self.log_file(spec.name)}")

    def pids(self) -> list[int]:
        return [c.proc.pid for c in self.children if c.proc is not None and c.proc.poll() is None]

    def check(self) -> None:
        """Notice exits, and restart the children whose backoff has passed."""
        now = time.monotonic()
        for c in self.children:
            if c.done:
                continue
            if c.restart_at is not None:
                if now >= c.restart_at:
                    c.restarts += 1
                    self._spawn(c)
                continue
            assert c.proc is not None
            rc = c.proc.poll()
            if rc is None:
                continue
            name = c.spec.name
            if not c.spec.restart:
                c.done = True
                self.echo(
                    f"{name}: done" if rc == 0 else f"{name}: FAILED (exit {rc}), see {self.log_file(name)}"
                )
                continue
            if now - c.started >= self.stable_seconds:
                c.backoff = self.backoff
            self.echo(f"{name}: DIED (exit {rc}), restarting in {c.backoff:g} s; see {self.log_file(name)}")
            c.restart_at = now + c.backoff
            c.backoff = min(c.backoff * 2, self.max_backoff)

    def run(self, stop: threading.Event, interval: float = 0.5) -> None:
        """Watch until ``stop`` is set."""
        while not stop.wait(interval):
            self.check()

    def stop(self) -> None:
        """Stop every child, the last started first: SIGTERM, the grace period, then SIGKILL."""
        for c in reversed(self.children):
            proc = c.proc
            c.done = True
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(timeout=c.spec.grace_seconds)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
                self.echo(f"{c.spec.name}: did not stop within {c.spec.grace_seconds:g} s, killed")
                continue
            self.echo(f"{c.spec.name}: stopped" + ("" if rc in (0, -signal.SIGTERM) else f" (exit {rc})"))
