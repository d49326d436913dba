"""The ``[notify]`` settings section: channels, which kinds are delivered, rates and the retry policy.

The channel URLs are apprise URLs (``tgram://<bot token>/<chat id>``, ``json://host:port/path``,
``slack://...``, ``discord://...``, ``mailto://...``). They hold tokens, so they are
:class:`~pydantic.SecretStr`: never printed, never logged (:mod:`mambo.notify.delivery` redacts them
from apprise's own log lines too).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from mambo.schemas.events import NotificationKind

__all__ = ["NotifySettings"]


class NotifySettings(BaseModel):
    """Trade notifications (``[notify]``). The builder's thresholds (``rejections_per_minute``,
    ``drawdown_levels``) decide what goes into the outbox; the rest is ``mambo notify``'s delivery."""

    model_config = ConfigDict(extra="forbid")

    #: apprise URLs, one per channel
    channels: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    #: the kinds delivered (the outbox keeps every kind)
    events: Annotated[tuple[NotificationKind, ...], NoDecode] = (
        "entry",
        "exit",
        "order",
        "rejections",
        "kill_switch",
        "drawdown",
        "feed",
    )
    #: one ``rejections`` notification when an account's risk rejections in a minute of event time
    #: reach this many; the next only once the rate has fallen below it again
    rejections_per_minute: int = Field(5, ge=1)
    #: one ``drawdown`` notification each time the drawdown rises through one of these fractions
    drawdown_levels: Annotated[tuple[float, ...], NoDecode] = (0.05, 0.1, 0.2)
    #: at most this many messages a minute to each channel (Telegram allows ~20 a minute per group)
    max_per_minute: int = Field(20, ge=1)
    #: a failed delivery is retried after retry_seconds, doubling up to retry_max_seconds ...
    retry_seconds: float = Field(1.0, gt=0)
    retry_max_seconds: float = Field(60.0, gt=0)
    #: ... and given up (a dead letter) after this many attempts
    max_attempts: int = Field(10, ge=1)
    #: seconds to connect and to read for one request to a channel
    timeout_seconds: float = Field(5.0, gt=0)
    #: notifications read ahead of the oldest undelivered; the reader waits when they are all pending
    max_pending: int = Field(1_000, ge=1)
    #: the Kafka consumer group of ``mambo notify``
    group: str = "mambo-notify"

    @field_validator("channels", "events", "drawdown_levels", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        # the settings' own list parsing, imported here since mambo.settings imports this module
        from mambo.settings import _csv_or_json

        return _csv_or_json(v)

    @field_validator("drawdown_levels")
    @classmethod
    def _levels(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < x < 1 for x in v):
            raise ValueError(f"drawdown_levels are fractions between 0 and 1, got {list(v)}")
        return tuple(sorted(set(v)))

    @field_validator("channels")
    @classmethod
    def _urls(cls, v: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for i, url in enumerate(v):
            if "://" not in url.get_secret_value():
                raise ValueError(f"notify.channels[{i}] is not an apprise URL (scheme://...)")
        return v
