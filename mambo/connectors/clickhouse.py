"""ClickHouse: the connection, the schema, and the batching sink every topic lands through.

Start with :func:`connect` and :func:`ensure_schema`, then :class:`ClickHouseSink`. Tables and their
columns come from :mod:`mambo.schemas.ddl` (derived from the event models).

One client API for both modes: clickhouse-connect. ``chdb:///abs/path`` (or ``chdb:relative/path``,
``chdb://memory``) opens chdb's embedded ClickHouse in this process; ``http(s)://user:pass@host:8123``
talks to a server. Credentials may sit in the DSN; they are never logged (:func:`redact_dsn`).

chdb facts, checked with chdb 4.4 (ClickHouse 26.9) and clickhouse-connect 1.12:

* **One engine path per process.** Any number of clients may share one path (each owns a handle;
  data and tables are shared). Opening a *different* path while a client on the first is still open
  fails ("EmbeddedServer already initialized with path ..."). Once every client on the first path is
  closed, another path opens fine, and the first can be reopened later: one path at a time, not one
  path per process lifetime. Tests therefore share one chdb folder per session and isolate by database.
* **One process per folder.** A second process opening a folder that another process holds fails with
  "Error initializing EmbeddedServer" (no mention of the lock); :func:`connect` adds the hint.
  The folder opens again once the holder exits, and the data persists.
* Inserts through clickhouse-connect are written to a temp file and ingested with
  ``INSERT ... FROM INFILE``; ``insert_deduplication_token`` works on (non-replicated)
  ReplacingMergeTree once the table sets ``non_replicated_deduplication_window`` (the DDL does).
* ``query_df`` returns ``DateTime64(9, 'UTC')`` as naive ``datetime64[ns]`` holding UTC.

Writes go in column form as Arrow (``insert_arrow``), the fastest of the three column paths through
chdb. 1M trade rows from numpy columns into the trades table, same settings, 2-CPU machine, median of 5:

==========================================================  ==============
Arrow through ``ClickHouseSink.write_columns``, one batch   0.82M rows/s
the same in 20 batches of 50k (the default ``batch_rows``)  0.49M rows/s
clickhouse-connect column-oriented insert (Native)          0.73M rows/s
``insert_df`` (pandas DataFrame)                            0.30M rows/s
==========================================================  ==============

Of the ~1.2 s per 1M rows, ~0.3 s is building the Arrow table (mostly the event_id strings) and ~0.7 s
the engine itself (sorting by key, compressing); each insert also costs ~40 ms of fixed overhead (temp
file, new part), hence the gap between one batch and twenty. The Native path needs timestamps as
Python int lists (it cannot take int-ns numpy arrays for ``DateTime64``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from decimal import Context, Decimal
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import clickhouse_connect
import numpy as np
import pandas as pd
import pyarrow as pa
import structlog
from clickhouse_connect.driver.client import Client
from pydantic_core import PydanticUndefined

from mambo import metrics
from mambo.schemas.ddl import (
    DECIMAL_TYPE,
    TIMESTAMP_FIELDS,
    TIMESTAMP_TYPE,
    Column,
    add_column_sql,
    all_ddl,
    table_columns,
    table_drift,
)
from mambo.schemas.events import Event
from mambo.schemas.topics import TABLES

__all__ = [
    "DEFAULT_BATCH_ROWS",
    "ClickHouseError",
    "ClickHouseSink",
    "ClickHouseWriteError",
    "SchemaDriftError",
    "arrow_schema",
    "connect",
    "dsn_kind",
    "ensure_schema",
    "format_table",
    "query_df",
    "query_format",
    "query_output",
    "read_events",
    "redact_dsn",
]

log = structlog.get_logger(__name__)

DEFAULT_BATCH_ROWS = 50_000
_SECRET_PARAMS = ("password", "secret", "token", "key")


class ClickHouseError(RuntimeError):
    """ClickHouse could not be reached or used; the message says where and what to check."""


class ClickHouseWriteError(ClickHouseError):
    """An insert failed. The rows stay buffered in the sink; a later ``flush()`` retries them."""


class SchemaDriftError(ClickHouseError):
    """A live table's columns differ from its model: migrate the table (or the model) first."""


# --- connection --------------------------------------------------------------------------------------


def dsn_kind(dsn: str) -> Literal["chdb", "http"]:
    """``"chdb"`` or ``"http"`` (http and https); ValueError for anything else or a malformed chdb DSN."""
    parts = urlsplit(dsn)
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise ValueError(f"ClickHouse DSN {redact_dsn(dsn)!r} has no host; e.g. http://localhost:8123")
        return "http"
    if parts.scheme == "chdb":
        if parts.netloc not in ("", "memory", ":memory:"):
            raise ValueError(
                f"chdb DSN {dsn!r}: use chdb:///absolute/path, chdb:relative/path or chdb://memory"
                f" ({parts.netloc!r} would be read as the location and the path as a database)"
            )
        return "chdb"
    raise ValueError(f"ClickHouse DSN {redact_dsn(dsn)!r}: scheme must be chdb, http or https")


def redact_dsn(dsn: str) -> str:
    """The DSN with its password (in the user info or a secret-looking query parameter) masked."""
    parts = urlsplit(dsn)
    params = parse_qsl(parts.query, keep_blank_values=True)
    secret = [any(s in k.lower() for s in _SECRET_PARAMS) for k, _ in params]
    if parts.password is None and not any(secret):
        return dsn
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    query = urlencode([(k, "***" if s else v) for (k, v), s in zip(params, secret, strict=True)], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def connect(dsn: str, database: str = "mambo") -> Client:
    """A clickhouse-connect client for ``dsn``, using ``database`` as its default once it exists.

    The database is not created here (that is :func:`ensure_schema`'s job), so a read-only user can
    connect. Raises :class:`ClickHouseError` with the redacted DSN and a hint when the open fails.
    """
    kind = dsn_kind(dsn)
    try:
        client = clickhouse_connect.get_client(dsn=dsn)
    except Exception as ex:
        raise ClickHouseError(f"cannot open ClickHouse at {redact_dsn(dsn)}: {_hint(kind, ex)}") from ex
    if client.command("SELECT count() FROM system.databases WHERE name = {db:String}", {"db": database}):
        client.database = database
    log.debug("clickhouse.connected", dsn=redact_dsn(dsn), database=database, server=client.server_version)
    return client


def _hint(kind: str, ex: Exception) -> str:
    text = str(ex)
    if kind == "chdb" and "already initialized with path" in text:
        return f"{text} (chdb opens one data folder at a time per process; close the other clients first)"
    if kind == "chdb" and "Error initializing EmbeddedServer" in text:
        return f"{text} (is another process using this chdb folder? chdb allows one process per folder)"
    return text


def ensure_schema(client: Client, database: str) -> None:
    """Create the database and every table if missing (idempotent), then check they match the models.

    Makes ``database`` the client's default. A column a model gained since its table was made is added,
    its existing rows taking the field's default (the ``account`` of histories from before accounts:
    ``main``); any other difference raises :class:`SchemaDriftError` listing every column that differs,
    and nothing is altered for it.
    """
    for statement in all_ddl(database):
        client.command(statement)
    client.database = database
    for table in TABLES:  # a field added to a model since the table was made: added, with its default
        for d in table_drift(client, table, database):
            added = add_column_sql(table, database, d.column) if d.actual is None else None
            if added is not None:
                client.command(added)
                log.info("clickhouse.column_added", table=table, column=d.column, type=d.expected)
    drift = {table: diffs for table in TABLES if (diffs := table_drift(client, table, database))}
    if drift:
        lines = [f"  {database}.{table}.{d}" for table, diffs in drift.items() for d in diffs]
        raise SchemaDriftError("tables differ from their models:\n" + "\n".join(lines))


# --- column conversion -------------------------------------------------------------------------------

_ARROW_TYPES: dict[str, pa.DataType] = {
    "String": pa.string(),
    "Int64": pa.int64(),
    "Float64": pa.float64(),
    "Bool": pa.bool_(),
    TIMESTAMP_TYPE: pa.timestamp("ns", tz="UTC"),
    DECIMAL_TYPE: pa.decimal128(38, 18),
    "Map(String, Float64)": pa.map_(pa.string(), pa.float64()),
}


def _arrow_field(column: Column) -> pa.Field:
    base, nullable = column.type, False
    while base.startswith(("LowCardinality(", "Nullable(")):
        nullable = nullable or base.startswith("Nullable(")
        base = base[base.index("(") + 1 : -1]
    return pa.field(column.name, _ARROW_TYPES[base], nullable=nullable)


_SCHEMAS: dict[str, pa.Schema] = {t: pa.schema([_arrow_field(c) for c in table_columns(t)]) for t in TABLES}


def arrow_schema(table: str) -> pa.Schema:
    """The Arrow schema the sink sends for a table (int-ns timestamps as ``timestamp[ns, UTC]``)."""
    return _SCHEMAS[table]


def _to_arrow(table: str, columns: Mapping[str, Any]) -> pa.Table:
    """Convert one batch of columns to an Arrow table of the table's schema.

    A column the model gives a default may be left out; any other missing or unknown column, a length
    mismatch, a null in a non-Nullable column or a value the type cannot hold exactly is a ValueError.
    """
    schema = arrow_schema(table)
    fields = TABLES[table].model_fields
    unknown = set(columns) - set(schema.names)
    if unknown:
        raise ValueError(f"{table}: unknown columns {sorted(unknown)}; expected {schema.names}")
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{table}: columns differ in length: {lengths}")
    rows = next(iter(lengths.values()), 0)
    arrays = []
    for field in schema:
        if field.name in columns:
            values = columns[field.name]
            try:
                if isinstance(values, np.ndarray) and values.dtype.kind == "S":  # ids as fixed bytes
                    array = pa.array(values).cast(field.type)
                else:
                    array = pa.array(values, type=field.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as ex:
                raise ValueError(f"{table}.{field.name}: cannot convert to {field.type}: {ex}") from ex
            if array.null_count and not field.nullable:
                raise ValueError(f"{table}.{field.name}: {array.null_count} nulls in a non-Nullable column")
        else:
            default = fields[field.name].get_default(call_default_factory=True)
            if default is PydanticUndefined:
                raise ValueError(f"{table}: missing column {field.name!r} (the model gives it no default)")
            array = pa.repeat(pa.scalar(default, type=field.type), rows)
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=schema)


def _dedup_token(table: str, batch: pa.Table) -> str:
    """A token that is the same whenever the same event ids are sent in the same order."""
    ids = batch.column("event_id").combine_chunks()
    digest = hashlib.blake2b(f"{table}\x1f{batch.num_rows}".encode(), digest_size=16)
    for buffer in ids.buffers():
        if buffer is not None:
            digest.update(buffer)
    return digest.hexdigest()


# --- the sink ----------------------------------------------------------------------------------------


class ClickHouseSink:
    """Buffers events per table and inserts them in column form (Arrow), idempotently.

    A table is flushed when its buffer reaches ``batch_rows`` and on :meth:`flush` (the runtime calls it
    on a timer and at the end). Re-writing an event is harmless: tables are ReplacingMergeTree on
    ``event_id`` (read with ``FINAL`` for exact counts) and each insert carries an
    ``insert_deduplication_token`` derived from its event ids, so a retried batch is dropped by the
    server if the first attempt did land. A failed insert keeps its rows buffered and raises
    :class:`ClickHouseWriteError`; the next flush retries them. Safe to call from several threads.

    Events given one by one are kept as objects and turned into columns once per flush: converting
    each on arrival would cost ~250 us an event, against ~2 us in a batch.
    """

    def __init__(self, client: Client, database: str = "mambo", batch_rows: int = DEFAULT_BATCH_ROWS) -> None:
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
        self.client = client
        self.database = database
        self.batch_rows = batch_rows
        self._events: dict[str, list[Event]] = {}  # written as events, not yet converted
        self._chunks: dict[str, list[pa.Table]] = {}  # written as columns (or converted), not yet inserted
        self._pending: Counter[str] = Counter()
        self._written: Counter[str] = Counter()
        self._lock = threading.RLock()

    @property
    def rows_written(self) -> dict[str, int]:
        """Rows inserted so far, per table (rows sent: a re-sent event counts again)."""
        with self._lock:
            return dict(self._written)

    def pending_rows(self, table: str | None = None) -> int:
        """Rows buffered and not yet written, for one table or all."""
        with self._lock:
            return self._pending[table] if table else self._pending.total()

    def write(self, table: str, events: Sequence[Event]) -> None:
        """Buffer events of ``table``'s model; flushes the table when its buffer is full.

        TypeError for an event of another model; ValueError, before anything is buffered, for a
        Decimal that ``Decimal(38, 18)`` cannot hold exactly (more than 18 places or 20 integer digits).
        """
        model = _model(table)
        wrong = {type(e).__name__ for e in events if not isinstance(e, model)}
        if wrong:
            raise TypeError(f"{table} holds {model.__name__} events, got {sorted(wrong)}")
        for name in _DECIMAL_FIELDS[table]:
            bad = [v for e in events if (v := getattr(e, name)) is not None and not _fits_decimal(v)]
            if bad:
                raise ValueError(f"{table}.{name}: {bad[0]} does not fit {DECIMAL_TYPE} exactly; quantize it")
        if events:
            with self._lock:
                self._events.setdefault(table, []).extend(events)
                self._added(table, len(events))

    def write_columns(self, table: str, columns: Mapping[str, np.ndarray | list[Any]]) -> None:
        """Buffer one batch given as columns (the hot path: no pydantic objects are built).

        Timestamps (``ts_event``, ``ts_init``, ``open_time``) are int64 nanoseconds (or datetime64[ns]),
        Decimal columns lists of :class:`~decimal.Decimal`; columns the model gives a default may be
        left out. Values are not validated beyond what their ClickHouse type requires; a batch that
        cannot be converted raises ValueError and nothing of it is buffered.
        """
        _model(table)
        batch = _to_arrow(table, columns)
        if batch.num_rows:
            with self._lock:
                self._chunks.setdefault(table, []).append(batch)
                self._added(table, batch.num_rows)

    def _added(self, table: str, rows: int) -> None:
        self._pending[table] += rows
        if self._pending[table] >= self.batch_rows:
            self._flush_table(table)

    def flush(self, table: str | None = None) -> None:
        """Insert every buffered row (of one table, or all); :attr:`rows_written` counts them.

        Tries every table even when one fails, then raises :class:`ClickHouseWriteError` naming the
        tables whose rows stay buffered.
        """
        failures = []
        with self._lock:
            for name in [table] if table else [t for t, n in self._pending.items() if n]:
                try:
                    self._flush_table(name)
                except ClickHouseWriteError as ex:
                    failures.append(ex)
        if len(failures) == 1:
            raise failures[0]
        if failures:
            raise ClickHouseWriteError("; ".join(map(str, failures))) from failures[0]

    def _flush_table(self, table: str) -> None:
        events = self._events.pop(table, None)
        if events:
            try:
                chunk = _to_arrow(
                    table, {n: [getattr(e, n) for e in events] for n in TABLES[table].model_fields}
                )
            except ValueError as ex:
                self._events[table] = events
                raise ClickHouseWriteError(f"{len(events)} {table} events stay buffered: {ex}") from ex
            self._chunks.setdefault(table, []).append(chunk)
        chunks = self._chunks.get(table)
        if not chunks:
            return
        batch = pa.concat_tables(chunks).combine_chunks()
        self._chunks[table] = [batch]
        began = time.perf_counter()
        try:
            self.client.insert_arrow(
                table,
                batch,
                database=self.database,
                # optimize_on_insert=0: skip collapsing duplicates inside the block at insert (~20%
                # faster); ReplacingMergeTree collapses them at merge time, and FINAL reads hide them.
                settings={"insert_deduplication_token": _dedup_token(table, batch), "optimize_on_insert": 0},
            )
        except Exception as ex:
            metrics.SINK_FAILURES.labels(table).inc()
            raise ClickHouseWriteError(
                f"insert of {batch.num_rows} rows into {self.database}.{table} failed ({ex}); "
                "the rows stay buffered and the next flush retries them"
            ) from ex
        metrics.SINK_SECONDS.labels(table).observe(time.perf_counter() - began)
        metrics.SINK_ROWS.labels(table).inc(batch.num_rows)
        del self._chunks[table]
        self._pending.pop(table, None)
        self._written[table] += batch.num_rows
        log.debug("clickhouse.flushed", table=table, rows=batch.num_rows)


_DECIMAL_FIELDS = {t: [c.name for c in table_columns(t) if DECIMAL_TYPE in c.type] for t in TABLES}
_DECIMAL_CONTEXT = Context(prec=80)
_DECIMAL_QUANTUM = Decimal("1e-18")


def _fits_decimal(value: Decimal) -> bool:
    """Whether ``Decimal(38, 18)`` holds ``value`` exactly (trailing zeros past 18 places are fine)."""
    return (
        value.is_finite()
        and value.adjusted() < 20
        and _DECIMAL_CONTEXT.quantize(value, _DECIMAL_QUANTUM) == value
    )


def _model(table: str) -> type[Event]:
    try:
        return TABLES[table]
    except KeyError:
        raise KeyError(f"unknown table {table!r}; known: {', '.join(TABLES)}") from None


# --- reading -----------------------------------------------------------------------------------------


def read_events(
    client: Client,
    table: str,
    database: str,
    where: str = "",
    parameters: Mapping[str, Any] | None = None,
    limit: int | None = None,
    descending: bool = False,
) -> list[Event]:
    """Rows of a table as events, deduplicated (``FINAL``), in ``ts_event, event_id`` order.

    For tests, replays and small API reads, not bulk analytics (use :func:`query_df` there). ``where`` is
    an SQL condition that may use ``{name:Type}`` placeholders bound from ``parameters``; ``limit``
    keeps the first rows only; ``descending`` reverses the order (the latest first).
    """
    model = _model(table)
    select = ", ".join(
        f"toUnixTimestamp64Nano(`{c.name}`) AS `{c.name}`" if c.name in TIMESTAMP_FIELDS else f"`{c.name}`"
        for c in table_columns(table)
    )
    sql = f"SELECT {select} FROM `{database}`.`{table}` FINAL"
    if where:
        sql += f" WHERE {where}"
    sql += " ORDER BY ts_event DESC, event_id DESC" if descending else " ORDER BY ts_event, event_id"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    result = client.query(sql, parameters=dict(parameters or {}))
    return [
        model.model_validate({k: _trimmed(v) if isinstance(v, Decimal) else v for k, v in row.items()})
        for row in result.named_results()
    ]


def _trimmed(value: Decimal) -> Decimal:
    """A history's decimal without the trailing zeros of its column's 18 places (28151.5, not
    28151.500000000000000000): what was booked. Sums and products of the padded figures carry twice
    the places, past what a Decimal(38, 18) column takes when they are written back."""
    exponent = value.as_tuple().exponent
    if not isinstance(exponent, int) or exponent >= 0:
        return value
    normal = value.normalize(_EXACT)  # no rounding: 38 digits fit
    shift = normal.as_tuple().exponent
    return normal if isinstance(shift, int) and shift <= 0 else value.quantize(Decimal(1), context=_EXACT)


_EXACT = Context(prec=80)


def query_df(client: Client, sql: str) -> pd.DataFrame:
    """Run a query and return its result as a DataFrame (analysis in Python; ``mambo sql`` prints
    ClickHouse's own text instead: :func:`query_output`)."""
    return client.query_df(sql)


def query_format(client: Client, sql: str) -> str | None:
    """The output format a query names in its own ``FORMAT`` clause, or None. ClickHouse's parser
    reads it (``formatQuery`` writes each top-level clause on a line of its own, with newlines in
    literals and names escaped), so a ``FORMAT`` inside a string or a comment is not taken for one."""
    normal = str(client.query("SELECT formatQuery({sql:String})", parameters={"sql": sql}).result_rows[0][0])
    return next(
        (line.removeprefix("FORMAT ") for line in normal.split("\n") if line.startswith("FORMAT ")), None
    )


def query_output(client: Client, sql: str, fmt: Literal["table", "csv"] = "table") -> bytes:
    """A query's result with every value as ClickHouse writes it (a Map as ``{'vwap':61835.79}``, a
    float in its shortest form, NULL as ``\\N``): ``csv`` is ClickHouse's own CSV with a names row
    (``CSVWithNames``), ``table`` the same fields aligned under their names (:func:`format_table`)."""
    if fmt == "csv":
        return client.raw_query(sql, fmt="CSVWithNames")
    if fmt == "table":
        return format_table(
            client.raw_query(sql, fmt="CSVWithNamesAndTypes").decode(errors="replace")
        ).encode()
    raise ValueError(f"unknown format {fmt!r}; use 'table' or 'csv'")


_NUMERIC = re.compile(r"(?:(?:LowCardinality|Nullable)\()*(?:U?Int|Float|BFloat|Decimal)")


def format_table(result: str) -> str:
    """ClickHouse's ``CSVWithNamesAndTypes`` text as an aligned table: each field as ClickHouse wrote
    it (newlines shown as ``\\n``), numbers to the right, ``(0 rows)`` under the names when empty."""
    names, types, *rows = [[f.replace("\n", "\\n") for f in r] for r in csv.reader(io.StringIO(result))]
    right = [_NUMERIC.match(t) is not None for t in types]
    widths = [max(map(len, column)) for column in zip(names, *rows, strict=True)]

    def line(fields: list[str]) -> str:
        cells = (f.rjust(w) if r else f.ljust(w) for f, w, r in zip(fields, widths, right, strict=True))
        return "  ".join(cells).rstrip()

    return "\n".join([line(names), *map(line, rows)] if rows else [line(names), "(0 rows)"]) + "\n"
