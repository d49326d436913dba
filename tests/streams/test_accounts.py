"""Accounts: several in one embedded run, each over its own markets, and the settings that define them.

The reference for a run of two accounts is each account run alone over its markets: accounts share
no cash, positions or limits, so together they must trade exactly as apart, id for id."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from mambo.connectors.replay import DEMO_TRADES, load_trades
from mambo.core.market import Market
from mambo.core.risk import RiskConfig
from mambo.core.stages import Account, EngineConfig, build_stages
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import AccountEvent, EquitySnapshot, split_key
from mambo.settings import MamboSettings, load_settings
from mambo.streams.embedded import EmbeddedRuntime

BTC, ETH = "binance:BTC/USDT", "binance:ETH/USDT"
CONFIG = EngineConfig(
    timeframes=("1s", "1m"),
    trading_timeframe="1s",
    strategies=("sma_cross", "rsi_reversion", "macd_cross", "bollinger_breakout"),
    risk=RiskConfig(max_open_positions=1),
)
TRADING = ("intents", "orders", "fills", "positions", "risk.rejections", "equity")


@pytest.fixture(scope="module")
def trades() -> TradeBatch:
    batch, _ = load_trades(DEMO_TRADES, {BTC, ETH})
    return batch


def run(trades: TradeBatch, accounts: list[Account]) -> tuple[EmbeddedRuntime, list[tuple[str, Any]]]:
    markets = {k: Market.default(*split_key(k)) for k in (BTC, ETH)}
    runtime = EmbeddedRuntime(accounts, markets, known_markets=list(markets))
    seen: list[tuple[str, Any]] = []
    runtime.observe(lambda topic, event: seen.append((topic, event)) if topic in TRADING else None)
    for start in range(0, len(trades), 2_000):
        runtime.ingest_trades(trades.slice(start, start + 2_000))
    return runtime, seen


def of(seen: list[tuple[str, Any]], account: str) -> list[tuple[str, Any]]:
    return [(t, e) for t, e in seen if e.account == account]


def test_two_accounts_trade_together_exactly_as_apart(trades: TradeBatch) -> None:
    alpha = Account(EngineConfig(**{**CONFIG.__dict__, "account": "alpha"}), frozenset({BTC}))
    beta_config = EngineConfig(
        **{
            **CONFIG.__dict__,
            "account": "beta",
            "strategies": ("rsi_reversion",),
            "initial_cash": Decimal(5_000),
        }
    )
    beta = Account(beta_config, frozenset({ETH}))
    runtime, together = run(trades, [alpha, beta])
    _, alone_alpha = run(trades, [alpha])
    _, alone_beta = run(trades, [beta])
    assert of(together, "alpha") == alone_alpha and alone_alpha
    assert of(together, "beta") == alone_beta and alone_beta
    assert {e.account for _, e in together} == {"alpha", "beta"}
    for topic, event in together:  # each account trades its own markets only
        if isinstance(event, AccountEvent):
            assert event.key == (BTC if event.account == "alpha" else ETH), (topic, event)
    assert set(runtime.portfolios) == {"alpha", "beta"}
    assert runtime.portfolios["beta"].initial_cash == Decimal(5_000)
    last = {e.account: e for _, e in together if isinstance(e, EquitySnapshot)}
    for name, portfolio in runtime.portfolios.items():
        assert last[name].equity == portfolio.equity
        assert last[name].cash + last[name].positions_value == last[name].equity


def test_one_account_over_every_market_is_main_and_the_same_as_before(trades: TradeBatch) -> None:
    """The default: ``main`` over every market; a config alone gives the same stages as a list of one."""
    _, single = run(trades, [Account(CONFIG)])
    assert single and {e.account for _, e in single} == {"main"}
    assert [type(s).__name__ for s in build_stages(CONFIG, {})] == [
        type(s).__name__ for s in build_stages([Account(CONFIG)], {})
    ]


def test_build_stages_refuses_what_cannot_be_one_run() -> None:
    with pytest.raises(ValueError, match="no account"):
        build_stages([], {})
    with pytest.raises(ValueError, match="accounts lists main more than once"):
        build_stages([Account(CONFIG), Account(CONFIG)], {})


def test_accounts_in_the_settings(tmp_path: Path) -> None:
    assert [(a.config.account, a.markets) for a in MamboSettings().account_configs()] == [("main", None)]
    toml = tmp_path / "mambo.toml"
    toml.write_text(
        '[engine]\nstrategies = ["sma_cross"]\ninitial_cash = "100000"\n'
        '[accounts.spot]\nmarkets = ["binance:BTC/USDT", "binance:ETH/USDT"]\n'
        '[accounts.small]\nmarkets = ["binance:SOL/USDT"]\ninitial_cash = "1000"\n'
        'strategies = ["rsi_reversion"]\nrisk = { max_open_positions = 1 }\n'
    )
    spot, small = load_settings(toml).account_configs()
    assert (spot.config.account, spot.markets, spot.config.initial_cash) == (
        "spot",
        frozenset({BTC, ETH}),
        Decimal(100_000),
    )
    assert spot.config.strategies == ("sma_cross",)
    assert (small.config.account, small.config.initial_cash, small.config.strategies) == (
        "small",
        Decimal(1000),
        ("rsi_reversion",),
    )
    assert small.config.risk.max_open_positions == 1


@pytest.mark.parametrize(
    ("accounts", "why"),
    [
        ({}, "at least one account"),
        ({"a b": {}}, "account id 'a b'"),
        ({"a": {"markets": [BTC]}, "b": {}}, "account b: with several accounts each names its markets"),
        ({"a": {"markets": [BTC]}, "b": {"markets": [ETH, BTC]}}, f"market {BTC} is in accounts a and b"),
        ({"a": {"markets": ["BTCUSDT"]}}, "exchange:symbol"),
        ({"a": {"markets": [BTC, BTC]}}, "markets lists"),
        ({"a": {"initial_cash": "0"}}, "greater than 0"),
    ],
)
def test_bad_accounts_are_refused_with_the_reason(accounts: dict[str, Any], why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        MamboSettings(accounts=accounts)


def test_the_run_s_markets_for_the_distributed_runtime() -> None:
    """What an account over every market waits for: --markets, else the accounts' own markets."""
    assert MamboSettings().run_markets() is None  # then the markets seen so far
    assert MamboSettings().run_markets(f"{BTC}, {ETH}") == [BTC, ETH]
    two = MamboSettings(accounts={"a": {"markets": [ETH]}, "b": {"markets": [BTC]}})
    assert two.run_markets() == sorted([BTC, ETH])
    with pytest.raises(ValueError, match="account a trades binance:ETH/USDT, not in --markets"):
        two.run_markets(BTC)
    with pytest.raises(ValueError, match="more than once"):
        MamboSettings().run_markets(f"{BTC},{BTC}")


def test_mambo_worker_refuses_a_bad_market_list_with_the_reason(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mambo.cli import app

    config = tmp_path / "mambo.toml"
    config.write_text('[accounts.spot]\nmarkets = ["binance:BTC/USDT"]\n')
    done = CliRunner().invoke(app, ["worker", "--config", str(config), "--markets", "binance:ETH/USDT"])
    assert done.exit_code == 2
    assert "account spot trades binance:BTC/USDT, not in --markets" in done.output
