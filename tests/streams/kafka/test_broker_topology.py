"""``mambo kafka start|status|stop`` on a broker of its own, ``mambo topology plan|apply`` on the
session's broker, and the codec (no broker). Cost: ~20 s (one extra broker start)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from mambo.connectors.replay import load_trades
from mambo.schemas.events import Order, make_id
from mambo.schemas.topics import INDICATORS, ORDERS, POSITIONS, TRADES
from mambo.streams.kafka import topology
from mambo.streams.kafka.broker import free_port
from mambo.streams.kafka.codec import DecodeError, decode, decode_trades, encode, encode_trades, headers_for


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mambo.cli", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.kafka
def test_kafka_start_status_stop(tmp_path: Path) -> None:
    env = {"MAMBO_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}
    d = str(tmp_path)
    assert cli("kafka", "status", "--data-dir", d, env=env).returncode == 1
    started = cli("kafka", "start", "--data-dir", d, env=env)
    try:
        assert started.returncode == 0, started.stderr
        assert "kafka running at" in started.stdout
        status = cli("kafka", "status", "--data-dir", d, env=env)
        assert status.returncode == 0 and "answering" in status.stdout
        again = cli("kafka", "start", "--data-dir", d, env=env)
        assert again.returncode == 1 and "already runs" in again.stderr
        assert (tmp_path / "kafka" / "broker.log").stat().st_size > 0
    finally:
        stopped = cli("kafka", "stop", "--data-dir", d, env=env)
    assert stopped.returncode == 0 and "kafka stopped" in stopped.stdout
    assert cli("kafka", "status", "--data-dir", d, env=env).returncode == 1


@pytest.mark.kafka
def test_topology_plan_apply_is_idempotent_and_repairs_drift(bootstrap: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    admin = AdminClient({"bootstrap.servers": bootstrap})
    wanted = topology.wanted_topics(6, prefix)
    first = topology.plan(admin, 6, prefix)
    assert [c.action for c in first] == ["create"] * len(wanted)
    assert topology.apply(admin, 6, prefix) == first
    assert topology.plan(admin, 6, prefix) == []  # idempotent
    md = admin.list_topics(timeout=10).topics
    assert len(md[prefix + TRADES.name].partitions) == 6 and len(md[prefix + "equity"].partitions) == 1
    assert len(md[prefix + INDICATORS.name].partitions) == 6 and len(md[prefix + ORDERS.name].partitions) == 1
    cfg = admin.describe_configs([ConfigResource("topic", prefix + POSITIONS.name)])
    entries = next(iter(cfg.values())).result()
    assert entries["cleanup.policy"].value == "compact"

    # drift: retention changed by hand, more partitions wanted
    entry = ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)
    res = ConfigResource("topic", prefix + ORDERS.name, incremental_configs=[entry])
    admin.incremental_alter_configs([res])[res].result()
    deadline = time.monotonic() + 10
    while ("set-config", ORDERS.name) not in (
        changes := {(c.action, c.topic.removeprefix(prefix)) for c in topology.plan(admin, 8, prefix)}
    ):  # the broker serves the altered config once its metadata log has it
        assert time.monotonic() < deadline, changes
        time.sleep(0.2)
    assert ("set-config", ORDERS.name) in changes
    assert ("add-partitions", INDICATORS.name) in changes  # keyed per market
    assert ("add-partitions", ORDERS.name) not in changes  # one partition whatever kafka.partitions
    assert ("refuse", TRADES.name) in changes  # moving keys would strand the worker's state
    topology.apply(admin, 8, prefix)
    deadline = time.monotonic() + 10
    while (left := {c.action for c in topology.plan(admin, 8, prefix)}) != {"refuse"}:
        assert time.monotonic() < deadline, left  # configs show once the metadata log has them
        time.sleep(0.2)


def test_topology_cli_plan(bootstrap: str) -> None:
    out = cli(
        "topology", "plan", "--prefix", f"t{uuid.uuid4().hex[:8]}.", env={"MAMBO_KAFKA_BOOTSTRAP": bootstrap}
    )
    assert out.returncode == 0, out.stderr
    assert "create" in out.stdout and "md.trades" in out.stdout and "topic changes to apply" in out.stdout
    assert "account.feed" in out.stdout  # the account stages' input, keyed by account
    assert "market stages: md.trades and md.candles, 6 partitions keyed by market" in out.stdout
    assert "account stages: account.feed, 6 partitions keyed by account (1 account: main)" in out.stdout


def test_codec_round_trips_events_and_trades() -> None:
    order = Order(
        event_id=make_id("o"),
        ts_event=1,
        ts_init=2,
        exchange="binance",
        symbol="BTC/USDT",
        client_order_id="c",
        strategy="s",
        side="buy",
        order_type="market",
        qty=Decimal("0.00012345678901234567"),
    )
    key, value = encode(ORDERS, order)
    assert key == "binance:BTC/USDT"
    assert decode(ORDERS, value, headers_for(Order)) == order  # Decimal exact through JSON
    with pytest.raises(DecodeError, match="schema version"):
        decode(ORDERS, value, [("mambo-schema", b"2")])
    with pytest.raises(DecodeError, match="not a Order"):
        decode(ORDERS, b'{"qty": "x"}')

    batch, _ = load_trades()
    piece = batch.slice(0, 500)
    msgs = list(encode_trades(piece))
    for (k, v), trade in zip(msgs, piece.to_trades(), strict=True):
        assert k == trade.key and TRADES.model.model_validate_json(v) == trade  # same as pydantic's
    back, ts_init, bad = decode_trades([v for _, v in msgs])
    assert bad == [] and (ts_init == 0).all()
    assert back.columns().keys() == piece.columns().keys()
    for name, col in piece.columns().items():
        assert (back.columns()[name] == col).all(), name
