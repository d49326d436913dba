"""A futures account in the account stage (issue 16): perpetuals traded on margin in paper trading, in
every runtime, by the same code as the backtests.

* The accounts issue's parity test with a futures account added: a spot account over the recording's
  spot markets and a futures account (isolated, 100x, shorts allowed, a thin book's slippage) over its
  perpetuals give the same events, id for id, in the embedded runtime and in the stage groups, however
  the markets interleave; margin binds (rejections by the ``margin`` rule).
* Every liquidation price a position carries after opening from flat is Binance's formula, worked out
  here from the fill alone (the brackets read from the bundled JSON, not through Mambo's code).
* A leveraged long on a made-up crash liquidates in paper trading at the price and with the loss and
  fee that the perpetual backtest (``run_backtest`` then ``run_futures``) books.
* The account's equity is its margin balance: wallet (initial + realized − fees − liquidation fees)
  plus the open positions' PnL at their marks, worked out here from the events.
* Funding times (made up here: the recording holds none) in the perpetuals' streams are settled on
  the positions held at them, ``−qty × mark × rate`` worked out here from the fills and candles, the
  same in the embedded runtime and the stage groups however the markets interleave; and Binance's
  recording across a real funding time is booked as the local exchange books it.
* A liquidation's history passes ``mambo audit`` (positions are the fills and liquidations summed).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal as D
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from mambo.backtest.data import CandleFrame
from mambo.backtest.engine import run_backtest
from mambo.backtest.futures import FuturesConfig, run_futures
from mambo.connectors.replay import load_trades
from mambo.core.margin import MarginConfig
from mambo.core.market import Market
from mambo.core.risk import RiskConfig
from mambo.core.stages import Account, EngineConfig, account_stages
from mambo.live import venue_liquidation_fees
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import Candle, FundingRate, MarkPrice, Trade, make_id
from mambo.settings import MamboSettings
from mambo.streams.embedded import EmbeddedRuntime
from mambo.streams.markets import MarketPipelines

from .test_account_stage import ACCOUNT_TOPICS, SLICE, assert_same, of, per_market, pipelines

BRACKETS = Path(__file__).parents[2] / "mambo" / "data" / "binance_usdm_leverage_brackets.json"
PERP = "binanceusdm:BTC/USDT:USDT"


def accounts(keys: tuple[str, ...], thin: bool = True) -> list[Account]:
    """A spot account and a futures account; ``thin``: the futures one at 100x isolated with 400 USDT
    and a thin book's slippage (margin binds), else at 5x cross with 100,000."""
    base = EngineConfig(
        timeframes=("1s", "1m"),
        trading_timeframe="1s",
        strategies=("sma_cross", "rsi_reversion", "macd_cross", "bollinger_breakout"),
        allow_short=True,
        fee_taker=D("0.0005"),
        fee_maker=D("0.0002"),
    )
    spot = replace(
        base,
        account="spot",
        allow_short=False,
        risk=RiskConfig(position_fraction=D("0.2"), max_open_positions=2),
    )
    perp = replace(
        base,
        account="perp",
        initial_cash=D(400),
        slippage_bps=D(20),
        futures=MarginConfig(leverage=100, margin_mode="isolated"),
        risk=RiskConfig(position_fraction=D("0.5")),
    )
    if not thin:
        perp = replace(perp, initial_cash=D(100_000), slippage_bps=D(0), futures=MarginConfig(leverage=5))
    return [
        Account(spot, frozenset(k for k in keys if k.count(":") == 1)),
        Account(perp, frozenset(k for k in keys if k.count(":") == 2)),
    ]


@pytest.fixture(scope="module")
def recording() -> TradeBatch:
    return load_trades()[0]


@pytest.fixture(scope="module")
def rules(recording: TradeBatch) -> dict[str, Market]:
    return {k: Market.inferred(*k.split(":", 1), D("0.01")) for k in recording.keys}


def embedded(batch: TradeBatch, rules: dict[str, Market], config: Any) -> list[tuple[str, Any]]:
    rt = EmbeddedRuntime(config, rules, known_markets=batch.keys, metrics=False)
    out: list[tuple[str, Any]] = []
    rt.observe(lambda t, e: out.append((t, e)) if t not in ("md.trades", "account.feed") else None)
    for start in range(0, len(batch), SLICE):
        rt.ingest_trades(batch.slice(start, start + SLICE))
    rt.finish()
    return out


@pytest.fixture(scope="module")
def reference(recording: TradeBatch, rules: dict[str, Market]) -> list[tuple[str, Any]]:
    return embedded(recording, rules, accounts(recording.keys))


def mine(events: list[tuple[str, Any]], topic: str, account: str = "perp") -> list[Any]:
    return [e for e in of(events, topic) if e.account == account]


def test_a_futures_account_beside_a_spot_one_gives_the_same_events_in_the_stage_groups(
    recording: TradeBatch, rules: dict[str, Market], reference: list[tuple[str, Any]]
) -> None:
    fills = mine(reference, "fills")
    assert len(fills) > 20 and {f.key for f in fills} == {k for k in recording.keys if k.count(":") == 2}
    assert {r.rule for r in mine(reference, "risk.rejections")} >= {"margin"}
    assert mine(reference, "fills", "spot")
    pieces = [recording.slice(s, s + SLICE) for s in range(0, len(recording), SLICE)]
    config: Any = accounts(recording.keys)
    for got in (
        pipelines(pieces, rules, recording.keys, config),
        pipelines(per_market(recording)[::-1], rules, recording.keys, config),
    ):
        for account in ("spot", "perp"):  # each account's events in its order (accounts interleave)
            assert_same(by_account(got, account), by_account(reference, account))
        for topic in ("liquidations", "risk.rejections"):
            assert sorted(e.event_id for e in of(got, topic)) == sorted(
                e.event_id for e in of(reference, topic)
            )


def by_account(events: list[tuple[str, Any]], account: str) -> list[tuple[str, Any]]:
    return [(t, e) for t, e in events if t not in ACCOUNT_TOPICS or e.account == account]


def binance_liquidation_price(qty: D, entry: D, wallet: D, symbol: str) -> D:
    """Binance's USD-M formula, isolated, one-way: LP = (WB + cum − side·|q|·EP) / (|q|·MMR − side·|q|),
    solved per bracket; the bracket whose notional range holds |q|·LP is the answer."""
    raw = {b["symbol"]: b["brackets"] for b in json.loads(BRACKETS.read_text(), parse_float=D, parse_int=D)}
    side, q = (1 if qty > 0 else -1), abs(qty)
    for b in raw[symbol.replace("/", "").split(":")[0]]:
        lp = (wallet + b["cum"] - side * q * entry) / (q * b["maintMarginRatio"] - side * q)
        if b["notionalFloor"] <= q * lp <= b["notionalCap"]:
            return lp
    raise AssertionError("no bracket holds its own solution")


def test_liquidation_prices_are_binance_s_formula_worked_from_the_fill(
    reference: list[tuple[str, Any]],
) -> None:
    held: dict[str, D] = {}
    checked = 0
    positions = {p.event_id: p for p in mine(reference, "positions")}
    for fill in mine(reference, "fills"):
        was = held.get(fill.key, D(0))
        signed = fill.qty if fill.side == "buy" else -fill.qty
        held[fill.key] = was + signed
        if was or not held[fill.key]:
            continue
        # opened from flat: the isolated wallet is the initial margin moved in, less the fee
        position = positions[make_id("position", "perp", fill.key, fill.fill_id)]
        wallet = fill.qty * fill.price / 100 - fill.fee
        lp = binance_liquidation_price(held[fill.key], fill.price, wallet, fill.symbol)
        assert position.liquidation_price is not None
        assert abs(position.liquidation_price - lp) < D("1e-6"), fill
        checked += 1
    assert checked > 5


def test_the_account_s_equity_is_its_margin_balance(reference: list[tuple[str, Any]]) -> None:
    """Worked from the events: initial + realized PnL − fees of the fills and liquidations + funding,
    plus each open position's PnL at its mark, is the equity of the last snapshot."""
    fills, liqs = mine(reference, "fills"), mine(reference, "liquidations")
    wallet = D(400) + sum((f.realized_pnl - f.fee for f in fills), D(0))
    wallet += sum((lq.realized_pnl - lq.fee + lq.insurance for lq in liqs), D(0))
    last: dict[str, Any] = {}
    for p in mine(reference, "positions"):
        last[p.key] = p
    closes = {c.key: D(repr(c.close)) for c in of(reference, "md.candles.1s")}  # the last marks
    equity = mine(reference, "equity")[-1]
    unrealized = sum((p.qty * (closes[k] - p.avg_price) for k, p in last.items() if p.qty), D(0))
    assert equity.equity == wallet + unrealized
    assert equity.funding == sum((lq.insurance for lq in liqs), D(0))  # no funding time in the recording


def crash() -> TradeBatch:
    """A made-up perpetual: a minute flat at 60,000, a dip, a rise that makes sma_cross buy, then a bar
    3% down (far beyond a 50x long's liquidation price), then flat."""
    t0 = 1_700_000_000 * 10**9
    prices = [60_000] * 60 + [59_990 - 10 * i for i in range(5)] + [60_010 + 10 * i for i in range(20)]
    prices += [58_300] * 30
    trades = []
    for i, p in enumerate(prices):
        for j, price in enumerate((p, p)):
            ts = t0 + i * 10**9 + j * 400_000_000
            trades.append(
                Trade(
                    event_id=f"t{i}-{j}", ts_event=ts, ts_init=ts, exchange="binanceusdm",
                    symbol="BTC/USDT:USDT", trade_id=f"{i}-{j}", price=float(price), qty=1.0,
                )
            )  # fmt: skip
    return TradeBatch.from_trades(trades)


def crash_account(futures: bool = True) -> EngineConfig:
    """sma_cross on the crash, a 50x isolated long (``futures``; else the spot-like strategy run)."""
    config = EngineConfig(
        timeframes=("1s",),
        trading_timeframe="1s",
        strategies=("sma_cross",),
        strategy_params={"sma_cross": {"fast": 3, "slow": 10}},
        initial_cash=D(1000),
        fee_taker=D("0.0005"),
        fee_maker=D("0.0002"),
        risk=RiskConfig(position_fraction=D("0.5")),
        account="perp",
    )
    return replace(config, futures=MarginConfig(leverage=50, margin_mode="isolated")) if futures else config


def test_a_leveraged_long_liquidates_in_paper_trading_as_in_the_backtest() -> None:
    config = crash_account(futures=False)
    batch = crash()
    rules = {PERP: Market.inferred("binanceusdm", "BTC/USDT:USDT", D("0.1"))}
    paper_config = crash_account()
    paper = embedded(batch, rules, [Account(paper_config, frozenset([PERP]))])
    [liq] = mine(paper, "liquidations")
    assert liq.side == "sell" and liq.margin_mode == "isolated"

    candles = [c for c in of(paper, "md.candles.1s") if isinstance(c, Candle)]
    frame = CandleFrame(
        "binanceusdm",
        "BTC/USDT:USDT",
        "1s",
        *(
            np.array([getattr(c, f) for c in candles])
            for f in ("open_time", "open", "high", "low", "close", "volume")
        ),
    )
    # the strategy's backtest trades spot-like (no leverage, no margin: the margin account books its
    # fills after): give it the paper account's order size, and let its cash go negative
    [entry] = [f for f in mine(paper, "fills") if f.side == "buy"]
    spot_like = replace(config, order_qty=entry.qty, risk=RiskConfig(cash_only=False))
    result = run_backtest(frame, spot_like, rules[PERP])
    futures = run_futures(result, [], FuturesConfig(leverage=50, margin_mode="isolated"))
    [bt] = futures.liquidations
    assert (bt.ts_event, bt.qty, bt.price, bt.realized_pnl, bt.fee) == (
        liq.ts_event,
        liq.qty,
        liq.price,
        liq.realized_pnl,
        liq.fee,
    )
    # after it the paper account is flat and the strategy's exit never reached the venue
    assert mine(paper, "positions")[-1].qty == 0
    assert [f.side for f in mine(paper, "fills")] == ["buy"]


def test_settings_refuse_a_spot_market_in_a_futures_account() -> None:
    ok = MamboSettings(accounts={"perp": {"markets": [PERP], "futures": {"leverage": 10}}})
    [account] = ok.account_configs()
    assert account.config.futures == MarginConfig(leverage=10)
    with pytest.raises(ValueError, match="not a perpetual"):
        MamboSettings(accounts={"perp": {"markets": [PERP, "binance:BTC/USDT"], "futures": {"leverage": 3}}})
    with pytest.raises(ValueError, match="name its perpetuals"):
        MamboSettings(engine={"futures": {"leverage": 3}})


def test_a_futures_account_takes_the_venue_s_clearance_fee_per_symbol() -> None:
    """The settings' ``liquidation_fees`` by symbol (others pay ``liquidation_fee_rate``); a live
    session fills in what the venue publishes (ccxt's market ``info.liquidationFee``) where they name
    none; a rate outside [0, 1) is refused with the symbol."""
    fees = {"futures": {"leverage": 10, "liquidation_fees": {"ETH/USDT:USDT": "0.005"}}}
    settings = MamboSettings(accounts={"perp": {"markets": [PERP, "binanceusdm:ETH/USDT:USDT"], **fees}})
    [account] = settings.account_configs()
    assert account.config.futures is not None
    assert dict(account.config.futures.liquidation_fees) == {"ETH/USDT:USDT": D("0.005")}
    client = SimpleNamespace(markets={
        "BTC/USDT:USDT": {"info": {"liquidationFee": "0.012000"}},
        "ETH/USDT:USDT": {"info": {"liquidationFee": "0.030000"}},  # the settings' 0.005 stands
    })  # fmt: skip
    live = venue_liquidation_fees(account, client, ["BTC/USDT:USDT", "ETH/USDT:USDT"])
    assert live.config.futures is not None
    assert dict(live.config.futures.liquidation_fees) == {
        "BTC/USDT:USDT": D("0.012"),
        "ETH/USDT:USDT": D("0.005"),
    }
    with pytest.raises(ValueError, match="BTC/USDT:USDT"):
        MarginConfig(liquidation_fees={"BTC/USDT:USDT": "1.5"})


# --- funding -------------------------------------------------------------------------------------

#: Made-up funding times inside the perpetuals' recording (23:54 to 00:00): rates of both signs, one
#: with the venue's mark price and one without (the candle's close is the mark then).
FUNDING_AT = 1723161480_000_000_000  # 2024-08-08 23:58:00 UTC


def funding_rates() -> list[FundingRate]:
    return [
        FundingRate(
            event_id=f"f{i}", ts_event=FUNDING_AT - i * 20 * 10**9, ts_init=FUNDING_AT - i * 20 * 10**9,
            exchange="binanceusdm", symbol=("BTC/USDT:USDT", "ETH/USDT:USDT")[i % 2],
            rate=(0.0001, -0.00025, 0.0003)[i % 3], mark_price=2680.5 if i % 4 == 1 else None,
        )
        for i in range(10)
    ]  # fmt: skip


def venue_marks(batch: TradeBatch, every_s: int = 7) -> list[MarkPrice]:
    """Made-up mark frames of the perpetuals: every ``every_s`` seconds, 0.2% under the last trade."""
    out = []
    for code, key in enumerate(batch.keys):
        if key.count(":") != 2:
            continue
        ts, price = batch.ts[batch.market == code], batch.price[batch.market == code]
        for t in range(int(ts[0]) // 10**9 + 1, int(ts[-1]) // 10**9, every_s):
            last = float(price[int(np.searchsorted(ts, t * 10**9, "right")) - 1])
            exchange, symbol = key.split(":", 1)
            out.append(MarkPrice(event_id=f"m{key}{t}", ts_event=t * 10**9 + 500_000_000,
                                 ts_init=t * 10**9 + 500_000_000, exchange=exchange, symbol=symbol,
                                 mark_price=round(last * 0.998, 2)))  # fmt: skip
    return out


def stream(
    batch: TradeBatch, rates: Sequence[FundingRate | MarkPrice]
) -> list[TradeBatch | FundingRate | MarkPrice]:
    """The trades in slices with each funding time (or mark) in line: after the trades before its time."""
    out: list[TradeBatch | FundingRate | MarkPrice] = []
    start = 0
    for r in sorted(rates, key=lambda r: r.ts_event):
        cut = int(np.searchsorted(batch.ts, r.ts_event, "left"))
        out += [batch.slice(s, min(s + SLICE, cut)) for s in range(start, cut, SLICE)]
        out.append(r)
        start = cut
    out += [batch.slice(s, s + SLICE) for s in range(start, len(batch), SLICE)]
    return out


def with_funding_embedded(batch: TradeBatch, rules: dict[str, Market], config: Any) -> list[tuple[str, Any]]:
    rt = EmbeddedRuntime(config, rules, known_markets=batch.keys, metrics=False)
    out: list[tuple[str, Any]] = []
    inputs = ("md.trades", "md.funding", "account.feed")  # the stage groups give back no input
    rt.observe(lambda t, e: out.append((t, e)) if t not in inputs else None)
    for item in stream(batch, funding_rates()):
        if isinstance(item, FundingRate):
            rt.ingest_funding([item])
        else:
            rt.ingest_trades(item)
    rt.finish()
    return out


def with_funding_pipelines(
    items: list[TradeBatch | FundingRate | MarkPrice],
    rules: dict[str, Market] | None,
    keys: tuple[str, ...] | None,
    config: Any,
    finish: bool = True,
) -> list[tuple[str, Any]]:
    """The stage groups over ``items``; ``finish``: the end of every stream (not a worker's: what
    waits for a market's next watermark stays there)."""
    out: list[tuple[str, Any]] = []
    mp = MarketPipelines(config, lambda t, e: out.append((t, e)), rules, keys, loopback=True)
    for item in items:
        if isinstance(item, FundingRate):
            mp.ingest_funding([item])
        elif isinstance(item, MarkPrice):
            mp.ingest_marks([item])
        else:
            mp.ingest_trades(item)
    if finish:
        mp.finish()
    return [(t, e) for t, e in out if t != "account.feed"]


def test_funding_is_settled_on_the_positions_held_the_same_in_every_interleaving(
    recording: TradeBatch, rules: dict[str, Market]
) -> None:
    config: Any = accounts(recording.keys, thin=False)
    ref = with_funding_embedded(recording, rules, config)
    payments = mine(ref, "funding")
    assert len(payments) >= 4, "futures positions are held at the made-up funding times"
    # worked out from the fills (those at the funding time itself come after it) and the candles
    fills = mine(ref, "fills")
    closes: dict[str, list[tuple[int, float]]] = {}
    for c in of(ref, "md.candles.1s"):
        closes.setdefault(c.key, []).append((c.ts_event, c.close))
    rates = {r.key + str(r.ts_event): r for r in funding_rates()}
    for p in payments:
        held = sum(
            (
                f.qty if f.side == "buy" else -f.qty
                for f in fills
                if f.key == p.key and f.ts_event < p.ts_event
            ),
            D(0),
        )
        rate = rates[p.key + str(p.ts_event)]
        mark = (
            D(repr(rate.mark_price))
            if rate.mark_price
            else D(repr([c for t, c in closes[p.key] if t <= p.ts_event][-1]))
        )
        assert (p.qty, p.mark_price, p.amount) == (held, mark, -held * mark * D(repr(rate.rate)))
    equity = mine(ref, "equity")[-1]
    liqs = mine(ref, "liquidations")
    assert equity.funding == sum((p.amount for p in payments), D(0)) + sum(
        (lq.insurance for lq in liqs), D(0)
    )
    # the stage groups: in recording order, and each market's stream (funding in line) one after another
    items = stream(recording, funding_rates())
    by_market: dict[str, list[TradeBatch | FundingRate]] = {}
    for item in items:
        if isinstance(item, FundingRate):
            by_market.setdefault(item.key, []).append(item)
        else:
            for code, key in enumerate(item.keys):
                part = item.take(item.market == code)
                if len(part):
                    by_market.setdefault(key, []).append(part)
    lagged = [item for key in sorted(by_market, reverse=True) for item in by_market[key]]
    for got in (with_funding_pipelines(items, rules, recording.keys, config),
                with_funding_pipelines(lagged, rules, recording.keys, config)):  # fmt: skip
        for account in ("spot", "perp"):
            assert_same(by_account(got, account), by_account(ref, account))
        assert [e.event_id for e in of(got, "funding")] == [e.event_id for e in payments]


def test_a_liquidation_s_history_passes_the_audit(clickhouse_client: Any, clickhouse_db: str) -> None:
    """The crash run into ClickHouse: the liquidation is in its table, the position it closed in the
    positions table, and every invariant of ``mambo audit`` holds over the history (the positions are
    the fills and the liquidations summed)."""
    from mambo.audit import audit
    from mambo.connectors.clickhouse import ClickHouseSink
    from mambo.streams.embedded import SinkObserver

    config = EngineConfig(
        timeframes=("1s",),
        trading_timeframe="1s",
        strategies=("sma_cross",),
        strategy_params={"sma_cross": {"fast": 3, "slow": 10}},
        initial_cash=D(1000),
        risk=RiskConfig(position_fraction=D("0.5")),
        futures=MarginConfig(leverage=50, margin_mode="isolated"),
    )
    batch = crash()
    rt = EmbeddedRuntime([Account(config, frozenset([PERP]))], known_markets=batch.keys)
    sink = ClickHouseSink(clickhouse_client, clickhouse_db)
    rt.observe(SinkObserver(sink))
    rt.ingest_trades(batch)
    rt.finish()
    sink.flush()
    liqs = clickhouse_client.query("SELECT qty, price, realized_pnl FROM liquidations FINAL").result_rows
    assert len(liqs) == 1
    report = audit(clickhouse_client, clickhouse_db)
    assert [f for f in report.findings if not f.ok] == []


def test_a_recorded_funding_time_is_booked_in_paper_as_on_the_local_exchange() -> None:
    """Binance's own recording across 2023-04-05 00:00 UTC (the local exchange's funding test replays
    it): its trades through the paper account, a scripted long held across the funding time, and the
    funding of the frame the local exchange settles with (its first mark frame at or after the funding
    time: that frame's rate and mark). The payment is ``−qty × mark × rate`` of that frame, as the local
    exchange books it (tests/exchange/test_futures.py)."""
    from mambo.exchange.binance.futures import load_usdm_recording
    from tests.exchange.test_futures import FIXTURE, FUNDING_TIME, funding_frame

    frames = load_usdm_recording(FIXTURE)
    trades = [
        Trade(
            event_id=f"t{d['t']}", ts_event=d["T"] * 10**6, ts_init=d["T"] * 10**6, exchange="binanceusdm",
            symbol="BTC/USDT:USDT", trade_id=str(d["t"]), price=float(d["p"]), qty=float(d["q"]),
        )
        for _, stream, d in frames
        if stream == "trade"
    ]  # fmt: skip
    frame = funding_frame()
    t = FUNDING_TIME * 10**6
    rate = FundingRate(
        event_id="funding", ts_event=t, ts_init=t, exchange="binanceusdm", symbol="BTC/USDT:USDT",
        rate=float(frame["r"]), mark_price=float(frame["p"]),
    )  # fmt: skip
    batch = TradeBatch.from_trades(trades)
    assert batch.ts[0] < t < batch.ts[-1]
    scripted = "tests.streams.scripted:Scripted"
    config = EngineConfig(
        timeframes=("1s",),
        trading_timeframe="1s",
        strategies=(scripted,),
        strategy_params={scripted: {"buy_at": 3, "sell_at": 10**9}},
        fee_taker=D("0.0004"),
        futures=MarginConfig(leverage=10),
    )
    rt = EmbeddedRuntime([Account(config, frozenset([PERP]))], known_markets=batch.keys, metrics=False)
    out: list[tuple[str, Any]] = []
    rt.observe(lambda topic, e: out.append((topic, e)))
    for item in stream(batch, [rate]):
        if isinstance(item, FundingRate):
            rt.ingest_funding([item])
        else:
            rt.ingest_trades(item)
    [fill] = of(out, "fills")
    assert fill.ts_event < t
    [payment] = of(out, "funding")
    assert payment.amount == -fill.qty * D(frame["p"]) * D(frame["r"])
    assert (payment.qty, payment.mark_price, payment.ts_event) == (fill.qty, D(frame["p"]), t)


def rebuilt(config: Any, rules: dict[str, Market], items: list[Any]) -> tuple[Any, list[tuple[str, Any]]]:
    """A run over ``items`` (trade batches, funding times); then the perp account's books rebuilt in a
    fresh account stage from the run's fills, funding payments and liquidations, checked against the
    run's own: (the fresh stage, the run's events)."""
    rt = EmbeddedRuntime(config, rules, known_markets=list(rules), metrics=False)
    out: list[tuple[str, Any]] = []
    rt.observe(lambda t, e: out.append((t, e)))
    for item in items:
        if isinstance(item, FundingRate):
            rt.ingest_funding([item])
        else:
            rt.ingest_trades(item)
    rt.finish()
    [run] = [s for s in rt.account_stages if s.account == "perp"]
    [fresh] = [s for s in account_stages(config, rules) if s.account == "perp"]
    fresh.rebuild(mine(out, "fills"), mine(out, "funding"), mine(out, "liquidations"))
    assert run.margin is not None and fresh.margin is not None
    assert fresh.margin.wallet_balance == run.margin.wallet_balance
    assert fresh.margin.cross_wallet == run.margin.cross_wallet
    fields = ("qty", "cost", "isolated_wallet", "realized_pnl", "fees", "funding")
    for key, pos in run.margin.positions.items():
        again = fresh.margin.positions[key]
        assert [getattr(again, f) for f in fields] == [getattr(pos, f) for f in fields], key
    assert fresh.portfolio.cash == run.portfolio.cash
    assert {k: fresh.portfolio.position(k) for k in rules} == {k: run.portfolio.position(k) for k in rules}
    return fresh, out


def test_the_books_rebuilt_from_the_history_are_the_run_s(
    recording: TradeBatch, rules: dict[str, Market]
) -> None:
    """A live session's restart (``mambo trade --recover``) rebuilds the account from its history:
    the fills, funding payments and liquidations of a run, booked again in a fresh account stage,
    give the run's wallets and positions, the margin account's as the portfolio's (the recording with
    funding times; the crash, with a liquidation); a history that misses a fill is refused."""
    config: Any = accounts(recording.keys)
    _, out = rebuilt(config, rules, stream(recording, funding_rates()))
    fills, payments = mine(out, "fills"), mine(out, "funding")
    assert len(fills) > 20 and payments
    crash_config: Any = [Account(crash_account(), frozenset([PERP]))]
    crash_rules = {PERP: Market.inferred("binanceusdm", "BTC/USDT:USDT", D("0.1"))}
    _, crashed = rebuilt(crash_config, crash_rules, [crash()])
    assert mine(crashed, "liquidations")
    # a history without the last fill before a funding time pays other funding: refused
    held = [f for f in fills if f.ts_event < payments[0].ts_event]
    [fresh] = [s for s in account_stages(config, rules) if s.account == "perp"]
    with pytest.raises(ValueError, match="funding of"):
        fresh.rebuild([f for f in fills if f is not held[-1]], payments)
