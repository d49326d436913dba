"""One leveraged long, three venues (issue 16): it liquidates at the same mark price and with the same
loss in a backtest, in paper trading and on the local exchange.

The market is made up so that only the mark price liquidates: a perpetual whose last price rises, then
holds, while its mark price (Binance's ``@markPrice@1s`` frames) falls away and then gaps below the
long's liquidation price. The traded candles never reach it.

* **The local exchange** replays it as Binance USDⓈ-M and liquidates at the first mark frame past the
  liquidation price, at that frame's mark. The long is opened there by ccxt's own ``binanceusdm`` client
  at the moment, price and size paper trading opened it.
* **Paper trading** gets the same trades and mark frames, the marks in line with the trades (as the
  exchange source puts them): in the embedded runtime, and in the stage groups with the marks as the
  records a Kafka worker reads from md.trades (encoded and decoded by the Kafka codec).
* **The backtest** (``run_backtest`` then ``run_futures``) gets the candles and the frames as 1 s mark
  candles (a frame is a bar of one price); from the traded candles alone it does not liquidate, and says
  it had no mark candles.

The expected figures are worked here from the frames and Binance's published isolated formula, not
read back from Mambo: the liquidation price from the fill, the mark of the first frame past it, the
loss ``qty × (mark − entry)``, the clearance fee (``liquidationFee`` of the notional, at most what is
left of the position's margin) and the wallet after it, which the exchange's own balance shows too.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from decimal import Decimal as D
from typing import Any

import ccxt.pro
import numpy as np
import pytest

from mambo.backtest.data import CandleFrame
from mambo.backtest.engine import run_backtest
from mambo.backtest.futures import FuturesConfig, run_futures
from mambo.connectors.ccxt_client import local_urls
from mambo.core.margin import MarginConfig
from mambo.core.market import Market
from mambo.core.risk import RiskConfig
from mambo.core.stages import Account, EngineConfig
from mambo.exchange import serve
from mambo.exchange.binance.futures import PERPETUALS, FuturesExchange
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import Candle, MarkPrice, Trade, make_id
from mambo.schemas.topics import ACCOUNT_FEED, MARK_PRICES
from mambo.streams.embedded import EmbeddedRuntime
from mambo.streams.kafka.codec import decode_inline, headers_for
from mambo.streams.markets import MarketPipelines

KEY = "binanceusdm:BTC/USDT:USDT"
SYMBOL = "BTC/USDT:USDT"
SECRET = "venues-secret"
T0 = 1_700_000_000_000  # ms
MS = 1_000_000
LEVERAGE = 50
FEE = D("0.0004")  # the local exchange's default taker fee, paper's too
#: Binance's clearance fee of BTCUSDT (exchangeInfo's liquidationFee, as recorded by cryptofeed's sample)
LIQUIDATION_FEE = D("0.012")
#: Binance's first BTCUSDT bracket (mambo/data/binance_usdm_leverage_brackets.json, its own reply)
MMR, CUM = D("0.004"), D(0)
QTY = D("0.010")
#: The mark frames after the top: falling, still above the liquidation price (59,089.77 for the long
#: sma_cross opens in the rise), then the frame that gaps below it, by less than the margin left
FALL = [D("59800.0"), D("59500.0"), D("59200.0"), D("59000.0"), D("58700.0")]


def path() -> list[tuple[D, D]]:
    """(last price, mark) a second: a minute flat, a dip, a rise that makes sma_cross buy, a top held,
    then the last price holds while the mark falls away (:data:`FALL`)."""
    prices = (
        [D(60_000)] * 60 + [D(59_990 - 10 * i) for i in range(5)] + [D(60_010 + 10 * i) for i in range(20)]
    )
    prices += [prices[-1]] * 10
    steps = [(p, p - 5) for p in prices]
    return steps + [(prices[-1], m) for m in FALL] + [(prices[-1], FALL[-1])] * 5


def recording() -> list[tuple[int, str, dict[str, Any]]]:
    """The path as Binance USDⓈ-M streams: each second a book top (ask at the last price), two trades,
    and a mark frame half a second in."""
    events: list[tuple[int, str, dict[str, Any]]] = []
    for i, (price, mark) in enumerate(path()):
        t = T0 + i * 1000
        p, m = str(price), str(mark)
        bid = str(price - D("0.1"))
        events.append((t, "bookTicker", {"e": "bookTicker", "u": i, "E": t, "T": t, "s": "BTCUSDT",
                                         "b": bid, "B": "5", "a": p, "A": "5"}))  # fmt: skip
        for j, at in enumerate((t, t + 400)):
            events.append((at, "trade", {"e": "trade", "E": at, "T": at, "s": "BTCUSDT", "t": 2 * i + j,
                                         "p": p, "q": "1.000", "X": "MARKET", "m": False}))  # fmt: skip
        frame = {"e": "markPriceUpdate", "E": t + 500, "s": "BTCUSDT", "p": m, "i": m, "P": m,
                 "r": "0.0001", "T": T0 + 8 * 3600_000}  # fmt: skip
        events.append((t + 500, "markPrice", frame))
    return events


def paper_input() -> list[Trade | MarkPrice]:
    """The recording as paper trading gets it: trades and the venue's marks in stream order."""
    out: list[Trade | MarkPrice] = []
    for _, kind, d in recording():
        if kind == "trade":
            ts = d["T"] * MS
            out.append(Trade(event_id=f"t{d['t']}", ts_event=ts, ts_init=ts, exchange="binanceusdm",
                             symbol=SYMBOL, trade_id=str(d["t"]), price=float(d["p"]), qty=1.0))  # fmt: skip
        elif kind == "markPrice":
            ts = d["E"] * MS
            out.append(MarkPrice(event_id=make_id("mark", KEY, ts), ts_event=ts, ts_init=ts,
                                 exchange="binanceusdm", symbol=SYMBOL, mark_price=float(d["p"]),
                                 index_price=float(d["i"])))  # fmt: skip
    return out


def config() -> EngineConfig:
    return EngineConfig(
        timeframes=("1s",),
        trading_timeframe="1s",
        strategies=("sma_cross",),
        strategy_params={"sma_cross": {"fast": 3, "slow": 10}},
        initial_cash=D(1000),
        fee_taker=FEE,
        fee_maker=D("0.0002"),
        order_qty=QTY,
        risk=RiskConfig(position_fraction=D("0.5")),
        account="perp",
        # the venue's published clearance fee of the symbol (the account's default rate is another)
        futures=MarginConfig(
            leverage=LEVERAGE, margin_mode="isolated", liquidation_fees={SYMBOL: LIQUIDATION_FEE}
        ),
    )


RULES = {KEY: Market.inferred("binanceusdm", SYMBOL, D("0.1"))}


def batches(items: list[Trade | MarkPrice]) -> list[TradeBatch | list[MarkPrice]]:
    """Consecutive runs: trades as batches, marks as lists."""
    runs: list[TradeBatch | list[MarkPrice]] = []
    trades: list[Trade] = []
    for item in items:
        if isinstance(item, Trade):
            trades.append(item)
            continue
        if trades:
            runs.append(TradeBatch.from_trades(trades))
            trades = []
        runs.append([item])
    if trades:
        runs.append(TradeBatch.from_trades(trades))
    return runs


def embedded() -> list[tuple[str, Any]]:
    rt = EmbeddedRuntime([Account(config(), frozenset([KEY]))], RULES, known_markets=[KEY], metrics=False)
    out: list[tuple[str, Any]] = []
    rt.observe(lambda t, e: out.append((t, e)))
    for run in batches(paper_input()):
        if isinstance(run, TradeBatch):
            rt.ingest_trades(run)
        else:
            rt.ingest_marks(run)
    rt.finish()
    return out


def stage_groups() -> list[tuple[str, Any]]:
    """The market and account stage groups (what a Kafka worker runs), the marks decoded from the
    records a source writes in line on md.trades."""
    out: list[tuple[str, Any]] = []
    mp = MarketPipelines(
        [Account(config(), frozenset([KEY]))], lambda t, e: out.append((t, e)), RULES, [KEY], loopback=True
    )
    for run in batches(paper_input()):
        if isinstance(run, TradeBatch):
            mp.ingest_trades(run)
        else:
            records = [(m.model_dump_json().encode(), headers_for(MarkPrice)) for m in run]
            mp.ingest_inline([decode_inline(value, headers) for value, headers in records])
    mp.finish()
    return [(t, e) for t, e in out if t != ACCOUNT_FEED.name]


def of(events: list[tuple[str, Any]], topic: str) -> list[Any]:
    return [e for t, e in events if t == topic]


async def on_the_exchange(entry_ms: int) -> tuple[list[Any], dict[str, Any], D]:
    """The long opened on the local exchange at ``entry_ms`` by ccxt's binanceusdm, then the recording
    to its end: (the liquidations, the fill, the USDT wallet after)."""
    exchange = FuturesExchange(recording(), api_secret=SECRET, balance="1000", fee_taker=str(FEE))
    runner, url = await serve(exchange)
    client = ccxt.pro.binanceusdm({"apiKey": "any-key", "secret": SECRET})
    client.urls["api"] = local_urls(client.urls["api"], url)
    try:
        await client.load_markets()
        await client.set_margin_mode("isolated", SYMBOL)
        await client.set_leverage(LEVERAGE, SYMBOL)
        await exchange.advance((entry_ms - exchange.now_ms) / 1000)
        assert exchange.now_ms == entry_ms
        order = await client.create_order(SYMBOL, "market", "buy", float(QTY))
        [fill] = await client.fetch_my_trades(SYMBOL)
        assert fill["order"] == order["id"]
        await exchange.advance((recording()[-1][0] - exchange.now_ms) / 1000)
        balance = await client.fetch_balance()
        return list(exchange.liquidations), fill, D(str(balance["USDT"]["total"]))
    finally:
        await client.close()
        await runner.cleanup()


def test_a_leveraged_long_liquidates_alike_in_a_backtest_in_paper_trading_and_on_the_local_exchange() -> None:
    assert PERPETUALS["BTCUSDT"].liquidation_fee == LIQUIDATION_FEE  # the exchange's rate, paper's too
    assert config().futures is not None and config().futures.liquidation_fee_rate != LIQUIDATION_FEE
    paper = embedded()
    [entry] = of(paper, "fills")
    assert entry.side == "buy" and entry.qty == QTY
    [liq] = of(paper, "liquidations")

    # worked out: Binance's isolated liquidation price of the long from its fill; the isolated wallet is
    # the initial margin moved in, less the opening fee (Mambo books an isolated position's every flow
    # to its own wallet)
    wallet = QTY * entry.price / LEVERAGE - QTY * entry.price * FEE
    lp = (wallet + CUM - QTY * entry.price) / (QTY * MMR - QTY)
    assert all(p > lp for p, _ in path()), "the last price never reaches the liquidation price"
    first_past = next(m for _, m in path() if m <= lp)
    assert first_past == FALL[3] and FALL[2] > lp  # the frame that gaps below it
    loss = QTY * (first_past - entry.price)
    fee = min(QTY * first_past * LIQUIDATION_FEE, max(wallet + loss, D(0)))
    insurance = max(-(wallet + loss - fee), D(0))
    assert fee > 0  # what margin is left pays the clearance fee
    assert (liq.side, liq.qty, liq.price, liq.realized_pnl, liq.fee, liq.insurance) == (
        "sell", QTY, first_past, loss, fee, insurance
    )  # fmt: skip
    frame_ms = next(t for t, k, d in recording() if k == "markPrice" and D(d["p"]) == first_past)
    assert liq.ts_event == frame_ms * MS
    assert of(paper, "positions")[-1].qty == 0
    equity = of(paper, "equity")[-1]
    after = D(1000) - QTY * entry.price * FEE + loss - fee + insurance
    assert equity.equity == after
    # paper on its stage groups, the marks read back as Kafka records: the same events
    groups = stage_groups()
    for topic in ("fills", "liquidations", "positions", "equity", "orders"):
        assert of(groups, topic) == of(paper, topic), topic
    assert of(paper, MARK_PRICES.name)  # the marks are on md.mark for the history

    # the local exchange: ccxt's binanceusdm opens the same long at the same moment and price
    liqs, fill, wallet_after = asyncio.run(on_the_exchange(entry.ts_event // MS))
    assert (D(str(fill["price"])), D(str(fill["amount"]))) == (entry.price, entry.qty)
    [venue] = liqs
    assert (venue.qty, venue.price, venue.realized_pnl, venue.fee, venue.insurance) == (
        liq.qty, liq.price, liq.realized_pnl, liq.fee, liq.insurance
    )  # fmt: skip
    assert venue.ts_event == liq.ts_event
    assert wallet_after == after

    # the backtest: the strategy's fills (its own backtest, spot-like, sized as paper's) booked on margin
    candles = [c for c in of(paper, "md.candles.1s") if isinstance(c, Candle)]
    columns = ("open_time", "open", "high", "low", "close", "volume")
    frame = CandleFrame(
        "binanceusdm", SYMBOL, "1s", *(np.array([getattr(c, f) for c in candles]) for f in columns)
    )
    spot_like = replace(config(), futures=None, risk=RiskConfig(cash_only=False))
    result = run_backtest(frame, spot_like, RULES[KEY])
    assert result.fills[0].price == entry.price and result.fills[0].qty == QTY
    futures = FuturesConfig(leverage=LEVERAGE, margin_mode="isolated", liquidation_fee_rate=LIQUIDATION_FEE)
    marks = [m for m in paper_input() if isinstance(m, MarkPrice)]
    mark_frame = CandleFrame(
        "binanceusdm", SYMBOL, "1s",
        np.array([m.ts_event // 10**9 * 10**9 for m in marks]),
        *(np.array([m.mark_price for m in marks]) for _ in range(4)),
        np.zeros(len(marks)),
    )  # fmt: skip
    with_marks = run_futures(result, [], futures, mark_frame)
    [bt] = with_marks.liquidations
    assert (bt.qty, bt.price, bt.realized_pnl, bt.fee, bt.insurance) == (
        liq.qty, liq.price, liq.realized_pnl, liq.fee, liq.insurance
    )  # fmt: skip
    assert with_marks.account.wallet_balance == after
    # from the traded candles alone the backtest sees no mark past the liquidation price, and says so
    traded_only = run_futures(result, [], futures)
    assert traded_only.liquidations == []
    assert any("no mark-price candles" in n for n in traded_only.notes)


@pytest.mark.parametrize("gap", [True, False])
def test_a_bar_liquidates_at_its_open_when_it_opens_past_the_liquidation_price(gap: bool) -> None:
    """``MarginAccount.mark_bar``: a mark bar that opens beyond the liquidation price liquidates at its
    open (the first mark past it); one that opens above it and trades through at the price itself."""
    from mambo.core.margin import MarginAccount, load_brackets
    from mambo.schemas.events import Fill

    acc = MarginAccount(D(1000), {SYMBOL: load_brackets()[SYMBOL]}, default_leverage=LEVERAGE,
                        default_margin_mode="isolated", liquidation_fee_rate=LIQUIDATION_FEE)  # fmt: skip
    acc.apply(Fill(event_id="f", ts_event=1, ts_init=1, exchange="binanceusdm", symbol=SYMBOL, fill_id="f",
                   client_order_id="c", strategy="s", side="buy", qty=QTY, price=D(60000), fee=D("0.24"),
                   fee_currency="USDT", liquidity="taker"))  # fmt: skip
    lp = acc.liquidation_price(KEY)
    assert lp is not None
    open_ = lp - 100 if gap else lp + 100
    [liq] = acc.mark_bar(KEY, lp - 200, lp + 150, lp - 150, 2, 2, open_)
    assert liq.price == (open_ if gap else lp.quantize(D("1e-6"), rounding="ROUND_FLOOR"))


def test_state_pickled_before_marks_came_in_line_restores() -> None:
    """A changelog's state from before this change: its market stage's in-line stage was a
    ``ControlStage`` reading no marks, its margin account knew no venue marks or per-symbol fees, and
    the feeds waiting in its account's merge had no ``mark``. Restored, it takes marks and liquidates
    at them as a fresh run does."""
    import pickle

    from mambo.core.stages import InLineStage, account_stages, market_stages

    accounts = [Account(config(), frozenset([KEY]))]
    [inline] = [s for s in market_stages(accounts, [KEY]) if isinstance(s, InLineStage)]
    inline.inputs = inline.inputs[:4]  # as ControlStage read them: no marks
    old = pickle.dumps(inline, protocol=0).replace(b"\nInLineStage\n", b"\nControlStage\n")
    restored = pickle.loads(old)
    assert isinstance(restored, InLineStage) and MARK_PRICES.name in restored.inputs

    [account] = account_stages(accounts, RULES)
    assert account.margin is not None
    state = dict(account.margin.__dict__)
    for name in ("venue_marks", "liquidation_fees"):
        del state[name]
    margin = type(account.margin).__new__(type(account.margin))
    margin.__setstate__(state)
    assert margin.venue_marks == set() and margin.liquidation_fees == {}

    feed = embedded_feed()
    kept = feed.__getstate__()
    del kept["__dict__"]["mark"], kept["__dict__"]["control"]
    again = type(feed).__new__(type(feed))
    again.__setstate__(kept)
    assert again.mark is None and again.control is None and again == feed


def embedded_feed() -> Any:
    """A candle's feed item of the paper run."""
    rt = EmbeddedRuntime([Account(config(), frozenset([KEY]))], RULES, known_markets=[KEY], metrics=False)
    feeds: list[Any] = []
    rt.observe(lambda t, e: feeds.append(e) if t == ACCOUNT_FEED.name and e.candle is not None else None)
    for run in batches(paper_input())[:20]:
        if isinstance(run, TradeBatch):
            rt.ingest_trades(run)
        else:
            rt.ingest_marks(run)
    return feeds[0]
