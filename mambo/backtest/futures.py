"""A backtest of a perpetual: the fills of a :class:`~mambo.backtest.engine.BacktestResult` booked in a
futures margin account (:class:`~mambo.core.margin.MarginAccount`) with mark prices and a funding-rate
history, reporting funding paid, liquidations and the margin-ratio curve (:func:`futures_metrics`).

:func:`run_futures` replays, in event time, three streams: the strategy's fills, each bar's mark path, and
the funding times. At one instant a bar's close comes first, then funding, then fills (a position held up
to a funding time pays it). Marks:

* within a bar, the mark-price candle of the same open time when mark candles of the backtest's timeframe
  are given, else the traded candle (said in :attr:`FuturesResult.notes`). A position is liquidated when
  the bar's adverse extreme (the low of a long, the high of a short) reaches its liquidation price: at
  the bar's open when it opens beyond it (the mark gapped over it), else at that price, which the mark
  passed through (to 1e-18, on the liquidating side); else the bar ends at its close.
* at a funding time, the funding event's own mark price; else the open of the mark candle holding the
  funding time (freqtrade's convention: ``amount × mark open × rate``); else the last close.

The strategy and its risk engine ran as on spot and do not see what the margin account does (that needs
the account stage to hold the margin account, in the live stages). So: a fill the margin cannot carry
is refused here (:attr:`FuturesResult.refused`, with the reason the exchange would give), and after a
liquidation the strategy's fills that close what was liquidated are dropped (:attr:`FuturesResult.dropped`):
the exchange already closed it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from mambo.backtest.data import CandleDataError, CandleFrame, frame_from_df
from mambo.backtest.engine import BacktestResult
from mambo.backtest.metrics import curve_metrics
from mambo.core.margin import Brackets, MarginAccount, load_brackets
from mambo.core.market import to_decimal
from mambo.schemas.events import Fill, FundingPayment, FundingRate, Liquidation, MarginMode, make_id

__all__ = [
    "FuturesConfig",
    "FuturesResult",
    "funding_from_history",
    "futures_metrics",
    "load_funding_rates",
    "load_mark_candles",
    "mark_candles_from_history",
    "run_futures",
]

_ZERO = Decimal(0)
_QUANTUM = Decimal("1e-18")
#: Column names a funding-rate CSV may use: Binance's REST reply and bulk files, ccxt, plain.
_TIME_COLUMNS = ("fundingTime", "calc_time", "timestamp", "time", "date", "open_time")
_RATE_COLUMNS = ("fundingRate", "last_funding_rate", "rate", "funding_rate")


@dataclass(frozen=True)
class FuturesConfig:
    """How the perpetual is traded: leverage, margin mode, the liquidation fee, and the brackets (default:
    Binance's bundled ones for the backtest's symbol)."""

    leverage: int = 1
    margin_mode: MarginMode = "cross"
    liquidation_fee_rate: Decimal = Decimal("0.0125")
    brackets: Brackets | None = None


@dataclass
class FuturesResult:
    """The margin account after the replay, what it booked, and its curves at every bar's close."""

    account: MarginAccount
    fills: list[Fill]
    funding: list[FundingPayment]
    liquidations: list[Liquidation]
    times: npt.NDArray[np.int64]
    margin_balance: list[Decimal]
    margin_ratio: npt.NDArray[np.float64]
    config: FuturesConfig
    refused: list[tuple[Fill, str]] = field(default_factory=list)
    dropped: list[Fill] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def load_funding_rates(path: str | Path, exchange: str, symbol: str) -> list[FundingRate]:
    """A funding-rate history: freqtrade's ``*-funding_rate.feather`` (the rate in ``open``), or a CSV
    with a time column (``fundingTime``, ``calc_time``, ``timestamp``...; epoch ms or ISO 8601), a rate
    column (``fundingRate``, ``last_funding_rate``, ``rate``) and optionally ``markPrice``."""
    path = Path(path)
    if not path.is_file():
        raise CandleDataError(f"{path}: no such funding-rate file")
    mark: pd.Series | None = None
    if path.suffix == ".csv":
        df = pd.read_csv(path)
        time_col = next((c for c in _TIME_COLUMNS if c in df.columns), None)
        rate_col = next((c for c in _RATE_COLUMNS if c in df.columns), None)
        if time_col is None or rate_col is None:
            raise CandleDataError(
                f"{path}: a funding CSV needs a time column ({', '.join(_TIME_COLUMNS)}) and a rate column"
                f" ({', '.join(_RATE_COLUMNS)}); got {', '.join(map(str, df.columns))}"
            )
        times = df[time_col]
        if pd.api.types.is_numeric_dtype(times):
            ts = pd.to_datetime(times, unit="ms", utc=True)
        else:
            ts = pd.to_datetime(times, utc=True, format="ISO8601")
        rates = pd.to_numeric(df[rate_col], errors="coerce")
        if "markPrice" in df.columns:
            mark = pd.to_numeric(df["markPrice"], errors="coerce")
        ns = ts.dt.as_unit("ns").astype("int64").to_numpy()
    else:
        from mambo.formats import DataFormatError, read_market_file

        try:
            data = read_market_file(path)
        except DataFormatError as e:
            raise CandleDataError(str(e)) from e
        if data.kind != "candles" or data.name.candle_type != "funding_rate":
            raise CandleDataError(f"{path}: not a funding-rate series (freqtrade's *-funding_rate files)")
        ns = data.frame["open_time"].to_numpy(np.int64)
        rates = data.frame["open"]
    values = rates.to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise CandleDataError(f"{path}: row {int(bad[0]) + 1}: the funding rate is not a number")
    if len(ns) > 1 and (np.diff(ns) <= 0).any():
        raise CandleDataError(f"{path}: funding times must increase strictly")
    marks = [None] * len(ns) if mark is None else [None if not np.isfinite(m) else float(m) for m in mark]
    return [
        FundingRate(
            event_id=make_id("funding_rate", exchange, symbol, int(t)),
            ts_event=int(t),
            ts_init=int(t),
            exchange=exchange,
            symbol=symbol,
            rate=float(r),
            mark_price=m,
        )
        for t, r, m in zip(ns.tolist(), values.tolist(), marks, strict=True)
    ]


def funding_from_history(
    client: Any, database: str, exchange: str, symbol: str, start: int, end: int
) -> list[FundingRate]:
    """The funding times of a market from ``start`` through ``end`` (ns) in the ClickHouse history
    (``funding_rates``: what ``mambo source``, ``mambo trade`` and ``mambo backfill`` keep)."""
    from mambo.connectors.clickhouse import read_events
    from mambo.schemas.topics import FUNDING_RATES

    where = "exchange = {exchange:String} AND symbol = {symbol:String}"
    rows = read_events(client, FUNDING_RATES.table, database, where, {"exchange": exchange, "symbol": symbol})
    return [r for r in rows if isinstance(r, FundingRate) and start <= r.ts_event <= end]


def mark_candles_from_history(
    client: Any, database: str, exchange: str, symbol: str, timeframe: str, start: int, end: int
) -> CandleFrame:
    """Mark-price candles of ``timeframe`` built from the mark prices in the ClickHouse history
    (``mark_prices``, the venue's frames) opening from ``start`` through ``end`` (ns): each bar's first,
    highest, lowest and last mark."""
    from mambo.schemas.events import timeframe_ns
    from mambo.schemas.topics import MARK_PRICES

    step = timeframe_ns(timeframe)
    sql = (
        "SELECT intDiv(toUnixTimestamp64Nano(ts_event), {step:Int64}) * {step:Int64} AS open_time,"
        " argMin(mark_price, ts_event) AS open, max(mark_price) AS high, min(mark_price) AS low,"
        " argMax(mark_price, ts_event) AS close"
        f" FROM `{database}`.`{MARK_PRICES.table}` FINAL"
        " WHERE exchange = {exchange:String} AND symbol = {symbol:String}"
        " AND toUnixTimestamp64Nano(ts_event) BETWEEN {start:Int64} AND {end:Int64}"
        " GROUP BY open_time ORDER BY open_time"
    )
    params = {"step": step, "exchange": exchange, "symbol": symbol, "start": start, "end": end}
    rows = client.query(sql, parameters=params).result_rows
    cols = list(zip(*rows, strict=True)) if rows else [(), (), (), (), ()]
    o, h, lo, c = (np.array(col, dtype=np.float64) for col in cols[1:5])
    return CandleFrame(
        exchange, symbol, timeframe, np.array(cols[0], dtype=np.int64), o, h, lo, c, np.zeros(len(rows))
    )


def load_mark_candles(path: str | Path, exchange: str, symbol: str) -> CandleFrame:
    """Mark-price candles (freqtrade's ``*-mark.feather``, or any candle file); a missing volume is 0."""
    from mambo.formats import DataFormatError, read_market_file

    try:
        data = read_market_file(path)
    except DataFormatError as e:
        raise CandleDataError(str(e)) from e
    if data.kind != "candles":
        raise CandleDataError(f"{path}: mark prices must be candles")
    df = data.frame.rename(columns={"open_time": "timestamp"})
    df["timestamp"] = pd.to_datetime(df["timestamp"], unit="ns", utc=True)
    df["volume"] = df["volume"].fillna(0.0)
    return frame_from_df(df, exchange, symbol, data.timeframe)


def _liquidated(liqs: list[Liquidation], into: list[Liquidation]) -> Decimal:
    """Keep ``liqs``; the signed position they closed."""
    into += liqs
    return sum((lq.qty if lq.side == "sell" else -lq.qty for lq in liqs), _ZERO)


def run_futures(
    result: BacktestResult,
    funding: Sequence[FundingRate],
    config: FuturesConfig | None = None,
    marks: CandleFrame | None = None,
) -> FuturesResult:
    """Book a backtest's fills in a margin account with marks and funding (see the module docstring)."""
    cfg = config or FuturesConfig()
    frame, key = result.frame, result.frame.key
    brackets = cfg.brackets
    if brackets is None:
        bundled = load_brackets()
        if frame.symbol not in bundled:
            raise ValueError(f"no bundled leverage brackets for {frame.symbol}; known: {', '.join(bundled)}")
        brackets = bundled[frame.symbol]
    acc = MarginAccount(
        result.config.initial_cash,
        {frame.symbol: brackets},
        account=result.config.account,
        default_leverage=cfg.leverage,
        default_margin_mode=cfg.margin_mode,
        liquidation_fee_rate=cfg.liquidation_fee_rate,
    )
    notes: list[str] = []
    first, low, high, close = frame.open, frame.low, frame.high, frame.close
    if marks is not None and marks.timeframe == frame.timeframe:
        at = np.searchsorted(marks.open_time, frame.open_time).clip(0, max(len(marks) - 1, 0))
        found = (marks.open_time[at] == frame.open_time) if len(marks) else np.zeros(len(frame), bool)
        first = np.where(found, marks.open[at], frame.open)
        low = np.where(found, marks.low[at], frame.low)
        high = np.where(found, marks.high[at], frame.high)
        close = np.where(found, marks.close[at], frame.close)
        notes.append(
            f"marks within bars: mark-price candles on {int(found.sum())} of {len(frame)} bars,"
            " traded candles on the rest"
        )
    else:
        notes.append(
            "marks within bars: the traded candles (no mark-price candles of the backtest's timeframe)"
        )
    start, end = (int(frame.open_time[0]), int(frame.ts_event[-1])) if len(frame) else (0, -1)
    rates = [r for r in funding if r.key == key and start <= r.ts_event <= end]
    if len(rates) < len([r for r in funding if start <= r.ts_event <= end]):
        raise ValueError(f"funding rates of another market given for {key}")
    funding_marks = 0
    # the timeline: (time, 0 bar close | 1 funding | 2 fill, index)
    timeline = sorted(
        [(int(t), 0, i) for i, t in enumerate(frame.ts_event.tolist())]
        + [(r.ts_event, 1, i) for i, r in enumerate(rates)]
        + [(f.ts_event, 2, i) for i, f in enumerate(result.fills)]
    )
    booked: list[Fill] = []
    payments: list[FundingPayment] = []
    liquidations: list[Liquidation] = []
    refused: list[tuple[Fill, str]] = []
    dropped: list[Fill] = []
    balance: list[Decimal] = []
    ratio: list[float] = []
    ghost = _ZERO  # what the strategy still holds in its own view of a position the exchange liquidated
    last_close: Decimal | None = None
    for t, kind, i in timeline:
        if kind == 0:
            last_close = to_decimal(float(close[i]))
            bar = acc.mark_bar(key, float(low[i]), float(high[i]), last_close, t, t, float(first[i]))
            ghost += _liquidated(bar, liquidations)
            balance.append(acc.margin_balance)
            ratio.append(float(acc.margin_ratio(key)))
        elif kind == 1:
            rate = rates[i]
            mark: float | Decimal | None = rate.mark_price
            if mark is None and marks is not None and len(marks):
                j = int(np.searchsorted(marks.open_time, t, "right")) - 1
                if j >= 0 and t < int(marks.open_time[j]) + marks.step:
                    mark, funding_marks = float(marks.open[j]), funding_marks + 1
            if mark is None:
                mark = last_close
            payment, liqs = acc.fund(key, rate.rate, t, t, mark)
            if payment is not None:
                payments.append(payment)
            ghost += _liquidated(liqs, liquidations)
        else:
            fill = result.fills[i]
            signed = fill.qty if fill.side == "buy" else -fill.qty
            if ghost and (ghost > 0) != (signed > 0):
                absorbed = min(fill.qty, abs(ghost))
                ghost -= absorbed.copy_sign(ghost)
                if absorbed == fill.qty:
                    dropped.append(fill)
                    continue
                rest = fill.qty - absorbed
                dropped.append(
                    fill.model_copy(update={"qty": absorbed, "fee": fill.fee * absorbed / fill.qty})
                )
                fill = fill.model_copy(update={"qty": rest, "fee": fill.fee - fill.fee * absorbed / fill.qty})
            rate_of_fee = fill.fee / (fill.qty * fill.price)
            reason = acc.margin_check(key, fill.side, fill.qty, fill.price, rate_of_fee)
            if reason is not None:
                refused.append((fill, reason))
                continue
            booked.append(acc.apply(fill))
    if rates:
        source = f"{funding_marks} at the mark candle's open, " if marks is not None else ""
        given = sum(1 for r in rates if r.mark_price is not None)
        notes.append(
            f"funding: {len(rates)} funding times; marks: {given} from the funding history, {source}"
            f"{len(rates) - given - funding_marks} at the last close"
        )
    return FuturesResult(
        acc,
        booked,
        payments,
        liquidations,
        frame.ts_event.copy(),
        balance,
        np.array(ratio, dtype=np.float64),
        cfg,
        refused,
        dropped,
        notes,
    )


def futures_metrics(result: FuturesResult) -> dict[str, Any]:
    """The perpetual's figures beside a backtest's metrics: funding, liquidations, the margin ratio, and
    the curve metrics of the margin balance. Money exact, as strings."""
    acc = result.account
    paid = sum((-p.amount for p in result.funding if p.amount < 0), _ZERO)
    received = sum((p.amount for p in result.funding if p.amount > 0), _ZERO)
    curve = np.array([float(b) for b in result.margin_balance])
    # the ratio at bar closes, and at each liquidation (where it reached 1: the close finds the position gone)
    ratios = [float(result.margin_ratio.max())] if len(result.margin_ratio) else [0.0]
    ratios += [float(lq.maintenance_margin / lq.margin_balance) if lq.margin_balance > 0 else math.inf
               for lq in result.liquidations]  # fmt: skip
    out: dict[str, Any] = {
        "leverage": result.config.leverage,
        "margin_mode": result.config.margin_mode,
        "funding_payments": len(result.funding),
        "funding_paid": str(paid),
        "funding_received": str(received),
        "funding_net": str(received - paid),
        "liquidations": len(result.liquidations),
        "liquidation_pnl": str(sum((lq.realized_pnl for lq in result.liquidations), _ZERO)),
        "liquidation_fees": str(sum((lq.fee for lq in result.liquidations), _ZERO)),
        "insurance": str(sum((lq.insurance for lq in result.liquidations), _ZERO)),
        "max_margin_ratio": max(ratios),
        "refused_fills": len(result.refused),
        "dropped_fills": len(result.dropped),
        "initial_balance": str(acc.initial_balance),
        "final_wallet_balance": str(acc.wallet_balance),
        "final_margin_balance": str(acc.margin_balance),
        "notes": list(result.notes),
    }
    out.update(curve_metrics(curve, result.times))  # the margin balance at every bar's close
    return out
