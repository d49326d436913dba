"""Trading state: orders, fills, positions, PnL, and the strategies with their weights."""

from __future__ import annotations

from fastapi import APIRouter

from mambo.api.deps import REFUSALS, AccountQ, PageQ, Service, SignalsReader, StrategyQ, SymbolQ, TimeRangeQ
from mambo.api.service import Page, PnlReport, StrategyInfo
from mambo.schemas.events import Fill, Order, OrderStatus, Position

router = APIRouter(tags=["trading"], responses=REFUSALS)


@router.get("/orders", response_model=Page[Order])
def orders(
    service: Service,
    _: SignalsReader,
    when: TimeRangeQ,
    page: PageQ,
    symbol: SymbolQ = None,
    strategy: StrategyQ = None,
    status: OrderStatus | None = None,
    account: AccountQ = None,
) -> Page[Order]:
    """Orders and their later states (one row per state), in time order."""
    return service.orders(symbol, strategy, status, when, page, account)


@router.get("/fills", response_model=Page[Fill])
def fills(
    service: Service,
    _: SignalsReader,
    when: TimeRangeQ,
    page: PageQ,
    symbol: SymbolQ = None,
    strategy: StrategyQ = None,
    account: AccountQ = None,
) -> Page[Fill]:
    """Executions with price, quantity, fee and the PnL they realized (decimals as exact strings)."""
    return service.fills(symbol, strategy, when, page, account)


@router.get("/positions", response_model=list[Position])
def positions(
    service: Service, _: SignalsReader, symbol: SymbolQ = None, account: AccountQ = None
) -> list[Position]:
    """Each account's latest position in each market."""
    return service.positions(symbol, account)


@router.get("/pnl", response_model=PnlReport)
def pnl(
    service: Service, _: SignalsReader, when: TimeRangeQ, page: PageQ, account: AccountQ = None
) -> PnlReport:
    """The equity curve (a page of snapshots) and realized PnL, fees and net PnL per strategy, of one
    account or of all."""
    return service.pnl(when, page, account)


@router.get("/strategies", response_model=list[StrategyInfo])
def strategies(service: Service, _: SignalsReader) -> list[StrategyInfo]:
    """Each strategy, its signal counts and its current aggregation weight per market."""
    return service.strategies()
