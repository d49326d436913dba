"""Embedded equals Kafka for a futures account (issue 16): the accounts issue's parity test with a
futures account added. A native worker on the session broker runs a spot account over the recording's
spot markets and a futures account over its perpetuals, with made-up funding times in line with the
perpetuals' trades; its orders, fills, positions (with their liquidation prices), funding payments,
equity and rejections are the in-process stage groups', id for id."""

from __future__ import annotations

from typing import Any

import pytest

from mambo.connectors.replay import load_trades
from mambo.schemas.events import FundingRate
from mambo.schemas.topics import EQUITY, FILLS, FUNDING, ORDERS, POSITIONS, REJECTIONS
from mambo.streams.kafka.producer import KafkaPublisher
from mambo.streams.kafka.worker import Worker

from ..test_futures_account import accounts, funding_rates, stream, with_funding_pipelines
from .conftest import read_topic
from .test_pipeline import of

pytestmark = pytest.mark.kafka


def test_a_futures_account_on_kafka_gives_the_embedded_events(bootstrap: str, kafka_prefix: str) -> None:
    """~30 s: the recording through one exactly-once worker."""
    recording, _ = load_trades()
    config: Any = accounts(recording.keys, thin=False)
    items = stream(recording, funding_rates())
    ref = with_funding_pipelines(items, None, None, config, finish=False)  # as the worker runs
    assert [e for e in of(ref, POSITIONS.name) if e.account == "perp" and e.liquidation_price is not None]
    assert len(of(ref, FUNDING.name)) >= 4
    with KafkaPublisher(bootstrap, kafka_prefix) as pub:
        for item in items:
            if isinstance(item, FundingRate):
                pub.publish_funding([item])
            else:
                pub.publish_trades(item)
    worker = Worker(bootstrap, config, prefix=kafka_prefix, batch_size=5_000)
    worker.run(idle_exit=3.0)
    assert worker.processed == len(recording)
    for topic in (ORDERS.name, FILLS.name, POSITIONS.name, EQUITY.name, REJECTIONS.name, FUNDING.name):
        got = sorted(read_topic(bootstrap, topic, kafka_prefix), key=lambda e: e.event_id)
        assert got == of(ref, topic), topic
    assert {f.account for f in of(ref, FILLS.name)} == {"spot", "perp"}
