"""The local exchange replays a real Binance spot book (10 levels a side, tests/fixtures): ccxt's
``fetch_order_book`` and ``watch_order_book`` (REST snapshot, then diffs checked by Binance's update
ids) hold the exchange's book level for level, through seconds of updates; the book agrees with the
recorded book tops. Sub-second: the exchange is paused and advanced by hand."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from mambo.exchange.depth import DepthBook, load_depth
from tests.exchange.helpers import running_exchange

DEPTH = Path(__file__).parents[1] / "fixtures" / "binance_spot_depth10.jsonl.gz"


def levels(book: DepthBook, side: str) -> list[list[float]]:
    return [[float(p), float(q)] for p, q in book.top(1000)[side]]


def test_ccxt_holds_the_recorded_book_through_rest_and_the_depth_stream() -> None:
    depth = load_depth(DEPTH)
    assert set(depth) == {"BTCUSDT", "ETHUSDT"} and len(depth["BTCUSDT"][1]) > 6_000

    async def main() -> None:
        async with running_exchange(speed=0, history_seconds=20, depth=depth) as (ex, client):
            sym = ex.symbols["BTCUSDT"]
            book = sym.book
            assert book is not None
            rest = await client.fetch_order_book("BTC/USDT")
            assert rest["nonce"] == book.last_update_id
            assert rest["bids"] == levels(book, "bids") and rest["asks"] == levels(book, "asks")
            assert len(rest["bids"]) == len(rest["asks"]) == 10 and rest["bids"][0][0] < rest["asks"][0][0]

            watched: Any = await client.watch_order_book("BTC/USDT")
            tops_agree = 0
            for _ in range(10):
                applied = book.last_update_id
                assert await ex.advance(0.5) > 0
                assert book.last_update_id > applied  # updates were streamed
                while watched["nonce"] != book.last_update_id:
                    watched = await asyncio.wait_for(client.watch_order_book("BTC/USDT"), 5)
                assert watched["bids"] == levels(book, "bids") and watched["asks"] == levels(book, "asks")
                quote = sym.last_quote()
                assert quote is not None
                tops_agree += (watched["bids"][0][0], watched["asks"][0][0]) == (quote.bid, quote.ask)
            # the book's top is the recorded book top (the book moves every 100 ms, the tops between)
            assert tops_agree >= 8  # 9 of 10 (the replay is deterministic here)

    asyncio.run(main())


def test_a_depth_update_that_does_not_follow_is_refused() -> None:
    snapshot, updates = load_depth(DEPTH)["ETHUSDT"]
    book = DepthBook(snapshot)
    book.apply(updates[0])  # the first overlaps the snapshot, as Binance's do
    with pytest.raises(ValueError, match="does not follow"):
        book.apply(updates[2])
