"""Publishing a recording to Kafka (``mambo kafka replay``), at a chosen speed."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from mambo.connectors.replay import DEMO_QUOTES, DEMO_TRADES, Recording, load_quotes, load_trades, replay
from mambo.schemas.topics import QUOTES
from mambo.streams.kafka.producer import KafkaPublisher

__all__ = ["publish_recording"]


def publish_recording(
    bootstrap: str,
    trades: Path = DEMO_TRADES,
    quotes: Path | None = DEMO_QUOTES,
    speed: float = 0.0,
    batch_size: int = 2_000,
    prefix: str = "",
) -> int:
    """Publish trades (md.trades) and book tops (md.quotes) in event-time order; the trade count.

    ``ts_init`` is stamped when each slice is published, as a live source would."""
    batch, _ = load_trades(trades)
    quote_list = load_quotes(quotes)[0] if quotes is not None else []
    rec = Recording(batch, quote_list)
    start = time.perf_counter()
    first: int | None = None
    n = 0
    with KafkaPublisher(bootstrap, prefix) as pub:
        for trades_slice, qs in replay(rec, batch_size):
            if speed > 0 and len(trades_slice):
                first = int(trades_slice.ts[0]) if first is None else first
                delay = (int(trades_slice.ts[0]) - first) / 1e9 / speed - (time.perf_counter() - start)
                if delay > 0:
                    time.sleep(delay)
            now = time.time_ns()
            pub.publish_many(QUOTES, (q.model_copy(update={"ts_init": now}) for q in qs))
            pub.publish_trades(replace(trades_slice, ts_init=now))
            if len(trades_slice):  # every market has come this far: the recording is in time order
                pub.publish_watermarks(batch.keys, int(trades_slice.ts[-1]), now)
            n += len(trades_slice)
    return n
