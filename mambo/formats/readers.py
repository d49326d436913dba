"""Read one market data file, whatever its format, into Mambo's columns (see :mod:`mambo.formats`)."""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mambo.formats.names import UNNAMED, FileName, Kind, exchange_of, parse_name
from mambo.formats.times import TIME_COLUMNS, TimeColumnError, rows, to_ns
from mambo.schemas.events import timeframe_ns

__all__ = ["DATA_SUFFIXES", "DataFormatError", "MarketData", "find_data_files", "read_market_file"]

#: File endings :func:`find_data_files` picks up in a folder.
DATA_SUFFIXES = (".feather", ".parquet", ".pq", ".json", ".json.gz", ".jsongz", ".csv", ".csv.gz", ".zip")
CANDLE_COLUMNS = ("open_time", "open", "high", "low", "close", "volume")
TRADE_COLUMNS = ("ts", "trade_id", "price", "qty", "side")

# Binance bulk data (data.binance.vision) column layouts; a file may carry them as a header row.
_KLINES = ("open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume", "count",
           "taker_buy_volume", "taker_buy_quote_volume", "ignore")  # fmt: skip
_AGG_TRADES = ("agg_trade_id", "price", "quantity", "first_trade_id", "last_trade_id", "transact_time",
               "is_buyer_maker", "is_best_match")  # fmt: skip
_TRADES = ("id", "price", "qty", "quote_qty", "time", "is_buyer_maker", "is_best_match")
_OHLCV = ("timestamp", "open", "high", "low", "close", "volume")
_QTY_COLUMNS = ("amount", "qty", "quantity", "size")


class DataFormatError(ValueError):
    """A file is not market data Mambo reads; the message names the file, the format tried and what is
    wrong."""


class _Problem(ValueError):
    """What is wrong, before the file is known to the message (and the format, unless given)."""

    def __init__(self, message: str, fmt: str | None = None) -> None:
        super().__init__(message)
        self.fmt = fmt


@dataclass(frozen=True)
class MarketData:
    """One file's candles or trades in Mambo's columns, oldest first.

    ``frame``: candles have :data:`CANDLE_COLUMNS` (``open_time`` int64 ns), trades
    :data:`TRADE_COLUMNS` (``ts`` int64 ns, ``side`` "buy", "sell" or ""). ``symbol``, ``timeframe``
    and ``exchange`` are what the file says (its name, its folder), None where it says nothing.
    """

    path: Path
    format: str
    kind: Kind
    frame: pd.DataFrame
    time_note: str
    name: FileName = UNNAMED
    exchange: str | None = None

    @property
    def symbol(self) -> str | None:
        return self.name.symbol

    @property
    def timeframe(self) -> str | None:
        return self.name.timeframe

    def describe(self) -> str:
        """One line for the output: what was read and how its times were understood."""
        kind = self.name.candle_type if self.kind == "candles" and not self.name.traded else ""
        what = " ".join(x for x in (self.symbol, self.timeframe, kind) if x)
        return (
            f"{self.path.name}: {self.format}{f', {what}' if what else ''}, {len(self.frame):,} {self.kind}, "
            f"time {self.time_note}"
        )


def read_market_file(path: str | Path) -> MarketData:
    """Candles or trades from ``path``, the format recognised by content and name (see
    :mod:`mambo.formats`). Raises :class:`DataFormatError` naming the file, the format tried and what
    is wrong."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataFormatError(f"{path}: empty file (0 bytes): no candles or trades to read")
    name = parse_name(path)
    fmt = "file"
    try:
        raw = path.read_bytes()
        fmt, table = _decode(raw, path.name, name)
        data = _classify(table, fmt, name)
        data = replace(data, path=path, exchange=exchange_of(path) if name.scheme == "freqtrade" else None)
        _check_timeframe(data)
        return data
    except _Problem as e:
        raise DataFormatError(f"{path}: read as {e.fmt or fmt}: {e}") from e


def find_data_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """The files given, and in each folder given every file of a data format, sorted (recursively:
    freqtrade keeps futures in ``<exchange>/futures/``)."""
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(DATA_SUFFIXES))
        else:
            yield p


# --- bytes -> a table ------------------------------------------------------------------------------


def _decode(raw: bytes, filename: str, name: FileName) -> tuple[str, Any]:
    """(the format's name, a DataFrame or parsed JSON) from the file's bytes, by their content."""
    if raw.startswith(b"ARROW1"):
        return _label("feather", name), _frame(lambda: pd.read_feather(io.BytesIO(raw)))
    if raw.startswith(b"PAR1"):
        return _label("parquet", name), _frame(lambda: pd.read_parquet(io.BytesIO(raw)))
    if raw.startswith(b"PK\x03\x04"):
        return _zip(raw, name)
    if raw.startswith(b"\x1f\x8b"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise _Problem(f"a broken gzip stream: {e}", _label("gzip", name)) from e
        if not raw.strip():
            raise _Problem("empty once unzipped", _label("gzip", name))
    text = _text(raw)
    if text.lstrip()[:1] in ("[", "{"):
        fmt = _label("JSON", name)
        try:
            return fmt, json.loads(text)
        except ValueError as e:
            raise _Problem(f"not valid JSON: {e}", fmt) from e
    return _label("CSV", name), _csv(text)


def _label(container: str, name: FileName) -> str:
    if name.scheme == "freqtrade":
        return f"freqtrade {container}"
    if name.scheme == "binance":
        return f"Binance bulk {name.binance_layout} {container}"
    return container


def _frame(read: Any) -> pd.DataFrame:
    try:
        df: pd.DataFrame = read()
    except Exception as e:  # pyarrow's own message says what is wrong with the file
        raise _Problem(str(e)) from e
    return df


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _Problem(
            f"not text (byte {e.start} is {raw[e.start : e.start + 1]!r}) and not a known binary format "
            "(feather, parquet, zip, gzip)"
        ) from e


def _zip(raw: bytes, name: FileName) -> tuple[str, Any]:
    fmt = _label("zipped CSV", name)
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            members = [m for m in z.namelist() if m.lower().endswith(".csv")]
            if len(members) != 1:
                raise _Problem(f"a zip must hold one CSV file; it holds {z.namelist()}", fmt)
            text = _text(z.read(members[0]))
    except zipfile.BadZipFile as e:
        raise _Problem(f"a broken zip: {e}", fmt) from e
    try:
        return fmt, _csv(text)
    except _Problem as e:
        raise _Problem(str(e), fmt) from e


def _csv(text: str) -> pd.DataFrame:
    """A CSV with or without a header row: a first row whose first field is a number is data."""
    first = text.lstrip().split("\n", 1)[0]
    if not first.strip():
        raise _Problem("no rows")
    head = first.split(",")[0].strip().strip('"')
    headerless = _is_number(head)
    try:
        df = pd.read_csv(io.StringIO(text), header=None if headerless else 0)
    except Exception as e:
        raise _Problem(f"cannot parse as CSV: {e}") from e
    if headerless:
        df.attrs["headerless"] = True
    return df


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --- a table -> candles or trades ------------------------------------------------------------------


def _classify(table: Any, fmt: str, name: FileName) -> MarketData:
    if isinstance(table, list):
        return _json_rows(table, fmt, name)
    if isinstance(table, dict):  # pandas' "columns" orient ({"date": {"0": ...}, ...}), freqtrade's old one
        try:
            table = pd.DataFrame(table)
        except ValueError as e:
            raise _Problem(f"a JSON object that is not a table of columns: {e}") from e
    df: pd.DataFrame = table
    if not len(df):
        raise _Problem(f"no rows (columns found: {_names(df)})")
    if df.attrs.get("headerless"):
        return _headerless(df, fmt, name)
    df = df.rename(columns=lambda c: str(c).strip().lower())
    if tuple(df.columns[: len(_KLINES)]) == _KLINES or (name.binance_layout == "klines"):
        return _candles(df, "open_time", fmt, name)
    if "transact_time" in df.columns and "agg_trade_id" in df.columns:
        return _binance_trades(df, "agg_trade_id", "quantity", "transact_time", fmt, name)
    return _named_columns(df, fmt, name)


def _names(df: pd.DataFrame) -> str:
    return ", ".join(map(str, df.columns)) or "none"


def _json_rows(data: list[Any], fmt: str, name: FileName) -> MarketData:
    if not data:
        raise _Problem("an empty JSON array: no rows")
    first = data[0]
    if isinstance(first, dict):  # ccxt trade structures
        missing = [c for c in ("timestamp", "price", "amount") if c not in first]
        if missing:
            raise _Problem(f"JSON objects without {', '.join(missing)}; keys found: {', '.join(first)}")
        df = pd.DataFrame(data)
        return _trades(df, "timestamp", "amount", "id" if "id" in df else None, fmt, name)
    widths = {len(r) if isinstance(r, list) else -1 for r in data}
    if widths == {6}:  # ccxt OHLCV, freqtrade's JSON candles: [ms, o, h, l, c, v]
        df = pd.DataFrame(data, columns=list(_OHLCV))
        return _candles(df, "timestamp", fmt if name.scheme else "ccxt OHLCV JSON", name)
    if widths == {7}:  # freqtrade's JSON trades: [ms, id, type, side, price, amount, cost]
        df = pd.DataFrame(data, columns=["timestamp", "id", "type", "side", "price", "amount", "cost"])
        return _trades(df, "timestamp", "amount", "id", fmt, name)
    raise _Problem(
        f"JSON rows of {sorted(widths)} fields: candles have 6 ([time, open, high, low, close, volume]), "
        "freqtrade trades 7 ([time, id, type, side, price, amount, cost])"
    )


def _headerless(df: pd.DataFrame, fmt: str, name: FileName) -> MarketData:
    n = df.shape[1]
    layout = name.binance_layout
    if n == len(_KLINES) and layout in ("", "klines"):
        df.columns = list(_KLINES)
        return _candles(df, "open_time", _unnamed(fmt, "Binance bulk klines CSV"), name)
    if layout == "aggTrades" or (not layout and n in (7, 8) and not _is_bool(df.iloc[:, 5])):
        df.columns = list(_AGG_TRADES[:n]) if n <= 8 else list(range(n))
        return _binance_trades(df, "agg_trade_id", "quantity", "transact_time",
                               _unnamed(fmt, "Binance bulk aggTrades CSV"), name)  # fmt: skip
    if layout == "trades" or (not layout and n == 7):
        df.columns = list(_TRADES[:n]) if n <= 7 else list(range(n))
        return _binance_trades(df, "id", "qty", "time", _unnamed(fmt, "Binance bulk trades CSV"), name)
    if n == len(_OHLCV):
        df.columns = list(_OHLCV)
        return _candles(df, "timestamp", _unnamed(fmt, "headerless OHLCV CSV"), name)
    raise _Problem(
        f"a CSV without a header row and {n} columns: not Binance klines (12 columns), aggTrades (7-8), "
        "trades (7) or time,open,high,low,close,volume (6); add a header row naming the columns"
    )


def _unnamed(fmt: str, what: str) -> str:
    return fmt if fmt.startswith(("Binance", "freqtrade")) else what


def _is_bool(col: pd.Series) -> bool:
    return bool(col.astype("string").str.lower().isin(["true", "false"]).all())


def _named_columns(df: pd.DataFrame, fmt: str, name: FileName) -> MarketData:
    time_col = next((c for c in TIME_COLUMNS if c in df.columns), None)
    if time_col is None:
        raise _Problem(f"no time column (looked for {', '.join(TIME_COLUMNS)}); columns found: {_names(df)}")
    if all(c in df.columns for c in ("open", "high", "low", "close")):
        return _candles(df, time_col, fmt, name)
    qty = next((c for c in _QTY_COLUMNS if c in df.columns), None)
    if "price" in df.columns and qty:
        trade_id = next((c for c in ("id", "trade_id", "agg_trade_id") if c in df.columns), None)
        if "side" not in df.columns and "is_buyer_maker" in df.columns:  # Binance's layout with its header
            return _binance_trades(df, trade_id, qty, time_col, fmt, name)
        return _trades(df, time_col, qty, trade_id, fmt, name)
    raise _Problem(
        f"neither candles (open, high, low, close, volume) nor trades (price and amount or qty); "
        f"columns found: {_names(df)}"
    )


def _numbers(df: pd.DataFrame, col: str, blank_is_zero: bool = False) -> np.ndarray:
    values = np.array(pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan))
    if blank_is_zero:  # freqtrade's mark and funding series leave volume empty: there is none
        values[np.isnan(values) & df[col].isna().to_numpy()] = 0.0
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise _Problem(f"{rows(bad)}: {col} {df[col].iloc[bad[0]]!r} is not a number")
    return values


def _time(df: pd.DataFrame, col: str) -> tuple[np.ndarray, str]:
    try:
        ns, how = to_ns(df[col], col)
    except TimeColumnError as e:
        raise _Problem(str(e)) from e
    return ns, f"from column {col!r}, {how}"


def _candles(df: pd.DataFrame, time_col: str, fmt: str, name: FileName) -> MarketData:
    try:
        return _candle_columns(df, time_col, fmt, name)
    except _Problem as e:
        raise _Problem(str(e), e.fmt or f"{fmt} candles") from e


def _candle_columns(df: pd.DataFrame, time_col: str, fmt: str, name: FileName) -> MarketData:
    if name.kind == "trades":
        raise _Problem(f"the name says trades but it holds candles (columns found: {_names(df)})")
    missing = [c for c in ("open", "high", "low", "close", "volume") if c not in df.columns]
    if missing:
        raise _Problem(f"candles missing column(s) {', '.join(missing)}; columns found: {_names(df)}")
    open_time, note = _time(df, time_col)
    cols: dict[str, Any] = {"open_time": open_time}
    for c in ("open", "high", "low", "close"):
        cols[c] = _numbers(df, c)
    cols["volume"] = _numbers(df, "volume", blank_is_zero=not name.traded)
    return MarketData(Path(), f"{fmt} candles", "candles", pd.DataFrame(cols), note, name)


def _binance_trades(
    df: pd.DataFrame, id_col: str | None, qty_col: str, time_col: str, fmt: str, name: FileName
) -> MarketData:
    # Binance's is_buyer_maker: the buyer rested, so the aggressor sold
    maker = df["is_buyer_maker"].astype("string").str.lower()
    if not maker.isin(["true", "false"]).all():
        bad = np.flatnonzero(~maker.isin(["true", "false"]).to_numpy())
        raise _Problem(f"{rows(bad)}: is_buyer_maker must be true or false")
    df = df.assign(side=np.where(maker == "true", "sell", "buy"))
    return _trades(df, time_col, qty_col, id_col, fmt, name)


def _trades(
    df: pd.DataFrame, time_col: str, qty_col: str, id_col: str | None, fmt: str, name: FileName
) -> MarketData:
    try:
        return _trade_columns(df, time_col, qty_col, id_col, fmt, name)
    except _Problem as e:
        raise _Problem(str(e), e.fmt or f"{fmt} trades") from e


def _trade_columns(
    df: pd.DataFrame, time_col: str, qty_col: str, id_col: str | None, fmt: str, name: FileName
) -> MarketData:
    if name.kind == "candles":
        raise _Problem(f"the name says candles but it holds trades (columns found: {_names(df)})")
    ts, note = _time(df, time_col)
    side = (
        df["side"].astype("string").fillna("").str.strip().str.lower().to_numpy(dtype=object)
        if "side" in df.columns
        else np.full(len(df), "", dtype=object)
    )
    bad = np.flatnonzero(~np.isin(side, ["buy", "sell", ""]))
    if len(bad):
        raise _Problem(f"{rows(bad)}: side {side[bad[0]]!r} is not buy or sell")
    if id_col is not None:
        trade_id = df[id_col].astype("string").to_numpy(dtype=object)
    else:  # no id: the time and the position in the file identify a trade
        trade_id = np.array([f"{t}-{i}" for i, t in enumerate(ts)], dtype=object)
    frame = pd.DataFrame(
        {
            "ts": ts,
            "trade_id": trade_id,
            "price": _numbers(df, "price"),
            "qty": _numbers(df, qty_col),
            "side": side,
        }
    )
    return MarketData(Path(), f"{fmt} trades", "trades", frame, note, name)


def _check_timeframe(data: MarketData) -> None:
    """Candles named by a timeframe must be spaced by whole multiples of it (a gap is fine)."""
    if data.kind != "candles" or data.timeframe is None or not data.name.traded:
        return  # a funding rate is stamped when it was paid (00:00:00.017), not on a bar's open
    try:
        step = timeframe_ns(data.timeframe)
    except ValueError:
        return  # a week or a month: no fixed length in Mambo's timeframes, left to the reader
    gaps = np.diff(data.frame["open_time"].to_numpy())
    bad = np.flatnonzero(gaps % step != 0)
    if len(bad):
        seen = int(np.median(gaps)) // 1_000_000_000
        raise _Problem(
            f"the name says {data.timeframe} candles, but they are {seen} s apart at "
            f"{rows(bad + 1)}; rename the file or pass the right timeframe"
        )
