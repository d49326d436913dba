"""Candle input: CSV with ISO or epoch-ms times, Parquet, a ClickHouse table; bad rows named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from clickhouse_connect.driver.client import Client

from mambo.backtest.data import CandleDataError, CandleFrame, load_candles, parse_time
from mambo.connectors.clickhouse import ClickHouseSink

FIXTURE = Path(__file__).parents[1] / "fixtures" / "btc_perp_1m_5000.csv"


@pytest.fixture(scope="module")
def frame() -> CandleFrame:
    return load_candles(FIXTURE, "BTC/USDT", "binance")


def same(a: CandleFrame, b: CandleFrame) -> bool:
    cols = ("open_time", "open", "high", "low", "close", "volume")
    return a.timeframe == b.timeframe and all(np.array_equal(getattr(a, c), getattr(b, c)) for c in cols)


def test_iso_and_epoch_ms_csv_and_parquet_give_the_same_candles(frame: CandleFrame, tmp_path: Path) -> None:
    assert len(frame) == 5000 and frame.timeframe == "1m"
    assert frame.open_time[0] == parse_time("2021-12-31T23:01:00Z")
    df = pd.read_csv(FIXTURE).iloc[:300]
    df["timestamp"] = pd.to_datetime(df.timestamp, utc=True).dt.as_unit("ms").astype("int64")
    df.to_csv(tmp_path / "ms.csv", index=False)
    df.to_parquet(tmp_path / "c.parquet")
    head = frame.slice(0, 300)
    assert same(load_candles(tmp_path / "ms.csv"), head)
    assert same(load_candles(tmp_path / "c.parquet"), head)


def test_from_and_to_select_a_half_open_range(frame: CandleFrame) -> None:
    part = load_candles(FIXTURE, start=parse_time("2022-01-01"), end=parse_time("1641081600000"))
    assert pd.Timestamp(part.open_time[0], tz="UTC") == pd.Timestamp("2022-01-01", tz="UTC")
    assert pd.Timestamp(part.open_time[-1], tz="UTC") == pd.Timestamp("2022-01-01 23:59", tz="UTC")
    assert len(part) == 1440


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda df: df.drop(columns=["volume"]), "missing column"),
        (lambda df: df.assign(close=df.close.where(df.index != 7, -1.0)), "row 8: close must be"),
        (lambda df: df.assign(high=df.high.where(df.index != 3, 1.0)), "row 4: high/low"),
        (lambda df: df.assign(timestamp=df.timestamp.where(df.index != 5, "yesterday")), "row 6: timestamp"),
        (lambda df: pd.concat([df.iloc[:10], df.iloc[9:]]), "row 11: timestamps must increase"),
        (lambda df: df.assign(open=df.open.astype(object).where(df.index != 2, "n/a")), "row 3: open"),
    ],
)
def test_bad_rows_are_named_and_nothing_is_guessed(edit, message: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    df = edit(pd.read_csv(FIXTURE).iloc[:50].reset_index(drop=True))
    df.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(CandleDataError, match=message):
        load_candles(tmp_path / "bad.csv")


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(CandleDataError, match="no such file"):
        load_candles(tmp_path / "nope.csv")


def test_a_clickhouse_candles_table_reads_back_the_same_candles(
    frame: CandleFrame, clickhouse_client: Client, clickhouse_db: str
) -> None:
    head = frame.slice(0, 500)
    sink = ClickHouseSink(clickhouse_client, clickhouse_db)
    sink.write("candles", head.candles())
    sink.flush()
    got = load_candles("candles", "BTC/USDT", "binance", "1m", client=clickhouse_client)
    assert same(got, head)
    part = load_candles(
        "candles",
        "BTC/USDT",
        "binance",
        "1m",
        head.open_time[100],
        head.open_time[200],
        client=clickhouse_client,
    )
    assert same(part, head.slice(100, 200))
    with pytest.raises(CandleDataError, match="no candles of binance:ETH/USDT"):
        load_candles("candles", "ETH/USDT", "binance", client=clickhouse_client)
