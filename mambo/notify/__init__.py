"""Trade notifications that never hold up trading.

Two halves, joined by the ``notifications`` topic (the outbox):

* :class:`~mambo.notify.builder.NotificationStage` (start here): a pure stage the runtimes run beside
  the others; from fills, orders, risk rejections, equity and feed health it makes
  :class:`~mambo.schemas.events.Notification` events with deterministic ids.
* ``mambo notify`` (:mod:`mambo.commands.notify`): its own process reads the outbox
  (:mod:`mambo.notify.outbox`: Kafka, a JSON-lines file, or the ClickHouse history) and delivers it
  through apprise (:mod:`mambo.notify.delivery`: Telegram, Discord, Slack, email, webhooks), with
  retries, backoff, deduplication by event id and a dead-letter file. The pipeline only appends to the
  outbox and never waits for a channel.

Settings: ``[notify]`` (:class:`~mambo.notify.config.NotifySettings`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mambo.notify.builder import NotificationStage
from mambo.notify.config import NotifySettings

if TYPE_CHECKING:
    from mambo.settings import MamboSettings

__all__ = ["NotificationStage", "NotifySettings", "notification_stage", "notifications"]


def notification_stage(settings: MamboSettings) -> NotificationStage:
    """The stage for a run's settings: ``[notify]``'s thresholds and each account's kill switch limit."""
    return NotificationStage(
        rejections_per_minute=settings.notify.rejections_per_minute,
        drawdown_levels=settings.notify.drawdown_levels,
        max_drawdown={a.config.account: a.config.risk.max_drawdown for a in settings.account_configs()},
    )


def notifications(settings: MamboSettings) -> Callable[[str], NotificationStage]:
    """The distributed runtimes' form: a stage per account (its state kept with the account's), for
    :class:`~mambo.streams.markets.MarketPipelines`'s ``extra``."""
    whole = notification_stage(settings)

    def of(account: str) -> NotificationStage:
        return NotificationStage(
            whole.rejections_per_minute, whole.drawdown_levels, whole.max_drawdown, frozenset({account})
        )

    return of
