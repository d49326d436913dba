"""Strategies: the sma_cross reference semantics on real candles, hand-worked examples for every
strategy, the registry (including a user's own class), signals and pickling."""

from __future__ import annotations

import math
import pickle
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import talib
from hypothesis import given
from hypothesis import strategies as st

from mambo.core.strategies import (
    MIN_CONFIDENCE,
    STRATEGIES,
    Bar,
    BollingerBreakout,
    Crossing,
    Decision,
    EmaCross,
    MacdCross,
    MlSignal,
    RsiReversion,
    SmaCross,
    Strategy,
    StrategyConfigError,
    load_strategy,
    make_signal,
)
from mambo.schemas.events import Candle, Signal, make_id

FIXTURE = Path(__file__).parents[1] / "fixtures" / "btc_perp_1m_5000.csv"
MINUTE_NS = 60_000_000_000
NAN = math.nan
#: The strategies that run with their defaults (ml_signal needs a model: tests/ml/test_ml_signal.py).
DEFAULTS_RUN = sorted(n for n, cls in STRATEGIES.items() if cls is not MlSignal)


def candle(i: int, close: float = 100.0, *, closed: bool = True) -> Candle:
    """The i-th one-minute candle of a test market."""
    return Candle(
        event_id=f"c{i}",
        ts_event=(i + 1) * MINUTE_NS,
        ts_init=(i + 1) * MINUTE_NS,
        exchange="binance",
        symbol="BTC/USDT",
        timeframe="1m",
        open_time=i * MINUTE_NS,
        open=close,
        high=close,
        low=close,
        close=close,
        volume=1.0,
        trades=1,
        closed=closed,
    )


def run(strategy: Strategy, rows: Iterable[Mapping[str, float]], closes: Sequence[float] | None = None):
    """Decisions of ``strategy`` on bars with the given indicator values (and closes, default 100)."""
    out = []
    for i, values in enumerate(rows):
        close = 100.0 if closes is None else closes[i]
        decision = strategy.on_bar(Bar(candle(i, close), values))
        assert isinstance(decision, Decision)
        out.append(decision)
    return out


def sides(decisions: Iterable[Decision]) -> list[str]:
    return [d.side for d in decisions]


def sma_rows(pairs: Iterable[tuple[float, float]], fast: int = 50, slow: int = 200) -> list[dict[str, float]]:
    return [{f"sma_{fast}": f, f"sma_{slow}": s} for f, s in pairs]


def reference_crosses(fast: pd.Series, slow: pd.Series) -> list[tuple[int, str]]:
    """The reference semantics, vectorised: sign of (fast - slow), zero keeps the previous sign, the
    first sign establishes the state; a change of sign is a cross."""
    sign = pd.Series(np.sign(fast - slow)).replace(0.0, np.nan).ffill()
    previous = sign.shift()
    crossed = (sign != previous) & sign.notna() & previous.notna()
    return [(int(i), "buy" if sign.iloc[i] > 0 else "sell") for i in np.flatnonzero(crossed.to_numpy())]


@pytest.fixture(scope="module")
def btc() -> pd.DataFrame:
    return pd.read_csv(FIXTURE)


def fixture_bars(btc: pd.DataFrame, fast: int, slow: int) -> list[Bar]:
    ts = pd.to_datetime(btc["timestamp"]).astype("int64").to_numpy()
    values = {
        f"sma_{fast}": btc["close"].rolling(fast).mean().to_numpy(),
        f"sma_{slow}": btc["close"].rolling(slow).mean().to_numpy(),
    }
    bars = []
    for i, row in enumerate(btc.itertuples(index=False)):
        c = Candle(
            event_id=f"btc{i}",
            ts_event=int(ts[i]),
            ts_init=int(ts[i]),
            exchange="binance",
            symbol="BTC/USDT:USDT",
            timeframe="1m",
            open_time=int(ts[i]) - MINUTE_NS,
            open=row.open,
            high=row.high,
            low=row.low,
            close=row.close,
            volume=row.volume,
            trades=0,
        )
        bars.append(Bar(c, {name: float(v[i]) for name, v in values.items()}))
    return bars


# --- sma_cross on real candles ------------------------------------------------------------------


@pytest.mark.parametrize(("fast", "slow"), [(50, 200), (5, 20), (1, 2)])
def test_sma_cross_matches_reference_on_btc_candles(btc: pd.DataFrame, fast: int, slow: int) -> None:
    # (1, 2) compares the close with the mean of the last two closes: the difference is exactly zero
    # whenever the close repeats (157 times in this file), so the zero rule is exercised on real data.
    bars = fixture_bars(btc, fast, slow)
    strategy = SmaCross(fast=fast, slow=slow)
    decisions = [strategy.on_bar(bar) for bar in bars]
    got = [(i, d.side) for i, d in enumerate(decisions) if d.side != "hold"]

    close = btc["close"]
    expected = reference_crosses(close.rolling(fast).mean(), close.rolling(slow).mean())
    assert got == expected
    assert len(expected) >= 30
    for i, d in enumerate(decisions):
        if d.side == "hold":
            assert d.confidence == 0.0
        else:
            assert 0.0 < d.confidence <= 1.0
            assert d.values["sma_fast"] == d.values[f"sma_{fast}"] == bars[i].values[f"sma_{fast}"]
            assert d.values["sma_slow"] == d.values[f"sma_{slow}"] == bars[i].values[f"sma_{slow}"]


def test_sma_cross_reference_is_not_the_naive_sign_change(btc: pd.DataFrame) -> None:
    # The zero rule matters on this data: a naive sign change (zero as its own sign) differs.
    close = btc["close"]
    fast, slow = close.rolling(1).mean(), close.rolling(2).mean()
    naive = pd.Series(np.sign(fast - slow))
    naive_changes = int(((naive != naive.shift()) & naive.shift().notna() & naive.notna()).sum())
    assert naive_changes > len(reference_crosses(fast, slow))


# --- sma_cross by hand --------------------------------------------------------------------------


def test_sma_cross_by_hand_with_zero_differences() -> None:
    pairs = [
        (NAN, NAN),  # warming up
        (10.0, NAN),  # slow still warming up
        (9.0, 10.0),  # first sign (below): establishes the state, no signal
        (10.0, 10.0),  # zero: stays below
        (11.0, 10.0),  # below -> above: buy
        (10.0, 10.0),  # zero: stays above
        (10.5, 10.0),  # still above
        (10.0, 10.0),  # zero
        (9.5, 10.0),  # above -> below: sell
        (10.0, 10.0),  # zero
        (9.0, 10.0),  # still below
    ]
    decisions = run(SmaCross(), sma_rows(pairs))
    assert sides(decisions) == ["hold"] * 4 + ["buy"] + ["hold"] * 3 + ["sell"] + ["hold"] * 2
    assert decisions[0] == Decision("hold", 0.0, {})
    assert decisions[1].values == {"sma_fast": 10.0, "sma_50": 10.0}  # NaN left out
    buy = decisions[4]
    assert buy.values == {"sma_fast": 11.0, "sma_slow": 10.0, "sma_50": 11.0, "sma_200": 10.0}
    # gap 1 / close 100 = 1%, half_gap 0.02%: 0.01 / (0.01 + 0.0002)
    assert buy.confidence == pytest.approx(0.01 / 0.0102)


def test_sma_cross_zero_right_after_warm_up_establishes_nothing() -> None:
    pairs = [(NAN, NAN), (10.0, 10.0), (10.0, 10.0), (11.0, 10.0), (9.0, 10.0), (10.0, 10.0), (11.0, 10.0)]
    assert sides(run(SmaCross(), sma_rows(pairs))) == ["hold", "hold", "hold", "hold", "sell", "hold", "buy"]


def test_sma_cross_first_sign_above_gives_no_buy() -> None:
    pairs = [(11.0, 10.0), (12.0, 10.0), (9.0, 10.0)]
    assert sides(run(SmaCross(), sma_rows(pairs))) == ["hold", "hold", "sell"]


def test_sma_cross_reads_the_periods_it_declares() -> None:
    strategy = SmaCross(fast=3, slow=7)
    assert strategy.indicators() == ("sma:3", "sma:7")
    decisions = run(strategy, sma_rows([(1.0, 2.0), (3.0, 2.0)], fast=3, slow=7))
    assert sides(decisions) == ["hold", "buy"]
    assert set(decisions[1].values) == {"sma_fast", "sma_slow", "sma_3", "sma_7"}


def test_sma_cross_confidence_grows_with_the_gap() -> None:
    def confidence(gap: float) -> float:
        return run(SmaCross(), sma_rows([(90.0, 100.0), (100.0 + gap, 100.0)]))[1].confidence

    assert MIN_CONFIDENCE <= confidence(1e-9) < confidence(0.01) < confidence(0.1) < confidence(10) <= 1.0
    assert confidence(0.02) == pytest.approx(0.5)  # gap 0.02 on a close of 100 = half_gap


@given(
    st.lists(
        st.tuples(
            st.one_of(st.just(NAN), st.integers(-3, 3).map(float)),
            st.integers(-3, 3).map(float),
        ),
        max_size=60,
    )
)
def test_sma_cross_matches_reference_on_any_path(pairs: list[tuple[float, float]]) -> None:
    # Small integers make exact ties common; NaN stands for warm-up (and for gaps, which keep the side).
    fast = pd.Series([f for f, _ in pairs], dtype=float)
    slow = pd.Series([s for _, s in pairs], dtype=float)
    decisions = run(SmaCross(), sma_rows(pairs))
    assert [(i, d.side) for i, d in enumerate(decisions) if d.side != "hold"] == reference_crosses(fast, slow)
    assert all((d.side == "hold") == (d.confidence == 0.0) for d in decisions)


# --- ema_cross ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("fast", "slow"), [(12, 26), (5, 20), (2, 3)])
def test_ema_cross_matches_reference_on_btc_candles(btc: pd.DataFrame, fast: int, slow: int) -> None:
    """On TA-Lib's EMAs of the real closes, the crosses are the reference semantics' crosses."""
    close = btc["close"].to_numpy(dtype=np.float64)
    ema_fast, ema_slow = talib.EMA(close, fast), talib.EMA(close, slow)
    bars = [
        Bar(b.candle, {f"ema_{fast}": float(ema_fast[i]), f"ema_{slow}": float(ema_slow[i])})
        for i, b in enumerate(fixture_bars(btc, 1, 2))
    ]
    strategy = EmaCross(fast=fast, slow=slow)
    assert strategy.indicators() == (f"ema:{fast}", f"ema:{slow}")
    decisions = [strategy.on_bar(bar) for bar in bars]
    got = [(i, d.side) for i, d in enumerate(decisions) if d.side != "hold"]
    expected = reference_crosses(pd.Series(ema_fast), pd.Series(ema_slow))
    assert got == expected
    assert len(expected) >= 30
    buy = next(d for d in decisions if d.side == "buy")
    assert set(buy.values) == {"ema_fast", "ema_slow", f"ema_{fast}", f"ema_{slow}"}


def test_ema_cross_by_hand() -> None:
    rows = [
        {},  # warming up
        {"ema_12": 9.0, "ema_26": 10.0},  # first sign (below): no signal
        {"ema_12": 10.0, "ema_26": 10.0},  # zero: stays below
        {"ema_12": 10.5, "ema_26": 10.0},  # crosses above: buy
        {"ema_12": 10.0, "ema_26": 10.0},  # zero: stays above
        {"ema_12": 9.0, "ema_26": 10.0},  # crosses below: sell
        {"sma_12": 11.0, "sma_26": 10.0},  # an SMA is not what it reads: nothing changes
    ]
    decisions = run(EmaCross(), rows)
    assert sides(decisions) == ["hold"] * 3 + ["buy", "hold", "sell", "hold"]
    assert decisions[3].values == {"ema_fast": 10.5, "ema_slow": 10.0, "ema_12": 10.5, "ema_26": 10.0}
    assert decisions[3].confidence == pytest.approx(0.005 / 0.0052)  # gap 0.5 on a close of 100
    assert EmaCross() != SmaCross(fast=12, slow=26)
    with pytest.raises(ValueError, match="must be shorter than slow"):
        EmaCross(fast=26, slow=12)


# --- the other strategies by hand ---------------------------------------------------------------


def test_rsi_reversion_by_hand() -> None:
    rsi = [NAN, 50.0, 35.0, 25.0, 20.0, 30.0, 31.0, 65.0, 75.0, 85.0, 70.0, 69.0, 72.0, 50.0]
    decisions = run(RsiReversion(), [{"rsi_14": r} for r in rsi])
    assert sides(decisions) == ["hold"] * 6 + ["buy"] + ["hold"] * 4 + ["sell", "hold", "sell"]
    # 30.0 touches the level: still oversold; 31 crosses back above it. Trough 20: (30 - 20) / 30.
    buy = decisions[6]
    assert buy.confidence == pytest.approx(1 / 3)
    assert buy.values == {"rsi_14": 31.0, "rsi_trough": 20.0}
    # 70.0 touches: still overbought; 69 crosses back below. Peak 85: (85 - 70) / 30.
    sell = decisions[11]
    assert sell.confidence == pytest.approx(0.5)
    assert sell.values == {"rsi_14": 69.0, "rsi_peak": 85.0}
    # A fresh excursion has a fresh peak: 72 -> (72 - 70) / 30.
    assert decisions[13].confidence == pytest.approx(2 / 30)
    assert decisions[13].values["rsi_peak"] == 72.0


def test_rsi_reversion_first_reading_oversold_then_recovers() -> None:
    decisions = run(RsiReversion(period=7), [{"rsi_7": r} for r in (25.0, 40.0)])
    assert sides(decisions) == ["hold", "buy"]
    assert decisions[1].confidence == pytest.approx(5 / 30)


def test_rsi_reversion_jump_through_both_levels() -> None:
    # 25 -> 75 leaves oversold (buy) and enters overbought in one bar; 65 then leaves overbought.
    decisions = run(RsiReversion(), [{"rsi_14": r} for r in (25.0, 75.0, 65.0)])
    assert sides(decisions) == ["hold", "buy", "sell"]


def test_macd_cross_by_hand() -> None:
    rows = [
        (NAN, NAN, NAN),
        (-1.0, -0.5, -0.5),  # below its signal line: state, no signal
        (-0.5, -0.5, 0.0),  # touching: stays below
        (0.5, -0.3, 0.8),  # crosses above: buy
        (0.2, 0.2, 0.0),  # touching
        (0.1, 0.3, -0.2),  # crosses below: sell
    ]
    decisions = run(
        MacdCross(),
        [{"macd_12_26_9": m, "macd_signal_12_26_9": s, "macd_hist_12_26_9": h} for m, s, h in rows],
    )
    assert sides(decisions) == ["hold"] * 3 + ["buy", "hold", "sell"]
    assert decisions[3].values == {"macd_12_26_9": 0.5, "macd_signal_12_26_9": -0.3, "macd_hist_12_26_9": 0.8}
    # gap 0.8 on a close of 100 = 0.8%; half_gap 0.02%
    assert decisions[3].confidence == pytest.approx(0.008 / 0.0082)
    assert MacdCross(fast=5, slow=35, signal=5).indicators() == ("macd:5:35:5",)


def test_bollinger_breakout_by_hand() -> None:
    bands = {"bb_upper_20_2": 110.0, "bb_middle_20_2": 100.0, "bb_lower_20_2": 90.0}
    closes = [105.0, 110.0, 115.0, 120.0, 108.0, 100.0, 101.0, 95.0, 100.0, 111.0]
    decisions = run(BollingerBreakout(), [bands] * len(closes), closes)
    # 105: below upper, above middle (state). 110 touches upper. 115 breaks out: buy, (115-110)/10.
    # 120 stays above. 108 falls back inside: hold. 100 touches the middle: hold. 101, then 95 crosses
    # below the middle: sell, (100-95)/10. 100 touches, 111 breaks out again from below the middle.
    assert sides(decisions) == ["hold", "hold", "buy", "hold", "hold", "hold", "hold", "sell", "hold", "buy"]
    assert decisions[2].confidence == pytest.approx(0.5)
    assert decisions[2].values == {**bands, "close": 115.0}
    assert decisions[7].confidence == pytest.approx(0.5)
    assert decisions[9].confidence == pytest.approx(0.1)


def test_bollinger_breakout_names_follow_the_spec() -> None:
    strategy = BollingerBreakout(period=10, k=2.5)
    assert strategy.indicators() == ("bbands:10:2.5",)
    bands = {"bb_upper_10_2.5": 110.0, "bb_middle_10_2.5": 100.0, "bb_lower_10_2.5": 90.0}
    decisions = run(strategy, [bands, bands], [105.0, 130.0])
    assert sides(decisions) == ["hold", "buy"]
    assert decisions[1].confidence == 1.0  # two half-widths beyond: capped


def test_bollinger_breakout_collapsed_bands() -> None:
    flat = {"bb_upper_20_2": 100.0, "bb_middle_20_2": 100.0, "bb_lower_20_2": 100.0}
    assert sides(run(BollingerBreakout(), [flat] * 3, [99.0, 101.0, 99.0])) == ["hold", "buy", "sell"]


@pytest.mark.parametrize("name", DEFAULTS_RUN)
def test_every_strategy_holds_while_warming_up(name: str) -> None:
    strategy = load_strategy(name)
    decisions = run(strategy, [{}] * 5)
    assert [(d.side, d.confidence) for d in decisions] == [("hold", 0.0)] * 5
    assert strategy == load_strategy(name)  # NaN changed no state


# --- the building blocks ------------------------------------------------------------------------


def test_crossing() -> None:
    crossing = Crossing()
    assert [crossing.update(d) for d in (NAN, 0.0, -1.0, 0.0, NAN, 2.0, 0.0, 1.0, -0.5)] == [
        0,
        0,
        0,
        0,
        0,
        1,
        0,
        0,
        -1,
    ]
    assert crossing == Crossing(side=-1)


def test_decision_rules() -> None:
    assert Decision("buy", 0.5, {"x": 1, "warm": NAN, "inf": math.inf}).values == {"x": 1.0}
    with pytest.raises(ValueError, match="confidence > 0"):
        Decision("sell", 0.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Decision("buy", 1.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Decision("buy", NAN)
    with pytest.raises(ValueError, match="buy, sell or hold"):
        Decision("short", 0.5)  # type: ignore[arg-type]


def test_a_bar_is_a_closed_candle() -> None:
    with pytest.raises(ValueError, match="closed candles"):
        Bar(candle(0, closed=False), {})
    assert Bar(candle(0, 123.0), {"rsi_14": 40.0}).value("rsi_14") == 40.0
    assert math.isnan(Bar(candle(0), {}).value("rsi_14"))


# --- signals ------------------------------------------------------------------------------------


def test_make_signal() -> None:
    strategy = SmaCross()
    bar = Bar(candle(7, 101.5), {"sma_50": 101.0, "sma_200": 100.0})
    decision = Decision("buy", 0.25, {"sma_50": 101.0})
    sig = make_signal(strategy, bar, decision, ts_init=999)
    assert isinstance(sig, Signal)
    assert sig.event_id == make_id("signal", "sma_cross", "binance", "BTC/USDT", "1m", 8 * MINUTE_NS)
    assert (sig.ts_event, sig.ts_init, sig.strategy, sig.side, sig.confidence, sig.price) == (
        8 * MINUTE_NS,
        999,
        "sma_cross",
        "buy",
        0.25,
        101.5,
    )
    assert (sig.exchange, sig.symbol, sig.timeframe, sig.values) == (
        "binance",
        "BTC/USDT",
        "1m",
        {"sma_50": 101.0},
    )
    # a replay of the same candle gives the same id; the signal survives JSON (no NaN in values)
    assert make_signal(strategy, bar, Decision.hold(), ts_init=1).event_id == sig.event_id
    warm = make_signal(strategy, bar, Decision.hold({"sma_50": NAN}), ts_init=1)
    assert Signal.model_validate_json(warm.model_dump_json()) == warm


# --- registry -----------------------------------------------------------------------------------


def test_registry_names() -> None:
    assert {
        "sma_cross": SmaCross,
        "rsi_reversion": RsiReversion,
        "macd_cross": MacdCross,
        "bollinger_breakout": BollingerBreakout,
        "ema_cross": EmaCross,
        "ml_signal": MlSignal,
    } == STRATEGIES
    assert load_strategy("sma_cross") == SmaCross(fast=50, slow=200)
    assert load_strategy("rsi_reversion", period=7, lower=20, upper=80) == RsiReversion(
        period=7, lower=20, upper=80
    )


@pytest.mark.parametrize(
    ("ref", "params", "message"),
    [
        (
            "smacross",
            {},
            "unknown strategy 'smacross'; registered: bollinger_breakout, ema_cross, macd_cross",
        ),
        (
            "sma_cross",
            {"fats": 5},
            "unexpected keyword argument 'fats'; its parameters: fast, slow, half_gap",
        ),
        ("sma_cross", {"fast": 200, "slow": 50}, "must be shorter than slow"),
        ("sma_cross", {"fast": "20"}, "fast must be an integer >= 1"),
        ("sma_cross", {"half_gap": 0}, "half_gap must be a number > 0"),
        ("macd_cross", {"signal": 0}, "signal must be an integer >= 1"),
        ("rsi_reversion", {"lower": 80}, "need 0 < lower < upper < 100"),
        ("bollinger_breakout", {"k": -1}, "k must be a number > 0"),
        ("no_such_package.strategies:Mine", {}, "cannot import 'no_such_package.strategies'"),
        ("mambo.core.strategies:Nope", {}, "has no 'Nope'"),
        ("mambo.core.strategies:Decision", {}, "is not a Strategy subclass"),
        ("mambo.core.strategies:Strategy", {}, "does not implement indicators, on_bar"),
    ],
)
def test_load_strategy_errors(ref: str, params: dict[str, object], message: str) -> None:
    with pytest.raises(StrategyConfigError, match=message.replace("(", r"\(")):
        load_strategy(ref, **params)


USER_STRATEGY = """
from dataclasses import dataclass, field
from mambo.core.strategies import Bar, Crossing, Decision, Strategy


@dataclass(kw_only=True)
class CloseAboveSma(Strategy):
    name = "close_above_sma"
    period: int = 10
    _side: Crossing = field(default_factory=Crossing, init=False)

    def indicators(self):
        return (f"sma:{self.period}",)

    def on_bar(self, bar: Bar) -> Decision:
        cross = self._side.update(bar.close - bar.value(f"sma_{self.period}"))
        return Decision("buy" if cross > 0 else "sell", 1.0) if cross else Decision.hold()


class Nameless(CloseAboveSma):
    name = ""
"""


def test_load_a_users_strategy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_mambo_strategies.py").write_text(USER_STRATEGY)
    monkeypatch.syspath_prepend(tmp_path)
    monkeypatch.delitem(sys.modules, "my_mambo_strategies", raising=False)
    strategy = load_strategy("my_mambo_strategies:CloseAboveSma", period=3)
    assert strategy.name == "close_above_sma"
    assert strategy.indicators() == ("sma:3",)
    decisions = run(strategy, [{"sma_3": 100.0}] * 3, [99.0, 101.0, 100.0])
    assert sides(decisions) == ["hold", "buy", "hold"]
    assert pickle.loads(pickle.dumps(strategy)) == strategy
    with pytest.raises(StrategyConfigError, match="its parameters: period"):
        load_strategy("my_mambo_strategies:CloseAboveSma", fast=3)
    with pytest.raises(StrategyConfigError, match="must set the class attribute name"):
        load_strategy("my_mambo_strategies:Nameless")
    monkeypatch.delitem(sys.modules, "my_mambo_strategies")


# --- state: pickling and comparing --------------------------------------------------------------


def test_pickled_mid_stream_carries_on_identically(btc: pd.DataFrame) -> None:
    bars = fixture_bars(btc, 5, 20)
    live = SmaCross(fast=5, slow=20)
    for bar in bars[:2500]:
        live.on_bar(bar)
    restored = pickle.loads(pickle.dumps(live))
    assert restored == live
    assert restored != SmaCross(fast=5, slow=20)  # the state is part of equality
    assert [live.on_bar(b) for b in bars[2500:]] == [restored.on_bar(b) for b in bars[2500:]]
    assert restored == live


@given(st.sampled_from(DEFAULTS_RUN), st.lists(st.floats(0.0, 100.0), max_size=30), st.integers(0, 30))
def test_every_strategy_restores_from_a_pickle(name: str, path: list[float], cut: int) -> None:
    # Feed the same number to every indicator name the strategy might read: the state machine runs
    # whatever the numbers mean, and a restored copy must continue exactly like the original.
    names = [
        "sma_50",
        "sma_200",
        "ema_12",
        "ema_26",
        "rsi_14",
        "macd_12_26_9",
        "macd_signal_12_26_9",
        "bb_upper_20_2",
        "bb_middle_20_2",
        "bb_lower_20_2",
    ]
    rows = [{n: x + k for k, n in enumerate(names)} for x in path]
    closes = [50.0 + x for x in path]
    original = load_strategy(name)
    run(original, rows[:cut], closes[:cut])
    copy = pickle.loads(pickle.dumps(original))
    assert copy == original
    assert run(copy, rows[cut:], closes[cut:]) == run(original, rows[cut:], closes[cut:])
    assert copy == original
