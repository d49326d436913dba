"""Extract a real Binance spot order book, 10 levels a side, from the hftbacktest recordings in
../shared/data, for the local exchange's depth (REST ``/api/v3/depth`` and the ``@depth`` streams).

Source: nkaz001/hftbacktest (MIT), examples/spot/{btc,eth}usdt_2024080{8,9}.gz: a REST depth snapshot
(1,000 levels a side) and then every ``depthUpdate`` of ``<sym>@depth@100ms``, the same 11 minutes
as the demo's trades and book tops (mambo/data).

The full book is rebuilt with Binance's rules (drop updates with ``u <= lastUpdateId``; the first
applied has ``U <= lastUpdateId + 1 <= u``; then each ``U`` is the previous ``u + 1``, checked), and
what is written is the book as a 10-level view: the snapshot's top 10 levels a side, then each update
with its own ``E``, ``U`` and ``u`` but only the changes to that view (a level entering it with its
quantity, a level leaving it with quantity 0). A client that applies them to the snapshot holds the
real top 10 levels at every update, with Binance's sequence numbers; the file is a tenth of the size.

Output: tests/fixtures/binance_spot_depth10.jsonl.gz, one JSON object per line: per market its
snapshot ``{"s", "lastUpdateId", "E", "bids", "asks"}`` first, then its updates.

Run: python tools/extract_depth.py [../shared/data]
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

FILES = {
    "BTCUSDT": ["spot/btcusdt_20240808.gz", "spot/btcusdt_20240809.gz"],
    "ETHUSDT": ["spot/ethusdt_20240808.gz", "spot/ethusdt_20240809.gz"],
}
LEVELS = 10
OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "binance_spot_depth10.jsonl.gz"

Book = dict[str, dict[float, tuple[str, str]]]  # side -> price -> (price, quantity) as Binance wrote them


def view(book: Book) -> Book:
    """The top LEVELS levels of each side."""
    return {
        "bids": dict(sorted(book["bids"].items(), reverse=True)[:LEVELS]),
        "asks": dict(sorted(book["asks"].items())[:LEVELS]),
    }


def changes(before: dict[float, tuple[str, str]], after: dict[float, tuple[str, str]]) -> list[list[str]]:
    out = [[text, "0.00000000"] for p, (text, _) in before.items() if p not in after]
    out += [[text, q] for p, (text, q) in after.items() if before.get(p, ("", ""))[1] != q]
    return out


def extract(base: Path, symbol: str, names: list[str]) -> list[dict[str, object]]:
    snapshot: dict[str, object] | None = None
    updates: list[tuple[int, dict[str, object]]] = []
    first_ts: int | None = None
    for name in names:
        with gzip.open(base / name, "rt") as f:
            for line in f:
                local, _, raw = line.partition(" ")
                msg = json.loads(raw)
                if "lastUpdateId" in msg:
                    snapshot = msg
                    first_ts = None
                elif msg.get("stream", "").endswith("@depth@100ms"):
                    updates.append((int(local), msg["data"]))
                    first_ts = first_ts or msg["data"]["E"]
    assert snapshot is not None, f"{symbol}: no REST snapshot"
    last = int(snapshot["lastUpdateId"])  # type: ignore[call-overload]
    book: Book = {
        side: {float(p): (p, q) for p, q in snapshot[side]}  # type: ignore[attr-defined]
        for side in ("bids", "asks")
    }
    shown = view(book)
    first_e = min(int(u["E"]) for _, u in updates)  # type: ignore[call-overload]
    out: list[dict[str, object]] = [
        {"s": symbol, "lastUpdateId": last, "E": first_e - 1,
         "bids": [list(level) for level in shown["bids"].values()],
         "asks": [list(level) for level in shown["asks"].values()]}
    ]  # fmt: skip
    applied = 0
    for _, u in updates:
        big_u, small_u = int(u["U"]), int(u["u"])  # type: ignore[call-overload]
        if small_u <= last:
            continue
        if applied == 0:
            assert big_u <= last + 1 <= small_u, f"{symbol}: the first update does not follow the snapshot"
        else:
            assert big_u == last + 1, f"{symbol}: updates {last} -> {big_u} are not continuous"
        for side, key in (("bids", "b"), ("asks", "a")):
            for p, q in u[key]:  # type: ignore[attr-defined]
                if float(q) == 0:
                    book[side].pop(float(p), None)
                else:
                    book[side][float(p)] = (p, q)
        now = view(book)
        bids, asks = changes(shown["bids"], now["bids"]), changes(shown["asks"], now["asks"])
        out.append({"e": "depthUpdate", "E": u["E"], "s": symbol, "U": big_u, "u": small_u,
                    "b": bids, "a": asks})  # fmt: skip
        shown, last, applied = now, small_u, applied + 1
    print(f"{symbol}: snapshot {out[0]['lastUpdateId']}, {applied} updates applied, last u {last}")
    return out


def main(shared: Path) -> None:
    base = shared / "hftbacktest_binance_ws"
    lines = [
        json.dumps(m, separators=(",", ":")) for s, names in FILES.items() for m in extract(base, s, names)
    ]
    with gzip.open(OUT, "wt", compresslevel=9) as f:
        f.write("\n".join(lines) + "\n")
    print(f"{OUT}: {len(lines)} lines, {OUT.stat().st_size:,} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "data")
