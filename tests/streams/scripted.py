"""A scripted strategy for execution tests: its decisions are fixed by bar number, so a test (or a
restarted process given the same data) knows which orders the pipeline will ask for."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from mambo.core.strategies import Bar, Decision, Strategy


@dataclass(kw_only=True)
class Scripted(Strategy):
    """Buys on bar ``buy_at`` and sells on bar ``sell_at`` (counted from 1); holds otherwise.
    ``every_bar``: buy on every bar from ``buy_at`` on instead (to see what a flood of buys does)."""

    name: ClassVar[str] = "scripted"
    buy_at: int = 3
    sell_at: int = 8
    every_bar: bool = False
    bars: int = field(init=False, default=0)

    def indicators(self) -> tuple[str, ...]:
        return ()

    def on_bar(self, bar: Bar) -> Decision:
        self.bars += 1
        if self.bars == self.buy_at or (self.every_bar and self.bars > self.buy_at):
            return Decision("buy", 1.0)
        if self.bars == self.sell_at and not self.every_bar:
            return Decision("sell", 1.0)
        return Decision.hold()
