"""Embedded equals Kafka for a futures account (issue 16): the accounts issue's parity test with a
futures account added. A native worker (or a Faust app, over the trades through the last funding time)
on the session broker runs a spot account over the recording's spot markets and a futures account
over its perpetuals, with made-up funding times in line with the perpetuals' trades, and made-up mark
frames of the venue in line the same way (they value the futures positions from then on); its orders,
fills, positions (with their liquidation prices), funding payments, equity and rejections are the
in-process stage groups', id for id."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from mambo.agents.app import FaustPipeline
from mambo.connectors.replay import load_trades
from mambo.schemas.events import FundingRate, MarkPrice
from mambo.schemas.topics import EQUITY, FILLS, FUNDING, ORDERS, POSITIONS, REJECTIONS
from mambo.streams.kafka.producer import KafkaPublisher
from mambo.streams.kafka.worker import Worker

from ..test_futures_account import accounts, funding_rates, stream, venue_marks, with_funding_pipelines
from .conftest import read_topic
from .test_pipeline import of

pytestmark = pytest.mark.kafka


@pytest.mark.parametrize("runtime", ["native", "faust"])
def test_a_futures_account_on_kafka_gives_the_embedded_events(
    bootstrap: str, kafka_prefix: str, runtime: str, tmp_path: Path
) -> None:
    """~15 s each: the recording through one exactly-once native worker, or Faust app."""
    recording, _ = load_trades()
    if runtime == "faust":  # Faust is slower: the trades through the last funding time
        recording = recording.slice(0, 30_000)
    config: Any = accounts(recording.keys, thin=False)
    marks = venue_marks(recording)
    items = stream(recording, [*funding_rates(), *marks])
    ref = with_funding_pipelines(items, None, None, config, finish=False)  # as the worker runs
    assert [e for e in of(ref, POSITIONS.name) if e.account == "perp" and e.liquidation_price is not None]
    assert len(of(ref, FUNDING.name)) >= 4
    # the venue's marks value the perpetuals: the account's equity moved with them
    without = with_funding_pipelines(stream(recording, funding_rates()), None, None, config, finish=False)
    assert of(ref, EQUITY.name) != of(without, EQUITY.name)
    with KafkaPublisher(bootstrap, kafka_prefix) as pub:
        for item in items:
            if isinstance(item, FundingRate):
                pub.publish_funding([item])
            elif isinstance(item, MarkPrice):
                pub.publish_marks([item])
            else:
                pub.publish_trades(item)
    if runtime == "native":
        worker = Worker(bootstrap, config, prefix=kafka_prefix, batch_size=5_000)
        worker.run(idle_exit=3.0)
        assert worker.processed == len(recording)
    else:
        app = FaustPipeline(bootstrap, config, tmp_path, guarantee="exactly_once", prefix=kafka_prefix)
        asyncio.run(app.run(idle_exit=1.0))
        assert app.processed == len(recording) and app.dead == 0
    for topic in (ORDERS.name, FILLS.name, POSITIONS.name, EQUITY.name, REJECTIONS.name, FUNDING.name):
        got = sorted(read_topic(bootstrap, topic, kafka_prefix), key=lambda e: e.event_id)
        assert got == of(ref, topic), topic
    assert {f.account for f in of(ref, FILLS.name)} == {"spot", "perp"}
