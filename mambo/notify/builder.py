"""The notification builder: a pure stage from the pipeline's events to the ``notifications`` outbox.

:class:`NotificationStage` reads fills, orders, risk rejections, equity snapshots and feed health, and
publishes :class:`~mambo.schemas.events.Notification` events on ``notifications``. It does no I/O (the
delivery is :mod:`mambo.notify.delivery`'s, in its own process), so a channel that is down can never
hold the pipeline up. Each notification's id derives from the event that caused it, and its state
moves in event time only, so a replay makes the same notifications, id for id.

What it makes, by kind:

* ``entry`` / ``exit``: a fill; an exit (a reduce-only order's fill) with its realized PnL.
* ``order``: an order the venue rejected, canceled or expired (new and filled orders are news through
  their fills).
* ``rejections``: an account's risk rejections reached ``rejections_per_minute`` in a minute of event
  time; one notification, then none until the rate has fallen below the threshold again.
* ``kill_switch``: the drawdown kill switch halted entries (the equity's drawdown reached the account's
  ``max_drawdown``, or risk refused an entry by it), and entries resumed (an entry order passed risk
  again after the operator's resume: the risk engine publishes no event of its own for either).
* ``drawdown``: the drawdown rose through one of ``drawdown_levels`` (re-armed below the level).
* ``feed``: a market data stream stalled, disconnected, reconnected or was gap-filled.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from mambo.core.stages import Out, Stage
from mambo.schemas.events import (
    EquitySnapshot,
    FeedHealth,
    Fill,
    Notification,
    NotificationKind,
    NotificationLevel,
    Order,
    RiskRejection,
    make_id,
)
from mambo.schemas.topics import EQUITY, FEED_HEALTH, FILLS, NOTIFICATIONS, ORDERS, REJECTIONS

__all__ = ["NotificationStage"]

_MINUTE_NS = 60_000_000_000
_NEWS_STATUSES = frozenset({"rejected", "canceled", "expired"})
_FEED_LEVELS: dict[str, NotificationLevel] = {
    "stalled": "warning",
    "disconnected": "failure",
    "reconnected": "success",
    "gap_filled": "info",
}


def _num(value: Decimal | float) -> str:
    """A number for a human: no exponent, no trailing zeros."""
    if isinstance(value, Decimal):
        return f"{value.normalize():f}"
    return f"{value:g}"


@dataclass
class _AccountState:
    """What the builder remembers of one account (small, picklable, moved in event time only)."""

    reduce_only: dict[str, bool] = field(default_factory=dict)  # open orders by client order id
    rejections: deque[tuple[int, str]] = field(default_factory=deque)  # (ts_event, rule) last minute
    rejections_armed: bool = True
    halted: bool = False
    drawdown_level: int = 0  # how many of the levels the drawdown is at or above


class NotificationStage(Stage):
    """fills, orders, risk.rejections, equity, feeds.health → notifications (see the module docstring).

    ``max_drawdown``: each account's kill switch limit (its ``RiskConfig.max_drawdown``; an account
    not named, or None, has none). ``accounts``: the accounts to report on (None: every account)."""

    name = "notifications"

    def __init__(
        self,
        rejections_per_minute: int = 5,
        drawdown_levels: tuple[float, ...] = (0.05, 0.1, 0.2),
        max_drawdown: Mapping[str, float | None] | None = None,
        accounts: frozenset[str] | None = None,
    ) -> None:
        if rejections_per_minute < 1:
            raise ValueError(f"rejections_per_minute must be >= 1, got {rejections_per_minute}")
        if any(not 0 < x < 1 for x in drawdown_levels):
            raise ValueError(f"drawdown levels are fractions between 0 and 1, got {list(drawdown_levels)}")
        self.rejections_per_minute = rejections_per_minute
        self.drawdown_levels = tuple(sorted(set(drawdown_levels)))
        self.max_drawdown = dict(max_drawdown or {})
        self.accounts = accounts
        self.inputs = (FILLS.name, ORDERS.name, REJECTIONS.name, EQUITY.name, FEED_HEALTH.name)
        self.state: dict[str, _AccountState] = {}

    def _account(self, account: str) -> _AccountState:
        st = self.state.get(account)
        if st is None:
            st = self.state[account] = _AccountState()
        return st

    def handle(self, topic: str, payload: Any) -> Out:
        if topic == FEED_HEALTH.name:
            return self._feed(payload)
        if self.accounts is not None and payload.account not in self.accounts:
            return []
        if topic == FILLS.name:
            return self._fill(payload)
        if topic == ORDERS.name:
            return self._order(payload)
        if topic == REJECTIONS.name:
            return self._rejection(payload)
        if topic == EQUITY.name:
            return self._equity(payload)
        return []

    # --- by input ---------------------------------------------------------------------------------

    def _fill(self, f: Fill) -> Out:
        exit_ = self._account(f.account).reduce_only.get(f.client_order_id, False)
        notional = f.price * f.qty
        body = (
            f"{f.side} {_num(f.qty)} {f.symbol} at {_num(f.price)} on {f.exchange}"
            f" (notional {_num(notional)}, fee {_num(f.fee)} {f.fee_currency}); strategy {f.strategy}"
        )
        if exit_:
            body += f"; realized PnL {_num(f.realized_pnl)}"
        kind: NotificationKind = "exit" if exit_ else "entry"
        level: NotificationLevel = "info"
        if exit_:
            level = "success" if f.realized_pnl >= 0 else "warning"
        title = f"[{f.account}] {kind} {f.side} {f.symbol}"
        return [self._make(kind, level, f.account, f.key, title, body, FILLS.name, f.event_id, f)]

    def _order(self, o: Order) -> Out:
        st = self._account(o.account)
        out: Out = []
        if o.status == "new":
            st.reduce_only[o.client_order_id] = o.reduce_only
            if st.halted and not o.reduce_only:  # an entry passed risk: the kill switch was released
                st.halted = False
                out.append(
                    self._make(
                        "kill_switch",
                        "success",
                        o.account,
                        "",
                        f"[{o.account}] entries resumed",
                        f"risk let an entry through again ({o.side} {o.symbol}, strategy {o.strategy})",
                        ORDERS.name,
                        o.event_id,
                        o,
                        "resumed",
                    )
                )
        elif o.status in ("filled", *_NEWS_STATUSES):
            # fills of the order come before its final state: what it was is no longer needed
            st.reduce_only.pop(o.client_order_id, None)
        if o.status in _NEWS_STATUSES:
            reason = f": {o.reason}" if o.reason else ""
            out.append(
                self._make(
                    "order",
                    "warning",
                    o.account,
                    o.key,
                    f"[{o.account}] order {o.status} {o.side} {o.symbol}",
                    f"{o.order_type} {o.side} {_num(o.qty)} {o.symbol} on {o.exchange} {o.status}"
                    f" (filled {_num(o.filled_qty)}){reason}; strategy {o.strategy}",
                    ORDERS.name,
                    o.event_id,
                    o,
                    o.status,
                )
            )
        return out

    def _rejection(self, r: RiskRejection) -> Out:
        st = self._account(r.account)
        out: Out = []
        if r.rule == "max_drawdown" and not st.halted:
            st.halted = True
            out.append(self._halted(r.account, r.reason, REJECTIONS.name, r.event_id, r))
        st.rejections.append((r.ts_event, r.rule))
        while st.rejections and st.rejections[0][0] <= r.ts_event - _MINUTE_NS:
            st.rejections.popleft()
        n = len(st.rejections)
        if n < self.rejections_per_minute:
            st.rejections_armed = True
        elif st.rejections_armed:
            st.rejections_armed = False
            rules = ", ".join(
                f"{rule} {k}" for rule, k in sorted(Counter(x for _, x in st.rejections).items())
            )
            out.append(
                self._make(
                    "rejections",
                    "warning",
                    r.account,
                    "",
                    f"[{r.account}] {n} risk rejections in a minute",
                    f"{n} intents refused by risk in the last minute ({rules}); latest: {r.side}"
                    f" {r.symbol}, {r.rule}: {r.reason}",
                    REJECTIONS.name,
                    r.event_id,
                    r,
                )
            )
        return out

    def _equity(self, e: EquitySnapshot) -> Out:
        st = self._account(e.account)
        out: Out = []
        dd = e.drawdown
        level = sum(1 for x in self.drawdown_levels if dd >= x)
        if level > st.drawdown_level:
            crossed = self.drawdown_levels[level - 1]
            out.append(
                self._make(
                    "drawdown",
                    "warning",
                    e.account,
                    "",
                    f"[{e.account}] drawdown {dd:.1%}",
                    f"drawdown {dd:.2%} passed {crossed:.0%}: equity {_num(e.equity)}, cash {_num(e.cash)},"
                    f" realized PnL {_num(e.realized_pnl)}, unrealized {_num(e.unrealized_pnl)}",
                    EQUITY.name,
                    e.event_id,
                    e,
                    f"level{level}",
                )
            )
        st.drawdown_level = level
        limit = self.max_drawdown.get(e.account)
        if limit is not None and dd >= limit and not st.halted:
            st.halted = True
            reason = f"drawdown {dd:.2%} reached the limit {limit:.2%}"
            out.append(self._halted(e.account, reason, EQUITY.name, e.event_id, e))
        return out

    def _feed(self, h: FeedHealth) -> Out:
        level = _FEED_LEVELS.get(h.status)
        if level is None:  # alive, connected: the periodic report and the first connection
            return []
        detail = f": {h.detail}" if h.detail else ""
        return [
            self._make(
                "feed",
                level,
                "",
                h.exchange,
                f"feed {h.exchange} {h.stream} {h.status}",
                f"{h.exchange} {h.stream} {h.status} after {h.age_seconds:.1f}s silent{detail}",
                FEED_HEALTH.name,
                h.event_id,
                h,
            )
        ]

    # --- making -----------------------------------------------------------------------------------

    def _halted(self, account: str, reason: str, topic: str, source_id: str, source: Any) -> tuple[str, Any]:
        return self._make(
            "kill_switch",
            "failure",
            account,
            "",
            f"[{account}] kill switch: entries halted",
            f"{reason}; new entries are refused until the operator resumes, exits still pass",
            topic,
            source_id,
            source,
            "halted",
        )

    @staticmethod
    def _make(
        kind: NotificationKind,
        level: NotificationLevel,
        account: str,
        market: str,
        title: str,
        body: str,
        topic: str,
        source_id: str,
        source: Any,
        variant: str = "",
    ) -> tuple[str, Notification]:
        n = Notification(
            event_id=make_id("notify", kind, variant, topic, source_id),
            ts_event=source.ts_event,
            ts_init=source.ts_init,
            account=account,
            kind=kind,
            level=level,
            market=market,
            title=title,
            body=body,
            source_topic=topic,
            source_id=source_id,
        )
        return NOTIFICATIONS.name, n
