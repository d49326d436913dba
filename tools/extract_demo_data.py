"""Extract the demo's market data from the hftbacktest Binance recordings in ../shared/data.

Source: nkaz001/hftbacktest (MIT), examples/{spot,usdm}, Binance combined-stream websocket recordings
of 2024-08-08/09. We keep the `@trade` and `@bookTicker` messages of four markets on two exchanges and
write them as compact gzipped CSV into mambo/data/ (see mambo/data/README.md).

Spot bookTicker messages carry no exchange time, so their time is the recorder's receive time shifted
by the median (exchange time - receive time) of the same file's trades (the recorder's clock ran about
1.27 s behind Binance's). Quotes are thinned to at most one per 100 ms per market to keep the file small.

Run: python tools/extract_demo_data.py [../shared/data]
"""

from __future__ import annotations

import csv
import gzip
import json
import statistics
import sys
from pathlib import Path

FILES = {
    ("binance", "BTC/USDT"): ["spot/btcusdt_20240808.gz", "spot/btcusdt_20240809.gz"],
    ("binance", "ETH/USDT"): ["spot/ethusdt_20240808.gz", "spot/ethusdt_20240809.gz"],
    ("binanceusdm", "BTC/USDT:USDT"): ["usdm/btcusdt_20240808.gz"],
    ("binanceusdm", "ETH/USDT:USDT"): ["usdm/ethusdt_20240808.gz"],
}
QUOTE_GAP_MS = 100


def main(shared: Path, out: Path) -> None:
    base = shared / "hftbacktest_binance_ws"
    trades: list[tuple] = []
    quotes: list[tuple] = []
    for (exchange, symbol), names in FILES.items():
        for name in names:
            with gzip.open(base / name, "rt") as f:
                lines = [ln.split(" ", 1) for ln in f]
            msgs = [(int(ts), json.loads(js)) for ts, js in lines]
            msgs = [(ts, m) for ts, m in msgs if "stream" in m]
            offsets = [m["data"]["E"] * 1_000_000 - ts for ts, m in msgs if m["stream"].endswith("@trade")]
            offset_ns = int(statistics.median(offsets))
            last_q = -(10**18)
            for ts, m in msgs:
                d = m["data"]
                if m["stream"].endswith("@trade"):
                    side = "sell" if d["m"] else "buy"  # buyer is maker -> aggressor sold
                    trades.append((exchange, symbol, d["t"], d["T"], d["p"], d["q"], side))
                elif m["stream"].endswith("@bookTicker"):
                    t_ms = d["T"] if "T" in d else (ts + offset_ns) // 1_000_000
                    if t_ms - last_q >= QUOTE_GAP_MS:
                        last_q = t_ms
                        quotes.append((exchange, symbol, t_ms, d["b"], d["B"], d["a"], d["A"]))
    trades.sort(key=lambda r: (r[3], r[0], r[1], r[2]))
    quotes.sort(key=lambda r: (r[2], r[0], r[1]))
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(out / "demo_trades.csv.gz", "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(["exchange", "symbol", "trade_id", "ts_ms", "price", "qty", "side"])
        w.writerows(trades)
    with gzip.open(out / "demo_quotes.csv.gz", "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(["exchange", "symbol", "ts_ms", "bid", "bid_qty", "ask", "ask_qty"])
        w.writerows(quotes)
    print(f"{len(trades)} trades, {len(quotes)} quotes -> {out}")


if __name__ == "__main__":
    shared = (
        Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    main(shared, Path(__file__).resolve().parents[1] / "mambo" / "data")
