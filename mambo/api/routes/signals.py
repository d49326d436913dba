"""Signals: the latest combined view (``/signal``, ``/signals/latest``) and the history (``/signals``)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from mambo.api.deps import NOT_FOUND, REFUSALS, PageQ, Service, SignalsReader, StrategyQ, SymbolQ, TimeRangeQ
from mambo.api.service import Page, iso
from mambo.schemas.events import AggregatedSignal, Signal

router = APIRouter(tags=["signals"], responses=REFUSALS)


class SignalView(BaseModel):
    """The first proof of concept's shape, which existing clients read."""

    symbol: str
    exchange: str
    sma50: float | None
    sma200: float | None
    signal: Literal["BUY", "SELL", "HOLD"]
    timestamp: str
    price: float
    confidence: float


@router.get("/signal", response_model=SignalView, responses=NOT_FOUND)
def latest_signal(service: Service, _: SignalsReader, symbol: SymbolQ = None) -> SignalView:
    """The latest combined signal of ``symbol`` (default: the configured one, else the first market),
    with the 50 and 200 SMAs when ``sma_cross`` runs (null otherwise), and the bar's end time."""
    s = service.latest_signal(symbol)
    return SignalView(
        symbol=s.symbol,
        exchange=s.exchange,
        sma50=s.values.get("sma_50"),
        sma200=s.values.get("sma_200"),
        signal="BUY" if s.side == "buy" else "SELL" if s.side == "sell" else "HOLD",
        timestamp=iso(s.ts_event),
        price=s.price,
        confidence=s.confidence,
    )


@router.get("/signals/latest", response_model=list[AggregatedSignal])
def latest_signals(service: Service, _: SignalsReader, symbol: SymbolQ = None) -> list[AggregatedSignal]:
    """The latest combined signal of every market (or of ``symbol``)."""
    return service.latest_signals(symbol)


@router.get("/signals", response_model=Page[AggregatedSignal] | Page[Signal])
def signals(
    service: Service,
    _: SignalsReader,
    when: TimeRangeQ,
    page: PageQ,
    symbol: SymbolQ = None,
    strategy: StrategyQ = None,
) -> Page[AggregatedSignal] | Page[Signal]:
    """Combined signals in time order; with ``strategy``, that strategy's own signals (signals.raw)."""
    return service.signals(symbol, strategy, when, page)
