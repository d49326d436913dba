"""A recorded Binance order book for the local exchange: a REST snapshot and the ``depthUpdate``
messages that follow it, replayed as they were (their ``E``, ``U`` and ``u``), so ccxt's
``watch_order_book`` (snapshot, then buffered diffs by Binance's sequence rules) and
``fetch_order_book`` get a real multi-level book.

:func:`load_depth` reads the file ``tools/extract_depth.py`` writes (JSON lines: per market its
snapshot, then its updates); :class:`DepthBook` is one market's book as the exchange holds it.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

__all__ = ["DepthBook", "RecordedDepth", "load_depth"]

#: Per Binance market id (``BTCUSDT``): its snapshot and the updates after it, in order.
RecordedDepth = dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]


def load_depth(path: str | Path) -> RecordedDepth:
    """The snapshot and updates of each market in a depth file (gzipped or plain JSON lines)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    out: RecordedDepth = {}
    with opener(path, "rt") as f:
        for n, line in enumerate(f, 1):
            msg = json.loads(line)
            if "lastUpdateId" in msg:
                out[msg["s"]] = (msg, [])
            elif msg.get("e") == "depthUpdate" and msg.get("s") in out:
                out[msg["s"]][1].append(msg)
            else:
                raise ValueError(f"{path}:{n}: neither a snapshot nor an update of a market seen before")
    return out


class DepthBook:
    """One market's book: levels by price (kept as the exchange's strings), and the id of the last
    update applied (Binance's ``lastUpdateId``)."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.last_update_id = int(snapshot["lastUpdateId"])
        self.bids: dict[float, tuple[str, str]] = {float(p): (p, q) for p, q in snapshot["bids"]}
        self.asks: dict[float, tuple[str, str]] = {float(p): (p, q) for p, q in snapshot["asks"]}

    def apply(self, update: dict[str, Any]) -> None:
        """Apply a ``depthUpdate``; ValueError unless it follows the last one applied
        (``U <= lastUpdateId + 1 <= u``: the first update after a snapshot may overlap it)."""
        if not int(update["U"]) <= self.last_update_id + 1 <= int(update["u"]):
            span = f"{update['U']}-{update['u']}"
            raise ValueError(f"depth update {span} does not follow {self.last_update_id}")
        for side, key in ((self.bids, "b"), (self.asks, "a")):
            for p, q in update[key]:
                if float(q) == 0:
                    side.pop(float(p), None)
                else:
                    side[float(p)] = (p, q)
        self.last_update_id = int(update["u"])

    def top(self, limit: int) -> dict[str, Any]:
        """The REST ``/api/v3/depth`` answer: the best ``limit`` levels a side."""
        return {
            "lastUpdateId": self.last_update_id,
            "bids": [list(self.bids[p]) for p in sorted(self.bids, reverse=True)[:limit]],
            "asks": [list(self.asks[p]) for p in sorted(self.asks)[:limit]],
        }
