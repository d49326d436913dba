"""ClickHouse fixtures: one embedded chdb engine per test session, one database per test; quick Kafka
brokers.

chdb opens one data folder at a time per process, so every test in the session must share the same
folder: use ``clickhouse_client`` (or ``clickhouse_db``) rather than opening a chdb path of your own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from clickhouse_connect.driver.client import Client

from mambo.connectors.clickhouse import connect, ensure_schema

__all__ = ["clickhouse_client", "clickhouse_db", "clickhouse_dsn"]

# Kafka brokers the tests start (here and in `mambo` subprocesses) use the C1 JIT only: they start in
# about half the time; the benchmarks and users get the full JIT (see KafkaBroker.quick_start).
os.environ.setdefault("MAMBO_KAFKA_QUICK_START", "1")


@pytest.fixture(scope="session")
def clickhouse_dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The DSN of the session's chdb engine (``<basetemp>/chdb``), for code that connects by itself."""
    return f"chdb://{tmp_path_factory.getbasetemp().resolve() / 'chdb'}"


@pytest.fixture(scope="session")
def clickhouse_client(clickhouse_dsn: str) -> Iterator[Client]:
    """A client on the session's chdb engine."""
    client = connect(clickhouse_dsn)
    yield client
    client.close()


@pytest.fixture
def clickhouse_db(clickhouse_client: Client) -> Iterator[str]:
    """A fresh database with every Mambo table, dropped after the test; the client's default meanwhile."""
    database = f"test_{uuid.uuid4().hex[:12]}"
    ensure_schema(clickhouse_client, database)
    yield database
    clickhouse_client.command(f"DROP DATABASE IF EXISTS `{database}`")
    clickhouse_client.database = "default"
