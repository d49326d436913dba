"""``mambo faust-worker``: the pipeline's stages as a Faust app (:mod:`mambo.agents.app`).

The same stages, topics and per-market accounts as ``mambo worker`` (confluent-kafka transactions);
state in a Faust table with a changelog topic, the processing guarantee chosen with ``--guarantee``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command("faust-worker")
    def faust_worker(
        guarantee: Annotated[
            str, typer.Option(help="Faust processing guarantee: at_least_once or exactly_once.")
        ] = "exactly_once",
        batch_size: Annotated[int, typer.Option(help="Trades per agent batch, at most.")] = 5_000,
        idle_exit: Annotated[
            float | None, typer.Option(help="Exit after this many idle seconds (batch runs).")
        ] = None,
        prefix: Annotated[str, typer.Option(help="Namespace for topic and app names.")] = "",
        config: Annotated[Path | None, typer.Option("--config", help="TOML settings file.")] = None,
        data_dir: Annotated[
            Path | None, typer.Option("--data-dir", help="Where Mambo keeps its state.")
        ] = None,
    ) -> None:
        """Run the pipeline's stages as Faust agents on this worker's share of md.trades."""
        import asyncio
        import signal

        from mambo.agents.app import GUARANTEES, FaustPipeline
        from mambo.cli import _settings

        if guarantee not in GUARANTEES:
            typer.echo(f"error: --guarantee must be one of {', '.join(GUARANTEES)}", err=True)
            raise typer.Exit(2)
        settings = _settings(config, data_dir)
        bootstrap = settings.kafka.bootstrap or "127.0.0.1:9092"
        folder = (settings.data_dir / "faust").resolve()
        folder.mkdir(parents=True, exist_ok=True)
        pipeline = FaustPipeline(
            bootstrap,
            settings.engine.to_config(),
            folder,
            guarantee=guarantee,
            prefix=prefix,
            partitions=settings.kafka.partitions,
            batch_size=batch_size,
        )

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await pipeline.run(stop, idle_exit)

        asyncio.run(main())
        typer.echo(f"processed {pipeline.processed:,} trades, {pipeline.dead:,} dead letters")
