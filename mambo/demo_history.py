"""Each ``mambo demo`` starts from an empty history, and never clears one it did not write.

A demo on the local exchange is timed like a live run, so two runs make different orders, and the
exchange's trade ids restart with it: left in place, a previous run's rows would mix with the new
ones in every query. So the demo clears the pipeline's tables first, but only when what is there is
a demo's: a marker file beside the data (``<data_dir>/demo.json``) records that a demo is running,
and when it ended, a fingerprint of what it left (distinct event ids of trades, orders and fills,
which merges do not change). A history whose fingerprint differs, or one with no marker (written by
``mambo trade``, ``mambo sink``, ...), is refused with a reason instead. Backtest runs are not
pipeline tables and stay.
"""

from __future__ import annotations

import json
from pathlib import Path

from clickhouse_connect.driver.client import Client

from mambo.schemas.topics import ALL_TOPICS

__all__ = ["ForeignHistoryError", "begin", "end"]

_FINGERPRINT_TABLES = ("trades", "orders", "fills")


class ForeignHistoryError(RuntimeError):
    """The data folder holds a history that the last demo did not leave."""


def _marker(data_dir: Path) -> Path:
    return data_dir / "demo.json"


def _tables(client: Client, database: str) -> set[str]:
    rows = client.query("SELECT name FROM system.tables WHERE database = {db:String}", {"db": database})
    return {r[0] for r in rows.result_rows}


def fingerprint(client: Client, database: str) -> dict[str, int]:
    """Distinct event ids per table of :data:`_FINGERPRINT_TABLES` (0 where a table is missing)."""
    present = _tables(client, database)
    return {
        t: int(client.query(f"SELECT uniqExact(event_id) FROM `{database}`.`{t}`").result_rows[0][0])
        if t in present
        else 0
        for t in _FINGERPRINT_TABLES
    }


def begin(client: Client, database: str, data_dir: Path) -> bool:
    """Clear the pipeline tables of ``database`` if they hold only a demo's history (or nothing);
    raise :class:`ForeignHistoryError` otherwise. Returns whether there was a history to clear."""
    marker = _marker(data_dir)
    found = fingerprint(client, database)
    if any(found.values()):
        state = json.loads(marker.read_text()) if marker.exists() else None
        ours = state is not None and (state.get("state") == "running" or state.get("fingerprint") == found)
        if not ours:
            counts = ", ".join(f"{n:,} {t}" for t, n in found.items())
            raise ForeignHistoryError(
                f"{data_dir} holds a history the last demo did not leave ({counts}); the demo starts "
                f"from an empty history and will not clear it: give the demo its own --data-dir"
            )
    for table in sorted({t.table for t in ALL_TOPICS} & _tables(client, database)):
        client.command(f"TRUNCATE TABLE `{database}`.`{table}`")
    data_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"state": "running"}))
    return any(found.values())


def end(client: Client, database: str, data_dir: Path) -> None:
    """Record the fingerprint of the history the demo leaves (call after the last flush)."""
    _marker(data_dir).write_text(json.dumps({"state": "done", "fingerprint": fingerprint(client, database)}))
