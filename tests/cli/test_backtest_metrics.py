"""`mambo backtest` on a short run of one-second bars, as a user runs it (issue 12 #6)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

MAMBO = [sys.executable, "-m", "mambo.cli"]


def test_ten_minutes_of_one_second_bars_report_without_annualizing(tmp_path: Path) -> None:
    """600 one-second bars gaining 2% raised OverflowError ((1.02) ** 52,560) and stopped the run. Now
    the run ends, the annualized return is null (not meaningful under a day) and the rest is finite."""
    # a 2% rise with waves the default SMA crossover (50/200) trades
    close = np.round(np.linspace(100.0, 102.0, 600) + 0.5 * np.sin(np.arange(600) / 40), 2)
    opens = np.concatenate([[100.0], close[:-1]])
    data = tmp_path / "ten_minutes.csv"
    pd.DataFrame(
        {
            "timestamp": pd.date_range("2024-01-01", periods=600, freq="1s").strftime("%Y-%m-%dT%H:%M:%SZ"),
            "open": opens,
            "high": np.maximum(opens, close),
            "low": np.minimum(opens, close),
            "close": close,
            "volume": 1.0,
        }
    ).to_csv(data, index=False)
    out = tmp_path / "run"
    done = subprocess.run(
        [*MAMBO, "backtest", "--data", str(data), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["timeframe"], metrics["bars"]) == ("1s", 600)
    hold = metrics["buy_and_hold"]
    assert hold["annualized_return"] is None and hold["calmar"] is None
    assert math.isclose(hold["total_return"], close[-1] / 100.0 - 1, rel_tol=1e-9)
    strategy = metrics["strategy"]
    assert strategy["trades"] > 0 and strategy["annualized_return"] is None
    for figures in (hold, strategy):
        for name in ("total_return", "volatility", "sharpe", "sortino", "max_drawdown", "max_drawdown_days"):
            assert isinstance(figures[name], float) and math.isfinite(figures[name]), name
