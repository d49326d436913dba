"""The notification builder: what each event makes, deterministic ids, and the real pipeline."""

from __future__ import annotations

import pickle
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from mambo.connectors.replay import DEMO_TRADES, load_trades
from mambo.core.risk import RiskConfig
from mambo.core.stages import EngineConfig
from mambo.notify import NotificationStage, notification_stage
from mambo.schemas.events import (
    EquitySnapshot,
    FeedHealth,
    Fill,
    Notification,
    Order,
    RiskRejection,
    make_id,
)
from mambo.schemas.topics import EQUITY, FEED_HEALTH, FILLS, NOTIFICATIONS, ORDERS, REJECTIONS
from mambo.settings import MamboSettings, load_settings
from mambo.streams.embedded import EmbeddedRuntime

S = 1_000_000_000
STRATEGIES = ("sma_cross", "rsi_reversion", "macd_cross", "bollinger_breakout")


def order(
    cid: str, status: str = "new", reduce_only: bool = False, ts: int = 0, account: str = "main"
) -> Order:
    return Order(
        event_id=make_id("order", cid, status),
        account=account,
        ts_event=ts,
        ts_init=ts,
        exchange="binance",
        symbol="BTC/USDT",
        client_order_id=cid,
        strategy="sma_cross",
        side="sell" if reduce_only else "buy",
        order_type="market",
        qty=Decimal("0.5"),
        status=status,
        reduce_only=reduce_only,
        reason="insufficient balance" if status == "rejected" else "",
    )


def fill(cid: str, side: str = "buy", pnl: str = "0", ts: int = 0) -> Fill:
    return Fill(
        event_id=make_id("fill", cid, 1),
        ts_event=ts,
        ts_init=ts,
        exchange="binance",
        symbol="BTC/USDT",
        fill_id=make_id("fill", cid, 1),
        client_order_id=cid,
        strategy="sma_cross",
        side=side,
        price=Decimal("50000.10"),
        qty=Decimal("0.5"),
        fee=Decimal("25.00005"),
        fee_currency="USDT",
        liquidity="taker",
        realized_pnl=Decimal(pnl),
    )


def rejection(i: int, ts: int, rule: str = "rate_limit") -> RiskRejection:
    return RiskRejection(
        event_id=make_id("rejection", i),
        ts_event=ts,
        ts_init=ts,
        exchange="binance",
        symbol="BTC/USDT",
        client_order_id=f"c{i}",
        strategy="sma_cross",
        side="buy",
        rule=rule,
        reason=f"{rule} said no",
    )


def equity(drawdown: float, ts: int = 0, account: str = "main") -> EquitySnapshot:
    return EquitySnapshot(
        event_id=make_id("equity", account, ts, drawdown),
        ts_event=ts,
        ts_init=ts,
        account=account,
        cash=Decimal(90_000),
        positions_value=Decimal(0),
        equity=Decimal(90_000),
        realized_pnl=Decimal(-10_000),
        unrealized_pnl=Decimal(0),
        fees=Decimal(0),
        drawdown=drawdown,
    )


def notes(stage: NotificationStage, topic: str, event: Any) -> list[Notification]:
    out = stage.handle(topic, event)
    assert all(t == NOTIFICATIONS.name for t, _ in out)
    return [n for _, n in out]


def test_fills_are_entries_and_exits_by_their_order() -> None:
    stage = NotificationStage()
    assert notes(stage, ORDERS.name, order("a")) == []  # a new order is news through its fills
    [entry] = notes(stage, FILLS.name, fill("a"))
    assert (entry.kind, entry.level, entry.account, entry.market) == (
        "entry",
        "info",
        "main",
        "binance:BTC/USDT",
    )
    assert entry.title == "[main] entry buy BTC/USDT"
    assert entry.body.startswith(
        "buy 0.5 BTC/USDT at 50000.1 on binance (notional 25000.05, fee 25.00005 USDT)"
    )
    assert "PnL" not in entry.body
    assert (entry.source_topic, entry.source_id) == (FILLS.name, fill("a").event_id)
    assert notes(stage, ORDERS.name, order("a", "filled")) == []
    notes(stage, ORDERS.name, order("b", reduce_only=True))
    [loss] = notes(stage, FILLS.name, fill("b", "sell", pnl="-12.5"))
    assert (loss.kind, loss.level) == ("exit", "warning")
    assert loss.body.endswith("realized PnL -12.5")
    notes(stage, ORDERS.name, order("c", reduce_only=True))
    [win] = notes(stage, FILLS.name, fill("c", "sell", pnl="3"))
    assert (win.kind, win.level) == ("exit", "success")
    assert stage.state["main"].reduce_only == {"b": True, "c": True}  # until their final states


def test_orders_the_venue_refused_are_news() -> None:
    stage = NotificationStage()
    notes(stage, ORDERS.name, order("a"))
    [n] = notes(stage, ORDERS.name, order("a", "rejected"))
    assert (n.kind, n.level, n.title) == ("order", "warning", "[main] order rejected buy BTC/USDT")
    assert n.body.endswith(": insufficient balance; strategy sma_cross")
    assert notes(stage, ORDERS.name, order("a", "partially_filled")) == []
    assert stage.state["main"].reduce_only == {}


def test_rejections_notify_once_past_the_rate_then_rearm_below_it() -> None:
    stage = NotificationStage(rejections_per_minute=3)
    made = [notes(stage, REJECTIONS.name, rejection(i, t * S)) for i, t in enumerate((0, 10, 20, 30, 59))]
    assert [len(m) for m in made] == [0, 0, 1, 0, 0]  # the third in a minute, once
    assert made[2][0].title == "[main] 3 risk rejections in a minute"
    assert "(rate_limit 3)" in made[2][0].body
    # at 75 s only 30, 59 and 75 are within the minute: still at the rate, still quiet
    assert notes(stage, REJECTIONS.name, rejection(5, 75 * S)) == []
    # at 200 s alone: below the rate, re-armed; the third within a minute notifies again
    assert notes(stage, REJECTIONS.name, rejection(6, 200 * S, "cooldown")) == []
    assert notes(stage, REJECTIONS.name, rejection(7, 201 * S)) == []
    [again] = notes(stage, REJECTIONS.name, rejection(8, 202 * S))
    assert "(cooldown 1, rate_limit 2)" in again.body


def test_kill_switch_halts_once_and_resumes_on_the_next_entry() -> None:
    stage = NotificationStage(drawdown_levels=(0.5,), max_drawdown={"main": 0.1})
    assert notes(stage, EQUITY.name, equity(0.05, 1)) == []
    [halt] = notes(stage, EQUITY.name, equity(0.1, 2))
    assert (halt.kind, halt.level, halt.title) == (
        "kill_switch",
        "failure",
        "[main] kill switch: entries halted",
    )
    assert halt.body.startswith("drawdown 10.00% reached the limit 10.00%")
    assert notes(stage, EQUITY.name, equity(0.12, 3)) == []
    assert notes(stage, REJECTIONS.name, rejection(1, 4, "max_drawdown")) == []  # halted already
    assert notes(stage, ORDERS.name, order("exit", reduce_only=True)) == []  # exits pass while halted
    [resumed] = notes(stage, ORDERS.name, order("entry"))
    assert (resumed.kind, resumed.level, resumed.title) == (
        "kill_switch",
        "success",
        "[main] entries resumed",
    )
    assert resumed.event_id != halt.event_id
    # with no limit configured, risk's own refusal says the switch fired
    other = NotificationStage()
    [n] = notes(other, REJECTIONS.name, rejection(2, 5, "max_drawdown"))
    assert n.kind == "kill_switch" and n.body.startswith("max_drawdown said no")


def test_drawdown_levels_notify_on_the_way_up_and_rearm() -> None:
    stage = NotificationStage(drawdown_levels=(0.1, 0.05))
    seen = [
        [n.title for n in notes(stage, EQUITY.name, equity(dd, i))]
        for i, dd in enumerate((0.04, 0.06, 0.07, 0.12, 0.02, 0.06))
    ]
    assert seen == [[], ["[main] drawdown 6.0%"], [], ["[main] drawdown 12.0%"], [], ["[main] drawdown 6.0%"]]
    with pytest.raises(ValueError, match="fractions"):
        NotificationStage(drawdown_levels=(5,))


def test_feeds_report_changes_not_the_periodic_alive() -> None:
    stage = NotificationStage()

    def health(status: str) -> FeedHealth:
        return FeedHealth(
            event_id=make_id("fh", status),
            ts_event=1,
            ts_init=1,
            exchange="binance",
            stream="trades:BTC/USDT",
            status=status,
            age_seconds=31.0,
        )

    assert notes(stage, FEED_HEALTH.name, health("alive")) == []
    [n] = notes(stage, FEED_HEALTH.name, health("stalled"))
    assert (n.kind, n.level, n.account, n.market) == ("feed", "warning", "", "binance")
    assert n.title == "feed binance trades:BTC/USDT stalled"
    assert [x.level for x in notes(stage, FEED_HEALTH.name, health("reconnected"))] == ["success"]


def test_accounts_filter_and_state_pickles() -> None:
    stage = NotificationStage(accounts=frozenset({"other"}))
    assert notes(stage, ORDERS.name, order("a", "rejected")) == []
    stage = NotificationStage()
    notes(stage, ORDERS.name, order("b", reduce_only=True))
    copy = pickle.loads(pickle.dumps(stage))  # a worker keeps it in its changelog with the account
    assert notes(copy, FILLS.name, fill("b", "sell"))[0].kind == "exit"


def test_the_stage_from_settings_takes_each_accounts_kill_switch() -> None:
    settings = MamboSettings(
        notify={"rejections_per_minute": 7, "drawdown_levels": "0.2,0.1"},
        engine={"risk": {"max_drawdown": 0.3}},
    )
    stage = notification_stage(settings)
    assert (stage.rejections_per_minute, stage.drawdown_levels, stage.max_drawdown) == (
        7,
        (0.1, 0.2),
        {"main": 0.3},
    )
    with pytest.raises(ValueError, match="apprise URL"):
        MamboSettings(notify={"channels": ["not a url"]})


def test_notify_section_in_a_settings_file(tmp_path: Path) -> None:
    config = tmp_path / "mambo.toml"
    config.write_text(
        "[notify]\n"
        'channels = ["tgram://123:abc/42", "json://127.0.0.1:9/hook"]\n'
        'events = ["exit", "kill_switch"]\n'
        "max_per_minute = 5\n"
    )
    notify = load_settings(config).notify
    assert [c.get_secret_value() for c in notify.channels] == [
        "tgram://123:abc/42",
        "json://127.0.0.1:9/hook",
    ]
    assert "123:abc" not in repr(notify)  # secrets stay out of reprs and logs
    assert (notify.events, notify.max_per_minute) == (("exit", "kill_switch"), 5)
    config.write_text('[notify]\nevents = ["exits"]\n')
    with pytest.raises(ValueError, match="events"):
        load_settings(config)


def run_pipeline(batch_size: int) -> tuple[list[Notification], list[Any]]:
    config = EngineConfig(
        timeframes=("1s",),
        trading_timeframe="1s",
        strategies=STRATEGIES,
        risk=RiskConfig(max_orders_per_minute=2, max_drawdown=0.001),
    )
    rt = EmbeddedRuntime(config, metrics=False)
    rt.bus.add_stage(
        NotificationStage(rejections_per_minute=2, drawdown_levels=(0.0005,), max_drawdown={"main": 0.001})
    )
    seen: list[tuple[str, Any]] = []
    rt.observe(
        lambda t, e: seen.append((t, e)) if t in (NOTIFICATIONS.name, ORDERS.name, FILLS.name) else None
    )
    batch, _ = load_trades(DEMO_TRADES)
    for start in range(0, len(batch), batch_size):
        rt.ingest_trades(batch.slice(start, start + batch_size))
    rt.finish()
    return [e for t, e in seen if t == NOTIFICATIONS.name], seen


def test_the_pipeline_makes_the_same_notifications_on_a_replay() -> None:
    made, seen = run_pipeline(5_000)
    again, _ = run_pipeline(777)
    key = [(n.event_id, n.kind, n.title, n.body) for n in made]
    assert key == [(n.event_id, n.kind, n.title, n.body) for n in again]
    # one entry or exit per fill, told apart by the order that caused it (read from the orders topic)
    exits = {e.client_order_id for t, e in seen if t == ORDERS.name and e.reduce_only}
    fills = [e for t, e in seen if t == FILLS.name]
    assert fills
    by_source = {n.source_id: n.kind for n in made if n.source_topic == FILLS.name}
    assert by_source == {f.event_id: ("exit" if f.client_order_id in exits else "entry") for f in fills}
    kinds = {n.kind for n in made}
    assert {"entry", "exit", "rejections", "kill_switch", "drawdown"} <= kinds
    assert len({n.event_id for n in made}) == len(made)
