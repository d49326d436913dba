"""SignalAggregator: Beta weights worked by hand, the score, delivery (order, redelivery, overtaken
bars), and the state as an object a table can hold."""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from itertools import pairwise, permutations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mambo.core.aggregation import SignalAggregator
from mambo.schemas.events import AggregatedSignal, Signal, SignalSide, make_id

MINUTE_NS = 60_000_000_000
SMA, RSI, MACD = "sma_cross", "rsi_reversion", "macd_cross"


def signal(
    strategy: str,
    bar: int,
    side: SignalSide = "hold",
    confidence: float = 0.0,
    price: float = 100.0,
    values: dict[str, float] | None = None,
    *,
    symbol: str = "BTC/USDT",
    timeframe: str = "1m",
) -> Signal:
    ts = (bar + 1) * MINUTE_NS
    return Signal(
        event_id=make_id("signal", strategy, "binance", symbol, timeframe, ts),
        ts_event=ts,
        ts_init=ts,
        exchange="binance",
        symbol=symbol,
        strategy=strategy,
        timeframe=timeframe,
        side=side,
        confidence=confidence,
        price=price,
        values=values or {},
    )


def feed(agg: SignalAggregator, signals: Iterable[Signal]) -> list[AggregatedSignal]:
    out = []
    for sig in signals:
        combined = agg.on_signal(sig, ts_init=sig.ts_event + 1)
        if combined is not None:
            out.append(combined)
    return out


def test_beta_weights_worked_by_hand() -> None:
    agg = SignalAggregator([SMA, RSI])
    assert agg.posteriors() == {SMA: (1.0, 1.0), RSI: (1.0, 1.0)}

    # Bar 0: sma buys at 100 (opens its first round trip), rsi holds. Weights 1/2, 1/2.
    assert agg.on_signal(signal(SMA, 0, "buy", 0.6, 100.0), ts_init=1) is None
    bar0 = agg.on_signal(signal(RSI, 0, "hold", 0.0, 100.0), ts_init=1)
    assert bar0 is not None
    assert bar0.weights == {SMA: 0.5, RSI: 0.5}
    assert bar0.score == pytest.approx(0.3)  # (0.5 * 0.6) / 1
    assert (bar0.side, bar0.confidence, bar0.lead_strategy) == ("buy", pytest.approx(0.3), SMA)
    assert bar0.contributions == {SMA: pytest.approx(0.3), RSI: 0.0}

    # Bar 1 at 110: sma sells, closing buy 100 -> sell 110, a hit: sma (2, 1), weight 2/3.
    # rsi sells too: its first directional call, nothing to score yet.
    [bar1] = feed(agg, [signal(SMA, 1, "sell", 0.4, 110.0), signal(RSI, 1, "sell", 0.5, 110.0)])
    assert agg.posteriors() == {SMA: (2.0, 1.0), RSI: (1.0, 1.0)}
    assert bar1.weights == pytest.approx({SMA: 2 / 3, RSI: 1 / 2})
    # score = (-2/3 * 0.4 - 1/2 * 0.5) / (2/3 + 1/2) = (-31/60) / (7/6) = -31/70
    assert bar1.score == pytest.approx(-31 / 70)
    assert bar1.contributions == pytest.approx({SMA: -8 / 35, RSI: -3 / 14})
    assert (bar1.side, bar1.lead_strategy) == ("sell", SMA)  # |-4/15| > |-1/4|

    # Bar 2 at 120: both buy back above where they sold: two misses. sma (2, 2), rsi (1, 2).
    [bar2] = feed(agg, [signal(SMA, 2, "buy", 0.2, 120.0), signal(RSI, 2, "buy", 0.9, 120.0)])
    assert agg.posteriors() == {SMA: (2.0, 2.0), RSI: (1.0, 2.0)}
    assert agg.weights() == pytest.approx({SMA: 1 / 2, RSI: 1 / 3})
    assert bar2.score == pytest.approx((0.5 * 0.2 + 0.9 / 3) / (5 / 6))  # 0.48
    assert (bar2.side, bar2.lead_strategy) == ("buy", RSI)

    # Bar 3 at 90: sma buys again: same side, its round trip still runs from 120. No update.
    [bar3] = feed(agg, [signal(SMA, 3, "buy", 0.3, 90.0), signal(RSI, 3, "hold", 0.0, 90.0)])
    assert agg.posteriors() == {SMA: (2.0, 2.0), RSI: (1.0, 2.0)}
    assert bar3.score == pytest.approx(0.15 / (5 / 6))

    # Bar 4: sma sells at 130 (buy 120 -> 130: hit, (3, 2)); rsi sells at 95 (buy 120 -> 95: miss,
    # (1, 3)). Prices differ here only to score each round trip on its own.
    [bar4] = feed(agg, [signal(SMA, 4, "sell", 1.0, 130.0), signal(RSI, 4, "sell", 0.5, 95.0)])
    assert agg.posteriors() == {SMA: (3.0, 2.0), RSI: (1.0, 3.0)}
    assert bar4.weights == pytest.approx({SMA: 0.6, RSI: 0.25})
    assert bar4.score == pytest.approx(-(0.6 + 0.125) / 0.85)
    assert bar4.price == 130.0  # the first configured strategy's price


def test_a_round_trip_that_breaks_even_is_a_miss() -> None:
    agg = SignalAggregator([SMA])
    feed(agg, [signal(SMA, 0, "sell", 0.5, 100.0), signal(SMA, 1, "buy", 0.5, 100.0)])
    assert agg.posteriors() == {SMA: (1.0, 2.0)}
    feed(agg, [signal(SMA, 2, "sell", 0.5, 101.0)])  # bought 100, sold 101: a hit
    assert agg.posteriors() == {SMA: (2.0, 2.0)}


def test_prior_and_threshold() -> None:
    agg = SignalAggregator([SMA, RSI], threshold=0.5, prior=(3, 1))
    assert agg.weights() == {SMA: 0.75, RSI: 0.75}
    [weak] = feed(agg, [signal(SMA, 0, "buy", 0.9), signal(RSI, 0, "hold")])
    assert (weak.score, weak.side, weak.confidence) == (pytest.approx(0.45), "hold", pytest.approx(0.45))
    [strong] = feed(agg, [signal(SMA, 1, "buy", 0.9), signal(RSI, 1, "buy", 0.2)])
    assert (strong.side, strong.score) == ("buy", pytest.approx(0.55))
    [down] = feed(agg, [signal(SMA, 2, "sell", 0.9), signal(RSI, 2, "sell", 0.2)])
    assert down.side == "sell"


def test_all_holds_lead_is_the_first_strategy() -> None:
    agg = SignalAggregator([RSI, SMA, MACD])
    [bar] = feed(agg, [signal(s, 0) for s in (SMA, MACD, RSI)])
    assert (bar.side, bar.score, bar.confidence, bar.lead_strategy) == ("hold", 0.0, 0.0, RSI)
    assert bar.contributions == {RSI: 0.0, SMA: 0.0, MACD: 0.0}


def test_equal_pulls_lead_is_the_first_configured() -> None:
    agg = SignalAggregator([MACD, SMA, RSI])
    [bar] = feed(agg, [signal(SMA, 0, "buy", 0.5), signal(RSI, 0, "sell", 0.5), signal(MACD, 0)])
    assert (bar.score, bar.side, bar.lead_strategy) == (0.0, "hold", SMA)


def test_values_merge_first_configured_wins() -> None:
    agg = SignalAggregator([SMA, RSI])
    [bar] = feed(
        agg,
        [
            signal(RSI, 0, values={"rsi_14": 40.0, "shared": 2.0}),
            signal(SMA, 0, values={"sma_50": 1.0, "sma_200": 2.0, "shared": 1.0}),
        ],
    )
    assert bar.values == {"sma_50": 1.0, "sma_200": 2.0, "shared": 1.0, "rsi_14": 40.0}


def test_event_identity() -> None:
    agg = SignalAggregator([SMA])
    [bar] = feed(agg, [signal(SMA, 4, "buy", 0.5, 101.0)])
    ts = 5 * MINUTE_NS
    assert bar.event_id == make_id("aggregated_signal", "binance", "BTC/USDT", "1m", ts)
    assert (bar.ts_event, bar.ts_init, bar.exchange, bar.symbol, bar.timeframe) == (
        ts,
        ts + 1,
        "binance",
        "BTC/USDT",
        "1m",
    )
    # a restarted aggregator replaying the same signal gives the same event
    assert feed(SignalAggregator([SMA]), [signal(SMA, 4, "buy", 0.5, 101.0)]) == [bar]


def test_waits_for_every_strategy_in_any_order() -> None:
    bar = [signal(SMA, 0, "buy", 0.5), signal(RSI, 0, "sell", 0.2), signal(MACD, 0, "buy", 0.1)]
    results = set()
    for order in permutations(bar):
        agg = SignalAggregator([SMA, RSI, MACD])
        assert [agg.on_signal(s, ts_init=7) for s in order[:2]] == [None, None]
        combined = agg.on_signal(order[2], ts_init=7)
        assert combined is not None
        results.add(combined.model_dump_json())
    assert len(results) == 1


def test_redelivered_signals_count_once() -> None:
    agg = SignalAggregator([SMA, RSI])
    opening = signal(SMA, 0, "buy", 0.5, 100.0)
    closing = signal(SMA, 1, "sell", 0.5, 110.0)
    assert feed(agg, [opening, opening, signal(RSI, 0), opening]) != []
    assert feed(agg, [closing, closing, opening]) == []
    assert agg.posteriors()[SMA] == (2.0, 1.0)
    [bar1] = feed(agg, [signal(RSI, 1), closing])
    assert bar1.ts_event == 2 * MINUTE_NS
    assert agg.posteriors()[SMA] == (2.0, 1.0)


def test_an_overtaken_bar_is_dropped_but_its_round_trips_count() -> None:
    agg = SignalAggregator([SMA, RSI])
    assert feed(agg, [signal(SMA, 0, "buy", 0.5, 100.0)]) == []  # rsi never reports bar 0
    [bar1] = feed(agg, [signal(SMA, 1, "sell", 0.5, 110.0), signal(RSI, 1, "hold")])
    assert bar1.ts_event == 2 * MINUTE_NS
    assert bar1.weights[SMA] == pytest.approx(2 / 3)
    assert feed(agg, [signal(RSI, 0, "buy", 0.5)]) == []  # late and stale: ignored
    assert agg.posteriors()[RSI] == (1.0, 1.0)


def test_a_lagging_strategy_still_scores_its_round_trips() -> None:
    agg = SignalAggregator([SMA, RSI])
    feed(agg, [signal(SMA, 1, "hold"), signal(RSI, 0, "sell", 0.5, 100.0)])  # rsi's bar 0 overtaken
    assert feed(agg, [signal(RSI, 1, "buy", 0.5, 90.0)]) != []
    assert agg.posteriors()[RSI] == (2.0, 1.0)  # sold 100, bought back 90


def test_wiring_faults_raise() -> None:
    agg = SignalAggregator([SMA])
    with pytest.raises(ValueError, match="'macd_cross', not one of"):
        agg.on_signal(signal(MACD, 0), ts_init=0)
    agg.on_signal(signal(SMA, 0), ts_init=0)
    with pytest.raises(ValueError, match="ETH/USDT"):
        agg.on_signal(signal(SMA, 1, symbol="ETH/USDT"), ts_init=0)
    with pytest.raises(ValueError, match="5m"):
        agg.on_signal(signal(SMA, 1, timeframe="5m"), ts_init=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategies": []}, "at least one"),
        ({"strategies": [SMA, SMA]}, "distinct"),
        ({"strategies": [SMA], "threshold": 1.0}, "threshold"),
        ({"strategies": [SMA], "threshold": -0.1}, "threshold"),
        ({"strategies": [SMA], "prior": (0.0, 1.0)}, "prior"),
        ({"strategies": [SMA], "prior": (1.0, float("inf"))}, "prior"),
    ],
)
def test_bad_configuration(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SignalAggregator(**kwargs)


def test_state_pickles_and_compares() -> None:
    agg = SignalAggregator([SMA, RSI], threshold=0.1)
    feed(agg, [signal(SMA, 0, "buy", 0.5, 100.0), signal(RSI, 0), signal(SMA, 1, "sell", 0.5, 110.0)])
    copy = pickle.loads(pickle.dumps(agg))
    assert copy == agg  # including the half-reported bar 1
    assert copy != SignalAggregator([SMA, RSI], threshold=0.1)
    rest = [signal(RSI, 1, "buy", 0.3, 110.0), signal(SMA, 2, "buy", 0.2, 90.0), signal(RSI, 2)]
    assert feed(copy, rest) == feed(agg, rest)
    assert copy == agg


# --- properties -----------------------------------------------------------------------------------

NAMES = (SMA, RSI, MACD)
calls = st.tuples(
    st.sampled_from(["buy", "sell", "hold"]),
    st.floats(0.01, 1.0),
    st.integers(90, 110).map(float),
)


def reference_tally(path: list[tuple[str, float]]) -> tuple[int, int]:
    """Hits and misses of one strategy's calls, counted independently: keep the directional calls,
    drop repeats of the same side, and score each consecutive pair."""
    directional = [(side, price) for side, price in path if side != "hold"]
    entries = [c for i, c in enumerate(directional) if i == 0 or c[0] != directional[i - 1][0]]
    hits = misses = 0
    for (side, p), (_, q) in pairwise(entries):
        if (q > p) if side == "buy" else (q < p):
            hits += 1
        else:
            misses += 1
    return hits, misses


@given(
    st.lists(st.tuples(calls, calls, calls), max_size=40),
    st.floats(0.0, 0.9),
    st.tuples(st.floats(0.1, 5.0), st.floats(0.1, 5.0)),
)
def test_aggregates_are_consistent(
    bars: list[tuple[tuple[SignalSide, float, float], ...]],
    threshold: float,
    prior: tuple[float, float],
) -> None:
    agg = SignalAggregator(NAMES, threshold=threshold, prior=prior)
    paths: dict[str, list[tuple[str, float]]] = {s: [] for s in NAMES}
    for i, bar in enumerate(bars):
        price = bar[0][2]  # one close per bar, as the strategies see it
        sigs = []
        for name, (side, confidence, _) in zip(NAMES, bar, strict=True):
            sigs.append(signal(name, i, side, confidence if side != "hold" else 0.0, price))
            paths[name].append((side, price))
        [combined] = feed(agg, reversed(sigs))
        assert -1.0 <= combined.score <= 1.0
        assert combined.confidence == abs(combined.score)
        assert sum(combined.contributions.values()) == pytest.approx(combined.score, abs=1e-12)
        expected_side = (
            "buy" if combined.score > threshold else "sell" if combined.score < -threshold else "hold"
        )
        assert combined.side == expected_side
        pulls = {s: abs(combined.contributions[s]) for s in NAMES}
        assert pulls[combined.lead_strategy] == max(pulls.values())
        assert combined.weights == agg.weights()
    for name in NAMES:
        hits, misses = reference_tally(paths[name])
        assert agg.posteriors()[name] == pytest.approx((prior[0] + hits, prior[1] + misses))


@given(st.lists(calls, max_size=40))
def test_a_lone_strategy_is_passed_through(path: list[tuple[SignalSide, float, float]]) -> None:
    agg = SignalAggregator([SMA])
    for i, (side, confidence, price) in enumerate(path):
        sig = signal(SMA, i, side, confidence if side != "hold" else 0.0, price)
        [combined] = feed(agg, [sig])
        assert combined.side == sig.side
        assert combined.confidence == pytest.approx(sig.confidence)
        assert combined.lead_strategy == SMA


@given(st.lists(st.tuples(calls, calls, calls), max_size=40), st.floats(0.0, 0.9))
def test_calls_of_a_whole_bar_give_what_the_signals_give(
    bars: list[tuple[tuple[SignalSide, float, float], ...]], threshold: float
) -> None:
    """on_calls (the backtest's batch decisions) against on_signal: the same aggregates, bit for bit,
    and the same state after every bar."""
    by_signal, by_calls = (SignalAggregator(NAMES, threshold=threshold) for _ in range(2))
    for i, bar in enumerate(bars):
        price = bar[0][2]
        made = [(side, confidence if side != "hold" else 0.0) for side, confidence, _ in bar]
        sigs = [signal(name, i, side, conf, price) for name, (side, conf) in zip(NAMES, made, strict=True)]
        [expected] = feed(by_signal, sigs)
        ts = sigs[0].ts_event
        assert by_calls.on_calls("binance", "BTC/USDT", "1m", ts, price, made, ts + 1) == expected
        assert by_calls == by_signal


def test_calls_refuse_what_signals_would_drop_or_refuse() -> None:
    agg = SignalAggregator([SMA, RSI])
    agg.on_calls("binance", "BTC/USDT", "1m", 2 * MINUTE_NS, 100.0, [("buy", 0.5), ("hold", 0.0)], 0)
    with pytest.raises(ValueError, match="not after the last one seen"):  # a redelivery
        agg.on_calls("binance", "BTC/USDT", "1m", 2 * MINUTE_NS, 100.0, [("hold", 0.0)] * 2, 0)
    with pytest.raises(ValueError, match="1 calls for the 2 strategies"):
        agg.on_calls("binance", "BTC/USDT", "1m", 3 * MINUTE_NS, 100.0, [("hold", 0.0)], 0)
    with pytest.raises(ValueError, match="ETH/USDT"):
        agg.on_calls("binance", "ETH/USDT", "1m", 3 * MINUTE_NS, 100.0, [("hold", 0.0)] * 2, 0)
