"""``mambo api`` (the signal API, optionally with the demo pipeline in the same process) and
``mambo keys`` (create, list, revoke API keys)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from mambo.api.auth import KeyStore
    from mambo.settings import MamboSettings

__all__ = ["UVICORN", "keys_path", "register"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")
DEMO_STRATEGIES = "sma_cross,rsi_reversion,macd_cross,bollinger_breakout"
#: uvicorn options for the API. permessage-deflate off: it compresses every frame once per client
#: (a profile of the fan-out showed zlib as the largest cost of a send after the socket itself), and
#: signal frames are small.
UVICORN: dict[str, Any] = {"ws_per_message_deflate": False}
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML settings file (see README).")]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Where the embedded ClickHouse and the key file live.")
]


def keys_path(settings: MamboSettings) -> Path:
    """The key file: ``api.keys_file``, else ``<data_dir>/api_keys.json``."""
    return settings.api.keys_file or settings.data_dir / "api_keys.json"


def _store(config: Path | None, data_dir: Path | None) -> KeyStore:
    from mambo.api.auth import KeyStore
    from mambo.cli import _settings

    return KeyStore(keys_path(_settings(config, data_dir)))


async def serve(
    settings: MamboSettings,
    open_access: bool,
    demo: bool = False,
    speed: float = 0.0,
    symbols: str | None = None,
    prefix: str = "",
) -> int:
    """Serve the API until stopped; with ``demo``, replay the recording through the pipeline in this
    process (chdb allows one process per data folder, so the API must live with the pipeline);
    otherwise, with ``kafka.bootstrap`` set (``MAMBO_KAFKA_BOOTSTRAP``), the live view (WebSocket,
    latest signals) comes from the Kafka topics (:class:`~mambo.api.kafka_feed.KafkaFeed`) and ``POST
    /control`` goes to them (``prefix``: the topics' namespace, as ``mambo up --prefix`` made them)."""
    import uvicorn

    from mambo.api.analytics import readonly_client
    from mambo.api.auth import KeyStore
    from mambo.api.main import create_app
    from mambo.api.service import SignalService
    from mambo.connectors.clickhouse import connect, ensure_schema
    from mambo.runner import run_demo

    api = settings.api
    db = settings.clickhouse.database
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    client = connect(settings.clickhouse_dsn, db)
    ensure_schema(client, db)
    analytics = readonly_client(settings.clickhouse_dsn, db, api.query_max_seconds, api.query_max_rows)
    service = SignalService(client, db, api, analytics=analytics)
    store = None if open_access else KeyStore(keys_path(settings))
    if store is not None and not store.list_keys():
        typer.echo(f"note: no API keys in {store.path} yet: every request gets 401 until `mambo keys create`")
    feed = None
    if settings.kafka.bootstrap and not demo:  # distributed mode: the live view comes from Kafka
        from mambo.api.kafka_feed import KafkaFeed

        feed = KafkaFeed(settings.kafka.bootstrap, service.on_event_threadsafe, prefix=prefix)
        typer.echo(f"live feed: Kafka at {settings.kafka.bootstrap}")
    app = create_app(service, store, feed)
    server = uvicorn.Server(uvicorn.Config(app, host=api.host, port=api.port, log_level="warning", **UVICORN))
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if task.done():  # e.g. the port is taken; uvicorn has said why
        return 1
    where = f"http://{api.host}:{api.port}"
    typer.echo(f"API at {where}  (dashboard {where}/ , docs {where}/docs)")
    if open_access:
        typer.secho(
            "WARNING: the API is OPEN: no API key required, every scope allowed (local use only).",
            fg="red",
            bold=True,
            err=True,
        )
    if settings.kafka.bootstrap and not demo:  # POST /control: to the workers, as mambo ctl sends it
        from mambo.api.control import KafkaController

        own = {a.config.account: sorted(a.markets or ()) for a in settings.account_configs()}
        service.controller = KafkaController(settings.kafka.bootstrap, own, prefix)
    if demo:
        from mambo.api.control import EmbeddedController

        def control(runtime: Any) -> None:  # called in the replay's loop: commands are handed over there
            service.controller = EmbeddedController(runtime, asyncio.get_running_loop())

        code = await run_demo(
            settings, symbols=symbols, speed=speed, observers=[service.on_event], on_runtime=control
        )
        if code:
            server.should_exit = True
        typer.echo(f"replay done; the API keeps serving at {where} (Ctrl-C to stop)")
    await task
    return 0


def register(app: typer.Typer) -> None:
    keys = typer.Typer(help="API keys: create, list, revoke (stored hashed in the key file).")
    app.add_typer(keys, name="keys")

    @app.command("api")
    def api_command(
        host: Annotated[str | None, typer.Option(help="Interface to listen on (default 127.0.0.1).")] = None,
        port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
        demo: Annotated[
            bool, typer.Option("--demo", help="Also replay the bundled recording through the pipeline.")
        ] = False,
        open_access: Annotated[
            bool | None,
            typer.Option(
                "--open/--keys",
                help="Open access without keys (loopback only; the default with --demo) or keys required.",
            ),
        ] = None,
        speed: Annotated[float, typer.Option(help="With --demo: replay speed, 0 = flat out.")] = 1.0,
        symbols: Annotated[str | None, typer.Option(help="With --demo: comma-separated markets.")] = None,
        timeframe: Annotated[
            str | None, typer.Option(help="The trading timeframe (with --demo: 1s unless given).")
        ] = None,
        strategies: Annotated[
            str | None, typer.Option(help="Comma-separated strategies (with --demo: the demo's four).")
        ] = None,
        prefix: Annotated[
            str, typer.Option(help="On Kafka: the namespace of topic names (as given to mambo up / worker).")
        ] = "",
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Serve the signal API, the WebSocket and the dashboard (with --demo: on a live replay)."""
        from mambo.cli import _settings, demo_timeframes

        if demo:
            timeframe = timeframe or "1s"
            strategies = strategies or DEMO_STRATEGIES
        engine: dict[str, Any] = {"strategies": strategies}
        if timeframe:
            engine |= {"trading_timeframe": timeframe, "timeframes": demo_timeframes(timeframe)}
        settings = _settings(config, data_dir, **engine)
        if host is not None:
            settings.api.host = host
        if port is not None:
            settings.api.port = port
        is_open = open_access if open_access is not None else (demo or settings.api.auth == "open")
        if is_open and settings.api.host not in LOOPBACK:
            typer.echo(f"error: open access is for loopback only, not {settings.api.host}", err=True)
            raise typer.Exit(2)
        try:
            code = asyncio.run(serve(settings, is_open, demo, speed, symbols, prefix))
        except KeyboardInterrupt:
            code = 0
        except Exception as exc:  # ClickHouse unreachable, a locked chdb folder: say why, no traceback
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        raise typer.Exit(code)

    @keys.command("create")
    def keys_create(
        scopes: Annotated[
            str, typer.Option(help="Comma-separated: signals:read, analytics:read, admin.")
        ] = "signals:read",
        tier: Annotated[
            str, typer.Option(help="basic (60/min), pro (600/min), enterprise (6000/min).")
        ] = "basic",
        name: Annotated[str, typer.Option(help="A label for the key.")] = "",
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Create a key and print it once: only its hash is kept."""
        store = _store(config, data_dir)
        try:
            key = store.create([s.strip() for s in scopes.split(",") if s.strip()], tier, name)
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        typer.echo(key)
        typer.echo(f"(stored hashed in {store.path}; this is the only time the key is shown)", err=True)

    @keys.command("list")
    def keys_list(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
        """The keys' ids, names, scopes and tiers (never the keys)."""
        for k in _store(config, data_dir).list_keys():
            typer.echo(f"{k.id}  {k.tier:<10}  {','.join(k.scopes):<30}  {k.name}")

    @keys.command("revoke")
    def keys_revoke(
        key_id: Annotated[str, typer.Argument(help="The id (the part after mambo_).")],
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Delete a key: requests with it get 401 from then on."""
        if not _store(config, data_dir).revoke(key_id):
            typer.echo(f"error: no key with id {key_id!r}", err=True)
            raise typer.Exit(1)
        typer.echo(f"revoked {key_id}")
