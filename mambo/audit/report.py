"""What an audit found: one :class:`Finding` per invariant, gathered in an :class:`AuditReport`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from rich.table import Table

__all__ = ["AuditReport", "Finding", "amount", "when"]


@dataclass(frozen=True)
class Finding:
    """One invariant over one history: how many rows it checked, how many broke it, and one example."""

    invariant: str
    checked: int
    violations: int
    example: str = ""

    @property
    def ok(self) -> bool:
        return self.violations == 0


@dataclass(frozen=True)
class AuditReport:
    """Every invariant's finding, and how long the audit took."""

    database: str
    findings: tuple[Finding, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    @property
    def violations(self) -> int:
        return sum(f.violations for f in self.findings)

    def summary(self) -> str:
        """One line: every invariant holds, or which broke and how often."""
        rows = sum(f.checked for f in self.findings)
        broken = [f for f in self.findings if not f.ok]
        over = f"{len(self.findings)} invariants over {rows:,} rows"
        if not broken:
            return f"audit of {self.database}: {over} hold ({self.seconds:.1f} s)"
        names = ", ".join(f"{f.invariant} ({f.violations:,})" for f in broken)
        return f"audit of {self.database}: {len(broken)} of {over} broken: {names} ({self.seconds:.1f} s)"

    def table(self) -> Table:
        """The findings as a rich table: invariant, rows checked, violations, an example of one."""
        t = Table(title=f"mambo audit: {self.database}")
        t.add_column("invariant")
        t.add_column("checked", justify="right")
        t.add_column("violations", justify="right")
        t.add_column("example")
        for f in self.findings:
            style = "" if f.ok else "red"
            t.add_row(f.invariant, f"{f.checked:,}", f"{f.violations:,}", f.example, style=style)
        return t


def when(ns: int) -> str:
    """A UTC time in nanoseconds as ``2024-08-08 23:54:40.024`` (to the millisecond)."""
    seconds, rest = divmod(int(ns), 1_000_000_000)
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%d %H:%M:%S}.{rest // 1_000_000:03d}"


def amount(value: Decimal) -> str:
    """A Decimal without the trailing zeros of its column's scale (``0.161660000000000000``: ``0.16166``)."""
    return f"{value.normalize():f}" if value else "0"
