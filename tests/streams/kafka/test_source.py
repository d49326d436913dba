"""``mambo source`` into a real Kafka broker: the local exchange streams through ccxt.pro to the
source's Kafka publisher, and what lands on the topics is the recording: trades without a gap or a
duplicate in stream order, book tops and closed candles, each keyed by ``exchange:symbol``, every
message decodable by the codec, feed health keyed by exchange.

Cost: ``mambo source`` (in process, on a thread: a subprocess would spend 5-15 s importing ccxt.pro
on a loaded machine) streaming for 4 s, then the topics read back: about 8 s.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from mambo.cli import app
from mambo.connectors.exchange_source import fetch_candles_between
from mambo.schemas.events import Candle, FeedHealth, Quote, Trade
from mambo.schemas.topics import EXCHANGE_CANDLES, FEED_HEALTH, QUOTES, TRADES
from tests.exchange.helpers import running_exchange
from tests.streams.kafka.conftest import read_keyed

SYMBOLS = ("BTC/USDT", "ETH/USDT")


def test_mambo_source_publishes_the_recording_to_kafka(
    bootstrap: str, kafka_prefix: str, tmp_path: Path
) -> None:
    async def main() -> None:
        async with running_exchange(speed=20, history_seconds=5) as (ex, client):
            args = ["source", "--base-url", client.base_url, "--symbols", ",".join(SYMBOLS),
                    "--timeframe", "1s", "--duration", "4", "--prefix", kafka_prefix,
                    "--data-dir", str(tmp_path)]  # fmt: skip
            # the command runs its own event loop: on a thread, while the exchange serves on this one
            result = await asyncio.to_thread(
                CliRunner().invoke, app, args, env={"MAMBO_KAFKA_BOOTSTRAP": bootstrap}
            )
            assert result.exit_code == 0, f"{result.output[-2000:]} {result.exception!r}"
            await ex.pause()

            trades = read_keyed(bootstrap, TRADES.name, kafka_prefix)
            for symbol in SYMBOLS:
                key = f"binance:{symbol}"
                mine = [t for k, t in trades if k == key]
                assert mine and all(isinstance(t, Trade) and t.key == key for t in mine)
                sym = ex.symbols[symbol.replace("/", "")]
                ids = [int(t.trade_id) for t in mine]
                first = int(np.searchsorted(sym.trade_id, ids[0]))
                assert ids == sym.trade_id[first : first + len(ids)].tolist()  # no gap, no duplicate
                assert [t.price for t in mine] == sym.price[first : first + len(ids)].tolist()
                assert [t.ts_event for t in mine] == (sym.ts[first : first + len(ids)] * 1_000_000).tolist()
            assert {k for k, _ in trades} == {f"binance:{s}" for s in SYMBOLS}

            recorded = {(q.key, q.bid, q.ask) for s in ex.symbols.values() for q in s.quotes}
            quotes = read_keyed(bootstrap, QUOTES.name, kafka_prefix)
            assert quotes and all(isinstance(q, Quote) and (k, q.bid, q.ask) in recorded for k, q in quotes)

            candles = read_keyed(bootstrap, EXCHANGE_CANDLES.name, kafka_prefix)
            for symbol in SYMBOLS:
                mine = [c for k, c in candles if k == f"binance:{symbol}"]
                assert mine and all(isinstance(c, Candle) and c.symbol == symbol for c in mine)
                opens = [c.open_time // 1_000_000 for c in mine]
                assert opens == sorted(set(opens))
                rest = await fetch_candles_between(client, symbol, "1s", opens[0], opens[-1] + 1)
                assert [[c.open_time // 1_000_000, c.open, c.high, c.low, c.close] for c in mine] == [
                    [r[0], *map(float, r[1:5])] for r in rest
                ]

            health = read_keyed(bootstrap, FEED_HEALTH.name, kafka_prefix)
            assert {k for k, _ in health} == {"binance"}
            connected = {h.stream for _, h in health if isinstance(h, FeedHealth) and h.status == "connected"}
            assert connected == {
                "quotes",
                *(f"{kind}:{s}" for s in SYMBOLS for kind in ("trades", "candles")),
            }

    asyncio.run(main())
