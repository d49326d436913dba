"""The wire format of every topic, derived from the schemas: JSON of the topic's pydantic model.

One message is one event, keyed by the topic's key field (``exchange:symbol`` for market data), with
two headers: ``mambo-schema`` (the model's :attr:`~mambo.schemas.events.Event.schema_version`) and
``mambo-type`` (the model's name). Trades, the one high-volume topic, have a column fast path in
both directions (:func:`encode_trades`, :func:`decode_trades`) that writes and reads exactly what
``Trade.model_dump_json`` / ``Trade.model_validate_json`` would, with orjson (about 1 us a trade
against 6 us through pydantic). Decimals travel as strings, so money is exact; NaN cannot be sent
(JSON has none), which is why the indicator stage leaves warming-up values out.

A message that cannot be decoded raises :class:`DecodeError` with the reason; the consumers turn it
into a :class:`~mambo.schemas.events.DeadLetter` with its origin (topic, partition, offset).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import orjson
from pydantic import ValidationError

from mambo.schemas.batches import SIDE_CODES, TradeBatch, validate_trades
from mambo.schemas.events import ControlCommand, DeadLetter, Event, FundingRate, MarkPrice, make_id, split_key
from mambo.schemas.topics import CONTROL_MARKETS, FUNDING_RATES, MARK_PRICES, TRADES, Topic

__all__ = [
    "SCHEMA_HEADER",
    "WATERMARK_HEADERS",
    "DecodeError",
    "check_trades",
    "dead_letter",
    "decode",
    "decode_inline",
    "decode_trades",
    "decode_watermark",
    "encode",
    "encode_trades",
    "encode_watermark",
    "headers_for",
    "is_funding",
    "is_watermark",
    "runs_of_trades",
]

SCHEMA_HEADER = "mambo-schema"
TYPE_HEADER = "mambo-type"
Headers = list[tuple[str, str | bytes | None]]
_SIDE_NAMES = ("sell", "", "buy")  # side code + 1


class DecodeError(ValueError):
    """A message that is not a valid event of its topic; the message says why."""


def headers_for(model: type[Event]) -> Headers:
    return [(SCHEMA_HEADER, str(model.schema_version).encode()), (TYPE_HEADER, model.__name__.encode())]


def encode(topic: Topic, event: Event) -> tuple[str, bytes]:
    """(key, value) of one event on ``topic``."""
    return topic.key_of(event), event.model_dump_json().encode()


def _check_version(topic: Topic, headers: Any) -> None:
    for name, value in headers or ():
        if name == SCHEMA_HEADER:
            if value != str(topic.model.schema_version).encode():
                raise DecodeError(
                    f"schema version {value!r} of {topic.model.__name__} is not the supported "
                    f"{topic.model.schema_version}"
                )
            return


def decode(topic: Topic, value: bytes | None, headers: Any = None) -> Event:
    """The event in a message of ``topic``; DecodeError with the reason if it is not one."""
    _check_version(topic, headers)
    if value is None:
        raise DecodeError("empty message (a tombstone) where an event was expected")
    try:
        return topic.model.model_validate_json(value)
    except ValidationError as ex:
        errs = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'message'}: {e['msg']}" for e in ex.errors()[:3])
        raise DecodeError(f"not a {topic.model.__name__}: {errs}") from ex


def encode_trades(batch: TradeBatch) -> Iterator[tuple[str, bytes]]:
    """(key, value) per trade, in stream order; each value is a Trade's JSON."""
    if not len(batch):
        return
    parts = [split_key(k) for k in batch.keys]
    ids = batch.event_ids().astype("U16").tolist()
    ts_init = int(batch.ts_init)
    dumps = orjson.dumps
    for i, (m, ts, price, qty, side, tid) in enumerate(
        zip(
            batch.market.tolist(),
            batch.ts.tolist(),
            batch.price.tolist(),
            batch.qty.tolist(),
            batch.side.tolist(),
            batch.trade_id.tolist(),
            strict=True,
        )
    ):
        ex, sym = parts[m]
        yield (
            batch.keys[m],
            dumps(
                {
                    "event_id": ids[i],
                    "ts_event": ts,
                    "ts_init": ts_init,
                    "exchange": ex,
                    "symbol": sym,
                    "trade_id": str(tid),
                    "price": price,
                    "qty": qty,
                    "side": _SIDE_NAMES[side + 1],
                }
            ),
        )


_TRADE_FIELDS = ("ts_event", "ts_init", "exchange", "symbol", "trade_id", "price", "qty")


_ALL_TRADE_FIELDS = frozenset((*_TRADE_FIELDS, "event_id", "side"))


def _trade_row(value: bytes | None) -> dict[str, Any]:
    try:  # the fast path: a well-formed trade, as encode_trades writes it, in one expression
        row = orjson.loads(value)  # type: ignore[arg-type]
        if (
            row.keys() == _ALL_TRADE_FIELDS
            and type(row["ts_event"]) is int
            and type(row["ts_init"]) is int
            and type(row["price"]) is float
            and type(row["qty"]) is float
            and type(row["exchange"]) is str
            and type(row["symbol"]) is str
            and type(row["trade_id"]) is str
            and row["exchange"]
            and row["symbol"]
            and row["trade_id"]
            and row["side"] in SIDE_CODES
        ):
            return row
    except Exception:
        pass
    return _trade_row_checked(value)


def _trade_row_checked(value: bytes | None) -> dict[str, Any]:
    if value is None:
        raise DecodeError("empty message (a tombstone) where a Trade was expected")
    try:
        row = orjson.loads(value)
    except orjson.JSONDecodeError as ex:
        raise DecodeError(f"not JSON: {ex}") from ex
    if not isinstance(row, dict):
        raise DecodeError(f"not a Trade: a JSON {type(row).__name__}, not an object")
    missing = [f for f in _TRADE_FIELDS if f not in row]
    if missing:
        raise DecodeError(f"not a Trade: missing {', '.join(missing)}")
    extra = set(row) - {*_TRADE_FIELDS, "event_id", "side"}
    if extra:
        raise DecodeError(f"not a Trade: unknown field(s) {', '.join(sorted(extra))}")
    for f in ("ts_event", "ts_init"):
        if type(row[f]) is not int:
            raise DecodeError(f"not a Trade: {f} must be an integer (ns), got {row[f]!r}")
    for f in ("price", "qty"):
        if type(row[f]) not in (int, float):
            raise DecodeError(f"not a Trade: {f} must be a number, got {row[f]!r}")
    for f in ("exchange", "symbol", "trade_id"):
        if not isinstance(row[f], str) or not row[f]:
            raise DecodeError(f"not a Trade: {f} must be a non-empty string, got {row[f]!r}")
    if row.get("side", "") not in SIDE_CODES:
        raise DecodeError(f"not a Trade: side must be buy, sell or empty, got {row['side']!r}")
    return row


def decode_trades(
    values: Sequence[bytes | None],
) -> tuple[TradeBatch, np.ndarray, list[tuple[int, str]]]:
    """Trade messages as one batch in message order, each trade's own ``ts_init``, and
    ``(index, reason)`` of the messages that failed.

    The batch's ``ts_init`` is the earliest of its trades' (so a latency measured from it is never
    flattering). Values (price > 0, known market) are checked later by
    :func:`~mambo.schemas.batches.validate_trades`, as in the embedded runtime.
    """
    rows: list[dict[str, Any]] = []
    bad: list[tuple[int, str]] = []
    for i, v in enumerate(values):
        try:
            rows.append(_trade_row(v))
        except DecodeError as ex:
            bad.append((i, str(ex)))
    keys: dict[str, int] = {}
    ts_init = np.array([r["ts_init"] for r in rows], np.int64)
    codes = [keys.setdefault(f"{r['exchange']}:{r['symbol']}", len(keys)) for r in rows]
    batch = TradeBatch(
        tuple(keys),
        np.array(codes, np.int32),
        np.array([r["ts_event"] for r in rows], np.int64),
        np.array([r["price"] for r in rows], np.float64),
        np.array([r["qty"] for r in rows], np.float64),
        np.array([SIDE_CODES[r.get("side", "")] for r in rows], np.int8),
        np.array([r["trade_id"] for r in rows], dtype=object),
        int(ts_init.min()) if len(rows) else 0,
    )
    return batch, ts_init, bad


def check_trades(
    batch: TradeBatch, known_markets: Collection[str] | None = None
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Row indices of the trades :func:`~mambo.schemas.batches.validate_trades` keeps, and
    ``(row, reason)`` of the others (so a consumer can name each bad message's offset)."""
    indexed = TradeBatch(
        batch.keys, batch.market, batch.ts, batch.price, batch.qty, batch.side, np.arange(len(batch)), 0
    )
    good, dead = validate_trades(indexed, known_markets, TRADES.name)
    rows = good.trade_id.astype(np.int64)
    if not dead:
        return rows, []
    bad = np.setdiff1d(np.arange(len(batch)), rows).tolist()
    return rows, [(i, d.reason) for i, d in zip(bad, dead, strict=True)]


def dead_letter(
    topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None, reason: str, ts: int
) -> DeadLetter:
    """The dead letter of a message that could not be decoded or processed, with its origin."""
    body = (value or b"").decode("utf-8", "backslashreplace")
    k = (key or b"").decode("utf-8", "backslashreplace")
    return DeadLetter(
        event_id=make_id("dlq", topic, partition, offset),
        ts_event=max(ts, 0),
        ts_init=max(ts, 0),
        topic=topic,
        partition=partition,
        offset=offset,
        key=k,
        reason=reason,
        payload=body[:10_000],
    )


# --- source watermarks on md.trades ----------------------------------------------------------------
#
# A source that knows a market has no trade to come before some time (a replay, where every market's
# trades are in time order; an idle market's stream) says so on the market's md.trades partition, in
# line with its trades: a record typed ``MarketWatermark`` (header), ``{"exchange", "symbol",
# "watermark", "ts_init"}``. The worker closes the market's candles that end by then and tells its
# accounts (so a market that went quiet does not hold its account back); the sink and every trade
# reader skip it. In the partition, after the trades before it: a record on another topic could be
# read before them.

WATERMARK_TYPE = b"MarketWatermark"
WATERMARK_HEADERS: Headers = [(SCHEMA_HEADER, b"1"), (TYPE_HEADER, WATERMARK_TYPE)]
#: A perpetual's funding time, in line with its market's trades the same way (a copy of the md.funding
#: record): the worker settles it after the candles that end by then, wherever the markets ran.
FUNDING_TYPE = b"FundingRate"
#: A control command's copy for the market (:func:`mambo.core.control.expand`), in line the same way:
#: the command acts where the market's stream was when it was sent.
CONTROL_TYPE = b"ControlCommand"
#: A perpetual's mark price from the venue (a copy of the md.mark record), in line the same way: the
#: account takes it where it came in the market's stream (after the trades before it).
MARK_TYPE = b"MarkPrice"
_INLINE_TYPES = (WATERMARK_TYPE, FUNDING_TYPE, CONTROL_TYPE, MARK_TYPE)
#: What an in-line record is: a watermark (market key, watermark, ts_init), a funding time, a command,
#: a mark price.
Inline = tuple[str, int, int] | FundingRate | ControlCommand | MarkPrice


def encode_watermark(key: str, watermark: int, ts_init: int) -> bytes:
    exchange, symbol = split_key(key)
    return orjson.dumps({"exchange": exchange, "symbol": symbol, "watermark": watermark, "ts_init": ts_init})


def is_watermark(headers: Any) -> bool:
    """Whether a md.trades record is an in-line record (by its type header: a watermark, a funding time,
    a control command, a mark price), not a trade."""
    return any(name == TYPE_HEADER and value in _INLINE_TYPES for name, value in headers or ())


def is_funding(headers: Any) -> bool:
    """Whether an in-line md.trades record is a funding time (a FundingRate), not a watermark."""
    return any(name == TYPE_HEADER and value == FUNDING_TYPE for name, value in headers or ())


def decode_watermark(value: bytes | None) -> tuple[str, int, int]:
    """(market key, watermark, ts_init) of a watermark record; DecodeError with the reason."""
    try:
        row = orjson.loads(value or b"")
        key = f"{row['exchange']}:{row['symbol']}"
        watermark, ts_init = row["watermark"], row["ts_init"]
    except Exception as ex:
        raise DecodeError(f"not a MarketWatermark: {ex!r}") from ex
    if type(watermark) is not int or type(ts_init) is not int or not row["exchange"] or not row["symbol"]:
        raise DecodeError(f"not a MarketWatermark: {row!r}")
    return key, watermark, ts_init


T = TypeVar("T")


def decode_inline(value: bytes | None, headers: Any) -> Inline:
    """An in-line md.trades record (see :func:`is_watermark`); DecodeError with the reason."""
    kind = next((v for n, v in headers or () if n == TYPE_HEADER), None)
    if kind == FUNDING_TYPE:
        return decode(FUNDING_RATES, value, headers)  # type: ignore[return-value]
    if kind == CONTROL_TYPE:
        return decode(CONTROL_MARKETS, value, headers)  # type: ignore[return-value]
    if kind == MARK_TYPE:
        return decode(MARK_PRICES, value, headers)  # type: ignore[return-value]
    return decode_watermark(value)


def runs_of_trades(items: Sequence[T], headers: Callable[[T], Any]) -> Iterator[tuple[bool, list[T]]]:
    """A partition's md.trades records as consecutive runs: (is a watermark run, its records)."""
    run: list[T] = []
    kind = False
    for item in items:
        wm = is_watermark(headers(item))
        if run and wm != kind:
            yield kind, run
            run = []
        kind = wm
        run.append(item)
    if run:
        yield kind, run
