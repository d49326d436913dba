"""The exchange broker through ccxt against the local exchange: orders fill and come back as Fill
events, a lost answer or a killed process never sends an order twice, live trading needs a flag.

The kill-and-restart test runs two real processes (about 5 s); the rest take a second or two.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from decimal import Decimal
from typing import Any

import ccxt
import pytest

from mambo.connectors.errors import Backoff
from mambo.connectors.exchange_broker import ExchangeBroker, ExchangeCredentials, exchange_client_id
from mambo.schemas.events import Fill, Order, make_id
from tests.exchange.helpers import SECRET, running_exchange


def _order(tag: str, **changes: Any) -> Order:
    base = Order(event_id=make_id("o", tag), ts_event=1, ts_init=1, exchange="binance", symbol="BTC/USDT",
                 client_order_id=make_id("order", tag), strategy="sma_cross", side="buy", order_type="market",
                 qty=Decimal("0.01"))  # fmt: skip
    return base.model_copy(update=changes)


@pytest.mark.parametrize("ours", ["2758b42c3765df6b81a9156c7cc3c1ae", "x" * 40, "has spaces & symbols!", "a"])
def test_client_ids_fit_binance_and_are_deterministic(ours: str) -> None:
    cid = exchange_client_id(ours)
    assert cid == exchange_client_id(ours)
    assert 1 <= len(cid) <= 36 and all(c.isalnum() or c in "._:/-" for c in cid)
    assert exchange_client_id(ours + "1") != cid


def test_live_trading_needs_the_flag() -> None:
    with pytest.raises(ValueError, match="live"):
        ExchangeBroker(object(), "binance", mode="live")
    assert ExchangeBroker(object(), "binance", mode="live", live=True).mode == "live"


def test_credentials_come_from_the_environment_and_never_print(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAMBO_EXCHANGE__API_KEY", "key-123")
    monkeypatch.setenv("MAMBO_EXCHANGE__SECRET", "very-secret-456")
    creds = ExchangeCredentials()
    assert creds.complete and creds.secret is not None
    assert creds.secret.get_secret_value() == "very-secret-456"
    assert "very-secret-456" not in repr(creds) and "very-secret-456" not in str(creds.model_dump())


def test_market_order_fills_and_comes_back_as_a_fill() -> None:
    async def main() -> None:
        async with running_exchange(speed=0, history_seconds=60) as (ex, client):
            quote = ex.symbols["BTCUSDT"].last_quote()
            assert quote is not None
            broker = ExchangeBroker(client, "binance")
            events = await broker.submit(_order("a"))
            fills = [e for e in events if isinstance(e, Fill)]
            orders = [e for e in events if isinstance(e, Order)]
            assert len(fills) == 1 and orders[-1].status == "filled"
            fill = fills[0]
            ask = Decimal(repr(quote.ask))
            assert fill.price == ask and fill.qty == Decimal("0.01") and fill.liquidity == "taker"
            assert fill.fee == ask * Decimal("0.01") * Decimal("0.001") and fill.fee_currency == "USDT"
            assert fill.client_order_id == _order("a").client_order_id and fill.strategy == "sma_cross"
            # the same order again (a redelivered message): nothing is sent, nothing reported twice
            assert await broker.submit(_order("a")) == []
            assert broker.sent == 1 and len(ex.orders) == 1

            rejected = await broker.submit(_order("big", qty=Decimal("1000")))
            assert [o.status for o in rejected] == ["rejected"]  # type: ignore[union-attr]
            assert "insufficient balance" in rejected[0].reason  # type: ignore[union-attr]

    asyncio.run(main())


def test_limit_order_rests_and_fills_on_replayed_trades() -> None:
    async def main() -> None:
        async with running_exchange(speed=0, history_seconds=60) as (ex, client):
            sym = ex.symbols["BTCUSDT"]
            limit = Decimal(repr(float(sym.price[sym.released : sym.released + 5000].min()))) + Decimal(
                "0.01"
            )
            broker = ExchangeBroker(client, "binance")
            order = _order("lim", order_type="limit", limit_price=limit, qty=Decimal("0.003"))
            events = await broker.submit(order)
            assert events == [] or all(isinstance(e, Order) and e.status == "new" for e in events)
            fills: list[Fill] = []
            while sum(f.qty for f in fills) < order.qty:
                assert await ex.advance(20) > 0, "the recording ended before the order filled"
                fills += [e for e in await broker.poll() if isinstance(e, Fill)]
            assert sum(f.qty for f in fills) == Decimal("0.003")
            assert {f.price for f in fills} == {limit} and {f.liquidity for f in fills} == {"maker"}
            assert len({f.fill_id for f in fills}) == len(fills)
            assert await broker.poll() == []  # filled: nothing more to report

    asyncio.run(main())


def test_a_lost_answer_is_asked_about_not_resent() -> None:
    async def main() -> None:
        async with running_exchange(speed=0, history_seconds=60) as (ex, client):
            original = client.create_order

            async def sent_but_answer_lost(*args: Any, **kwargs: Any) -> Any:
                await original(*args, **kwargs)
                raise ccxt.RequestTimeout("binance POST /api/v3/order timed out")

            client.create_order = sent_but_answer_lost
            broker = ExchangeBroker(client, "binance", backoff=Backoff(base=0.01, attempts=3))
            events = await broker.submit(_order("lost"))
            assert broker.sent == 1 and len(ex.orders) == 1
            assert [type(e).__name__ for e in events] == ["Fill", "Order"]

    asyncio.run(main())


_SEND = """
import asyncio, sys
from decimal import Decimal
from pydantic import SecretStr
from mambo.connectors.ccxt_client import make_exchange
from mambo.connectors.exchange_broker import ExchangeBroker
from mambo.schemas.events import Order

async def main(url: str, die_after_send: bool) -> None:
    client = make_exchange("binance", base_url=url, api_key=SecretStr("k"), secret=SecretStr(SECRET))
    await client.load_markets()
    if die_after_send:
        send = client.create_order
        async def send_then_hang(*args, **kwargs):
            await send(*args, **kwargs)
            print("SENT", flush=True)
            await asyncio.sleep(3600)  # killed here: the order is out, nothing recorded it
        client.create_order = send_then_hang
    broker = ExchangeBroker(client, "binance")
    order = Order(event_id="e", ts_event=1, ts_init=1, exchange="binance", symbol="BTC/USDT",
                  client_order_id="restart-order-1", strategy="s", side="buy", order_type="market",
                  qty=Decimal("0.01"))
    events = await broker.submit(order)
    print("EVENTS", broker.sent, *[type(e).__name__ for e in events], flush=True)
    await client.close()

asyncio.run(main(sys.argv[1], sys.argv[2] == "1"))
"""


def test_killed_after_send_and_restarted_does_not_send_again() -> None:
    async def run_script(url: str, die: bool) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-c", _SEND.replace("SECRET", repr(SECRET)), url, "1" if die else "0",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip

    async def main() -> None:
        async with running_exchange(speed=0, history_seconds=60) as (ex, client):
            first = await run_script(client.base_url, die=True)
            assert first.stdout is not None
            line = b""
            while line.strip() != b"SENT":  # log lines come first
                line = await asyncio.wait_for(first.stdout.readline(), 60)
                assert line, "the first process ended without sending"
            first.send_signal(signal.SIGKILL)
            await first.wait()
            assert len(ex.orders) == 1

            second = await run_script(client.base_url, die=False)
            out, _ = await asyncio.wait_for(second.communicate(), 60)
            assert second.returncode == 0
            report = [line.split() for line in out.splitlines() if line.startswith(b"EVENTS")]
            assert report == [[b"EVENTS", b"0", b"Fill", b"Order"]]  # nothing sent; the fill reported
            assert len(ex.orders) == 1
            only = next(iter(ex.orders.values()))
            assert only.client_id == exchange_client_id("restart-order-1") and only.status == "FILLED"

    asyncio.run(main())
