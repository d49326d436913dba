"""One typed settings object for every component, from a TOML file and the environment.

Precedence: arguments > environment (``MAMBO_`` prefix, ``__`` between sections, e.g.
``MAMBO_ENGINE__TRADING_TIMEFRAME=5m``) > the TOML file named by ``MAMBO_CONFIG`` or ``--config`` >
defaults. ``MAMBO_KAFKA_BOOTSTRAP`` and ``MAMBO_CLICKHOUSE_DSN`` are accepted as short forms, since
they are what chooses the distributed backends. Each component receives only its own section.
Secrets are :class:`~pydantic.SecretStr`, so they never show in a log or a repr.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from mambo.core.grid import GridConfig
from mambo.core.margin import MarginConfig, is_perpetual
from mambo.core.risk import RiskConfig
from mambo.core.stages import DEFAULT_INDICATORS, Account, EngineConfig, reject_repeats
from mambo.notify.config import NotifySettings
from mambo.schemas.events import DEFAULT_ACCOUNT, split_key, timeframe_ns

__all__ = [
    "AccountSettings",
    "ApiSettings",
    "ClickHouseSettings",
    "EngineSettings",
    "KafkaSettings",
    "MamboSettings",
    "load_settings",
]


_ACCOUNT_ID = re.compile(r"[A-Za-z0-9_.-]+")


def _csv_or_json(v: Any) -> Any:
    """A list setting from the environment: ``1m,5m`` or ``["1m", "5m"]``."""
    if not isinstance(v, str):
        return v
    if v.lstrip().startswith("["):
        return json.loads(v)
    return tuple(x.strip() for x in v.split(",") if x.strip())


class ClickHouseSettings(BaseModel):
    """``chdb:///path`` (embedded, the default) or ``http://user:password@host:8123`` (a server)."""

    dsn: SecretStr = SecretStr("")  # empty: chdb in <data_dir>/clickhouse
    database: str = "mambo"
    batch_rows: int = Field(50_000, gt=0)
    flush_seconds: float = Field(1.0, gt=0)


class KafkaSettings(BaseModel):
    """The distributed runtime. ``processing_guarantee``: ``exactly_once`` (a worker writes its outputs,
    state and input offsets in one Kafka transaction) or ``at_least_once`` (no transactions: offsets and
    state are committed after the outputs are flushed, so a crash can repeat outputs, each the same
    event with the same deterministic event id, but for its ``ts_init``). Both runtimes (native
    worker, Faust) honour it."""

    bootstrap: str = ""  # empty: the embedded bus
    partitions: int = Field(6, gt=0)
    processing_guarantee: Literal["exactly_once", "at_least_once"] = "exactly_once"


class EngineSettings(BaseModel):
    """What to build and trade; becomes the core's :class:`~mambo.core.stages.EngineConfig`."""

    timeframes: Annotated[tuple[str, ...], NoDecode] = ("1m",)
    trading_timeframe: str = "1m"
    strategies: Annotated[tuple[str, ...], NoDecode] = ("sma_cross",)
    strategy_params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    indicators: Annotated[tuple[str, ...], NoDecode] = DEFAULT_INDICATORS
    aggregation_threshold: float = 0.0
    initial_cash: Decimal = Decimal(100_000)
    order_qty: Decimal | None = None
    allow_short: bool = False
    fee_maker: Decimal = Decimal("0.001")
    fee_taker: Decimal = Decimal("0.001")
    slippage_bps: Decimal = Decimal(0)
    fill_on: Literal["candles"] = "candles"  # see EngineConfig.fill_on
    ordering: Literal["event_time", "arrival"] = "event_time"  # see EngineConfig.ordering
    risk: RiskConfig = Field(default_factory=RiskConfig)
    futures: MarginConfig | None = None  # perpetuals on margin, see EngineConfig.futures
    grids: tuple[GridConfig, ...] = ()  # see EngineConfig.grids (an account's own: [accounts.<id>] grids)

    @field_validator("timeframes", "strategies", "indicators", mode="before")
    @classmethod
    def _split_csv(cls, v: Any) -> Any:
        return _csv_or_json(v)

    @field_validator("timeframes", "strategies", "indicators")
    @classmethod
    def _listed_once(cls, v: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        return reject_repeats(str(info.field_name), v)

    @field_validator("trading_timeframe")
    @classmethod
    def _known_timeframe(cls, v: str) -> str:
        timeframe_ns(v)
        return v

    def to_config(self) -> EngineConfig:
        return EngineConfig(**{name: getattr(self, name) for name in EngineSettings.model_fields})


class AccountSettings(BaseModel):
    """One trading account (``[accounts.<id>]``): its markets and what it trades them with. What it
    leaves out comes from ``[engine]``."""

    model_config = ConfigDict(extra="forbid")

    markets: Annotated[tuple[str, ...], NoDecode] = ()  # exchange:symbol keys; empty: every market
    strategies: Annotated[tuple[str, ...], NoDecode] | None = None
    initial_cash: Decimal | None = Field(None, gt=0)
    order_qty: Decimal | None = Field(None, gt=0)
    risk: RiskConfig | None = None
    #: trade the account's markets (perpetuals, named in ``markets``) on margin: leverage, margin mode
    futures: MarginConfig | None = None
    #: grids the account runs beside its strategies (mambo.core.grid): market, low, high, levels, qty
    grids: tuple[GridConfig, ...] | None = None

    @field_validator("markets", "strategies", mode="before")
    @classmethod
    def _split_csv(cls, v: Any) -> Any:
        return _csv_or_json(v)

    @field_validator("markets")
    @classmethod
    def _keys(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for key in v:
            split_key(key)
        return reject_repeats("markets", v)


class ApiSettings(BaseModel):
    """The API service (:mod:`mambo.api`). ``auth="open"`` (no keys) is refused on a non-loopback host."""

    host: str = "127.0.0.1"
    port: int = Field(8000, gt=0, lt=65536)
    auth: Literal["keys", "open"] = "keys"
    keys_file: Path | None = None  # default: <data_dir>/api_keys.json
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    default_symbol: str = ""  # exchange:symbol for GET /signal; empty: the first market with a signal
    ws_buffer: int = Field(10_000, gt=0)  # messages kept for resume
    ws_queue: int = Field(1_000, gt=0)  # per-client queue; a client that fills it is dropped
    ws_heartbeat_seconds: float = Field(15.0, gt=0)
    query_max_seconds: float = Field(10.0, gt=0)
    query_max_rows: int = Field(100_000, gt=0)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, v: Any) -> Any:
        return _csv_or_json(v)

    @model_validator(mode="after")
    def _open_only_on_loopback(self) -> ApiSettings:
        if self.auth == "open" and self.host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"api.auth=open on host {self.host!r}: open access is for loopback only")
        return self


class MamboSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAMBO_", env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Path(".mambo")
    log_format: Literal["console", "json"] = "console"
    clickhouse: ClickHouseSettings = Field(default_factory=ClickHouseSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    #: the trading accounts by id; by default one, ``main``, over every market
    accounts: dict[str, AccountSettings] = Field(default_factory=lambda: {DEFAULT_ACCOUNT: AccountSettings()})
    api: ApiSettings = Field(default_factory=ApiSettings)
    #: trade notifications: the builder's thresholds and ``mambo notify``'s channels (mambo.notify)
    notify: NotifySettings = Field(default_factory=NotifySettings)

    @field_validator("accounts")
    @classmethod
    def _accounts(cls, v: dict[str, AccountSettings]) -> dict[str, AccountSettings]:
        if not v:
            raise ValueError("at least one account")
        for name in v:
            if not _ACCOUNT_ID.fullmatch(name):
                raise ValueError(f"account id {name!r}: letters, digits, '_', '-' and '.' only")
        if len(v) > 1:
            seen: dict[str, str] = {}
            for name, account in v.items():
                if not account.markets:
                    raise ValueError(f"account {name}: with several accounts each names its markets")
                for key in account.markets:
                    if key in seen:
                        raise ValueError(
                            f"market {key} is in accounts {seen[key]} and {name}: one account each"
                        )
                    seen[key] = name
        return v

    @model_validator(mode="after")
    def _futures_accounts(self) -> MamboSettings:
        for name, a in self.accounts.items():
            if (a.futures or self.engine.futures) is None:
                continue
            if not a.markets:
                raise ValueError(f"account {name} trades on margin ([futures]): name its perpetuals")
            spot = [k for k in a.markets if not is_perpetual(k)]
            if spot:
                raise ValueError(
                    f"account {name} trades on margin: {', '.join(spot)} is not a perpetual"
                    " (a perpetual's symbol names its settle currency: BTC/USDT:USDT)"
                )
        return self

    def run_markets(self, listed: str | None = None) -> list[str] | None:
        """The run's markets (the distributed runtime's ``--markets``): ``listed`` (comma-separated
        ``exchange:symbol`` keys), else every account's own markets when each names them, else None (an
        account over every market then waits for the markets it has seen). ValueError on a bad key or
        an account's market outside the list."""
        if listed:
            keys = reject_repeats("markets", [k.strip() for k in listed.split(",") if k.strip()])
            for key in keys:
                split_key(key)
            for name, a in self.accounts.items():
                outside = sorted(set(a.markets) - set(keys))
                if outside:
                    raise ValueError(f"account {name} trades {', '.join(outside)}, not in --markets")
            return list(keys)
        if all(a.markets for a in self.accounts.values()):
            return sorted({k for a in self.accounts.values() for k in a.markets})
        return None

    def account_configs(self) -> list[Account]:
        """Each account as the core's :class:`~mambo.core.stages.Account`: ``[engine]`` with what the
        account sets instead, and its markets (None: every market)."""
        base = self.engine.to_config()
        out = []
        for name, a in self.accounts.items():
            changes: dict[str, Any] = {"account": name}
            for field_name in ("strategies", "initial_cash", "order_qty", "risk", "futures", "grids"):
                value = getattr(a, field_name)
                if value is not None:
                    changes[field_name] = value
            out.append(Account(replace(base, **changes), frozenset(a.markets) if a.markets else None))
        return out

    @model_validator(mode="before")
    @classmethod
    def _short_forms(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for env, (section, name) in {
                "MAMBO_KAFKA_BOOTSTRAP": ("kafka", "bootstrap"),
                "MAMBO_CLICKHOUSE_DSN": ("clickhouse", "dsn"),
            }.items():
                if env in os.environ:
                    sec = data.setdefault(section, {})
                    if isinstance(sec, dict):
                        sec.setdefault(name, os.environ[env])
        return data

    @property
    def clickhouse_dsn(self) -> str:
        dsn = self.clickhouse.dsn.get_secret_value()
        return dsn or f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("toml_file"):
            sources.append(TomlConfigSettingsSource(settings_cls))
        return tuple(sources)


def load_settings(config_file: Path | None = None, **overrides: Any) -> MamboSettings:
    """Settings from ``config_file`` (or ``MAMBO_CONFIG``), the environment and ``overrides``."""
    path = config_file or (Path(os.environ["MAMBO_CONFIG"]) if os.environ.get("MAMBO_CONFIG") else None)
    if path is None:
        return MamboSettings(**overrides)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    from_file = type(
        "MamboSettings", (MamboSettings,), {"model_config": {**MamboSettings.model_config, "toml_file": path}}
    )
    return from_file(**overrides)
