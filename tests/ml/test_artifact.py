"""The model artifact: deterministic training (same seed, same hash), what the manifest records, and
the loading checks (format version, LightGBM version, hashes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import lightgbm
import pytest

from mambo.backtest.data import CandleFrame
from mambo.core.stages import EngineConfig
from mambo.ml.artifact import (
    FORMAT_VERSION,
    ModelArtifactError,
    check_output,
    content_hash,
    load_artifact,
)
from mambo.ml.train import TrainResult, train
from tests.ml.conftest import SMALL


def test_same_seed_same_artifact_other_seed_another(
    trained: TrainResult, frame: CandleFrame, tmp_path: Path
) -> None:
    again = train(frame, SMALL, EngineConfig(), tmp_path / "again")
    assert again.content_hash == trained.content_hash
    assert (again.path / "model.txt").read_bytes() == (trained.path / "model.txt").read_bytes()
    assert [f.content_hash for f in again.folds] == [f.content_hash for f in trained.folds]
    other = train(frame, replace_seed(SMALL, 4), EngineConfig(), tmp_path / "other")
    assert other.content_hash != trained.content_hash
    assert (other.path / "model.txt").read_bytes() != (trained.path / "model.txt").read_bytes()


def replace_seed(config: Any, seed: int) -> Any:
    from dataclasses import replace

    return replace(config, seed=seed)


def test_the_manifest_records_how_the_model_was_made(trained: TrainResult, frame: CandleFrame) -> None:
    m = json.loads((trained.path / "manifest.json").read_text())
    assert m["format_version"] == FORMAT_VERSION and m["content_hash"] == trained.content_hash
    assert m["features"] == list(SMALL.features) and m["indicators"] == list(SMALL.indicators)
    assert m["label"]["horizon"] == SMALL.horizon and m["seed"] == SMALL.seed
    assert m["libraries"]["lightgbm"] == lightgbm.__version__
    assert m["training"]["first_bar"] == 0 and m["training"]["stop_bar"] == len(frame)
    assert m["market"] == "binanceusdm:BTC/USDT:USDT" and m["timeframe"] == "1m"
    assert [f["fold"] for f in m["folds"]] == [1, 2]
    for fold, result in zip(m["folds"], trained.folds, strict=True):
        fm = json.loads((trained.path / "folds" / str(fold["fold"]) / "manifest.json").read_text())
        assert fm["content_hash"] == fold["content_hash"] == result.content_hash
        # the fold's labels end before its test window starts: the purge gap
        assert fm["training"]["labels_read_until"] <= fm["test"]["start"]
        assert fm["training"]["stop_bar"] + SMALL.horizon == fm["test"]["first_bar"]
        assert fold["buy_and_hold"]["total_return"] == pytest.approx(
            frame.close[result.fold.test_stop - 1] / frame.open[result.fold.test_start] - 1, rel=1e-12
        )


@pytest.fixture
def copy(trained: TrainResult, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained.path, tmp_path / "model", ignore=shutil.ignore_patterns("folds")))


def edit(folder: Path, rehash: bool = True, **changes: Any) -> None:
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    for key, value in changes.items():
        target = m
        *parents, leaf = key.split("__")
        for p in parents:
            target = target[p]
        target[leaf] = value
    if rehash:
        m["content_hash"] = content_hash(m)
    path.write_text(json.dumps(m))


def test_a_copy_loads(copy: Path, trained: TrainResult) -> None:
    assert load_artifact(copy).content_hash == trained.content_hash


def test_another_format_version_is_refused(copy: Path) -> None:
    edit(copy, format_version=FORMAT_VERSION + 1)
    with pytest.raises(
        ModelArtifactError, match=f"format version {FORMAT_VERSION + 1}, but this Mambo reads"
    ):
        load_artifact(copy)


def test_another_lightgbm_major_is_refused(copy: Path) -> None:
    major = int(lightgbm.__version__.split(".")[0])
    edit(copy, libraries__lightgbm=f"{major - 1}.3.5")
    with pytest.raises(ModelArtifactError, match="another major version"):
        load_artifact(copy)
    edit(copy, libraries__lightgbm=f"{major}.99.0")  # a minor version reads the same text format
    load_artifact(copy)


def test_edited_files_are_refused(copy: Path) -> None:
    edit(copy, rehash=False, label__horizon=99)
    with pytest.raises(ModelArtifactError, match="does not match its content_hash"):
        load_artifact(copy)


def test_a_replaced_model_is_refused(copy: Path) -> None:
    text = (copy / "model.txt").read_text()
    (copy / "model.txt").write_text(text.replace("learning_rate: 0.05", "learning_rate: 0.06", 1))
    with pytest.raises(ModelArtifactError, match="does not match the manifest's model_sha256"):
        load_artifact(copy)


def test_missing_and_foreign_folders(tmp_path: Path) -> None:
    with pytest.raises(ModelArtifactError, match="no such folder; train one with mambo train"):
        load_artifact(tmp_path / "nothing")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ModelArtifactError, match=r"no manifest\.json in it"):
        load_artifact(tmp_path / "notes")
    with pytest.raises(ModelArtifactError, match="non-empty folder that holds no model artifact"):
        check_output(tmp_path / "notes")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.json").write_text('{"format": "something else"}')
    with pytest.raises(ModelArtifactError, match=r"is not a mambo\.ml_signal manifest"):
        load_artifact(tmp_path / "m")
