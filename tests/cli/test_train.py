"""`mambo train`, then `mambo backtest` with the model it wrote, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mambo.ml.artifact import load_artifact

MAMBO = [sys.executable, "-m", "mambo.cli"]
FIXTURE = Path(__file__).parents[1] / "fixtures" / "btc_perp_1m_5000.csv"
MARKET = "binanceusdm:BTC/USDT:USDT"


def mambo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MAMBO, *args], capture_output=True, text=True, timeout=300, check=False)


def test_train_then_backtest_with_the_model(tmp_path: Path) -> None:
    model = tmp_path / "model"
    small = ("--folds", "2", "--horizon", "10", "--rounds", "30", "--min-leaf", "50")
    done = mambo("train", "--data", str(FIXTURE), "--symbols", MARKET, "--out", str(model), *small)
    assert done.returncode == 0, done.stderr + done.stdout
    manifest = json.loads((model / "manifest.json").read_text())
    assert load_artifact(model).content_hash == manifest["content_hash"]
    assert f"content hash {manifest['content_hash'][:16]}" in done.stdout
    oos = manifest["out_of_sample"]
    line = next(x for x in done.stdout.splitlines() if x.startswith("out of sample (2 folds, compounded)"))
    assert f"ml_signal {oos['compounded_return']:+.4%}" in line
    assert f"buy and hold {oos['buy_and_hold_compounded_return']:+.4%}" in line

    out = tmp_path / "bt"
    done = mambo(
        "backtest", "--data", str(FIXTURE), "--symbols", MARKET, "--strategy", "ml_signal",
        "--param", f"ml_signal.model={model}", "--param", "ml_signal.buy_above=0.54", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mode"] == "vectorized" and metrics["strategy"]["trades"] > 0


def test_train_and_backtest_refuse_what_they_cannot_use(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    done = mambo("train", "--data", str(FIXTURE), "--out", str(tmp_path / "notes"))
    assert done.returncode == 2 and "holds no model artifact" in done.stderr
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    done = mambo(
        "backtest", "--data", str(FIXTURE), "--strategy", "ml_signal",
        "--param", f"ml_signal.model={tmp_path / 'none'}", "--out", str(tmp_path / "bt"),
    )  # fmt: skip
    assert done.returncode == 2 and "no such folder; train one with mambo train" in done.stderr
