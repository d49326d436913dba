"""Market data: candles, indicator values, the markets seen, the feeds' health."""

from __future__ import annotations

from fastapi import APIRouter

from mambo.api.deps import REFUSALS, PageQ, Service, SignalsReader, SymbolQ, TimeframeQ, TimeRangeQ
from mambo.api.service import Page, SymbolInfo
from mambo.schemas.events import Candle, FeedHealth, IndicatorValues

router = APIRouter(tags=["market data"], responses=REFUSALS)


@router.get("/candles", response_model=Page[Candle])
def candles(
    service: Service,
    _: SignalsReader,
    when: TimeRangeQ,
    page: PageQ,
    symbol: SymbolQ = None,
    timeframe: TimeframeQ = None,
) -> Page[Candle]:
    """Closed candles (built from trades, or from the exchange), oldest first unless ``order=desc``."""
    return service.candles(symbol, timeframe, when, page)


@router.get("/indicators", response_model=Page[IndicatorValues])
def indicators(
    service: Service,
    _: SignalsReader,
    when: TimeRangeQ,
    page: PageQ,
    symbol: SymbolQ = None,
    timeframe: TimeframeQ = None,
) -> Page[IndicatorValues]:
    """Indicator values of each closed candle (NaN while an indicator warms up is sent as null)."""
    return service.indicators(symbol, timeframe, when, page)


@router.get("/symbols", response_model=list[SymbolInfo])
def symbols(service: Service, _: SignalsReader) -> list[SymbolInfo]:
    """Every market with candles: its key, candle count, last close and time."""
    return service.symbols()


@router.get("/feeds/health", response_model=list[FeedHealth])
def feeds_health(service: Service, _: SignalsReader) -> list[FeedHealth]:
    """The latest report of each stream of each market data source (``mambo source``): ``status``
    (``alive`` every few seconds, or the last change: ``stalled``, ``reconnected``, ...) and
    ``age_seconds``, the time since the stream's last message when reported at ``ts_event``."""
    return service.stream_health()
