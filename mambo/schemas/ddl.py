"""ClickHouse DDL derived from the event models: one table per entry of :data:`~mambo.schemas.topics.TABLES`.

The pydantic model is the one source of truth: a table's columns are the model's fields in order, with
types from :func:`column_type`, and :func:`table_drift` compares a live table with its model so a test
(and ``ensure_schema``) can catch a model and a table that disagree.

Type mapping (field annotation -> ClickHouse):

==========================================  ====================================================
``int`` named in :data:`TIMESTAMP_FIELDS`   ``DateTime64(9, 'UTC')`` (the events' int nanoseconds)
``int`` / ``float`` / ``bool``              ``Int64`` / ``Float64`` / ``Bool``
``Decimal``                                 ``Decimal(38, 18)`` (exact; 20 integer digits)
``str``                                     ``String``; ``LowCardinality(String)`` for the names in
                                            :data:`LOW_CARDINALITY_FIELDS`
``Literal["a", "b"]`` of strings            ``LowCardinality(String)``
``dict[str, float]``                        ``Map(String, Float64)``
``X | None``                                ``Nullable(X)`` (``LowCardinality(Nullable(String))``)
==========================================  ====================================================

Literals are ``LowCardinality(String)`` rather than ``Enum8``: the model already validates the values,
and a new value added to a Literal then needs no ``ALTER`` of tables that hold years of history.

Every table is a ``ReplacingMergeTree`` whose sort key ends in ``(ts_event, event_id)`` after the
market/partition columns it has (:data:`SORT_PREFIX`), partitioned by month of ``ts_event``. Event ids
are deterministic, so writing the same event twice leaves one row after a merge (or with ``FINAL``).
``non_replicated_deduplication_window`` makes a re-sent batch with the same
``insert_deduplication_token`` a no-op even before any merge.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Literal, Union, get_args, get_origin

from mambo.schemas.events import Event
from mambo.schemas.topics import TABLES

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

__all__ = [
    "DECIMAL_TYPE",
    "DEDUP_WINDOW",
    "LOW_CARDINALITY_FIELDS",
    "SORT_PREFIX",
    "TIMESTAMP_FIELDS",
    "TIMESTAMP_TYPE",
    "Column",
    "ColumnDrift",
    "add_column_sql",
    "all_ddl",
    "column_type",
    "compare_columns",
    "create_database_sql",
    "create_table_sql",
    "live_columns",
    "model_columns",
    "sort_key",
    "table_columns",
    "table_drift",
]

TIMESTAMP_TYPE = "DateTime64(9, 'UTC')"
DECIMAL_TYPE = "Decimal(38, 18)"
#: Integer nanosecond fields stored as ``DateTime64(9, 'UTC')``.
TIMESTAMP_FIELDS = frozenset({"ts_event", "ts_init", "open_time"})
#: String fields with few distinct values, stored dictionary-encoded.
LOW_CARDINALITY_FIELDS = frozenset(
    {
        "exchange",
        "symbol",
        "timeframe",
        "strategy",
        "lead_strategy",
        "account",
        "fee_currency",
        "topic",
        "rule",
        "stream",
    }
)
#: Columns that lead a table's sort key, in this order, when the model has them.
SORT_PREFIX: tuple[str, ...] = ("exchange", "symbol", "timeframe", "strategy", "account", "topic")
#: Inserts within this many most recent blocks with a repeated deduplication token are dropped.
DEDUP_WINDOW = 1000


@dataclass(frozen=True)
class Column:
    """One column of a table: its name and ClickHouse type."""

    name: str
    type: str


@dataclass(frozen=True)
class ColumnDrift:
    """One difference between a model and a live table; ``None`` marks a side without the column."""

    column: str
    expected: str | None
    actual: str | None

    def __str__(self) -> str:
        if self.actual is None:
            return f"{self.column}: missing from the table (model says {self.expected})"
        if self.expected is None:
            return f"{self.column}: not in the model (table has {self.actual})"
        return f"{self.column}: model says {self.expected}, table has {self.actual}"


def column_type(name: str, annotation: object) -> str:
    """ClickHouse type of a model field (see the module docstring); TypeError for an unmapped type."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not types.NoneType]
        if len(inner) != 1 or len(args) != 2:
            raise TypeError(f"field {name!r}: only X | None unions map to ClickHouse, got {annotation!r}")
        base = column_type(name, inner[0])
        if base.startswith("LowCardinality("):
            return f"LowCardinality(Nullable({base[len('LowCardinality(') : -1]}))"
        return f"Nullable({base})"
    if origin is Literal:
        if not all(isinstance(a, str) for a in args):
            raise TypeError(f"field {name!r}: only string Literals map to ClickHouse, got {annotation!r}")
        return "LowCardinality(String)"
    if origin is dict and args == (str, float):
        return "Map(String, Float64)"
    if annotation is bool:  # before int: bool is an int subclass
        return "Bool"
    if annotation is int:
        return TIMESTAMP_TYPE if name in TIMESTAMP_FIELDS else "Int64"
    if annotation is float:
        return "Float64"
    if annotation is Decimal:
        return DECIMAL_TYPE
    if annotation is str:
        return "LowCardinality(String)" if name in LOW_CARDINALITY_FIELDS else "String"
    raise TypeError(f"field {name!r}: no ClickHouse type for {annotation!r}")


def model_columns(model: type[Event]) -> tuple[Column, ...]:
    """The columns of a model's table: its fields in declaration order."""
    return tuple(Column(name, column_type(name, f.annotation)) for name, f in model.model_fields.items())


def table_columns(table: str) -> tuple[Column, ...]:
    """The columns of one table of :data:`TABLES`; KeyError names the known tables."""
    return model_columns(_model(table))


def sort_key(model: type[Event]) -> tuple[str, ...]:
    """The ``ORDER BY`` key: the :data:`SORT_PREFIX` columns the model has, then ``ts_event, event_id``."""
    return (*(c for c in SORT_PREFIX if c in model.model_fields), "ts_event", "event_id")


def create_database_sql(database: str) -> str:
    return f"CREATE DATABASE IF NOT EXISTS {_quote(database)}"


def create_table_sql(table: str, database: str) -> str:
    """``CREATE TABLE IF NOT EXISTS`` statement of one table of :data:`TABLES`."""
    model = _model(table)
    cols = ",\n".join(f"    {_quote(c.name)} {c.type}" for c in model_columns(model))
    key = ", ".join(_quote(c) for c in sort_key(model))
    return (
        f"CREATE TABLE IF NOT EXISTS {_quote(database)}.{_quote(table)}\n(\n{cols}\n)\n"
        "ENGINE = ReplacingMergeTree\n"
        "PARTITION BY toYYYYMM(ts_event)\n"
        f"ORDER BY ({key})\n"
        f"SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}"
    )


def add_column_sql(table: str, database: str, column: str) -> str | None:
    """``ALTER TABLE ... ADD COLUMN`` for a model field a live table lacks, its rows taking the field's
    default; None when the field has no default a ClickHouse literal can carry (then the drift stands)."""
    model = _model(table)
    field = model.model_fields[column]
    default = field.default
    if isinstance(default, bool):
        literal = "true" if default else "false"
    elif isinstance(default, str):
        literal = "'" + default.replace("\\", "\\\\").replace("'", "\\'") + "'"
    elif isinstance(default, int | float | Decimal):
        literal = str(default)
    else:
        return None
    typ = column_type(column, field.annotation)
    return (
        f"ALTER TABLE {_quote(database)}.{_quote(table)} "
        f"ADD COLUMN IF NOT EXISTS {_quote(column)} {typ} DEFAULT {literal}"
    )


def all_ddl(database: str) -> list[str]:
    """Every statement that creates the database and its tables, in order; each is idempotent."""
    return [create_database_sql(database), *(create_table_sql(t, database) for t in TABLES)]


def compare_columns(expected: Sequence[Column], live: Sequence[tuple[str, str]]) -> list[ColumnDrift]:
    """Differences between the ``expected`` columns and ``live`` ``(name, type)`` pairs; empty if none.

    Column order is not compared: every insert names its columns.
    """
    want = {c.name: c.type for c in expected}
    have = {name: " ".join(typ.split()) for name, typ in live}
    return [
        ColumnDrift(name, want.get(name), have.get(name))
        for name in [*want, *(n for n in have if n not in want)]
        if want.get(name) != have.get(name)
    ]


def live_columns(client: Client, table: str, database: str) -> list[tuple[str, str]]:
    """A live table's ``(name, type)`` pairs from ``system.columns``, in table order; empty if no table."""
    result = client.query(
        "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String}"
        " ORDER BY position",
        parameters={"db": database, "t": table},
    )
    return [(str(name), str(typ)) for name, typ in result.result_rows]


def table_drift(client: Client, table: str, database: str) -> list[ColumnDrift]:
    """Compare a live table of :data:`TABLES` with its model; empty when they agree."""
    return compare_columns(table_columns(table), live_columns(client, table, database))


def _model(table: str) -> type[Event]:
    try:
        return TABLES[table]
    except KeyError:
        raise KeyError(f"unknown table {table!r}; known: {', '.join(TABLES)}") from None


def _quote(identifier: str) -> str:
    return "`" + identifier.replace("\\", "\\\\").replace("`", "\\`") + "`"
