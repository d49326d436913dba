"""ClickHouse fixtures: one embedded chdb engine per test session, one database per test.

chdb opens one data folder at a time per process, so every test in the session must share the same
folder: use ``clickhouse_client`` (or ``clickhouse_db``) rather than opening a chdb path of your own.
The folder is a fixed name under the session's base temp dir, so the fixture may be imported by test
modules outside this package (``from tests.connectors.conftest import clickhouse_client, clickhouse_db``)
and still lands on the same folder.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from clickhouse_connect.driver.client import Client

from mambo.connectors.clickhouse import connect, ensure_schema

__all__ = ["clickhouse_client", "clickhouse_db"]


@pytest.fixture(scope="session")
def clickhouse_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """A client on the session's chdb engine (``<basetemp>/chdb``)."""
    client = connect(f"chdb://{tmp_path_factory.getbasetemp() / 'chdb'}")
    yield client
    client.close()


@pytest.fixture
def clickhouse_db(clickhouse_client: Client) -> Iterator[str]:
    """A fresh database with every Mambo table, dropped after the test; the client's default meanwhile."""
    database = f"test_{uuid.uuid4().hex[:12]}"
    ensure_schema(clickhouse_client, database)
    yield database
    clickhouse_client.command(f"DROP DATABASE IF EXISTS `{database}`")
