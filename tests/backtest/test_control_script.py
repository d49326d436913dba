"""A backtest with a control script (issue 17): the commands act from the first candle that opens at
or after their time, as a running pipeline takes them, and nowhere before it.

On the 5,000 real one-minute bars: stopping sma_cross half way leaves every signal before that time
as the uncontrolled run gave it and holds after it; a parameter change half way gives the new
parameters' signals from there (the first half unchanged); an invalid change is refused and changes
nothing. ``mambo backtest --control`` reads a script file and says it ran the event path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mambo.backtest.data import CandleFrame, load_candles
from mambo.backtest.engine import run_backtest
from mambo.cli import app
from mambo.core.stages import EngineConfig
from mambo.schemas.events import ControlCommand

FIXTURES = Path(__file__).parents[1] / "fixtures"
CONFIG = EngineConfig(timeframes=("1m",), trading_timeframe="1m", strategies=("sma_cross",))


@pytest.fixture(scope="module")
def frame() -> CandleFrame:
    return load_candles(FIXTURES / "btc_perp_1m_5000.csv", "BTC/USDT", "binance")


def command(action: str, at: int, version: int = 1, **params: int) -> ControlCommand:
    return ControlCommand(
        event_id=f"{action}{at}", ts_event=at, ts_init=at, command_id=f"{action}{at}", action=action,
        strategy="sma_cross", params=json.dumps(params), version=version, who="test",
    )  # fmt: skip


def test_a_stop_half_way_holds_from_there_and_changes_nothing_before(frame: CandleFrame) -> None:
    plain = run_backtest(frame, CONFIG, mode="events")
    half = int(frame.open_time[len(frame) // 2])
    stopped = run_backtest(frame, CONFIG, control=[command("stop", half)])
    assert stopped.mode == "events" and stopped.fallback == "a control script"
    before = [s for s in plain.signals if s.ts_event <= half]
    assert [s for s in stopped.signals if s.ts_event <= half] == before
    # a result keeps the directional signals: none after the stop, where the plain run has some
    assert [s for s in stopped.signals if s.ts_event > half] == []
    assert len([s for s in plain.signals if s.ts_event > half]) > 10
    assert all(f.ts_event <= half + frame.step for f in stopped.fills)  # no entry after the stop


def test_new_parameters_half_way_and_a_refused_change(frame: CandleFrame) -> None:
    half = int(frame.open_time[len(frame) // 2])
    changed = run_backtest(frame, CONFIG, control=[command("set_params", half, fast=10, slow=30)])
    refused = run_backtest(frame, CONFIG, control=[command("set_params", half, fast=0)])
    plain = run_backtest(frame, CONFIG, mode="events")
    assert refused.signals == plain.signals and refused.fills == plain.fills
    late = [s for s in changed.signals if s.ts_event > half + 40 * frame.step]  # past the new warm-up
    assert late and all("sma_10" in s.values for s in late)
    assert [s for s in changed.signals if s.ts_event <= half] == [
        s for s in plain.signals if s.ts_event <= half
    ]
    assert changed.signals != plain.signals


def test_mambo_backtest_takes_a_control_script(tmp_path: Path) -> None:
    script = tmp_path / "control.json"
    script.write_text(json.dumps([
        {"at": "2024-01-01T00:00:00Z", "action": "pause", "strategy": "sma_cross", "why": "a test"},
        {"at": "2030-01-01", "action": "start", "strategy": "sma_cross"},
    ]))  # fmt: skip
    result = CliRunner().invoke(
        app,
        ["backtest", "--data", str(FIXTURES / "btc_perp_1m_5000.csv"), "--symbols", "BTC/USDT:USDT",
         "--strategy", "sma_cross", "--control", str(script), "--out", str(tmp_path / "out")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "ran the event path: a control script" in result.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"at": "2024-01-01", "action": "set_params", "strategy": "sma_cross"}]))
    result = CliRunner().invoke(
        app,
        ["backtest", "--data", str(FIXTURES / "btc_perp_1m_5000.csv"), "--symbols", "BTC/USDT:USDT",
         "--strategy", "sma_cross", "--control", str(bad), "--out", str(tmp_path / "out2")],
    )  # fmt: skip
    assert result.exit_code != 0 and "set_params with no parameters" in result.output
