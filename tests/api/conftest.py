"""API fixtures: the pipeline's events on the bundled recording, a ClickHouse database holding them,
the app over it, and a real uvicorn server on loopback for WebSocket and browser tests.

The pipeline runs once per session (two Binance spot markets of the bundled recording, 1 s candles,
the four strategies: about 4 s); its events are both kept in memory (what the API must answer) and
written to ClickHouse through the real sink.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from clickhouse_connect.driver.client import Client
from fastapi import FastAPI

from mambo.api.analytics import readonly_client
from mambo.api.auth import Authorizer
from mambo.api.main import create_app
from mambo.api.service import SignalService
from mambo.commands.api import UVICORN
from mambo.connectors.clickhouse import ClickHouseSink, ensure_schema
from mambo.connectors.replay import DEMO_QUOTES, DEMO_TRADES, Recording, load_quotes, load_trades, replay
from mambo.core.market import Market
from mambo.core.stages import EngineConfig, StrategyStage
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import split_key
from mambo.settings import ApiSettings
from mambo.streams.embedded import EmbeddedRuntime, SinkObserver

MARKETS = ("binance:BTC/USDT", "binance:ETH/USDT")
STRATEGIES = ("sma_cross", "rsi_reversion", "macd_cross", "bollinger_breakout")


@dataclass
class Recorded:
    """Every (topic, event) the pipeline published, trade batches aside."""

    events: list[tuple[str, Any]] = field(default_factory=list)

    def __call__(self, topic: str, payload: Any) -> None:
        if not isinstance(payload, TradeBatch):
            self.events.append((topic, payload))

    def of(self, topic: str) -> list[Any]:
        return [e for t, e in self.events if t == topic]


def make_runtime() -> tuple[EmbeddedRuntime, Recording]:
    trades, dead_t = load_trades(DEMO_TRADES, set(MARKETS))
    quotes, dead_q = load_quotes(DEMO_QUOTES, set(MARKETS))
    recording = Recording(trades, quotes, dead_t + dead_q)
    config = EngineConfig(timeframes=("1s", "1m"), trading_timeframe="1s", strategies=STRATEGIES)
    markets = {k: Market.default(*split_key(k)) for k in recording.markets}
    return EmbeddedRuntime(config, markets, known_markets=recording.markets), recording


def run_pipeline(runtime: EmbeddedRuntime, recording: Recording, batch_size: int = 2_000) -> None:
    for batch, quotes in replay(recording, batch_size):
        runtime.ingest_quotes(quotes)
        runtime.ingest_trades(batch)


@dataclass
class Pipeline:
    recorded: Recorded
    runtime: EmbeddedRuntime
    database: str

    def aggregators(self) -> dict[str, Any]:
        stage = next(s for s in self.runtime.stages if isinstance(s, StrategyStage))
        return stage.aggregators


@pytest.fixture(scope="session")
def pipeline(clickhouse_client: Client) -> Iterator[Pipeline]:
    """The pipeline run once, its events recorded and sunk into a database of its own."""
    database = f"api_{uuid.uuid4().hex[:12]}"
    ensure_schema(clickhouse_client, database)
    runtime, recording = make_runtime()
    recorded = Recorded()
    sink = ClickHouseSink(clickhouse_client, database)
    runtime.observe(recorded)
    runtime.observe(SinkObserver(sink))
    run_pipeline(runtime, recording)
    sink.flush()
    yield Pipeline(recorded, runtime, database)
    clickhouse_client.command(f"DROP DATABASE IF EXISTS `{database}`")


def api_settings(**overrides: Any) -> ApiSettings:
    return ApiSettings(**{"auth": "open", **overrides})


@pytest.fixture(scope="session")
def analytics_client(clickhouse_dsn: str, pipeline: Pipeline) -> Iterator[Client]:
    """A read-only session on the same engine, as ``mambo api`` opens for SQL analytics."""
    client = readonly_client(clickhouse_dsn, pipeline.database, max_seconds=10, max_rows=100_000)
    yield client
    client.close()


@pytest.fixture
def service(clickhouse_client: Client, pipeline: Pipeline, analytics_client: Client) -> SignalService:
    """A service over the pipeline's database (the live view empty: reads come from ClickHouse)."""
    return SignalService(clickhouse_client, pipeline.database, api_settings(), analytics=analytics_client)


@pytest.fixture
def open_app(service: SignalService) -> FastAPI:
    return create_app(service, Authorizer(None))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    """A uvicorn server in a thread; ``publish`` hands an event to it as a Kafka consumer thread would."""

    service: SignalService
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"

    def publish(self, topic: str, payload: Any) -> None:
        self.service.on_event_threadsafe(topic, payload)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the server's loop and wait for its result (to read the hub's state safely)."""
        loop = self.service.hub.loop
        assert loop is not None

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(5)


def start_server(app: FastAPI, service: SignalService) -> LiveServer:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **UVICORN))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    return LiveServer(service, f"http://127.0.0.1:{port}", server, thread)


def stop_server(live: LiveServer) -> None:
    live.server.should_exit = True
    live.thread.join(10)
