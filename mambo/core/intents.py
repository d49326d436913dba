"""From the aggregated signal to an :class:`~mambo.schemas.events.OrderIntent`: what the strategies
want done given the position held. Risk then sizes, checks and turns the intent into an order.

Start with :class:`IntentPolicy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from mambo.schemas.events import DEFAULT_ACCOUNT, AggregatedSignal, OrderIntent, OrderSide, make_id

__all__ = ["IntentPolicy"]


@dataclass(frozen=True)
class IntentPolicy:
    """Turns an aggregated signal and the current position into at most one order intent.

    * buy while flat: open a long of ``qty`` (None: risk sizes it from equity);
    * sell while long: close it (the whole position, ``reduce_only``);
    * with ``allow_short``, also sell while flat: open a short of ``qty``, and buy while short: close it;
    * anything else (hold, a signal in the direction already held): no intent.

    A signal never reverses a position in one order: the opposite signal closes it and a later signal
    opens the next one from flat. The intent's ``client_order_id`` derives from the account and the
    signal's id, so a restarted agent that sees the same signal again asks for the same order, which
    execution sends once, and two accounts trading one market never share an order id.
    """

    qty: Decimal | None = None
    allow_short: bool = False
    account: str = DEFAULT_ACCOUNT

    def __post_init__(self) -> None:
        if self.qty is not None and not (
            isinstance(self.qty, Decimal) and self.qty.is_finite() and self.qty > 0
        ):
            raise ValueError(f"qty must be a Decimal > 0 or None (risk sizes it), got {self.qty!r}")

    def on_signal(self, sig: AggregatedSignal, position_qty: Decimal, ts_init: int) -> OrderIntent | None:
        """The intent ``sig`` calls for while holding ``position_qty`` (> 0 long, < 0 short), or None."""
        why = f"{sig.side} signal (score {sig.score:+.4f}, led by {sig.lead_strategy})"
        if sig.side == "buy":
            if position_qty == 0:
                return self._intent(sig, "buy", self.qty, False, f"open long: {why}", ts_init)
            if position_qty < 0 and self.allow_short:
                return self._intent(sig, "buy", -position_qty, True, f"close short: {why}", ts_init)
        elif sig.side == "sell":
            if position_qty > 0:
                return self._intent(sig, "sell", position_qty, True, f"close long: {why}", ts_init)
            if position_qty == 0 and self.allow_short:
                return self._intent(sig, "sell", self.qty, False, f"open short: {why}", ts_init)
        return None

    def _intent(
        self,
        sig: AggregatedSignal,
        side: OrderSide,
        qty: Decimal | None,
        reduce_only: bool,
        reason: str,
        ts_init: int,
    ) -> OrderIntent:
        client_order_id = make_id("order", self.account, sig.event_id)
        return OrderIntent(
            event_id=make_id("order_intent", client_order_id),
            account=self.account,
            ts_event=sig.ts_event,
            ts_init=ts_init,
            exchange=sig.exchange,
            symbol=sig.symbol,
            client_order_id=client_order_id,
            strategy=sig.lead_strategy,
            side=side,
            qty=qty,
            reduce_only=reduce_only,
            reason=reason,
            price=sig.price,
        )
