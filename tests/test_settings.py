"""One settings object: TOML file, environment, overrides; secrets stay secret; bad values refused."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from mambo.core.stages import EngineConfig
from mambo.settings import EngineSettings, load_settings


def test_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "mambo.toml"
    cfg.write_text(
        '[engine]\ntimeframes = ["1m", "5m"]\ntrading_timeframe = "5m"\ninitial_cash = "2500.5"\n'
        "[engine.strategy_params.sma_cross]\nfast = 5\nslow = 20\n"
        '[clickhouse]\ndsn = "http://user:hunter2@db:8123"\n'
    )
    monkeypatch.delenv("MAMBO_CONFIG", raising=False)
    monkeypatch.setenv("MAMBO_ENGINE__TRADING_TIMEFRAME", "1m")
    s = load_settings(cfg)
    assert s.engine.trading_timeframe == "1m"  # the environment wins over the file
    assert s.engine.timeframes == ("1m", "5m")
    assert s.engine.initial_cash == Decimal("2500.5")
    assert s.engine.strategy_params == {"sma_cross": {"fast": 5, "slow": 20}}
    assert s.clickhouse_dsn == "http://user:hunter2@db:8123"
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())
    config = s.engine.to_config()
    assert config.trading_timeframe == "1m" and config.strategy_params["sma_cross"]["slow"] == 20


def test_short_forms_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAMBO_CONFIG", raising=False)
    monkeypatch.setenv("MAMBO_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    s = load_settings()
    assert s.kafka.bootstrap == "127.0.0.1:9092"
    assert s.clickhouse_dsn.startswith("chdb:///") and s.clickhouse_dsn.endswith(".mambo/clickhouse")


@pytest.mark.parametrize(
    "env,value,message",
    [
        ("MAMBO_ENGINE__TRADING_TIMEFRAME", "7x", "unknown timeframe"),
        ("MAMBO_API__PORT", "0", "greater than 0"),
    ],
)
def test_bad_values_are_refused_with_a_reason(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, message: str
) -> None:
    monkeypatch.delenv("MAMBO_CONFIG", raising=False)
    monkeypatch.setenv(env, value)
    with pytest.raises(ValidationError, match=message):
        load_settings()


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "nope.toml")


@pytest.mark.parametrize("value", ["1s,1m", '["1s", "1m"]'])
def test_lists_from_the_environment_as_csv_or_json(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.delenv("MAMBO_CONFIG", raising=False)
    monkeypatch.setenv("MAMBO_ENGINE__TIMEFRAMES", value)
    monkeypatch.setenv("MAMBO_ENGINE__STRATEGIES", "sma_cross, macd_cross")
    s = load_settings()
    assert s.engine.timeframes == ("1s", "1m")
    assert s.engine.strategies == ("sma_cross", "macd_cross")


def test_engine_settings_and_the_cores_engine_config_have_the_same_fields_and_defaults() -> None:
    """EngineSettings repeats EngineConfig's fields (the settings need pydantic's parsing, the core
    stays free of it): a field added to one and not the other fails here, not silently in a run. But for
    ``account``: it comes from ``[accounts]`` (MamboSettings.account_configs)."""
    fields = [f.name for f in dataclasses.fields(EngineConfig)]
    assert list(EngineSettings.model_fields) == [f for f in fields if f != "account"]
    assert EngineSettings().to_config() == EngineConfig()
