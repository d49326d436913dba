"""What an order costs on its way through the exchange venue, against bare ccxt side by side.

Three ways to place the same market orders (0.001 BTC, buy and sell in turn) on the local exchange
over loopback HTTP, measured in one process (the exchange shares the loop, as in the demo):

* baseline: ``client.create_order`` alone (ccxt's signing, one HTTP round trip, parsing);
* broker: :meth:`ExchangeBroker.submit`: asks the exchange about the client id first (the request
  that makes a resend after a crash impossible), then creates the order, then maps the answer to
  Mambo's Order and Fill events;
* venue: :class:`ExchangeVenue` end to end: the pipeline's ``submit`` queues the order, the venue's
  task sends it through the broker and delivers the fill back (the time a fill takes to reach the
  portfolio after the execution stage decided), with the write-ahead flush left out (no ClickHouse).

The three are interleaved order by order (a loaded machine slows them alike). Prints the latency
per order (p50, p99), orders per second one at a time, and the ratio of each p50 to the baseline's.

Run: python benchmarks/exchange_venue.py [--orders 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal

from pydantic import SecretStr

from mambo.connectors.ccxt_client import make_exchange
from mambo.connectors.exchange_broker import ExchangeBroker
from mambo.connectors.replay import load_quotes, load_trades
from mambo.exchange import LocalExchange, serve
from mambo.schemas.events import Fill, Order, make_id
from mambo.streams.exchange_venue import ExchangeVenue

SECRET = "bench-secret"


def order(run: str, n: int) -> Order:
    return Order(event_id=make_id("bench", run, n), ts_event=1, ts_init=1, exchange="binance",
                 symbol="BTC/USDT", client_order_id=make_id("bench-order", run, n), strategy="bench",
                 side="buy" if n % 2 == 0 else "sell", order_type="market", qty=Decimal("0.001"))  # fmt: skip


async def interleaved(n: int, ways: dict[str, Callable[[int], Awaitable[None]]]) -> dict[str, list[float]]:
    """Each way places order i in turn, so load on the machine hits every way alike."""
    latencies: dict[str, list[float]] = {name: [] for name in ways}
    for i in range(n):
        for name, place in ways.items():
            t0 = time.perf_counter()
            await place(i)
            latencies[name].append(time.perf_counter() - t0)
    return latencies


async def main(n: int) -> None:
    trades, _ = load_trades(symbols={"binance:BTC/USDT"})
    quotes, _ = load_quotes(symbols={"BTC/USDT"})
    exchange = LocalExchange(trades, [q for q in quotes if q.exchange == "binance"], speed=0,
                             history_seconds=60, api_secret=SECRET)  # fmt: skip
    server, url = await serve(exchange)
    client = make_exchange("binance", base_url=url, api_key=SecretStr("bench"), secret=SecretStr(SECRET))
    try:
        await client.load_markets()

        async def bare(i: int) -> None:
            o = order("bare", i)
            await client.create_order("BTC/USDT", "market", o.side, 0.001)

        broker = ExchangeBroker(client, "binance")

        async def brokered(i: int) -> None:
            events = await broker.submit(order("broker", i))
            assert any(isinstance(e, Fill) for e in events)

        delivered = asyncio.Event()
        venue = ExchangeVenue(
            ExchangeBroker(client, "binance"), lambda events: delivered.set(), poll_seconds=60
        )
        task = asyncio.create_task(venue.run())

        async def through_venue(i: int) -> None:
            delivered.clear()
            venue.submit(order("venue", i), 0)
            await delivered.wait()

        await interleaved(10, {"warm-up": bare})  # connections, ccxt's first-call work
        ways = {"baseline (ccxt create_order)": bare, "broker (ask, then send)": brokered,
                "venue (queue -> broker -> fill delivered)": through_venue}  # fmt: skip
        results = await interleaved(n, ways)
        task.cancel()
    finally:
        await client.close()
        await server.cleanup()

    base_p50 = statistics.median(results["baseline (ccxt create_order)"])
    print(f"{n} market orders each, interleaved; local exchange in the same process")
    for name, lat in results.items():
        lat_ms = sorted(x * 1000 for x in lat)
        p50, p99 = statistics.median(lat_ms), lat_ms[int(0.99 * (len(lat_ms) - 1))]
        rate = 1000 / statistics.mean(lat_ms)
        print(f"{name:44s} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  {rate:7.1f} orders/s"
              f"  p50 x{p50 / (base_p50 * 1000):.2f} of baseline")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=200)
    asyncio.run(main(parser.parse_args().orders))
