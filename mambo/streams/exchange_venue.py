"""Trading through an exchange from the pipeline: the execution stage's venue when orders go out
through ccxt.

:class:`ExchangeVenue` has two sides. Towards the pipeline it is a :class:`~mambo.core.stages.Venue`
and synchronous, so the core stays pure: :meth:`~ExchangeVenue.submit` queues the order and returns
nothing yet, and market data fills nothing here (the exchange decides what fills). Towards the
exchange it is a task, :meth:`~ExchangeVenue.run`: it sends the queued orders one at a time through
:class:`~mambo.connectors.exchange_broker.ExchangeBroker`, follows the ones left open
(:meth:`~mambo.connectors.exchange_broker.ExchangeBroker.poll` every ``poll_seconds``), and hands
every answer (``Order`` updates, ``Fill`` events) to ``deliver``: in the embedded runtime
:meth:`~mambo.streams.embedded.EmbeddedRuntime.report`, where the portfolio books an exchange's fill
exactly as it books a paper fill and the fills, positions and equity are published the same way.

Restart safety, in three layers:

* **Write ahead.** ``before_send`` runs before an order goes out (the runtime's ClickHouse flush),
  so the history holds the order before the exchange hears of it.
* **Reconcile before trading.** :meth:`~ExchangeVenue.recover`, awaited before :meth:`run`, asks the
  exchange about every order the history left open (:func:`open_orders_from_history`); their fills
  while the process was away come back as Fill events, and their client ids are remembered, so the
  pipeline deciding the same order again does not queue it again.
* **Ask before sending.** The broker looks every client id up on the exchange before it sends, so an
  order whose answer was lost is reported, never sent twice.

Errors: an order the exchange refuses comes back as a ``rejected`` Order with the reason (risk then
releases it). A send that still fails after the broker's retries stays queued and is tried again
(looked up first) after ``poll_seconds``. Bad keys or permissions (:class:`OperationalError`) stop
the venue loudly: a person must act.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import numpy.typing as npt
import structlog

from mambo.connectors.errors import TemporaryError
from mambo.connectors.exchange_broker import ExchangeBroker
from mambo.schemas.events import OPEN_STATUSES, Candle, Fill, Order

__all__ = ["ExchangeVenue", "open_orders_from_history"]

log = structlog.get_logger(__name__)

Deliver = Callable[[Sequence[Order | Fill]], None]
_RANK = {"new": 0, "partially_filled": 1, "filled": 2, "canceled": 2, "rejected": 2, "expired": 2}


def open_orders_from_history(orders: Iterable[Order]) -> list[Order]:
    """The orders still open in a history of order states (each order's most advanced state)."""
    latest: dict[str, Order] = {}
    for o in orders:
        seen = latest.get(o.client_order_id)
        if seen is None or (_RANK[o.status], o.filled_qty) > (_RANK[seen.status], seen.filled_qty):
            latest[o.client_order_id] = o
    return [o for o in latest.values() if o.status in OPEN_STATUSES]


class ExchangeVenue:
    """Orders from the execution stage to an exchange and its answers back; see the module docstring."""

    def __init__(
        self,
        broker: ExchangeBroker,
        deliver: Deliver | None = None,
        *,
        poll_seconds: float = 1.0,
        before_send: Callable[[], None] | None = None,
    ) -> None:
        self.broker = broker
        self.deliver: Deliver = deliver or (lambda events: None)
        self.poll_seconds = poll_seconds
        self.before_send = before_send
        self._queue: deque[Order] = deque()
        self._wake = asyncio.Event()
        self._known: set[str] = set()  # client order ids queued, sent or recovered
        self._busy = False
        self.counts = {"queued": 0, "sent": 0, "fills": 0, "rejected": 0, "recovered": 0}

    # --- the pipeline's side (synchronous, like the paper broker) ---------------------------------

    def submit(self, order: Order, ts_init: int) -> list[Order | Fill]:
        """Queue a new order for the exchange; its answers come later through ``deliver``.

        An order seen before (a redelivered message, an order recovered after a restart) is not
        queued again."""
        if order.client_order_id in self._known:
            return []
        self._known.add(order.client_order_id)
        self._queue.append(order)
        self.counts["queued"] += 1
        self._wake.set()
        return []

    def has_pending(self, key: str) -> bool:
        return False  # market data fills nothing here: the exchange matches, the answers come later

    def on_trades(
        self,
        key: str,
        ts: npt.NDArray[np.int64],
        price: npt.NDArray[np.float64],
        qty: npt.NDArray[np.float64],
        ts_init: int | None = None,
    ) -> list[Order | Fill]:
        return []

    def on_candle(self, candle: Candle) -> list[Order | Fill]:
        return []

    @property
    def idle(self) -> bool:
        """Nothing queued, nothing being sent, no order of ours open on the exchange."""
        return not self._queue and not self._busy and not self.broker.open_orders()

    # --- the exchange's side (asynchronous) ---------------------------------------------------

    async def recover(self, history: Iterable[Order]) -> int:
        """Before trading after a restart: reconcile the orders ``history`` left open with the
        exchange and deliver what became of them. Returns the number of events delivered."""
        still_open = open_orders_from_history(history)
        self._known.update(o.client_order_id for o in still_open)
        events = await self.broker.reconcile(still_open)
        self._deliver(events)
        self.counts["recovered"] += len(still_open)
        log.info("venue.recovered", open_orders=len(still_open), events=len(events))
        return len(events)

    async def run(self) -> None:
        """Send queued orders and follow open ones until cancelled."""
        next_poll = time.monotonic() + self.poll_seconds
        while True:
            if self._queue:
                await self._send(self._queue[0])
            else:
                self._wake.clear()
                timeout = max(0.0, next_poll - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + self.poll_seconds
                await self._poll()

    async def settle(self, timeout: float) -> bool:
        """Wait until the venue is :attr:`idle` (every order answered and done), at most ``timeout``
        seconds; polls the open orders meanwhile. Returns whether it settled."""
        deadline = time.monotonic() + timeout
        while not self.idle and time.monotonic() < deadline:
            await asyncio.sleep(min(self.poll_seconds, 0.05))
        return self.idle

    async def _send(self, order: Order) -> None:
        self._busy = True
        try:
            if self.before_send is not None:
                self.before_send()
            events = await self.broker.submit(order)
        except TemporaryError as exc:  # unanswered after retries: keep it queued, ask again later
            log.warning("venue.send_deferred", client_order_id=order.client_order_id, error=str(exc))
            await asyncio.sleep(self.poll_seconds)
            return
        finally:
            self._busy = False
        self._queue.popleft()
        self.counts["sent"] += 1
        self._deliver(events)

    async def _poll(self) -> None:
        try:
            events = await self.broker.poll()
        except TemporaryError as exc:
            log.warning("venue.poll_failed", error=str(exc))
            return
        self._deliver(events)

    def _deliver(self, events: Sequence[Order | Fill]) -> None:
        if not events:
            return
        self.counts["fills"] += sum(isinstance(e, Fill) for e in events)
        self.counts["rejected"] += sum(isinstance(e, Order) and e.status == "rejected" for e in events)
        self.deliver(events)
