"""File replay source: recorded trades and book tops, in event-time order, in batches.

Reads the demo's CSV files (``mambo/data``) or any file of the same columns. Rows that cannot be
parsed are not dropped silently: they come out as dead letters with the line number and the reason,
and the rest of the file goes on.

Batches are contiguous slices of the time-ordered stream of all markets together, so the pipeline
sees exactly the order a live feed would have delivered.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from mambo.schemas.batches import SIDE_CODES, TradeBatch
from mambo.schemas.events import DeadLetter, Quote, make_id, market_key
from mambo.schemas.topics import QUOTES, TRADES

__all__ = ["DEMO_QUOTES", "DEMO_TRADES", "Recording", "load_quotes", "load_trades", "replay"]

NS_PER_MS = 1_000_000


def _demo_file(name: str) -> Path:
    return Path(str(resources.files("mambo") / "data" / name))


DEMO_TRADES = _demo_file("demo_trades.csv.gz")
DEMO_QUOTES = _demo_file("demo_quotes.csv.gz")


def _open(path: Path) -> Iterator[dict[str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
        yield from csv.DictReader(f)


def _dead(topic: str, path: Path, line: int, row: object, reason: str) -> DeadLetter:
    return DeadLetter(
        event_id=make_id("dlq", topic, path.name, line),
        ts_event=0,
        ts_init=0,
        topic=topic,
        key=f"{path.name}:{line}",
        reason=reason,
        payload=json.dumps(row),
    )


@dataclass
class Recording:
    """A whole recording in memory: one trade batch (all markets) and the quotes, time-ordered."""

    trades: TradeBatch
    quotes: list[Quote]
    dead_letters: list[DeadLetter] = field(default_factory=list)

    @property
    def markets(self) -> list[str]:
        return sorted(set(self.trades.keys) | {q.key for q in self.quotes})


def load_trades(
    path: Path = DEMO_TRADES, symbols: set[str] | None = None
) -> tuple[TradeBatch, list[DeadLetter]]:
    """Trades of a CSV (exchange,symbol,trade_id,ts_ms,price,qty,side), optionally only some markets.

    Values are parsed, not validated: a NaN or negative price stays in the batch for the pipeline's
    validation to reject with its reason, as it would from a live feed.
    """
    keys: dict[str, int] = {}
    market, ts, price, qty, side, tid = [], [], [], [], [], []
    dead = []
    for line, row in enumerate(_open(path), start=2):
        try:
            key = market_key(row["exchange"], row["symbol"])
            if symbols is not None and row["symbol"] not in symbols and key not in symbols:
                continue
            t, p, q, s = (
                int(row["ts_ms"]) * NS_PER_MS,
                float(row["price"]),
                float(row["qty"]),
                SIDE_CODES[row["side"]],
            )
        except (KeyError, ValueError, TypeError) as exc:
            dead.append(_dead(TRADES.name, path, line, row, f"malformed trade row: {exc!r}"))
            continue
        market.append(keys.setdefault(key, len(keys)))
        ts.append(t)
        price.append(p)
        qty.append(q)
        side.append(s)
        tid.append(row["trade_id"])
    order = np.argsort(np.array(ts, np.int64), kind="stable")
    batch = TradeBatch(
        tuple(keys),
        np.array(market, np.int32)[order],
        np.array(ts, np.int64)[order],
        np.array(price, np.float64)[order],
        np.array(qty, np.float64)[order],
        np.array(side, np.int8)[order],
        np.array(tid, dtype=object)[order],
    )
    return batch, dead


def load_quotes(
    path: Path = DEMO_QUOTES, symbols: set[str] | None = None
) -> tuple[list[Quote], list[DeadLetter]]:
    """Book tops of a CSV (exchange,symbol,ts_ms,bid,bid_qty,ask,ask_qty)."""
    quotes, dead = [], []
    for line, row in enumerate(_open(path), start=2):
        try:
            if symbols is not None and row["symbol"] not in symbols:
                continue
            ts = int(row["ts_ms"]) * NS_PER_MS
            key = market_key(row["exchange"], row["symbol"])
            quotes.append(
                Quote(
                    event_id=make_id("quote", key, ts),
                    ts_event=ts,
                    ts_init=0,
                    exchange=row["exchange"],
                    symbol=row["symbol"],
                    bid=float(row["bid"]),
                    bid_qty=float(row["bid_qty"]),
                    ask=float(row["ask"]),
                    ask_qty=float(row["ask_qty"]),
                )
            )
        except (KeyError, ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
            dead.append(_dead(QUOTES.name, path, line, row, f"malformed quote row: {exc}"))
    quotes.sort(key=lambda q: q.ts_event)
    return quotes, dead


def replay(recording: Recording, batch_size: int = 10_000) -> Iterator[tuple[TradeBatch, list[Quote]]]:
    """Time-ordered slices: a trade batch and the quotes up to its last trade's time."""
    trades, quotes = recording.trades, recording.quotes
    q = 0
    for start in range(0, len(trades), batch_size):
        batch = trades.slice(start, min(start + batch_size, len(trades)))
        end_ts = int(batch.ts[-1])
        stop = q
        while stop < len(quotes) and quotes[stop].ts_event <= end_ts:
            stop += 1
        yield batch, quotes[q:stop]
        q = stop
    if q < len(quotes):
        yield trades.slice(len(trades), len(trades)), quotes[q:]
