"""`mambo sql` over a real history (a paper demo of BTC/USDT in a fresh folder), as a user runs it.

Issue 12 #10: the CSV printed Map columns as Python reprs (``{'vwap': np.float64(61835.79)}``), and a
query ending in a FORMAT clause was a syntax error (the client appended a FORMAT of its own). Values now
print as ClickHouse writes them, the same in the table, and a query's own FORMAT is honoured.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

MAMBO = [sys.executable, "-m", "mambo.cli"]
INDICATORS = (
    "SELECT event_id, toUnixTimestamp64Nano(ts_event) AS ts, values FROM indicators FINAL "
    "ORDER BY ts_event, event_id LIMIT 40"
)


def mambo(*args: str, data_dir: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*MAMBO, *args, "--data-dir", str(data_dir)], capture_output=True, timeout=300, check=False
    )


def sql(query: str, data_dir: Path, *options: str) -> bytes:
    done = mambo("sql", query, *options, data_dir=data_dir)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("sql")
    done = mambo("demo", "--venue", "paper", "--symbols", "BTC/USDT", data_dir=data_dir)
    assert done.returncode == 0, done.stderr.decode() + done.stdout.decode()
    return data_dir


def test_csv_prints_a_map_as_clickhouse_writes_it(history: Path) -> None:
    """Each Map field is ClickHouse's text of the map (``{'vwap':61835.79}``), which read as a literal
    holds exactly the numbers ClickHouse's JSON gives for the same rows; no Python repr anywhere."""
    out = sql(INDICATORS, history, "--format", "csv").decode()
    assert "np.float64" not in out
    rows = list(csv.DictReader(io.StringIO(out)))
    as_json = [json.loads(line) for line in sql(INDICATORS + " FORMAT JSONEachRow", history).splitlines()]
    assert len(rows) == len(as_json) == 40
    for row, reference in zip(rows, as_json, strict=True):
        assert re.fullmatch(r"\{('[a-z_0-9]+':-?[0-9.e+-]+(,|(?=\})))+\}", row["values"]), row["values"]
        assert ast.literal_eval(row["values"]) == reference["values"]
        assert (row["event_id"], int(row["ts"])) == (reference["event_id"], int(reference["ts"]))


def test_the_table_shows_the_same_fields(history: Path) -> None:
    rows = list(csv.DictReader(io.StringIO(sql(INDICATORS, history, "--format", "csv").decode())))
    table = sql(INDICATORS, history).decode().splitlines()
    assert table[0].split() == ["event_id", "ts", "values"]
    assert [line.split() for line in table[1:]] == [[r["event_id"], r["ts"], r["values"]] for r in rows]
    empty = sql("SELECT symbol, count() AS n FROM trades WHERE 0 GROUP BY symbol", history).decode()
    assert empty.splitlines() == ["symbol  n", "(0 rows)"]


def test_a_query_ending_in_format_gets_clickhouse_output_in_it(history: Path) -> None:
    query = (
        "SELECT timeframe, count() AS n, sum(volume) AS v FROM candles FINAL GROUP BY timeframe ORDER BY 1"
    )
    reference = list(csv.DictReader(io.StringIO(sql(query, history, "--format", "csv").decode())))
    assert reference and {r["timeframe"] for r in reference} == {"1s", "1m"}
    lines = [json.loads(line) for line in sql(query + " FORMAT JSONEachRow", history).splitlines()]
    assert [(d["timeframe"], str(d["n"]), d["v"]) for d in lines] == [
        (r["timeframe"], r["n"], float(r["v"])) for r in reference
    ]
    parquet = pq.read_table(io.BytesIO(sql(query + "\nFORMAT Parquet;", history))).to_pylist()
    assert [(d["timeframe"], d["n"], d["v"]) for d in parquet] == [
        (r["timeframe"], int(r["n"]), float(r["v"])) for r in reference
    ]
    # a FORMAT in a string or a comment is not a clause
    assert sql("SELECT 'FORMAT CSV' AS s -- FORMAT TSV", history).decode().splitlines() == ["s", "FORMAT CSV"]


def test_a_format_clause_and_a_different_format_option_are_refused(history: Path) -> None:
    done = mambo("sql", "SELECT 1 AS x FORMAT TSV", "--format", "csv", data_dir=history)
    assert done.returncode == 2 and done.stdout == b""
    assert done.stderr.decode().startswith("error: the query asks for FORMAT TSV and --format for csv")
    bad = mambo("sql", "SELECT 1 AS x", "--format", "json", data_dir=history)
    assert bad.returncode == 2 and b"table or csv" in bad.stderr
