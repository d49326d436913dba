"""The sink holds while ClickHouse is away: nothing is committed until the insert lands, then every
row is there once. Cost: ~5 s."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from confluent_kafka import KafkaError, KafkaException

from mambo.connectors.clickhouse import ClickHouseSink
from mambo.connectors.replay import load_trades
from mambo.schemas.topics import TRADES
from mambo.streams.kafka.producer import KafkaPublisher
from mambo.streams.kafka.sink import KafkaSink

from .test_crash import committed

pytestmark = pytest.mark.kafka


class Away:
    """A ClickHouse client whose inserts fail while ``away`` is set (the server is down)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.away = True
        self.refused = 0

    def insert_arrow(self, *args: Any, **kwargs: Any) -> Any:
        if self.away:
            self.refused += 1
            raise ConnectionError("Connection refused (ClickHouse is away)")
        return self.client.insert_arrow(*args, **kwargs)


def test_sink_holds_while_clickhouse_is_away_then_writes_everything_once(
    bootstrap: str, kafka_prefix: str, clickhouse_client: Client, clickhouse_db: str
) -> None:
    batch, _ = load_trades()
    piece = batch.slice(0, 5_000)
    with KafkaPublisher(bootstrap, kafka_prefix) as pub:
        pub.publish_trades(piece)
    client = Away(clickhouse_client)
    sink = KafkaSink(
        bootstrap,
        ClickHouseSink(client, clickhouse_db),  # type: ignore[arg-type]
        topics=[TRADES.name],
        prefix=kafka_prefix,
        max_backoff=0.2,
    )
    stop = threading.Event()
    runner = threading.Thread(target=sink.run, kwargs={"stop": stop, "idle_exit": 2.0})
    runner.start()
    deadline = time.monotonic() + 60
    while client.refused < 5:  # several retries, with backoff
        assert time.monotonic() < deadline
        time.sleep(0.05)
    group = kafka_prefix + "mambo-sink"
    assert committed(bootstrap, group, kafka_prefix + TRADES.name) == 0  # nothing committed meanwhile
    client.away = False
    runner.join(timeout=60)
    assert not runner.is_alive()
    assert sink.retries >= 5
    assert committed(bootstrap, group, kafka_prefix + TRADES.name) == len(piece)
    n = clickhouse_client.command(f"SELECT count() FROM `{clickhouse_db}`.trades")
    assert n == len(piece)  # not even a duplicate before merging: the failed inserts never landed


class MovingCoordinator:
    """A consumer whose commits fail as they do while the group's coordinator moves to another broker
    (its broker was killed), ``failures`` times, then land."""

    def __init__(self, failures: int, code: int = KafkaError.NOT_COORDINATOR) -> None:
        self.failures, self.code, self.commits = failures, code, 0

    def commit(self, asynchronous: bool = True) -> None:
        if self.failures:
            self.failures -= 1
            raise KafkaException(KafkaError(self.code, "Commit failed: Broker: Not coordinator"))
        self.commits += 1


def test_sink_retries_its_commit_while_the_group_coordinator_moves(clickhouse_client: Client) -> None:
    sink = KafkaSink("127.0.0.1:1", ClickHouseSink(clickhouse_client, "default"), max_backoff=0.05)
    sink.consumer = MovingCoordinator(3)  # type: ignore[assignment]
    sink._commit()
    assert sink.consumer.commits == 1 and sink.retries == 3  # type: ignore[attr-defined]

    # the group rebalanced while its coordinator moved: the partitions are no longer this consumer's,
    # so the commit is given up (it died on _ASSIGNMENT_LOST in a broker-kill run); whoever owns them
    # next reads the written rows again, and the tables keep one per event
    for code in (KafkaError._ASSIGNMENT_LOST, KafkaError.ILLEGAL_GENERATION):
        sink.consumer = MovingCoordinator(1, code)  # type: ignore[assignment]
        sink._commit()
        assert sink.consumer.commits == 0  # type: ignore[attr-defined]
    assert sink.lost_commits == 2

    sink.consumer = MovingCoordinator(1, KafkaError.INVALID_PARTITIONS)  # type: ignore[assignment]
    with pytest.raises(KafkaException):  # anything else is a fault: stop loudly
        sink._commit()
    sink.dlq.close(0)
