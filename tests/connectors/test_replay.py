"""The replay source: the bundled recording, malformed rows as dead letters, time-ordered slices."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from mambo.connectors.replay import DEMO_QUOTES, DEMO_TRADES, Recording, load_quotes, load_trades, replay


def test_bundled_recording_is_time_ordered_and_complete() -> None:
    trades, dead = load_trades(DEMO_TRADES)
    quotes, qdead = load_quotes(DEMO_QUOTES)
    assert (len(trades), len(quotes), dead, qdead) == (69_808, 14_629, [], [])
    assert np.all(np.diff(trades.ts) >= 0)
    assert set(trades.keys) == {
        "binance:BTC/USDT",
        "binance:ETH/USDT",
        "binanceusdm:BTC/USDT:USDT",
        "binanceusdm:ETH/USDT:USDT",
    }


def test_malformed_rows_become_dead_letters_and_the_rest_loads(tmp_path: Path) -> None:
    path = tmp_path / "t.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("exchange,symbol,trade_id,ts_ms,price,qty,side\n")
        f.write("binance,BTC/USDT,1,1000,100.5,0.1,buy\n")
        f.write("binance,BTC/USDT,2,notatime,100.5,0.1,buy\n")
        f.write("binance,BTC/USDT,3,1001,abc,0.1,sell\n")
        f.write("binance,BTC/USDT,4,1002,nan,0.1,sideways\n")
        f.write("binance,BTC/USDT,5,1003,-1,0.2,sell\n")
    batch, dead = load_trades(path)
    assert batch.trade_id.tolist() == ["1", "5"]  # -1 parses: the pipeline's validation rejects it
    assert [d.key for d in dead] == ["t.csv.gz:3", "t.csv.gz:4", "t.csv.gz:5"]
    assert all(d.topic == "md.trades" and "malformed trade row" in d.reason for d in dead)
    assert "notatime" in dead[0].payload


def test_symbol_filter_and_slices_cover_everything_once() -> None:
    trades, _ = load_trades(DEMO_TRADES, {"ETH/USDT"})
    quotes, _ = load_quotes(DEMO_QUOTES, {"ETH/USDT"})
    assert trades.keys == ("binance:ETH/USDT",)
    rec = Recording(trades, quotes)
    seen_t, seen_q, last_end = 0, 0, -1
    for batch, qs in replay(rec, 3000):
        seen_t += len(batch)
        seen_q += len(qs)
        if len(batch):
            assert all(q.ts_event <= batch.ts[-1] for q in qs) and batch.ts[0] >= last_end
            last_end = int(batch.ts[-1])
    assert (seen_t, seen_q) == (len(trades), len(quotes))
