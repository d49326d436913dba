"""The ClickHouse DDL follows the models: the types map as documented, the live tables (created in
chdb) agree with their models, and any drift between the two is reported."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

import pytest
from clickhouse_connect.driver.client import Client

from mambo.connectors.clickhouse import SchemaDriftError, ensure_schema
from mambo.schemas.ddl import (
    TIMESTAMP_FIELDS,
    ColumnDrift,
    add_column_sql,
    all_ddl,
    column_type,
    compare_columns,
    create_table_sql,
    live_columns,
    model_columns,
    sort_key,
    table_columns,
    table_drift,
)
from mambo.schemas.events import Candle, EquitySnapshot, Trade
from mambo.schemas.topics import TABLES


@pytest.mark.parametrize(
    "name,annotation,expected",
    [
        ("ts_event", int, "DateTime64(9, 'UTC')"),
        ("open_time", int, "DateTime64(9, 'UTC')"),
        ("trades", int, "Int64"),
        ("price", float, "Float64"),
        ("closed", bool, "Bool"),
        ("qty", Decimal, "Decimal(38, 18)"),
        ("limit_price", Decimal | None, "Nullable(Decimal(38, 18))"),
        ("trade_id", str, "String"),
        ("symbol", str, "LowCardinality(String)"),
        ("symbol", str | None, "LowCardinality(Nullable(String))"),
        ("side", Literal["buy", "sell"], "LowCardinality(String)"),
        ("values", dict[str, float], "Map(String, Float64)"),
    ],
)
def test_type_mapping(name: str, annotation: object, expected: str) -> None:
    assert column_type(name, annotation) == expected


@pytest.mark.parametrize("annotation", [list[int], dict[str, int], int | str | None, Literal[1, 2], bytes])
def test_unmapped_types_are_refused(annotation: object) -> None:
    with pytest.raises(TypeError, match="field 'x'"):
        column_type("x", annotation)


def test_every_table_has_its_models_fields_in_order() -> None:
    for table, model in TABLES.items():
        assert [c.name for c in table_columns(table)] == list(model.model_fields)


def test_every_nanosecond_field_is_a_timestamp() -> None:
    for model in TABLES.values():
        for name, field in model.model_fields.items():
            if field.description and "nanoseconds since the Unix epoch" in field.description:
                assert name in TIMESTAMP_FIELDS, f"{model.__name__}.{name} would be stored as Int64"


def test_engine_key_and_partition() -> None:
    sql = create_table_sql("trades", "mambo")
    assert sql.startswith("CREATE TABLE IF NOT EXISTS `mambo`.`trades`")
    assert "ENGINE = ReplacingMergeTree\n" in sql
    assert "PARTITION BY toYYYYMM(ts_event)" in sql
    assert "ORDER BY (`exchange`, `symbol`, `ts_event`, `event_id`)" in sql
    assert sort_key(Candle) == ("exchange", "symbol", "timeframe", "ts_event", "event_id")
    assert sort_key(EquitySnapshot) == ("account", "ts_event", "event_id")
    assert all(sort_key(m)[-2:] == ("ts_event", "event_id") for m in TABLES.values())
    assert all_ddl("m")[0] == "CREATE DATABASE IF NOT EXISTS `m`" and len(all_ddl("m")) == len(TABLES) + 1
    with pytest.raises(KeyError, match="unknown table 'nope'"):
        create_table_sql("nope", "mambo")


def test_live_tables_agree_with_their_models(clickhouse_client: Client, clickhouse_db: str) -> None:
    for table in TABLES:
        assert [c.name for c in table_columns(table)] == [
            n for n, _ in live_columns(clickhouse_client, table, clickhouse_db)
        ]
        assert table_drift(clickhouse_client, table, clickhouse_db) == []
    ensure_schema(clickhouse_client, clickhouse_db)  # idempotent


class TradeWithVenueSeq(Trade):
    venue_seq: int


def test_drift_is_reported(clickhouse_client: Client, clickhouse_db: str) -> None:
    live = live_columns(clickhouse_client, "trades", clickhouse_db)
    # a model that gained a field the table lacks
    assert compare_columns(model_columns(TradeWithVenueSeq), live) == [
        ColumnDrift("venue_seq", "Int64", None)
    ]
    # a table whose column changed type, and that gained a column the model lacks
    clickhouse_client.command(f"ALTER TABLE `{clickhouse_db}`.trades MODIFY COLUMN qty Float32")
    clickhouse_client.command(f"ALTER TABLE `{clickhouse_db}`.trades ADD COLUMN note String")
    drift = table_drift(clickhouse_client, "trades", clickhouse_db)
    assert drift == [ColumnDrift("qty", "Float64", "Float32"), ColumnDrift("note", None, "String")]
    assert [str(d) for d in drift] == [
        "qty: model says Float64, table has Float32",
        "note: not in the model (table has String)",
    ]
    # a missing table reports every column missing
    clickhouse_client.command(f"DROP TABLE `{clickhouse_db}`.quotes")
    assert {d.actual for d in table_drift(clickhouse_client, "quotes", clickhouse_db)} == {None}
    with pytest.raises(SchemaDriftError, match=r"trades\.qty: model says Float64, table has Float32"):
        ensure_schema(clickhouse_client, clickhouse_db)  # recreates quotes, refuses to touch trades
    assert table_drift(clickhouse_client, "quotes", clickhouse_db) == []


def test_a_history_from_before_accounts_gains_the_column_with_its_default(
    clickhouse_client: Client, clickhouse_db: str
) -> None:
    """A field a model gained (here ``account``) is added to the live table by ensure_schema, the old
    rows taking the field's default; nothing else is touched."""
    db = f"`{clickhouse_db}`"
    for table in ("fills", "positions"):  # as they were made before accounts
        old = ", ".join(f"`{c.name}` {c.type}" for c in table_columns(table) if c.name != "account")
        clickhouse_client.command(f"DROP TABLE {db}.{table}")
        clickhouse_client.command(
            f"CREATE TABLE {db}.{table} ({old}) ENGINE = ReplacingMergeTree"
            " ORDER BY (exchange, symbol, ts_event, event_id)"
        )
    clickhouse_client.command(
        f"INSERT INTO {db}.positions (event_id, ts_event, ts_init, exchange, symbol, qty, avg_price,"
        " realized_pnl, unrealized_pnl, fees, mark_price) VALUES ('p1', 1, 1, 'binance', 'BTC/USDT', 1, 2, 0,"
        " 0, 0, 2)"
    )
    assert [d.column for d in table_drift(clickhouse_client, "fills", clickhouse_db)] == ["account"]
    ensure_schema(clickhouse_client, clickhouse_db)
    for table in TABLES:
        assert table_drift(clickhouse_client, table, clickhouse_db) == []
    rows = clickhouse_client.query(f"SELECT event_id, account FROM {db}.positions").result_rows
    assert rows == [("p1", "main")]
    assert add_column_sql("fills", "mambo", "account") == (
        "ALTER TABLE `mambo`.`fills` ADD COLUMN IF NOT EXISTS `account` LowCardinality(String) DEFAULT 'main'"
    )
