"""Control of a running pipeline (issue 17): commands in line with the markets' streams.

The recording runs through one account (four strategies over the four markets) while commands come at
fixed points of the stream: a parameter change, a stop and a start, a pause, a halt and a resume,
reduce-only on and off, a forced exit, and commands that must be refused (invalid parameters, a stale
version, an unknown strategy). Checked:

* each command is answered (applied, or rejected with its reason) and acts from the market's next
  candle: after ``set_params`` the strategy's averages are the new periods' (recomputed here with
  pandas from the run's own candles); a stopped or paused strategy holds; a halted or reduce-only
  account enters nothing until it resumes (its rejections say why); a forced exit closes the position;
* a refused command changes nothing: the run with it is the run without it, but for its answer;
* the stage groups give the same events in two interleavings (recording order, one market after the
  other), and so does a restart from the saved state in the middle.
"""

from __future__ import annotations

import json
import pickle
from decimal import Decimal
from typing import Any

import pandas as pd
import pytest

from mambo.connectors.replay import load_trades
from mambo.core.control import expand
from mambo.core.market import Market
from mambo.core.stages import EngineConfig
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import ControlCommand
from mambo.streams.embedded import EmbeddedRuntime
from mambo.streams.markets import MarketPipelines

from .test_account_stage import SLICE, assert_same, of

BTC = "binance:BTC/USDT"
CONFIG = EngineConfig(
    timeframes=("1s",),
    trading_timeframe="1s",
    strategies=("sma_cross", "rsi_reversion", "macd_cross", "bollinger_breakout"),
)
Item = TradeBatch | ControlCommand


def command(
    n: int, action: str, version: int, strategy: str = "", market: str = "", **params: Any
) -> ControlCommand:
    exchange, _, symbol = market.partition(":")
    return ControlCommand(
        event_id=f"cmd{n}", ts_event=0, ts_init=0, command_id=f"cmd{n}", account="main", action=action,
        strategy=strategy, exchange=exchange, symbol=symbol, params=json.dumps(params), version=version,
        who="test", why=f"step {n}",
    )  # fmt: skip


#: (slice index, command): each comes after that many slices of the recording (2,000 trades each)
SCRIPT = [
    (4, command(1, "set_params", 1, "sma_cross", BTC, fast=5, slow=20)),
    (5, command(2, "set_params", 2, "sma_cross", BTC, fast=-3)),  # refused: a period must be > 0
    (6, command(3, "stop", 1, "rsi_reversion")),  # every market
    (7, command(4, "set_params", 1, "sma_cross", BTC, fast=7)),  # refused: version 1 is applied
    (9, command(5, "halt", 1)),
    (12, command(6, "resume", 2)),
    (13, command(7, "start", 2, "rsi_reversion")),
    (14, command(8, "pause", 1, "macd_cross", "binanceusdm:ETH/USDT:USDT")),
    (15, command(10, "force_exit", 3)),
    (16, command(9, "reduce_only", 4)),
    (20, command(11, "reduce_only", 5, on=False)),
    (21, command(12, "stop", 1, "no_such_strategy")),  # refused: not one of the account's
]


@pytest.fixture(scope="module")
def recording() -> TradeBatch:
    return load_trades()[0]


@pytest.fixture(scope="module")
def rules(recording: TradeBatch) -> dict[str, Market]:
    return {k: Market.inferred(*k.split(":", 1), Decimal("0.01")) for k in recording.keys}


def items(recording: TradeBatch, script: list[tuple[int, ControlCommand]]) -> list[Item]:
    out: list[Item] = []
    at = dict(script)
    for i, s in enumerate(range(0, len(recording), SLICE)):
        if i in at:
            out.append(at[i])
        out.append(recording.slice(s, s + SLICE))
    return out


def embedded(
    recording: TradeBatch, rules: dict[str, Market], script: list[tuple[int, ControlCommand]]
) -> list[tuple[str, Any]]:
    rt = EmbeddedRuntime(CONFIG, rules, known_markets=recording.keys, metrics=False)
    out: list[tuple[str, Any]] = []
    rt.observe(lambda t, e: out.append((t, e)) if t not in ("md.trades", "account.feed") else None)
    for item in items(recording, script):
        if isinstance(item, ControlCommand):
            rt.control(item)
        else:
            rt.ingest_trades(item)
    rt.finish()
    return out


@pytest.fixture(scope="module")
def run(recording: TradeBatch, rules: dict[str, Market]) -> list[tuple[str, Any]]:
    return embedded(recording, rules, SCRIPT)


def results(events: list[tuple[str, Any]]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for r in of(events, "control.results"):
        out.setdefault(r.command_id, []).append(r)
    return out


def test_every_command_is_answered_applied_or_rejected_with_its_reason(run: list[tuple[str, Any]]) -> None:
    got = results(run)
    status = {c: {r.status for r in rs} for c, rs in got.items()}
    assert status == {
        "cmd1": {"applied"}, "cmd2": {"rejected"}, "cmd3": {"applied"}, "cmd4": {"rejected"},
        "cmd5": {"applied"}, "cmd6": {"applied"}, "cmd7": {"applied"}, "cmd8": {"applied"},
        "cmd9": {"applied"}, "cmd10": {"applied"}, "cmd11": {"applied"}, "cmd12": {"rejected"},
    }  # fmt: skip
    assert "invalid parameters" in got["cmd2"][0].reason and "fast" in got["cmd2"][0].reason
    assert "stale" in got["cmd4"][0].reason
    assert "no strategy 'no_such_strategy'" in got["cmd12"][0].reason
    assert len(got["cmd3"]) == 4  # a strategy command for every market: answered in each
    assert json.loads(got["cmd1"][0].params) == {"fast": 5, "slow": 20}
    assert json.loads(got["cmd2"][0].params) == {"fast": 5, "slow": 20}  # what still runs


def test_new_parameters_act_from_the_next_candle(run: list[tuple[str, Any]]) -> None:
    """After set_params, sma_cross's averages on BTC are the 5- and 20-bar means of the closes,
    recomputed here from the run's own candles."""
    candles = pd.DataFrame(
        [(c.ts_event, c.close) for c in of(run, "md.candles.1s") if c.key == BTC], columns=["ts", "close"]
    ).set_index("ts")
    fast, slow = candles.close.rolling(5).mean(), candles.close.rolling(20).mean()
    signals = [s for s in of(run, "signals.raw") if s.strategy == "sma_cross" and s.key == BTC]
    changed = [s for s in signals if "sma_5" in s.values]
    assert len(changed) > 100
    assert all("sma_50" not in s.values for s in changed)
    for s in changed:
        assert s.values["sma_5"] == pytest.approx(fast[s.ts_event], rel=1e-9)
    warm = [s for s in changed if "sma_20" in s.values]  # the slow one warms up for 20 bars
    assert len(warm) > 80
    for s in warm:
        assert s.values["sma_20"] == pytest.approx(slow[s.ts_event], rel=1e-9)
    first = changed[0].ts_event
    assert all("sma_5" not in s.values for s in signals if s.ts_event < first)


def test_stopped_and_paused_strategies_hold(run: list[tuple[str, Any]]) -> None:
    raw = of(run, "signals.raw")
    applied = {c: rs for c, rs in results(run).items()}
    stop, start = applied["cmd3"][0], applied["cmd7"][0]
    assert stop.ts_event == 0  # the record carries the sender's time; where it acted is in the stream
    rsi = [s for s in raw if s.strategy == "rsi_reversion"]
    # between the stop and the start every rsi signal is a hold, before and after it speaks
    stopped_bars = [s for s in rsi if s.values == {} and s.side == "hold"]
    assert len(stopped_bars) > 200
    assert any(s.side != "hold" for s in rsi)
    macd_eth = [s for s in raw if s.strategy == "macd_cross" and s.key == "binanceusdm:ETH/USDT:USDT"]
    tail = macd_eth[-50:]
    assert all(s.side == "hold" for s in tail)  # paused to the end
    assert start.status == "applied"


def test_halt_and_reduce_only_refuse_entries_and_force_exit_closes(run: list[tuple[str, Any]]) -> None:
    rejections = of(run, "risk.rejections")
    assert any(r.rule == "max_drawdown" and "halt" in r.reason for r in rejections)
    assert any(r.rule == "reduce_only" for r in rejections)
    exits = [o for o in of(run, "orders") if o.strategy == "control"]
    assert exits and all(o.reduce_only for o in exits)
    closed = {o.key for o in exits if o.status == "filled"}
    assert closed
    last = {}
    for p in of(run, "positions"):
        last[p.key] = p
    fills = of(run, "fills")
    for key in closed:  # each forced exit left its market flat at its fill
        exit_fill = [f for f in fills if f.strategy == "control" and f.key == key][-1]
        after = [p for p in of(run, "positions") if p.key == key and p.ts_event == exit_fill.ts_event]
        assert after and after[-1].qty == 0


def test_a_refused_command_changes_nothing(
    recording: TradeBatch, rules: dict[str, Market], run: list[tuple[str, Any]]
) -> None:
    without = embedded(
        recording, rules, [(i, c) for i, c in SCRIPT if c.command_id not in ("cmd2", "cmd4", "cmd12")]
    )
    answers = {"cmd2", "cmd4", "cmd12"}
    strip = lambda evs: [  # noqa: E731
        (t, e) for t, e in evs if not (t.startswith("control") and e.command_id in answers)
    ]
    assert strip(run) == without


def pipelines(
    pieces: list[Item], rules: dict[str, Market], keys: tuple[str, ...], restart_at: int | None = None
) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    mp = MarketPipelines(CONFIG, lambda t, e: out.append((t, e)), rules, keys, loopback=True)
    for n, item in enumerate(pieces):
        if n == restart_at:  # a restart: every key's state saved and restored into new pipelines
            saved = {k: mp.state(k) for k in mp.keys}
            mp = MarketPipelines(CONFIG, lambda t, e: out.append((t, e)), rules, keys, loopback=True)
            for k, blob in saved.items():
                mp.restore(k, pickle.loads(pickle.dumps(blob)))
        if isinstance(item, ControlCommand):
            mp.ingest_control([item])
        else:
            mp.ingest_trades(item)
    mp.finish()
    return [(t, e) for t, e in out if t != "account.feed"]


def per_market(recording: TradeBatch, script: list[tuple[int, ControlCommand]]) -> dict[str, list[Item]]:
    streams: dict[str, list[Item]] = {}
    for item in items(recording, script):
        if isinstance(item, ControlCommand):
            for copy in expand(item, sorted(recording.keys)):
                streams.setdefault(copy.market, []).append(copy)
        else:
            for code, key in enumerate(item.keys):
                part = item.take(item.market == code)
                if len(part):
                    streams.setdefault(key, []).append(part)
    return streams


def test_the_stage_groups_give_the_same_events_in_any_interleaving_and_across_a_restart(
    recording: TradeBatch, rules: dict[str, Market], run: list[tuple[str, Any]]
) -> None:
    in_order: list[Item] = []
    for item in items(recording, SCRIPT):
        in_order += expand(item, sorted(recording.keys)) if isinstance(item, ControlCommand) else [item]
    lagged = [i for key, s in sorted(per_market(recording, SCRIPT).items(), reverse=True) for i in s]
    for got in (
        pipelines(in_order, rules, recording.keys),
        pipelines(lagged, rules, recording.keys),
        pipelines(in_order, rules, recording.keys, restart_at=len(in_order) // 2),
    ):
        control = ("control", "control.markets", "control.results")
        assert_same(
            [(t, e) for t, e in got if t not in control], [(t, e) for t, e in run if t not in control]
        )
        assert sorted(r.event_id for r in of(got, "control.results")) == sorted(
            r.event_id for r in of(run, "control.results")
        )


def test_whole_numbers_for_float_parameters_are_taken_as_floats() -> None:
    """JSON (a browser's form) cannot tell 30.0 from 30: a float parameter given a whole number is a
    float in the strategy and in the answer's parameters; an int parameter given a fraction is refused
    by the strategy, with its reason."""
    from mambo.core.control import StrategyControl

    control = StrategyControl("rsi_reversion", "rsi_reversion", {})
    answer, built = control.apply(command(1, "set_params", 1, "rsi_reversion", BTC, lower=25, period=9))
    assert answer.status == "applied" and json.loads(answer.params) == {"lower": 25.0, "period": 9}
    assert '"lower": 25.0' in answer.params and type(built.lower) is float and type(built.period) is int  # type: ignore[union-attr]
    refused, _ = control.apply(command(2, "set_params", 2, "rsi_reversion", BTC, period=9.5))
    assert refused.status == "rejected" and "period" in refused.reason


def test_a_command_on_a_candle_boundary_loses_no_candle() -> None:
    """Nanosecond trades: a trade 1 ns before a candle boundary, then an account command (in line at
    last trade + 1 ns: the boundary itself), then the trade that closes the candle ending there. The
    command and the candle share a time in the account's merge; both are taken (command first, as
    in the stream), none is taken for a repeat; the same in the stage groups."""
    key = "binance:BTC/USDT"
    t0 = 1_700_000_000 * 10**9
    trades = [t0 + i * 10**9 + 10**8 for i in range(5)] + [t0 + 5 * 10**9 - 1]

    def batch(times: list[int]) -> TradeBatch:
        from mambo.schemas.events import Trade

        return TradeBatch.from_trades([
            Trade(event_id=f"t{t}", ts_event=t, ts_init=t, exchange="binance", symbol="BTC/USDT",
                  trade_id=str(t), price=100.0, qty=1.0)
            for t in times
        ])  # fmt: skip

    halt = command(1, "halt", 1, market=key)
    after = [t0 + 5 * 10**9 + 10**8, t0 + 6 * 10**9 + 10**8]
    config = EngineConfig(timeframes=("1s",), trading_timeframe="1s", strategies=("sma_cross",))
    rules = {key: Market.inferred("binance", "BTC/USDT", Decimal("0.01"))}
    rt = EmbeddedRuntime(config, rules, known_markets=[key], metrics=False)
    out: list[tuple[str, Any]] = []
    rt.observe(lambda t, e: out.append((t, e)))
    rt.ingest_trades(batch(trades))
    rt.control(halt)
    rt.ingest_trades(batch(after))
    rt.finish()
    [stage] = rt.account_stages
    assert stage.merge.repeats == 0
    [feed] = [e for t, e in out if t == "account.feed" and e.control is not None]
    assert feed.ts_event == t0 + 5 * 10**9  # the boundary: the candle [t0 + 4 s, t0 + 5 s) ends there
    candles = [e for t, e in out if t == "md.candles.1s"]
    assert t0 + 5 * 10**9 in {c.ts_event for c in candles}
    # every candle reached the account: equity after each (a halted account with no position has none:
    # count the candles the merge released instead)
    steps = [e for t, e in out if t == "account.feed" and (e.candle is not None or e.control is not None)]
    assert len(steps) == len(candles) + 1
    # the stage groups (what a Kafka worker runs): the same
    got: list[tuple[str, Any]] = []
    mp = MarketPipelines(config, lambda t, e: got.append((t, e)), rules, [key], loopback=True)
    mp.ingest_trades(batch(trades))
    mp.ingest_control(expand(halt, [key]))
    mp.ingest_trades(batch(after))
    mp.finish()
    assert mp._account("main").merge.repeats == 0
    answers = [(t, e) for t, e in out if t == "control.results"]
    assert [(t, e) for t, e in got if t == "control.results"] == answers and len(answers) == 1
