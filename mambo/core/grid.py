"""A grid: limit orders resting at price levels, each buy taking profit one level up, refilled after.

:class:`GridConfig` is one grid (a market, a price range, the number of levels, the size per level, a
stop outside the range); :class:`Grids` runs the grids of an account inside its account stage
(:class:`~mambo.core.stages.GridStage` in :class:`~mambo.core.stages.AccountStage`), where the orders,
fills and positions are. Its state is
the levels' (which order rests where, how many times each level has cycled), so a restored account
resumes every level where it was.

How it trades, on the market's closed candles of the trading timeframe:

* levels ``low + i·(high − low)/(levels − 1)``, ``i = 0 … levels − 1``, on the market's tick;
* at the first candle, a buy limit of ``qty`` rests at every level below the close (a spot grid holds
  nothing to sell until a buy fills);
* when the buy at level ``i`` has filled, a sell limit of ``qty`` (reduce-only, its take-profit)
  rests at level ``i + 1``; when that sell has filled, the buy at level ``i`` rests again: a cycle,
  ``(level[i+1] − level[i])·qty`` of profit before fees;
* a level whose order was refused or expired rests again at the next candle (where still below the
  close, for a buy);
* the stop: a close beyond the range by more than ``stop`` (a fraction) cancels every resting order of
  the grid and sells what it holds at market; the grid is done.

Orders go through risk like a strategy's intents (sizes, cash, limits), with client order ids that
derive from the account, the market, the level and the count of its orders, so a replay asks for the
same orders (and an order placed again after a refusal is a new one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mambo.core.market import Market, to_decimal
from mambo.schemas.events import Candle, Order, OrderIntent, OrderSide, RiskRejection, make_id, split_key
from mambo.schemas.topics import INTENTS, ORDERS, REJECTIONS

__all__ = ["GridConfig", "Grids", "Level"]


class GridConfig(BaseModel):
    """One grid: ``market`` (``exchange:symbol``), the range ``low``–``high``, ``levels`` prices in it,
    ``qty`` per level, and the ``stop``: a close this fraction beyond the range ends the grid."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    market: str = Field(min_length=3)
    low: Decimal = Field(gt=0)
    high: Decimal = Field(gt=0)
    levels: int = Field(ge=2, le=1000)
    qty: Decimal = Field(gt=0)
    stop: Decimal = Field(Decimal("0.01"), ge=0, lt=1)

    @model_validator(mode="after")
    def _range(self) -> GridConfig:
        split_key(self.market)
        if not self.low < self.high:
            raise ValueError(f"grid {self.market}: low {self.low} must be below high {self.high}")
        return self

    def prices(self, market: Market) -> list[Decimal]:
        """The levels on the market's tick (a buy level rounds down, never paying more than planned)."""
        step = (self.high - self.low) / (self.levels - 1)
        return [market.round_limit("buy", self.low + i * step) for i in range(self.levels)]


@dataclass
class Level:
    """One level of a grid: the order resting for it (its buy at this level, or its take-profit sell
    one level up) and how many cycles it has completed."""

    side: Literal["buy", "sell"] | None = None
    client_order_id: str = ""
    cycles: int = 0
    #: orders placed for it so far (one refused or expired is placed again: a new client order id)
    placed: int = 0


@dataclass
class _Grid:
    config: GridConfig
    prices: list[Decimal] = field(default_factory=list)
    levels: list[Level] = field(default_factory=list)
    started: bool = False
    stopped: bool = False
    #: client order id -> level index
    orders: dict[str, int] = field(default_factory=dict)


Out = list[tuple[str, Any]]
#: cancels a resting order: its updates (ExecutionStage.cancel)
Canceller = Callable[[str, int], Out]


class Grids:
    """The account's grids (see the module): candles → limit intents; order updates → the next order
    of each level; the stop."""

    def __init__(
        self,
        grids: tuple[GridConfig, ...],
        account: str,
        markets: dict[str, Market],
        timeframe_topic: str,
        cancel: Canceller,
        position: Callable[[str], Decimal],
    ) -> None:
        self.account = account
        self.grids = {g.market: _Grid(g) for g in grids}
        self.markets = markets
        self.cancel = cancel
        self.position = position
        self.inputs = (timeframe_topic, ORDERS.name, REJECTIONS.name)

    def handle(self, topic: str, payload: Any) -> Out:
        if topic == ORDERS.name:
            return self._on_order(payload)
        if topic == REJECTIONS.name:
            return self._on_rejection(payload)
        return self._on_candle(payload)

    # --- candles -----------------------------------------------------------------------------------

    def _on_candle(self, c: Candle) -> Out:
        grid = self.grids.get(c.key)
        if grid is None or grid.stopped:
            return []
        cfg, close = grid.config, to_decimal(c.close)
        if not grid.started:
            market = self.markets.get(c.key) or Market.default(*split_key(c.key))
            grid.prices, grid.levels, grid.started = (
                cfg.prices(market),
                [Level() for _ in range(cfg.levels)],
                True,
            )
        if close < cfg.low * (1 - cfg.stop) or close > cfg.high * (1 + cfg.stop):
            return self._stop(grid, c)
        out: Out = []
        for i, level in enumerate(grid.levels[:-1]):  # the top level only takes profits
            if level.side is None and grid.prices[i] < close:
                out.append(self._intent(grid, i, "buy", c.ts_event, c.ts_init))
        return out

    def _stop(self, grid: _Grid, c: Candle) -> Out:
        """Beyond the range: cancel what rests, sell what the grid holds at market; the grid is done."""
        grid.stopped = True
        out: Out = []
        for coid in list(grid.orders):
            out += self.cancel(coid, c.ts_init)
        grid.orders.clear()
        for level in grid.levels:
            level.side, level.client_order_id = None, ""
        held = self.position(c.key)
        if held > 0:
            coid = make_id("grid", self.account, c.key, "stop", c.ts_event)
            out.append((INTENTS.name, self._exit(c.key, coid, held, c)))
        return out

    # --- order updates -----------------------------------------------------------------------------

    def _on_order(self, order: Order) -> Out:
        grid = self.grids.get(order.key)
        if grid is None or order.account != self.account or order.client_order_id not in grid.orders:
            return []
        i = grid.orders[order.client_order_id]
        level = grid.levels[i]
        if order.status in ("canceled", "rejected", "expired"):
            del grid.orders[order.client_order_id]
            level.side, level.client_order_id = None, ""  # placed again at the next candle
            return []
        if order.status != "filled" or grid.stopped:
            return []
        del grid.orders[order.client_order_id]
        if level.side == "buy":  # its take-profit one level up
            return [self._intent(grid, i, "sell", order.ts_event, order.ts_init)]
        level.cycles += 1  # the take-profit filled: the buy rests again
        return [self._intent(grid, i, "buy", order.ts_event, order.ts_init)]

    def _on_rejection(self, rejection: RiskRejection) -> Out:
        grid = self.grids.get(rejection.key)
        if grid is None or rejection.client_order_id not in grid.orders:
            return []
        level = grid.levels[grid.orders.pop(rejection.client_order_id)]
        level.side, level.client_order_id = None, ""
        return []

    # --- intents -----------------------------------------------------------------------------------

    def _intent(self, grid: _Grid, i: int, side: OrderSide, ts_event: int, ts_init: int) -> tuple[str, Any]:
        level = grid.levels[i]
        price = grid.prices[i] if side == "buy" else grid.prices[i + 1]
        coid = make_id("grid", self.account, grid.config.market, i, level.placed)
        level.side, level.client_order_id = side, coid
        level.placed += 1
        grid.orders[coid] = i
        why = f"grid level {i} ({price}) {'buy' if side == 'buy' else 'take-profit'}, cycle {level.cycles}"
        exchange, symbol = split_key(grid.config.market)
        return (
            INTENTS.name,
            OrderIntent(
                event_id=make_id("order_intent", coid),
                account=self.account,
                ts_event=ts_event,
                ts_init=ts_init,
                exchange=exchange,
                symbol=symbol,
                client_order_id=coid,
                strategy="grid",
                side=side,
                order_type="limit",
                qty=grid.config.qty,
                limit_price=price,
                reduce_only=side == "sell",
                reason=why,
                price=float(price),
            ),
        )

    def _exit(self, key: str, coid: str, held: Decimal, c: Candle) -> OrderIntent:
        exchange, symbol = split_key(key)
        return OrderIntent(
            event_id=make_id("order_intent", coid),
            account=self.account,
            ts_event=c.ts_event,
            ts_init=c.ts_init,
            exchange=exchange,
            symbol=symbol,
            client_order_id=coid,
            strategy="grid",
            side="sell",
            qty=held,
            reduce_only=True,
            reason=f"grid stop: close {c.close} beyond the range",
            price=c.close,
        )
