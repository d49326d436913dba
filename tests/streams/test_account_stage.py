"""One account across markets: the account stage's event-time merge, and the same orders in every
runtime (issue 13).

The reference is the embedded runtime (every stage on one bus, the markets in recording order). The
market and account stage groups of the distributed runtimes (:class:`MarketPipelines`, the feed
looped back in process) must give the same events, id for id, however the markets' streams are
interleaved: in recording order, one market after another, or shuffled in chunks. The portfolio
backtest over the candles the run built must give the same fills. The configuration makes the
account's rules bind across markets (two open positions at most, half the equity exposed, a fifth
of the equity per entry), so a per-market account could not agree.

Cost: ~20 s (the bundled recording, 69,808 trades of 4 markets, through five runs)."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mambo.backtest.data import CandleFrame
from mambo.backtest.portfolio import run_portfolio
from mambo.connectors.replay import load_trades
from mambo.core.market import Market
from mambo.core.merge import EventTimeMerge
from mambo.core.risk import RiskConfig
from mambo.core.stages import EngineConfig
from mambo.notify import NotificationStage
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import Candle
from mambo.schemas.topics import (
    ACCOUNT_FEED,
    EQUITY,
    FILLS,
    INTENTS,
    NOTIFICATIONS,
    ORDERS,
    POSITIONS,
    REJECTIONS,
    SIGNALS,
    TRADES,
)
from mambo.streams.embedded import EmbeddedRuntime
from mambo.streams.markets import MarketPipelines

SLICE = 2_000
ACCOUNT_TOPICS = (INTENTS.name, REJECTIONS.name, ORDERS.name, FILLS.name, POSITIONS.name, EQUITY.name)


def binding_config() -> EngineConfig:
    return EngineConfig(
        timeframes=("1s", "1m"),
        trading_timeframe="1s",
        strategies=("sma_cross", "rsi_reversion", "macd_cross", "bollinger_breakout"),
        risk=RiskConfig(
            position_fraction=Decimal("0.2"),
            max_open_positions=2,
            max_total_exposure=Decimal("0.5"),
        ),
    )


@pytest.fixture(scope="module")
def recording() -> TradeBatch:
    return load_trades()[0]


@pytest.fixture(scope="module")
def rules(recording: TradeBatch) -> dict[str, Market]:
    return {k: Market.inferred(*k.split(":", 1), Decimal("0.01")) for k in recording.keys}


def embedded(recording: TradeBatch, rules: dict[str, Market], config: EngineConfig) -> list[tuple[str, Any]]:
    rt = EmbeddedRuntime(config, rules, known_markets=recording.keys, metrics=False)
    out: list[tuple[str, Any]] = []
    rt.observe(lambda t, e: out.append((t, e)) if t not in (TRADES.name, ACCOUNT_FEED.name) else None)
    for start in range(0, len(recording), SLICE):
        rt.ingest_trades(recording.slice(start, start + SLICE))
    rt.finish()
    return out


def pipelines(
    pieces: list[TradeBatch], rules: dict[str, Market], keys: tuple[str, ...], config: EngineConfig
) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    mp = MarketPipelines(config, lambda t, e: out.append((t, e)), rules, keys, loopback=True)
    for piece in pieces:
        mp.ingest_trades(piece)
    mp.finish()
    return [(t, e) for t, e in out if t != ACCOUNT_FEED.name]


def of(events: list[tuple[str, Any]], topic: str) -> list[Any]:
    return [e for t, e in events if t == topic]


def per_market(recording: TradeBatch) -> list[TradeBatch]:
    return [recording.take(recording.market == code) for code in range(len(recording.keys))]


@pytest.fixture(scope="module")
def reference(recording: TradeBatch, rules: dict[str, Market]) -> list[tuple[str, Any]]:
    ref = embedded(recording, rules, binding_config())
    rules_hit = {r.rule for r in of(ref, REJECTIONS.name)}
    assert "max_open_positions" in rules_hit, f"the account's limits must bind: {rules_hit}"
    assert len(of(ref, FILLS.name)) > 50
    assert len({f.key for f in of(ref, FILLS.name)}) == len(recording.keys)
    return ref


def assert_same(got: list[tuple[str, Any]], ref: list[tuple[str, Any]]) -> None:
    for topic in {t for t, _ in ref} | {t for t, _ in got}:
        if topic in ACCOUNT_TOPICS:  # the account's events: the same, in the same order
            assert of(got, topic) == of(ref, topic), topic
        else:  # a market's events: each market's in its order (markets interleave as they ran)
            key = lambda e: (e.key, e.ts_event, e.event_id)  # noqa: E731
            assert sorted(of(got, topic), key=key) == sorted(of(ref, topic), key=key), topic


def test_market_and_account_stages_in_recording_order_are_the_embedded_runtime(
    recording: TradeBatch, rules: dict[str, Market], reference: list[tuple[str, Any]]
) -> None:
    pieces = [recording.slice(s, s + SLICE) for s in range(0, len(recording), SLICE)]
    assert_same(pipelines(pieces, rules, recording.keys, binding_config()), reference)


def test_one_market_after_another_gives_the_same_orders(
    recording: TradeBatch, rules: dict[str, Market], reference: list[tuple[str, Any]]
) -> None:
    """The most a partition can lag: each market's whole stream before the next one's starts."""
    got = pipelines(per_market(recording)[::-1], rules, recording.keys, binding_config())
    assert_same(got, reference)


def test_markets_shuffled_in_chunks_give_the_same_orders(
    recording: TradeBatch, rules: dict[str, Market], reference: list[tuple[str, Any]]
) -> None:
    rng = random.Random(13)
    queues = []
    for m in per_market(recording):
        cuts = [0, *sorted(rng.sample(range(1, len(m)), 30)), len(m)]
        queues.append([m.slice(a, b) for a, b in itertools.pairwise(cuts)])
    pieces = []
    while any(queues):
        q = rng.choice([q for q in queues if q])
        pieces.append(q.pop(0))
    assert_same(pipelines(pieces, rules, recording.keys, binding_config()), reference)


def test_the_portfolio_backtest_over_the_run_s_candles_gives_the_same_fills(
    recording: TradeBatch, rules: dict[str, Market], reference: list[tuple[str, Any]]
) -> None:
    candles: dict[str, list[Candle]] = {}
    for c in of(reference, "md.candles.1s"):
        candles.setdefault(c.key, []).append(c)
    frames = [
        CandleFrame(
            cs[0].exchange,
            cs[0].symbol,
            "1s",
            np.array([c.open_time for c in cs], np.int64),
            *(np.array([getattr(c, f) for c in cs]) for f in ("open", "high", "low", "close", "volume")),
        )
        for cs in candles.values()
    ]
    result = run_portfolio(frames, binding_config(), rules)
    no_init = {"ts_init"}  # a backtest's candles are stamped at their close, a run's when they came
    got = [f.model_dump(exclude=no_init) for f in result.fills]
    assert got == [f.model_dump(exclude=no_init) for f in of(reference, FILLS.name)]
    equity = of(reference, EQUITY.name)[-1]
    assert result.final_equity == equity.equity


def test_arrival_order_takes_each_market_as_it_comes(recording: TradeBatch, rules: dict[str, Market]) -> None:
    """ordering="arrival": no waiting for the slowest market; in recording order it is the
    reference, one market after another it is not (the parity holds for event time only)."""
    config = replace(binding_config(), ordering="arrival")
    pieces = [recording.slice(s, s + SLICE) for s in range(0, len(recording), SLICE)]
    in_order = pipelines(pieces, rules, recording.keys, config)
    lagged = pipelines(per_market(recording), rules, recording.keys, config)
    assert of(lagged, FILLS.name) != of(in_order, FILLS.name)
    assert len(of(in_order, SIGNALS.name)) == len(of(lagged, SIGNALS.name))


# --- the merge -------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    streams=st.lists(st.sets(st.integers(0, 50), max_size=15).map(sorted), min_size=1, max_size=4),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_merge_releases_the_same_order_whatever_the_interleaving_and_watermarks(
    streams: list[list[int]], seed: int
) -> None:
    """Each stream's items in time order (one per time, as a market has one candle per end),
    delivered interleaved at random, each with a random true watermark (at least its own time, less
    than the stream's next item's): the merge releases exactly the items sorted by (time, stream),
    never one late."""
    rng = random.Random(seed)
    keys = [f"m{i}" for i in range(len(streams))]
    pending = {k: list(s) for k, s in zip(keys, streams, strict=True)}
    merge: EventTimeMerge[tuple[int, str, int]] = EventTimeMerge(keys)
    got: list[tuple[int, str, int]] = []
    n: dict[str, int] = dict.fromkeys(keys, 0)
    while any(pending.values()):
        k = rng.choice([k for k in keys if pending[k]])
        t = pending[k].pop(0)
        nxt = pending[k][0] if pending[k] else 10**6
        # a true promise: no later item at or before it (the next is at nxt)
        wm = rng.randint(t, max(t, nxt - 1))
        got += merge.push(k, t, (t, k, n[k]), wm)
        n[k] += 1
        if rng.random() < 0.3:  # a watermark-only message
            got += merge.push(k, wm, None, rng.randint(wm, max(wm, nxt - 1)))
    got += merge.drain()
    want = sorted((t, k, i) for k, s in zip(keys, streams, strict=True) for i, t in enumerate(s))
    assert got == want
    assert merge.late == 0


def test_the_merge_waits_for_a_market_that_said_nothing_yet() -> None:
    merge: EventTimeMerge[str] = EventTimeMerge(["a", "b"])
    assert merge.push("a", 10, "a10", 10) == []  # b may still have something at 5
    assert merge.push("b", 5, "b5", 5) == ["b5"]
    assert merge.push("b", 12, None, 12) == ["a10"]
    assert len(merge) == 0


def test_an_item_given_again_is_dropped_and_counted() -> None:
    """At least once, a market stage restarted after a crash sends some of its feed again: each
    repeat comes at or before its market's last item, and must not act twice."""
    merge: EventTimeMerge[str] = EventTimeMerge(["a", "b"])
    assert merge.push("a", 10, "a10", 10) == []
    assert merge.push("b", 12, "b12", 12) == ["a10"]
    assert merge.push("a", 10, "a10", 10) == []  # a10 again, after it was released
    assert merge.push("b", 12, "b12", 12) == []  # b12 again, still waiting
    assert merge.repeats == 2 and merge.late == 0
    assert merge.drain() == ["b12"]


def test_items_of_one_stream_at_one_time_are_all_taken_unless_given_again() -> None:
    """Two items of a market at one time (a command in line on a candle boundary, and the candle)
    differ in ident: both are taken, in arrival order; one given again at that time is a repeat."""
    merge: EventTimeMerge[str] = EventTimeMerge(["a", "b"])
    assert merge.push("a", 10, "cmd", 9, ident="cmd") == []
    assert merge.push("a", 10, "candle", 10, ident="candle") == []
    assert merge.push("a", 10, "cmd", 10, ident="cmd") == []  # again
    assert merge.push("b", 10, None, 10) == ["cmd", "candle"]
    assert merge.repeats == 1 and merge.late == 0


def test_an_item_after_its_stream_s_last_but_behind_the_release_is_late() -> None:
    merge: EventTimeMerge[str] = EventTimeMerge(["a", "b"])
    assert merge.push("a", 10, "a10", 20) == []
    assert merge.push("b", 15, "b15", 15) == ["a10", "b15"]
    assert merge.push("a", 12, "a12", 20) == ["a12"]  # a broke its promise (watermark 20): late
    assert merge.late == 1
    with pytest.raises(KeyError, match="not one of"):
        merge.push("z", 1, "z1", 1)


def test_the_notifications_outbox_is_the_same_in_the_stage_groups(
    recording: TradeBatch, rules: dict[str, Market]
) -> None:
    """The notification stage (issue 15's outbox) reads an account's events: on one bus in the embedded
    runtime, beside each account stage (its state kept with the account's) in the distributed ones;
    the same notifications, id for id, one market's stream after another."""
    config = binding_config()
    rt = EmbeddedRuntime(
        config, rules, known_markets=recording.keys, metrics=False, extra=[NotificationStage()]
    )
    want: list[Any] = []
    rt.observe(lambda t, e: want.append(e) if t == NOTIFICATIONS.name else None)
    for start in range(0, len(recording), SLICE):
        rt.ingest_trades(recording.slice(start, start + SLICE))
    rt.finish()
    got: list[Any] = []
    mp = MarketPipelines(
        config,
        lambda t, e: got.append(e) if t == NOTIFICATIONS.name else None,
        rules,
        recording.keys,
        loopback=True,
        extra=lambda account: NotificationStage(accounts=frozenset({account})),
    )
    for piece in per_market(recording):
        mp.ingest_trades(piece)
    mp.finish()
    assert len(want) > 50 and {n.kind for n in want} >= {"entry", "exit"}
    assert got == want
