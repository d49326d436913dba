"""The grid (issue 17) through the account stage of the embedded runtime, on a made-up path worked by
hand, and on the recording.

Made-up path: six levels 100, 102 … 110, one unit each, starting at 105: buys rest at 100, 102 and 104.
The price dips to 101 (the buys at 104 and 102 fill; their take-profits rest at 106 and 104), jumps to
107 (both take profits fill, the one at 104 as a taker at 107, the market being past it; the buys rest
again, and one at 106, now below the price), dips to 103.5 (the buys at 106, 104 and 102 fill), then
falls through the stop (a close below 99): every resting order is canceled and the three units held
are sold at market. Paper fills come on the candle after the decision (see mambo.core.execution)."""

from __future__ import annotations

from decimal import Decimal as D
from typing import Any

from mambo.core.grid import GridConfig
from mambo.core.market import Market
from mambo.core.stages import EngineConfig
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import Trade
from mambo.streams.embedded import EmbeddedRuntime

BTC = "binance:BTC/USDT"
T0 = 1_700_000_000 * 10**9


def path(closes: list[float]) -> TradeBatch:
    """One trade a second at each price (a candle's open, high, low and close are that price)."""
    trades = [
        Trade(event_id=f"t{i}", ts_event=T0 + i * 10**9, ts_init=T0 + i * 10**9, exchange="binance",
              symbol="BTC/USDT", trade_id=str(i), price=p, qty=1.0)
        for i, p in enumerate(closes)
    ]  # fmt: skip
    return TradeBatch.from_trades(trades)


def run(closes: list[float], grid: GridConfig) -> list[tuple[str, Any]]:
    config = EngineConfig(
        timeframes=("1s",),
        trading_timeframe="1s",
        strategies=("sma_cross",),
        strategy_params={"sma_cross": {"fast": 500, "slow": 1000}},  # warms up past the path: no signals
        fee_maker=D(0),
        fee_taker=D(0),
        grids=(grid,),
    )
    rt = EmbeddedRuntime(
        config, {BTC: Market.default("binance", "BTC/USDT")}, known_markets=[BTC], metrics=False
    )
    out: list[tuple[str, Any]] = []
    rt.observe(lambda t, e: out.append((t, e)))
    rt.ingest_trades(path(closes))
    rt.finish()
    return out


def of(events: list[tuple[str, Any]], topic: str) -> list[Any]:
    return [e for t, e in events if t == topic]


GRID = GridConfig(market=BTC, low=D(100), high=D(110), levels=6, qty=D(1))


def test_a_grid_places_takes_profit_refills_and_stops_as_worked_by_hand() -> None:
    closes = [105.0, 105.0, 101.0, 101.0, 107.0, 107.0, 103.5, 103.5, 98.0, 98.0, 98.0]
    out = run(closes, GRID)
    intents, fills = of(out, "orders.intents"), of(out, "fills")
    # the first candle (105): buys rest at every level below it
    assert sorted((i.side, i.limit_price) for i in intents if i.ts_event == T0 + 10**9) == [
        ("buy", D(100)), ("buy", D(102)), ("buy", D(104))
    ]  # fmt: skip
    orders = {o.client_order_id: o for o in of(out, "orders") if o.status == "new"}
    by_id = {i.client_order_id: i for i in intents}
    for f in fills:  # a limit fills at its limit or better for the grid
        limit = by_id[f.client_order_id].limit_price
        if limit is not None:
            assert f.price <= limit if f.side == "buy" else f.price >= limit
    # each filled buy at level p is followed by its take-profit one level (2) up, each filled
    # take-profit by the buy at its level again
    grid_fills = [f for f in fills if by_id[f.client_order_id].order_type == "limit"]
    for f in grid_fills:
        level = by_id[f.client_order_id].limit_price
        assert level is not None
        want = ("sell", level + 2) if f.side == "buy" else ("buy", level - 2)
        assert want in [
            (i.side, i.limit_price)
            for i in intents
            if i.ts_event == f.ts_event + 10**9 or i.ts_event == f.ts_event
        ]
    take_profits = [f for f in grid_fills if f.side == "sell"]
    assert len(take_profits) == 2  # two cycles
    # the stop (a close of 98 < 99): every resting order canceled, the units held sold at market
    canceled = sorted((o.side, o.limit_price) for o in of(out, "orders") if o.status == "canceled")
    assert canceled == [("buy", D(100)), ("sell", D(104)), ("sell", D(106)), ("sell", D(108))]
    [stop] = [f for f in fills if by_id[f.client_order_id].order_type == "market"]
    bought = sum((f.qty for f in fills if f.side == "buy"), D(0))
    assert stop.qty == bought - sum((f.qty for f in take_profits), D(0)) == D(3)
    assert of(out, "positions")[-1].qty == 0
    # flat at the end: the realized PnL is what the sells brought less what the buys cost, by hand
    # (buys at 104, 102, 106, 104, 102; take-profits at 107 and 106; the stop sells 3 at 98)
    assert sum((f.realized_pnl for f in fills), D(0)) == (107 + 106 + 3 * 98) - (104 + 102 + 106 + 104 + 102)
    assert len(orders) == len(intents)  # every intent became an order (risk let them through)


def test_the_grid_on_the_recording_places_and_refills_its_levels_the_same_in_the_stage_groups() -> None:
    """BTC/USDT's 0.5% range in the recording: levels every 40 USDT place, fill, take profit and rest
    again; the market and account stage groups in another interleaving, and across a restart from
    the saved state, give the same fills."""
    from mambo.connectors.replay import load_trades
    from mambo.streams.markets import MarketPipelines

    batch = load_trades()[0]
    grid = GridConfig(market=BTC, low=D(61540), high=D(61900), levels=10, qty=D("0.01"))
    config = EngineConfig(
        timeframes=("1s",), trading_timeframe="1s", strategies=("sma_cross",), grids=(grid,)
    )
    rules = {k: Market.inferred(*k.split(":", 1), D("0.01")) for k in batch.keys}
    rt = EmbeddedRuntime(config, rules, known_markets=batch.keys, metrics=False)
    ref: list[tuple[str, Any]] = []
    rt.observe(lambda t, e: ref.append((t, e)))
    for s in range(0, len(batch), 2_000):
        rt.ingest_trades(batch.slice(s, s + 2_000))
    rt.finish()
    grid_fills = [f for f in of(ref, "fills") if f.strategy == "grid"]
    take_profits = [f for f in grid_fills if f.side == "sell"]
    assert len(take_profits) >= 3
    refills = [
        i
        for i in of(ref, "orders.intents")
        if i.strategy == "grid" and i.side == "buy" and "cycle 1" in i.reason
    ]
    assert refills  # a level rested again after its take-profit
    out: list[tuple[str, Any]] = []
    mp = MarketPipelines(config, lambda t, e: out.append((t, e)), rules, batch.keys, loopback=True)
    for code in reversed(range(len(batch.keys))):  # one market after another
        mp.ingest_trades(batch.take(batch.market == code))
    mp.finish()
    assert of(out, "fills") == of(ref, "fills")
    # a restart in the middle (every key's state saved, new pipelines restored from it): the levels
    # resume where they were, the same fills follow
    out = []
    mp = MarketPipelines(config, lambda t, e: out.append((t, e)), rules, batch.keys, loopback=True)
    half = len(batch) // 2
    mp.ingest_trades(batch.slice(0, half))
    saved = {k: mp.state(k) for k in mp.keys}
    assert any(k.startswith("account/") for k in saved)
    mp = MarketPipelines(config, lambda t, e: out.append((t, e)), rules, batch.keys, loopback=True)
    for key, blob in saved.items():
        mp.restore(key, blob)
    mp.ingest_trades(batch.slice(half, len(batch)))
    mp.finish()
    assert of(out, "fills") == of(ref, "fills")
