"""The ClickHouse history of candles and trades, filled from files (``mambo import``) and over REST
(``mambo download``), once per bar and per trade however often a load is repeated.

Where to start: :func:`store_candles` and :func:`store_trades` add what the history lacks and say
how much was new; :func:`candle_span` is where a market's history ends, from where a download resumes;
:func:`gaps` lists the bars missing from a run of candles.

Idempotent twice over: rows already there (the same bar's open time, the same trade id) are not sent
again, and every row's ``event_id`` is the hash of its source identity, the one the live pipeline
gives an exchange's candle or trade (``make_id("md.candles", ...)``, :func:`trade_event_ids`), so a
bar loaded from a file and the same bar downloaded are one event.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from clickhouse_connect.driver.client import Client

from mambo.connectors.clickhouse import ClickHouseSink
from mambo.formats import MarketData
from mambo.schemas.batches import SIDE_CODES, TradeBatch
from mambo.schemas.events import make_id, market_key, timeframe_ns

__all__ = [
    "CandleSpan",
    "Loaded",
    "candle_span",
    "gaps",
    "import_market_data",
    "store_candles",
    "store_trades",
]


@dataclass(frozen=True)
class CandleSpan:
    """A market's candles of one timeframe in the history: how many, first and last open time (ns)."""

    count: int
    first: int | None
    last: int | None


def candle_span(client: Client, database: str, exchange: str, symbol: str, timeframe: str) -> CandleSpan:
    """How far the history of one market and timeframe reaches."""
    [(count, first, last)] = client.query(
        "SELECT uniqExact(open_time), toUnixTimestamp64Nano(min(open_time)), "
        f"toUnixTimestamp64Nano(max(open_time)) FROM `{database}`.candles "
        "WHERE exchange = {ex:String} AND symbol = {sym:String} AND timeframe = {tf:String}",
        parameters={"ex": exchange, "sym": symbol, "tf": timeframe},
    ).result_rows
    return CandleSpan(int(count), int(first) if count else None, int(last) if count else None)


def gaps(open_time: npt.NDArray[np.int64], step: int) -> list[tuple[int, int]]:
    """The missing bars between sorted open times: ``(first missing, bars missing)`` per gap."""
    jumps = np.diff(open_time)
    at = np.flatnonzero(jumps > step)
    return [(int(open_time[i]) + step, int(jumps[i]) // step - 1) for i in at]


def _present(client: Client, sql: str, params: dict[str, object]) -> npt.NDArray[np.int64]:
    rows = client.query(sql, parameters=params).result_rows
    return np.array([r[0] for r in rows], dtype=np.int64)


def store_candles(
    sink: ClickHouseSink,
    exchange: str,
    symbol: str,
    timeframe: str,
    columns: Mapping[str, npt.NDArray[Any]],
) -> int:
    """Buffer the candles (``open_time`` ns, open, high, low, close, volume; closed bars) the history
    does not hold yet, as an exchange's candles (``trades`` 0); returns how many were new. Flush the
    sink to write them."""
    open_time = np.asarray(columns["open_time"], dtype=np.int64)
    if not len(open_time):
        return 0
    there = _present(
        sink.client,
        f"SELECT DISTINCT toUnixTimestamp64Nano(open_time) FROM `{sink.database}`.candles "
        "WHERE exchange = {ex:String} AND symbol = {sym:String} AND timeframe = {tf:String} "
        "AND open_time BETWEEN fromUnixTimestamp64Nano({lo:Int64}) AND fromUnixTimestamp64Nano({hi:Int64})",
        {
            "ex": exchange,
            "sym": symbol,
            "tf": timeframe,
            "lo": int(open_time.min()),
            "hi": int(open_time.max()),
        },
    )
    new = ~np.isin(open_time, there)
    n = int(new.sum())
    if n:
        ot = open_time[new]
        step = timeframe_ns(timeframe)
        sink.write_columns(
            "candles",
            {
                "event_id": [make_id("md.candles", exchange, symbol, timeframe, int(t)) for t in ot],
                "ts_event": ot + step,
                "ts_init": np.full(n, time.time_ns(), np.int64),
                "exchange": [exchange] * n,
                "symbol": [symbol] * n,
                "timeframe": [timeframe] * n,
                "open_time": ot,
                **{
                    c: np.asarray(columns[c], dtype=np.float64)[new] for c in ("open", "high", "low", "close")
                },
                "volume": np.asarray(columns["volume"], dtype=np.float64)[new],
                "trades": np.zeros(n, np.int64),
            },
        )
    return n


def store_trades(
    sink: ClickHouseSink,
    exchange: str,
    symbol: str,
    ts: npt.NDArray[np.int64],
    trade_id: npt.NDArray[np.object_],
    price: npt.NDArray[np.float64],
    qty: npt.NDArray[np.float64],
    side: npt.NDArray[np.object_],
) -> int:
    """Buffer the trades whose id the history does not hold yet for the market; returns how many were
    new. Flush the sink to write them."""
    if not len(ts):
        return 0
    there = {
        r[0]
        for r in sink.client.query(
            f"SELECT DISTINCT trade_id FROM `{sink.database}`.trades WHERE exchange = {{ex:String}} AND "
            "symbol = {sym:String} AND ts_event BETWEEN fromUnixTimestamp64Nano({lo:Int64}) "
            "AND fromUnixTimestamp64Nano({hi:Int64})",
            parameters={"ex": exchange, "sym": symbol, "lo": int(ts.min()), "hi": int(ts.max())},
        ).result_rows
    }
    ids = np.asarray(trade_id, dtype=object)
    _, first = np.unique(ids, return_index=True)  # a file listing a trade twice gives it once
    new = np.zeros(len(ids), bool)
    new[first] = True
    new &= ~np.isin(ids, list(there))
    n = int(new.sum())
    if n:
        batch = TradeBatch(
            (market_key(exchange, symbol),),
            np.zeros(n, np.int32),
            np.asarray(ts, np.int64)[new],
            np.asarray(price, np.float64)[new],
            np.asarray(qty, np.float64)[new],
            np.array([SIDE_CODES[s] for s in side[new]], np.int8),
            ids[new],
            ts_init=time.time_ns(),
        )
        sink.write_columns("trades", batch.columns())
    return n


@dataclass(frozen=True)
class Loaded:
    """What one file added to the history of one market."""

    key: str
    what: str  # "5m candles" or "trades"
    rows: int
    new: int
    first: int
    last: int
    gaps: tuple[tuple[int, int], ...] = ()


def import_market_data(
    sink: ClickHouseSink, data: MarketData, exchange: str | None = None, symbol: str | None = None
) -> Loaded:
    """Store one read file (:func:`mambo.formats.read_market_file`) in the history: its market is the
    one its name gives, else ``exchange``/``symbol``. Candles are checked as a backtest checks them
    (:func:`~mambo.backtest.data.frame_from_file`); a series that is not traded prices (freqtrade's
    mark and funding-rate files) is refused with a ValueError, as is a file naming no market."""
    from mambo.backtest.data import frame_from_file

    sym = data.symbol or symbol
    ex = data.exchange or exchange or "binance"
    if sym is None:
        raise ValueError(f"{data.path}: its name gives no market; name it with --symbols")
    if data.kind == "trades":
        f = data.frame
        ts = f.ts.to_numpy(np.int64)
        n = store_trades(
            sink, ex, sym, ts, f.trade_id.to_numpy(object), f.price.to_numpy(np.float64),
            f.qty.to_numpy(np.float64), f.side.to_numpy(object),
        )  # fmt: skip
        return Loaded(market_key(ex, sym), "trades", len(f), n, int(ts.min()), int(ts.max()))
    if not data.name.traded:
        raise ValueError(f"{data.path}: a {data.name.candle_type} series, not traded candles: not imported")
    frame = frame_from_file(data, ex, sym)
    cols = {c: getattr(frame, c) for c in ("open_time", "open", "high", "low", "close", "volume")}
    n = store_candles(sink, ex, sym, frame.timeframe, cols)
    return Loaded(
        frame.key, f"{frame.timeframe} candles", len(frame), n, int(frame.open_time[0]),
        int(frame.open_time[-1]), tuple(gaps(frame.open_time, frame.step)),
    )  # fmt: skip
