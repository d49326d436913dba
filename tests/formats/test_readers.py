"""Every format of `mambo.formats` reads freqtrade's ETH/BTC candles (and Binance's XRP/ETH trades) back
to the same numbers, and every malformed file is refused with the file, the format and the fault."""

from __future__ import annotations

import gzip
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mambo.formats import DataFormatError, find_data_files, parse_name, read_market_file

FIXTURES = Path(__file__).parents[1] / "fixtures"
ETH_BTC = FIXTURES / "freqtrade" / "ETH_BTC-5m.feather"
XRP_TRADES = FIXTURES / "freqtrade" / "XRP_ETH-trades.feather"
AGG_TRADES = FIXTURES / "binance" / "XRPETH-aggTrades-2019-10-11.csv"
KLINES = (
    "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
    "taker_buy_quote_volume,ignore"
)


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    """The first 300 candles as freqtrade wrote them (``date`` a UTC datetime), read with pandas alone."""
    return pd.read_feather(ETH_BTC).head(300)


def _ms(df: pd.DataFrame) -> pd.Series:
    return df.date.dt.as_unit("ms").astype("int64")


def _ohlcv(df: pd.DataFrame, time: pd.Series) -> list[list[float]]:
    return [
        [int(t), o, h, lo, c, v]
        for t, o, h, lo, c, v in zip(time, df.open, df.high, df.low, df.close, df.volume, strict=True)
    ]


def _klines(df: pd.DataFrame, unit: int = 1) -> str:
    ms = _ms(df)
    return "".join(
        f"{t * unit},{o},{h},{lo},{c},{v},{(t + 299_999) * unit},0,0,0,0,0\n"
        for t, o, h, lo, c, v in zip(ms, df.open, df.high, df.low, df.close, df.volume, strict=True)
    )


def _zip(path: Path, inner: str, text: str) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(inner, text)


Writer = Callable[[pd.DataFrame, Path], object]

# name -> (file name, writer, the format it must be recognised as, how its time must be read)
CASES: dict[str, tuple[str, Writer, str, str]] = {
    "freqtrade feather": (
        "ETH_BTC-5m.feather",
        lambda df, p: df.to_feather(p),
        "freqtrade feather",
        "column 'date', datetimes (UTC)",
    ),
    "freqtrade parquet": (
        "ETH_BTC-5m.parquet",
        lambda df, p: df.to_parquet(p),
        "freqtrade parquet",
        "column 'date', datetimes (UTC)",
    ),
    "freqtrade json": (
        "ETH_BTC-5m.json",
        lambda df, p: p.write_text(json.dumps(_ohlcv(df, _ms(df)))),
        "freqtrade JSON",
        "epoch milliseconds",
    ),
    "freqtrade json.gz": (
        "ETH_BTC-5m.json.gz",
        lambda df, p: p.write_bytes(gzip.compress(json.dumps(_ohlcv(df, _ms(df))).encode())),
        "freqtrade JSON",
        "epoch milliseconds",
    ),
    "ccxt OHLCV json": (
        "ohlcv.json",
        lambda df, p: p.write_text(json.dumps(_ohlcv(df, _ms(df)))),
        "ccxt OHLCV JSON",
        "epoch milliseconds",
    ),
    "binance klines": (
        "ETHBTC-5m-2018-01.csv",
        lambda df, p: p.write_text(_klines(df)),
        "Binance bulk klines CSV",
        "epoch milliseconds",
    ),
    "binance klines, header": (
        "ETHBTC-5m-2018-01.csv",
        lambda df, p: p.write_text(KLINES + "\n" + _klines(df)),
        "Binance bulk klines CSV",
        "epoch milliseconds",
    ),
    "binance klines zipped, us": (
        "ETHBTC-5m-2018-01.zip",
        lambda df, p: _zip(p, "ETHBTC-5m-2018-01.csv", _klines(df, 1000)),
        "Binance bulk klines zipped CSV",
        "epoch microseconds",
    ),
    "binance klines unnamed": (
        "klines.csv",
        lambda df, p: p.write_text(_klines(df)),
        "Binance bulk klines CSV",
        "epoch milliseconds",
    ),
    "csv date ISO": ("bars.csv", lambda df, p: df.to_csv(p, index=False), "CSV", "ISO 8601 text"),
    "csv timestamp s": (
        "bars.csv",
        lambda df, p: (
            df.assign(date=_ms(df) // 1000).rename(columns={"date": "timestamp"}).to_csv(p, index=False)
        ),
        "CSV",
        "epoch seconds",
    ),
    "csv time us": (
        "bars.csv",
        lambda df, p: df.assign(date=_ms(df) * 1000).rename(columns={"date": "Time"}).to_csv(p, index=False),
        "CSV",
        "epoch microseconds",
    ),
    "csv datetime naive": (
        "bars.csv",
        lambda df, p: (
            df.assign(date=df.date.dt.strftime("%Y-%m-%d %H:%M:%S"))
            .rename(columns={"date": "datetime"})
            .to_csv(p, index=False)
        ),
        "CSV",
        "ISO 8601",
    ),
    "parquet open_time ms": (
        "bars.parquet",
        lambda df, p: df.assign(date=_ms(df)).rename(columns={"date": "open_time"}).to_parquet(p),
        "parquet",
        "epoch milliseconds",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_candle_format_reads_the_same_candles(case: str, bars: pd.DataFrame, tmp_path: Path) -> None:
    filename, write, fmt, how = CASES[case]
    path = tmp_path / filename
    write(bars, path)
    data = read_market_file(path)
    assert data.kind == "candles" and data.format == f"{fmt} candles"
    assert how in data.time_note and how in data.describe()
    expected = bars.date.dt.as_unit("ns").astype("int64").to_numpy()
    np.testing.assert_array_equal(data.frame.open_time.to_numpy(), expected)
    for col in ("open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(data.frame[col].to_numpy(), bars[col].to_numpy(), err_msg=col)
    if filename.startswith(("ETH_BTC", "ETHBTC")):
        assert (data.symbol, data.timeframe) == ("ETH/BTC", "5m")
    else:
        assert (data.symbol, data.timeframe) == (None, None)


def test_freqtrade_trades_and_binance_aggtrades_give_the_same_trades() -> None:
    """The aggTrades CSV was written from the raw Binance payloads ccxt kept (XRP_OLD-trades.json.gz),
    the feather by freqtrade from ccxt's parsed trades: the side comes from is_buyer_maker on one side,
    from ccxt on the other."""
    ft, bn = read_market_file(XRP_TRADES), read_market_file(AGG_TRADES)
    assert ft.format == "freqtrade feather trades" and (ft.symbol, ft.timeframe) == ("XRP/ETH", None)
    assert bn.format == "Binance bulk aggTrades CSV trades" and bn.symbol == "XRP/ETH"
    assert len(ft.frame) == len(bn.frame) == 200
    raw = pd.read_feather(XRP_TRADES)
    np.testing.assert_array_equal(ft.frame.ts.to_numpy(), raw.timestamp.to_numpy() * 1_000_000)
    for col in ("ts", "trade_id", "price", "qty", "side"):
        np.testing.assert_array_equal(ft.frame[col].to_numpy(), bn.frame[col].to_numpy(), err_msg=col)
    assert set(ft.frame.side) == {"buy", "sell"}


def test_a_header_row_on_aggtrades_is_recognised(tmp_path: Path) -> None:
    path = tmp_path / "XRPETH-aggTrades-2019-10-11.csv"
    header = "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker,"
    header += "is_best_match\n"
    path.write_text(header + AGG_TRADES.read_text())
    assert read_market_file(path).frame.equals(read_market_file(AGG_TRADES).frame)


def test_freqtrade_names_give_pair_timeframe_and_candle_type() -> None:
    futures = parse_name("XRP_USDT_USDT-1h-futures.feather")
    assert (futures.symbol, futures.timeframe, futures.candle_type, futures.traded) == (
        "XRP/USDT:USDT",
        "1h",
        "futures",
        True,
    )
    mark = read_market_file(FIXTURES / "freqtrade" / "futures" / "XRP_USDT_USDT-1h-mark.feather")
    assert not mark.name.traded and "XRP/USDT:USDT 1h mark" in mark.describe()
    assert (mark.frame.volume == 0).all()  # freqtrade leaves a mark price's volume empty
    funding = parse_name("XRP_USDT_USDT-8h-funding_rate.feather")
    assert (funding.candle_type, funding.kind) == ("funding_rate", "candles")
    assert parse_name("ETH_BTC-trades.json.gz").kind == "trades"
    assert parse_name("BTCUSDT-aggTrades-2024-01.zip").symbol == "BTC/USDT"
    assert parse_name("notes.csv").scheme == ""


def test_a_folder_lists_its_data_files(tmp_path: Path) -> None:
    (tmp_path / "binance" / "futures").mkdir(parents=True)
    for name in (
        "binance/ETH_BTC-5m.feather",
        "binance/futures/X_USDT_USDT-1h-futures.feather",
        "binance/README.md",
        "binance/XRP_ETH-trades.json.gz",
    ):
        (tmp_path / name).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in find_data_files([tmp_path])]
    assert found == [
        "binance/ETH_BTC-5m.feather",
        "binance/XRP_ETH-trades.json.gz",
        "binance/futures/X_USDT_USDT-1h-futures.feather",
    ]


# --- refusals: the file, the format tried and what is wrong ----------------------------------------


def _refused(path: Path, *parts: str) -> None:
    with pytest.raises(DataFormatError) as info:
        read_market_file(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    for part in parts:
        assert part in message, message


def test_a_wrong_header_names_the_columns_found(bars: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    bars.rename(columns={"date": "when", "close": "last"}).to_csv(path, index=False)
    _refused(
        path,
        "read as CSV",
        "no time column (looked for timestamp, date, datetime, open_time, time)",
        "columns found: when, open, high, low, last, volume",
    )
    bars.rename(columns={"close": "last"}).to_csv(path, index=False)
    _refused(path, "read as CSV", "neither candles", "columns found: date, open, high, low, last, volume")
    bars.drop(columns="volume").to_parquet(tmp_path / "bars.parquet")
    _refused(tmp_path / "bars.parquet", "read as parquet", "candles missing column(s) volume")


def test_mixed_timestamp_units_are_refused_with_their_rows(bars: pd.DataFrame, tmp_path: Path) -> None:
    ms = _ms(bars)
    mixed = bars.assign(date=ms.where(bars.index < 250, ms * 1000)).rename(columns={"date": "timestamp"})
    path = tmp_path / "bars.csv"
    mixed.to_csv(path, index=False)
    _refused(
        path,
        "read as CSV",
        "mixed timestamp units in timestamp: milliseconds in rows 1, 2, 3, 4, 5 and 245 "
        "more; microseconds in rows 251, 252",
    )
    path.write_text(_klines(bars.head(3)) + _klines(bars.iloc[3:6], 1000))
    _refused(
        path, "Binance bulk klines CSV", "mixed timestamp units in open_time", "microseconds in rows 4, 5, 6"
    )


@pytest.mark.parametrize(
    ("name", "content", "parts"),
    [
        ("ETH_BTC-5m.feather", b"", ("empty file (0 bytes)",)),
        ("bars.csv", b"timestamp,open,high,low,close,volume\n", ("read as CSV", "no rows")),
        ("ETH_BTC-5m.json", b"[]", ("read as freqtrade JSON", "empty JSON array")),
        ("ETH_BTC-5m.json.gz", gzip.compress(b""), ("read as freqtrade gzip", "empty once unzipped")),
        ("bars.csv", b"\xff\xfe\x00garbage", ("read as file", "not text", "not a known binary format")),
        ("ohlcv.json", b"[[1, 2, 3]]", ("read as JSON", "JSON rows of [3] fields")),
        ("ohlcv.json", b"[[1515560100000, 1, 2, 0.5, 1]", ("read as JSON", "not valid JSON")),
        ("k.csv", b"1672531436,90.54,1.1\n", ("read as CSV", "without a header row and 3 columns")),
        ("t.csv", b"time,price,amount,side\n1672531436,90.54,1.1,bid\n", ("row 1: side 'bid'",)),
        ("t.csv", b"time,open,high,low,close,volume\nyesterday,1,1,1,1,1\n", ("row 1: time 'yesterday'",)),
        ("ETH_BTC-5m-2018.zip", b"PK\x03\x04broken", ("read as zipped CSV", "a broken zip")),
    ],
)
def test_malformed_files_are_refused(
    name: str, content: bytes, parts: tuple[str, ...], tmp_path: Path
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    _refused(path, *parts)


def test_a_timeframe_in_the_name_must_match_the_candles(bars: pd.DataFrame, tmp_path: Path) -> None:
    """freqtrade's own UNITTEST_BTC-8m.json.gz holds 1m candles under an 8m name, to test just this."""
    path = tmp_path / "ETH_BTC-8m.feather"
    bars.to_feather(path)
    _refused(path, "read as freqtrade feather", "the name says 8m candles, but they are 300 s apart")


@pytest.mark.parametrize("header", [False, True])
def test_binance_bulk_trades_layout_reads_the_same_trades(header: bool, tmp_path: Path) -> None:
    """Binance's raw ``trades`` files (id, price, qty, quote_qty, time, is_buyer_maker, is_best_match),
    written here from the same aggTrades rows, zipped as Binance ships them."""
    agg = pd.read_csv(AGG_TRADES, header=None, dtype=str)
    rows = pd.DataFrame({"id": agg[0], "price": agg[1], "qty": agg[2], "quote_qty": "0", "time": agg[5],
                         "is_buyer_maker": agg[6], "is_best_match": agg[7]})  # fmt: skip
    path = tmp_path / "XRPETH-trades-2019-10-11.zip"
    _zip(path, "XRPETH-trades-2019-10-11.csv", rows.to_csv(index=False, header=header))
    data = read_market_file(path)
    assert data.format == "Binance bulk trades zipped CSV trades" and data.symbol == "XRP/ETH"
    assert data.frame.equals(read_market_file(AGG_TRADES).frame)
