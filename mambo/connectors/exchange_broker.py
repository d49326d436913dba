"""Placing Mambo's orders on an exchange through ccxt, without ever sending one twice.

:class:`ExchangeBroker` takes the execution agent's :class:`~mambo.schemas.events.Order` events and
returns what the exchange made of them as Mambo events (``Order`` updates and ``Fill`` events), like
:class:`~mambo.core.execution.PaperBroker` does for paper trading.

No duplicates: every order goes out with a client id derived from Mambo's ``client_order_id``
(:func:`exchange_client_id`, within Binance's 36 characters of ``[.A-Z:/a-z0-9_-]``). Before sending,
the broker asks the exchange for that client id; when the exchange knows it (a send that went out
before a crash, a retried send whose answer was lost), the broker reports that order instead of
sending again. Exchanges only refuse a client id while its order is open, so this question, not the
exchange, is what makes a restart safe. :meth:`ExchangeBroker.reconcile` brings a restarted
broker's open orders and fills up to date before it trades.

Credentials come from the environment (:class:`ExchangeCredentials`: ``MAMBO_EXCHANGE__API_KEY``,
``MAMBO_EXCHANGE__SECRET``) as ``SecretStr`` and are never logged. A broker on a real exchange
(not the local one, not a sandbox) needs ``live=True``, an explicit decision.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

import ccxt
import structlog
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from mambo.connectors.errors import Backoff, InvalidRequest, TemporaryError, classify, with_retry
from mambo.core.market import to_decimal
from mambo.schemas.events import FINAL_STATUSES, OPEN_STATUSES, Fill, Order, OrderStatus, make_id

__all__ = ["ExchangeBroker", "ExchangeCredentials", "exchange_client_id"]

log = structlog.get_logger(__name__)

_MS = 1_000_000
_CLIENT_ID = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")
_STATUS: dict[str, OrderStatus] = {"closed": "filled", "canceled": "canceled", "rejected": "rejected",
                                   "expired": "expired"}  # fmt: skip
Mode = Literal["local", "sandbox", "live"]


class ExchangeCredentials(BaseSettings):
    """API keys from ``MAMBO_EXCHANGE__API_KEY`` / ``MAMBO_EXCHANGE__SECRET``; never printed."""

    model_config = SettingsConfigDict(env_prefix="MAMBO_EXCHANGE__", extra="ignore")

    api_key: SecretStr | None = None
    secret: SecretStr | None = None

    @property
    def complete(self) -> bool:
        return self.api_key is not None and self.secret is not None


def exchange_client_id(client_order_id: str, prefix: str = "mb") -> str:
    """The exchange's client id for a Mambo order: deterministic, at most 36 allowed characters.

    Mambo's ids (32 hex digits) become ``mb`` + the id; anything longer or with other characters
    becomes ``mb`` + a 32-digit hash of it.
    """
    candidate = prefix + client_order_id
    if _CLIENT_ID.match(candidate):
        return candidate
    return prefix + hashlib.blake2b(client_order_id.encode(), digest_size=16).hexdigest()


class ExchangeBroker:
    """Orders through a ccxt client; see the module docstring."""

    def __init__(
        self,
        client: Any,
        exchange_id: str,
        *,
        mode: Mode = "local",
        live: bool = False,
        backoff: Backoff | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        if mode == "live" and not live:
            raise ValueError("live trading needs an explicit live=True (the --live flag)")
        self.client = client
        self.exchange_id = exchange_id
        self.mode = mode
        self.backoff = backoff or Backoff(base=0.2, cap=5.0, attempts=5)
        self.clock = clock
        self._orders: dict[str, Order] = {}  # exchange client id -> our latest Order state
        self._exchange_ids: dict[str, str] = {}  # exchange client id -> exchange order id
        self._fills_seen: set[str] = set()
        self.sent = 0  # create requests actually sent (the kill-and-restart test counts them)

    # --- orders ---------------------------------------------------------------------------------

    async def submit(self, order: Order) -> list[Order | Fill]:
        """Send ``order`` unless the exchange already has it; its state and fills as events.

        A rejected order (bad size, insufficient funds) comes back as an ``Order`` with status
        ``rejected`` and the exchange's reason, not as an exception.
        """
        cid = exchange_client_id(order.client_order_id)
        known = self._orders.setdefault(cid, order)
        if known.status in FINAL_STATUSES:
            return []  # a redelivered order this broker already saw through
        for attempt in range(self.backoff.attempts):
            existing = await self._lookup(order.symbol, cid)
            if existing is not None:
                log.info("broker.known", client_order_id=order.client_order_id, exchange_client_id=cid,
                         status=existing.get("status"))  # fmt: skip
                return await self._events(cid, existing)
            try:
                self.sent += 1
                response = await self.client.create_order(
                    order.symbol,
                    order.order_type,
                    order.side,
                    float(order.qty),
                    float(order.limit_price) if order.limit_price is not None else None,
                    params={"newClientOrderId": cid},
                )
            except Exception as exc:  # classified: a lost answer is asked about before any resend
                fault = classify(exc, self.client)
                if isinstance(fault, InvalidRequest):
                    rejected = self._update(order, "rejected", reason=f"rejected by the exchange: {fault}")
                    self._orders[cid] = rejected
                    return [rejected]
                if not isinstance(fault, TemporaryError):
                    raise fault from exc
                log.warning("broker.send_failed", client_order_id=order.client_order_id, attempt=attempt + 1,
                            error=str(fault))  # fmt: skip
                await asyncio.sleep(self.backoff.delay(attempt))
                continue
            log.info("broker.sent", client_order_id=order.client_order_id, exchange_client_id=cid,
                     symbol=order.symbol, side=order.side, qty=str(order.qty),
                     status=response.get("status"))  # fmt: skip
            return await self._events(cid, response)
        raise TemporaryError(f"order {order.client_order_id}: the exchange did not answer after retries")

    async def cancel(self, order: Order) -> list[Order | Fill]:
        """Cancel an open order; its final state (and any fills that came first) as events."""
        cid = exchange_client_id(order.client_order_id)
        self._orders.setdefault(cid, order)

        async def call() -> Any:
            return await self.client.cancel_order(None, order.symbol, params={"origClientOrderId": cid})

        try:
            response = await with_retry(call, what="cancel_order", backoff=self.backoff, client=self.client)
        except InvalidRequest:  # already filled or unknown: report what the exchange has
            response = await self._lookup(order.symbol, cid)
            if response is None:
                return []
        return await self._events(cid, response)

    async def reconcile(self, orders: Iterable[Order]) -> list[Order | Fill]:
        """After a restart, before trading: the exchange's view of ``orders`` (the last known states
        of ours, e.g. from the orders topic), with any fills that happened while we were away.

        An order the exchange does not know never reached it (the process stopped between recording
        it and sending it): it comes back ``expired`` with that reason, and is not sent now, on a
        market that has moved since."""
        out: list[Order | Fill] = []
        for order in orders:
            cid = exchange_client_id(order.client_order_id)
            self._orders[cid] = order
            found = await self._lookup(order.symbol, cid)
            if found is not None:
                out += await self._events(cid, found)
            elif order.status in OPEN_STATUSES:
                reason = "expired: not on the exchange (the process stopped before sending it)"
                self._orders[cid] = self._update(order, "expired", reason=reason)
                out.append(self._orders[cid])
        log.info("broker.reconciled", orders=len(self._orders), events=len(out))
        return out

    def open_orders(self) -> list[Order]:
        """Our orders this broker last saw open on the exchange (new or partly filled)."""
        return [o for o in self._orders.values() if o.status in OPEN_STATUSES]

    async def poll(self) -> list[Order | Fill]:
        """Updates of our orders still open (fills of resting limits)."""
        out: list[Order | Fill] = []
        for cid, order in list(self._orders.items()):
            if order.status in OPEN_STATUSES:
                found = await self._lookup(order.symbol, cid)
                if found is not None:
                    out += await self._events(cid, found)
        return out

    # --- the exchange's answers as Mambo events -------------------------------------------------

    async def _lookup(self, symbol: str, cid: str) -> dict[str, Any] | None:
        async def call() -> Any:
            return await self.client.fetch_order(None, symbol, params={"origClientOrderId": cid})

        try:
            found: dict[str, Any] = await with_retry(
                call, what="fetch_order", backoff=self.backoff, client=self.client
            )
            return found
        except InvalidRequest as exc:
            if isinstance(exc.__cause__, ccxt.OrderNotFound):
                return None
            raise

    async def _events(self, cid: str, ccxt_order: dict[str, Any]) -> list[Order | Fill]:
        order = self._orders[cid]
        self._exchange_ids[cid] = str(ccxt_order["id"])
        trades = ccxt_order.get("trades") or []
        filled = to_decimal(str(ccxt_order.get("filled") or 0))
        if filled and not trades:  # an order looked up, not just sent: its fills are trades of ours
            trades = await with_retry(
                lambda: self.client.fetch_my_trades(order.symbol, params={"orderId": ccxt_order["id"]}),
                what="fetch_my_trades",
                backoff=self.backoff,
                client=self.client,
            )
        out: list[Order | Fill] = []
        for t in trades:
            fill = self._fill(order, ccxt_order, t)
            if fill.fill_id not in self._fills_seen:
                self._fills_seen.add(fill.fill_id)
                out.append(fill)
        status = _STATUS.get(str(ccxt_order.get("status")), "partially_filled" if filled else "new")
        update = self._update(order, status, filled_qty=filled, ts=ccxt_order.get("lastUpdateTimestamp"))
        if update.status != order.status or update.filled_qty != order.filled_qty:
            out.append(update)
        self._orders[cid] = update
        return out

    def _fill(self, order: Order, ccxt_order: dict[str, Any], trade: dict[str, Any]) -> Fill:
        trade_id = str(trade.get("id") or f"{ccxt_order['id']}-{trade.get('timestamp')}")
        fill_id = make_id("fill", self.exchange_id, order.symbol, trade_id)
        fee = trade.get("fee") or {}
        ts = int(trade.get("timestamp") or ccxt_order.get("timestamp") or 0) * _MS
        return Fill(
            event_id=fill_id,
            account=order.account,
            ts_event=ts,
            ts_init=self.clock(),
            exchange=order.exchange,
            symbol=order.symbol,
            fill_id=fill_id,
            client_order_id=order.client_order_id,
            strategy=order.strategy,
            side=order.side,
            price=to_decimal(str(trade["price"])),
            qty=to_decimal(str(trade["amount"])),
            fee=to_decimal(str(fee.get("cost") or 0)),
            fee_currency=str(fee.get("currency") or order.symbol.split("/")[1].split(":")[0]),
            liquidity="maker" if trade.get("takerOrMaker") == "maker" else "taker",
        )

    def _update(self, order: Order, status: OrderStatus, ts: Any = None, **changes: Any) -> Order:
        filled = changes.get("filled_qty", order.filled_qty)
        now = self.clock()
        return order.model_copy(
            update={
                "event_id": make_id("order", order.client_order_id, status, filled),
                "ts_event": int(ts) * _MS if ts else order.ts_event,
                "ts_init": now,
                "status": status,
                **changes,
            }
        )
