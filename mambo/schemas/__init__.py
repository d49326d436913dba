"""Schemas: the pydantic model of every event, the topic registry, and the ClickHouse DDL derived
from both. Start with :mod:`mambo.schemas.events`, then :mod:`mambo.schemas.topics`."""

from mambo.schemas.events import *  # noqa: F403
from mambo.schemas.events import __all__ as _events_all
from mambo.schemas.topics import ALL_TOPICS, TABLES, Topic, by_name, candle_topic, dlq_topic

__all__ = [*_events_all, "ALL_TOPICS", "TABLES", "Topic", "by_name", "candle_topic", "dlq_topic"]
