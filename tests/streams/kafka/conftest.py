"""One real Kafka broker per test session (the package's launcher, a free port, its own folder), and
helpers to read topics back. Tests isolate themselves by a unique topic prefix (``kafka_prefix``)."""

from __future__ import annotations

import csv
import gc
import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from mambo.schemas.events import Event
from mambo.schemas.topics import TABLES, TRADES, by_name
from mambo.streams.kafka import topology
from mambo.streams.kafka.broker import KafkaBroker, free_port
from mambo.streams.kafka.codec import decode, is_watermark

#: The bundled recording's markets: the tests' one account, main, trades all four, its limits binding
#: across them (two open positions at most, half the equity exposed, a fifth of it per entry), so a
#: per-market account could not give its orders.
MARKETS = ("binance:BTC/USDT", "binance:ETH/USDT", "binanceusdm:BTC/USDT:USDT", "binanceusdm:ETH/USDT:USDT")
ENGINE = {
    "timeframes": "1s,1m",
    "trading_timeframe": "1s",
    "strategies": "sma_cross,rsi_reversion,macd_cross,bollinger_breakout",
    "risk": {"position_fraction": "0.2", "max_open_positions": 2, "max_total_exposure": "0.5"},
}
#: A grid on BTC/USDT over the recording's range, beside the strategies (issue 17): the Kafka tests check
#: its orders and fills like the rest, the crash test that its levels survive a SIGKILL.
GRID = {"market": "binance:BTC/USDT", "low": "61540", "high": "61900", "levels": 10, "qty": "0.01"}
ACCOUNT = {"markets": MARKETS, "grids": [GRID]}
ENGINE_ENV = {
    "MAMBO_ENGINE__TIMEFRAMES": '["1s", "1m"]',
    "MAMBO_ENGINE__TRADING_TIMEFRAME": "1s",
    "MAMBO_ENGINE__STRATEGIES": '["sma_cross", "rsi_reversion", "macd_cross", "bollinger_breakout"]',
    "MAMBO_ENGINE__RISK__POSITION_FRACTION": "0.2",
    "MAMBO_ENGINE__RISK__MAX_OPEN_POSITIONS": "2",
    "MAMBO_ENGINE__RISK__MAX_TOTAL_EXPOSURE": "0.5",
    "MAMBO_ACCOUNTS__MAIN__MARKETS": json.dumps(MARKETS),
    "MAMBO_ACCOUNTS__MAIN__GRIDS": json.dumps([GRID]),
}


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"), port=free_port())
    broker.start()
    yield broker
    gc.collect()  # producers left for the collector would log connection errors once the broker is gone
    broker.stop()


@pytest.fixture(scope="session")
def bootstrap(kafka_broker: KafkaBroker) -> str:
    return kafka_broker.bootstrap


@pytest.fixture
def kafka_prefix(bootstrap: str) -> str:
    """A fresh namespace with every topic of the registry created (6 partitions)."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    topology.apply(AdminClient({"bootstrap.servers": bootstrap}), 6, prefix)
    return prefix


def read_topic(bootstrap: str, topic: str, prefix: str = "") -> list[Event]:
    """Every committed event on a topic, partition by partition (read_committed, to the end)."""
    return [event for _, event in read_keyed(bootstrap, topic, prefix)]


def read_keyed(bootstrap: str, topic: str, prefix: str = "") -> list[tuple[str, Event]]:
    """:func:`read_topic` with each message's key."""
    model = by_name(topic)
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "log_level": 3,
        }
    )
    md = c.list_topics(prefix + topic, timeout=10)
    parts = list(md.topics[prefix + topic].partitions)
    c.assign([TopicPartition(prefix + topic, p, 0) for p in parts])
    events: list[tuple[str, Event]] = []
    done: set[int] = set()
    while len(done) < len(parts):
        for m in c.consume(10_000, 0.1):
            if m.error() is not None:
                if m.error().code() == -191:
                    done.add(m.partition() or 0)
                    continue
                raise RuntimeError(str(m.error()))
            if topic == TRADES.name and is_watermark(m.headers()):  # a source's in-line record, not a trade
                continue
            events.append(((m.key() or b"").decode(), decode(model, m.value(), m.headers())))
    c.close()
    return events


def mambo(*args: str, env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[bytes]:
    """``mambo <args>`` in a subprocess (this interpreter), with the engine settings of these tests."""
    return subprocess.Popen(
        [sys.executable, "-m", "mambo.cli", *args],
        env={**os.environ, **ENGINE_ENV, **(env or {})},
        **kw,
    )


def notify_stages() -> Any:
    """The notification stage per account that ``mambo worker`` runs beside each account stage."""
    from mambo.notify import notifications
    from mambo.settings import MamboSettings

    return notifications(MamboSettings(engine=ENGINE, accounts={"main": ACCOUNT}))


def engine_config() -> Any:
    """The accounts of these tests (:data:`ENGINE`, one account over :data:`MARKETS`), as ``mambo
    worker`` builds them from :data:`ENGINE_ENV`."""
    from mambo.settings import MamboSettings

    settings = MamboSettings(engine=ENGINE, accounts={"main": ACCOUNT})
    return settings.account_configs()


FIXTURE_ROOT = Path(__file__).parents[2] / "fixtures"


def clickhouse_counts(data: Path) -> dict[str, tuple[int, int]]:
    """{table: (rows after FINAL, distinct event ids)} of a stopped sink's chdb folder."""
    query = " UNION ALL ".join(
        f"SELECT '{t}', (SELECT count() FROM {t} FINAL), (SELECT uniqExact(event_id) FROM {t})"
        for t in TABLES
    )
    out = subprocess.run(
        [sys.executable, "-m", "mambo.cli", "sql", query, "--format", "csv", "--data-dir", str(data)],
        capture_output=True,
        check=True,
    ).stdout.decode()
    return {r[0]: (int(r[1]), int(r[2])) for r in csv.reader(io.StringIO(out)) if r and r[0] in TABLES}


def wait_for(condition: Callable[[], bool], what: str, procs: list[subprocess.Popen[bytes]]) -> None:
    """Until ``condition()`` holds: at most 120 s, and only while every one of ``procs`` runs."""
    deadline = time.monotonic() + 120
    while not condition():
        for p in procs:
            assert p.poll() is None, f"{p.args} exited ({p.returncode}) waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def feed_drained(bootstrap: str, group: str, prefix: str = "") -> bool:
    """Whether ``group`` has committed the account feed to its end: the account stages have taken
    every step the market stages sent (a transactional topic: its end is the last data message + 1,
    the offsets after it being transaction markers)."""
    from mambo.schemas.topics import ACCOUNT_FEED

    topic = prefix + ACCOUNT_FEED.name
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
            "log_level": 0,
        }
    )
    try:
        parts = list(c.list_topics(topic, timeout=10).topics[topic].partitions)
        ends: dict[int, int] = {}
        for p in parts:
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = max(low, high - 50)
        if not ends:
            return True
        c.assign([TopicPartition(topic, p, o) for p, o in ends.items()])
        last: dict[int, int] = {}
        open_parts = set(ends)
        deadline = time.monotonic() + 10
        while open_parts and time.monotonic() < deadline:
            for m in c.consume(1000, 0.1):
                if m.error() is not None:
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        open_parts.discard(m.partition() or 0)
                    continue
                last[m.partition() or 0] = (m.offset() or 0) + 1
        if open_parts:
            return False
        done = c.committed([TopicPartition(topic, p) for p in last], timeout=10)
        return all(tp.offset >= last[tp.partition] for tp in done)
    except KafkaException:  # the coordinator moving: not known to be drained
        return False
    finally:
        c.close()


def topic_end(bootstrap: str, topic: str) -> int:
    """The records on a non-transactional topic (the sum of its partitions' ends): on md.trades from
    ``mambo kafka replay``, its trades and its source watermarks."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "topic-end", "log_level": 0})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()
