"""The demo clears only a history that the last demo left (mambo.demo_history)."""

from __future__ import annotations

from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from mambo import demo_history


def _insert(client: Client, db: str, table: str, *ids: str) -> None:
    values = ", ".join(f"('{i}')" for i in ids)
    client.command(f"INSERT INTO `{db}`.`{table}` (event_id) VALUES {values}")


def _rows(client: Client, db: str, table: str) -> int:
    return int(client.command(f"SELECT count() FROM `{db}`.`{table}`"))


def test_a_demo_clears_the_last_demos_history_and_nothing_else(
    clickhouse_client: Client, clickhouse_db: str, tmp_path: Path
) -> None:
    c, db = clickhouse_client, clickhouse_db
    assert demo_history.begin(c, db, tmp_path) is False  # empty: nothing to clear
    _insert(c, db, "trades", "t1", "t2")
    _insert(c, db, "fills", "f1")
    _insert(c, db, "backtest_runs", "r1")
    demo_history.end(c, db, tmp_path)

    assert demo_history.begin(c, db, tmp_path) is True
    assert _rows(c, db, "trades") == _rows(c, db, "fills") == 0
    assert _rows(c, db, "backtest_runs") == 1  # not a pipeline table: kept

    # an interrupted demo (marker still "running") is the demo's own: cleared next time
    _insert(c, db, "orders", "o1")
    assert demo_history.begin(c, db, tmp_path) is True
    assert _rows(c, db, "orders") == 0


def test_a_history_the_demo_did_not_leave_is_refused_untouched(
    clickhouse_client: Client, clickhouse_db: str, tmp_path: Path
) -> None:
    c, db = clickhouse_client, clickhouse_db
    _insert(c, db, "orders", "o1")
    with pytest.raises(demo_history.ForeignHistoryError, match="own --data-dir"):
        demo_history.begin(c, db, tmp_path)  # no marker: someone else's
    assert _rows(c, db, "orders") == 1

    demo_history.end(c, db, tmp_path)  # a demo ended here...
    _insert(c, db, "fills", "f9")  # ...then something else wrote
    with pytest.raises(demo_history.ForeignHistoryError, match="1 fills"):
        demo_history.begin(c, db, tmp_path)
    assert _rows(c, db, "orders") == _rows(c, db, "fills") == 1
