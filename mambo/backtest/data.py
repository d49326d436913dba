"""Candle history for backtests: :class:`CandleFrame` (one market's closed candles as numpy columns)
and :func:`load_candles`, which reads a candle file in any format :mod:`mambo.formats` knows
(freqtrade, ccxt, Binance bulk data, CSV, Parquet) or a ClickHouse candles table.

Bad input is refused whole with a :class:`CandleDataError` that names the rows and what is wrong
with them: a backtest over silently repaired data would show numbers nobody can trust.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from mambo.schemas.events import NS_PER_SECOND, Candle, make_id, timeframe_ns

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from mambo.formats import MarketData

__all__ = [
    "COLUMNS",
    "TRADES_TIMEFRAME",
    "CandleDataError",
    "CandleFrame",
    "frame_from_df",
    "frame_from_file",
    "load_candles",
    "parse_time",
    "read_candle_file",
]

#: The columns a candle file must have.
COLUMNS: tuple[str, ...] = ("timestamp", "open", "high", "low", "close", "volume")
_PRICES = ("open", "high", "low", "close")


class CandleDataError(ValueError):
    """The candle history cannot be used as given; the message says which rows and why."""


@dataclass(frozen=True)
class CandleFrame:
    """Closed candles of one market and timeframe, oldest first, as float64 / int64 columns."""

    exchange: str
    symbol: str
    timeframe: str
    open_time: npt.NDArray[np.int64]  # ns since epoch UTC
    open: npt.NDArray[np.float64]
    high: npt.NDArray[np.float64]
    low: npt.NDArray[np.float64]
    close: npt.NDArray[np.float64]
    volume: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.open_time)

    @property
    def key(self) -> str:
        return f"{self.exchange}:{self.symbol}"

    @cached_property
    def step(self) -> int:
        """The timeframe in ns."""
        return timeframe_ns(self.timeframe)

    @property
    def ts_event(self) -> npt.NDArray[np.int64]:
        """Each candle's close time: the moment it is known, and its event time."""
        return self.open_time + self.step

    def slice(self, start: int, stop: int) -> CandleFrame:
        cols = {
            c: getattr(self, c)[start:stop] for c in ("open_time", "open", "high", "low", "close", "volume")
        }
        return CandleFrame(self.exchange, self.symbol, self.timeframe, **cols)

    def between(self, start: int | None, end: int | None) -> CandleFrame:
        """Candles opening at or after ``start`` and before ``end`` (ns; None leaves that side open)."""
        lo = 0 if start is None else int(np.searchsorted(self.open_time, start, "left"))
        hi = len(self) if end is None else int(np.searchsorted(self.open_time, end, "left"))
        return self.slice(lo, hi)

    def candle(self, i: int) -> Candle:
        """Candle ``i`` as the event the live pipeline would see (ts_init = its close time)."""
        t = int(self.open_time[i])
        end = t + self.step
        return Candle(
            event_id=make_id("candle", self.exchange, self.symbol, self.timeframe, t),
            ts_event=end,
            ts_init=end,
            exchange=self.exchange,
            symbol=self.symbol,
            timeframe=self.timeframe,
            open_time=t,
            open=float(self.open[i]),
            high=float(self.high[i]),
            low=float(self.low[i]),
            close=float(self.close[i]),
            volume=float(self.volume[i]),
            trades=0,
        )

    def candles(self) -> list[Candle]:
        return [self.candle(i) for i in range(len(self))]

    def tile(self, times: int) -> CandleFrame:
        """The history repeated ``times`` times, each copy shifted in time and scaled in price so it
        starts where the previous one ended (for benchmarks that need more bars than were recorded)."""
        n, step = len(self), self.step
        span = int(self.open_time[-1] - self.open_time[0]) + step
        parts: dict[str, list[Any]] = {c: [] for c in ("open_time", "open", "high", "low", "close", "volume")}
        scale = 1.0
        for k in range(times):
            parts["open_time"].append(self.open_time + k * span)
            for c in _PRICES:
                parts[c].append(getattr(self, c) * scale)
            parts["volume"].append(self.volume)
            scale *= float(self.close[-1] / self.open[0])
        cols = {c: np.concatenate(v) for c, v in parts.items()}
        assert len(cols["open_time"]) == n * times
        return CandleFrame(self.exchange, self.symbol, self.timeframe, **cols)


def parse_time(text: str) -> int:
    """An ISO 8601 time (UTC unless it says otherwise) or epoch milliseconds, as ns since epoch."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text) * 1_000_000
    try:
        ts = pd.Timestamp(text)
    except ValueError as e:
        raise CandleDataError(f"bad time {text!r}: use ISO 8601 (2022-01-01T00:00Z) or epoch ms") from e
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int(ts.as_unit("ns").value)


def _timestamps(col: pd.Series) -> npt.NDArray[np.int64]:
    """ISO strings, datetimes or epoch milliseconds as int64 ns."""
    if pd.api.types.is_datetime64_any_dtype(col):
        ts = pd.to_datetime(col, utc=True)
    elif pd.api.types.is_numeric_dtype(col):
        ts = pd.to_datetime(col, unit="ms", utc=True, errors="coerce")
    else:
        ts = pd.to_datetime(col, utc=True, errors="coerce", format="ISO8601")
    bad = np.flatnonzero(ts.isna().to_numpy())
    if len(bad):
        raise CandleDataError(f"{_rows(bad)}: timestamp is not ISO 8601 or epoch milliseconds")
    return np.asarray(ts.dt.as_unit("ns").astype("int64").to_numpy(), dtype=np.int64)


def _rows(idx: npt.NDArray[np.intp]) -> str:
    """Data rows named as in the file (1 = the first row after the header)."""
    shown = ", ".join(str(int(i) + 1) for i in idx[:5])
    more = f" and {len(idx) - 5} more" if len(idx) > 5 else ""
    return f"row{'s' if len(idx) > 1 else ''} {shown}{more}"


def _timeframe(open_time: npt.NDArray[np.int64]) -> str:
    """The timeframe the spacing of the candles shows (the most common step)."""
    steps = np.diff(open_time)
    if not len(steps):
        raise CandleDataError("need at least two candles to tell the timeframe; pass --timeframe")
    values, counts = np.unique(steps, return_counts=True)
    step = int(values[np.argmax(counts)])
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if step % (size * NS_PER_SECOND) == 0:
            return f"{step // (size * NS_PER_SECOND)}{unit}"
    raise CandleDataError(f"candles are {step} ns apart: not a whole number of seconds")


def frame_from_df(df: pd.DataFrame, exchange: str, symbol: str, timeframe: str | None = None) -> CandleFrame:
    """Check a DataFrame with :data:`COLUMNS` and make it a :class:`CandleFrame`."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise CandleDataError(
            f"missing column(s) {', '.join(missing)}; a candle file has {', '.join(COLUMNS)}"
        )
    if not len(df):
        raise CandleDataError("no candles")
    open_time = _timestamps(df["timestamp"])
    cols: dict[str, npt.NDArray[np.float64]] = {}
    for c in (*_PRICES, "volume"):
        values = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values) | ((values <= 0) if c != "volume" else (values < 0)))
        if len(bad):
            rule = "a finite number >= 0" if c == "volume" else "a finite number > 0"
            raise CandleDataError(f"{_rows(bad)}: {c} must be {rule}")
        cols[c] = values
    bad = np.flatnonzero(
        (cols["high"] < np.maximum(cols["open"], cols["close"]))
        | (cols["low"] > np.minimum(cols["open"], cols["close"]))
    )
    if len(bad):
        raise CandleDataError(f"{_rows(bad)}: high/low do not contain open and close")
    bad = np.flatnonzero(np.diff(open_time) <= 0) + 1
    if len(bad):
        raise CandleDataError(f"{_rows(bad)}: timestamps must increase strictly (sort, drop duplicates)")
    tf = timeframe or _timeframe(open_time)
    timeframe_ns(tf)
    return CandleFrame(exchange, symbol, tf, open_time, **cols)


def read_candle_file(path: str | Path) -> MarketData:
    """Candles, or trades to build them from, in any format :mod:`mambo.formats` reads;
    :class:`CandleDataError` for a file that is not one, or a series that is not traded prices (a mark
    price, a funding rate)."""
    from mambo.formats import DataFormatError, read_market_file

    try:
        data = read_market_file(path)
    except DataFormatError as e:
        raise CandleDataError(str(e)) from e
    if data.kind == "candles" and not data.name.traded:
        raise CandleDataError(
            f"{path}: {data.format} of a {data.name.candle_type} series, not traded prices: "
            "nothing to trade on"
        )
    return data


#: The timeframe of candles built from a trade file when none is given (said in the output).
TRADES_TIMEFRAME = "1m"


def frame_from_file(
    data: MarketData,
    exchange: str,
    symbol: str,
    timeframe: str | None = None,
    start: int | None = None,
    end: int | None = None,
) -> CandleFrame:
    """A read file as a checked :class:`CandleFrame`, limited to ``[start, end)`` (ns). Candles keep
    the timeframe given, else the file name's, else their spacing's; trades become candles of the
    timeframe given (else :data:`TRADES_TIMEFRAME`) as the live pipeline builds them
    (:class:`~mambo.core.candles.CandleBuilder`; a minute without trades has no candle)."""
    if data.kind == "trades":
        timeframe = timeframe or TRADES_TIMEFRAME
        df = _candles_from_trades(data.frame, exchange, symbol, timeframe)
    else:
        df = data.frame.rename(columns={"open_time": "timestamp"})
        df["timestamp"] = pd.to_datetime(df["timestamp"], unit="ns", utc=True)
    try:
        frame = frame_from_df(df, exchange, symbol, timeframe or data.timeframe)
    except CandleDataError as e:
        raise CandleDataError(f"{data.path}: {data.format}: {e}") from e
    return frame.between(start, end)


def _candles_from_trades(trades: pd.DataFrame, exchange: str, symbol: str, timeframe: str) -> pd.DataFrame:
    from mambo.core.candles import CandleBuilder

    order = np.argsort(trades["ts"].to_numpy(), kind="stable")  # time order; a file's order within a ms
    ts = trades["ts"].to_numpy(np.int64)[order]
    builder = CandleBuilder(exchange, symbol, (timeframe,))
    closed = [
        c
        for _, c in builder.update_batch(
            ts, trades["price"].to_numpy()[order], trades["qty"].to_numpy()[order]
        )
    ]
    closed += builder.advance(int(ts[-1]) + timeframe_ns(timeframe))  # the file's end closes its last bar
    return pd.DataFrame(
        {
            "timestamp": pd.to_datetime([c.open_time for c in closed], unit="ns", utc=True),
            **{c: [getattr(k, c) for k in closed] for c in ("open", "high", "low", "close", "volume")},
        }
    )


def load_candles(
    source: str | Path,
    symbol: str = "BTC/USDT",
    exchange: str = "binance",
    timeframe: str | None = None,
    start: int | None = None,
    end: int | None = None,
    client: Client | None = None,
) -> CandleFrame:
    """One market's candles from a file (any format of :mod:`mambo.formats`), or, given a ClickHouse
    ``client``, from a candles table (``source`` is the table's name), limited to ``[start, end)`` (ns)."""
    path = Path(source)
    if client is not None and not path.exists():
        return _from_clickhouse(client, str(source), exchange, symbol, timeframe, start, end)
    if not path.is_file():
        raise CandleDataError(
            f"{source}: no such file (give a candle file: CSV, Parquet, feather, JSON, zip)"
        )
    return frame_from_file(read_candle_file(path), exchange, symbol, timeframe, start, end)


def _from_clickhouse(
    client: Client,
    table: str,
    exchange: str,
    symbol: str,
    timeframe: str | None,
    start: int | None,
    end: int | None,
) -> CandleFrame:
    if not table.replace("_", "").replace(".", "").isalnum():
        raise CandleDataError(f"{table!r} is neither a file nor a table name")
    where = ["exchange = {exchange:String}", "symbol = {symbol:String}"]
    params: dict[str, Any] = {"exchange": exchange, "symbol": symbol}
    if timeframe:
        where.append("timeframe = {timeframe:String}")
        params["timeframe"] = timeframe
    if start is not None:
        where.append("open_time >= fromUnixTimestamp64Nano({start:Int64})")
        params["start"] = start
    if end is not None:
        where.append("open_time < fromUnixTimestamp64Nano({end:Int64})")
        params["end"] = end
    sql = (
        "SELECT toUnixTimestamp64Nano(open_time) AS timestamp, open, high, low, close, volume "
        f"FROM {table} FINAL WHERE {' AND '.join(where)} ORDER BY open_time"
    )
    try:
        df = client.query_df(sql, parameters=params)
    except Exception as e:
        raise CandleDataError(f"cannot read candles from table {table}: {e}") from e
    if not len(df):
        raise CandleDataError(f"table {table} has no candles of {exchange}:{symbol} in that range")
    df["timestamp"] = pd.to_datetime(df["timestamp"].astype("int64"), unit="ns", utc=True)
    return frame_from_df(df, exchange, symbol, timeframe)
