"""``mambo ctl``: send a control command to the distributed runtime and print its answer.

The command goes to the ``control`` topic and in line with each market it concerns (see
:mod:`mambo.core.control`); the workers apply it where the markets' streams were, and answer on
``control.results``, which ``mambo ctl`` reads back (``--wait`` seconds) and prints. Its version is the
last one sent for the account and strategy (read from the compacted ``control`` topic) plus one.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["register"]

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML settings file (see README).")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Where Mambo keeps its state.")]
ACTIONS = ("start", "stop", "pause", "set_params", "halt", "resume", "reduce_only", "force_exit")


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _read(bootstrap: str, name: str, prefix: str, timeout: float = 10.0) -> list[Any]:
    """Every event of topic ``name`` (one partition, small: control and its answers), to its end now."""
    from confluent_kafka import Consumer, TopicPartition

    from mambo.schemas.topics import by_name
    from mambo.streams.kafka.codec import decode

    model, topic = by_name(name), prefix + name
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"mambo-ctl-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "log_level": 0,
        }
    )
    out: list[Any] = []
    try:
        md = c.list_topics(topic, timeout=timeout)
        if topic not in md.topics or md.topics[topic].error is not None:
            return []
        for p in md.topics[topic].partitions:
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            if high <= low:
                continue
            c.assign([TopicPartition(topic, p, low)])
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                m = c.poll(0.5)
                if m is None:
                    if c.position([TopicPartition(topic, p)])[0].offset >= high:
                        break
                    continue
                if m.error() is None:
                    out.append(decode(model, m.value(), m.headers()))
                    if (m.offset() or 0) >= high - 1:
                        break
    finally:
        c.close()
    return out


def register(app: typer.Typer) -> None:
    @app.command()
    def ctl(
        action: Annotated[str, typer.Argument(help=" | ".join(ACTIONS))],
        account: Annotated[str, typer.Option(help="The account the command acts on.")] = "main",
        strategy: Annotated[str, typer.Option(help="start, stop, pause, set_params: the strategy.")] = "",
        market: Annotated[
            str, typer.Option(help="exchange:symbol; empty: every market of the account.")
        ] = "",
        param: Annotated[
            list[str] | None, typer.Option(help="set_params: name=value (JSON values), repeatable.")
        ] = None,
        on: Annotated[bool, typer.Option(help="reduce_only: on (default) or --no-on to end it.")] = True,
        who: Annotated[str, typer.Option(help="Who sends it (for the record).")] = "",
        why: Annotated[str, typer.Option(help="Why (for the record).")] = "",
        markets: Annotated[
            str, typer.Option(help="The account's markets when the settings do not name them.")
        ] = "",
        wait: Annotated[float, typer.Option(help="Seconds to wait for the answers (0: do not wait).")] = 30.0,
        prefix: Annotated[str, typer.Option(help="Namespace for topic names.")] = "",
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Start, stop or pause a strategy, change its parameters, halt or resume an account's entries,
        put it in reduce-only mode, or close its positions, in the running workers; prints the answers."""
        import getpass

        from mambo.cli import _settings
        from mambo.commands.kafka import _bootstrap
        from mambo.core.control import check, expand
        from mambo.schemas.events import ControlCommand
        from mambo.schemas.topics import CONTROL, CONTROL_RESULTS
        from mambo.streams.kafka.producer import KafkaPublisher

        if action not in ACTIONS:
            typer.echo(f"error: action {action!r}: one of {', '.join(ACTIONS)}", err=True)
            raise typer.Exit(2)
        settings = _settings(config, data_dir)
        params: dict[str, Any] = {}
        for p in param or []:
            name, sep, value = p.partition("=")
            if not sep or not name:
                typer.echo(f"error: --param {p!r}: name=value", err=True)
                raise typer.Exit(2)
            params[name.strip()] = _value(value.strip())
        if action == "reduce_only":
            params = {"on": on}
        exchange, _, symbol = market.partition(":")
        bootstrap = _bootstrap(settings)
        key = f"{account}/{strategy}"
        sent = [c for c in _read(bootstrap, CONTROL.name, prefix) if c.key == key]
        now = time.time_ns()
        try:
            cmd = ControlCommand(
                event_id=uuid.uuid4().hex,
                ts_event=now,
                ts_init=now,
                command_id=uuid.uuid4().hex,
                account=account,
                action=action,
                strategy=strategy,
                exchange=exchange,
                symbol=symbol,
                params=json.dumps(params, sort_keys=True),
                version=max((c.version for c in sent), default=0) + 1,
                who=who or getpass.getuser(),
                why=why,
            )
        except ValueError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from e
        problem = check(cmd)
        if problem is not None:
            typer.echo(f"error: {problem}", err=True)
            raise typer.Exit(2)
        own = next((a.markets for a in settings.account_configs() if a.config.account == account), None)
        keys = sorted(own) if own else [k.strip() for k in markets.split(",") if k.strip()]
        if not cmd.market and not keys:
            typer.echo(
                f"error: account {account} names no markets in the settings: give --market or --markets",
                err=True,
            )
            raise typer.Exit(2)
        with KafkaPublisher(bootstrap, prefix) as pub:
            pub.publish_control(cmd, keys)
        copies = len(expand(cmd, keys))
        typer.echo(f"sent {action} (version {cmd.version}) to {copies} market(s): command {cmd.command_id}")
        if wait <= 0:
            return
        deadline = time.monotonic() + wait
        answers: list[Any] = []
        while time.monotonic() < deadline:
            answers = [
                r for r in _read(bootstrap, CONTROL_RESULTS.name, prefix) if r.command_id == cmd.command_id
            ]
            account_wide = action not in ("start", "stop", "pause", "set_params", "force_exit")
            if answers and (account_wide or len(answers) >= copies):
                break
            time.sleep(0.5)
        if not answers:
            typer.echo(f"no answer in {wait:.0f} s: is a worker running?", err=True)
            raise typer.Exit(1)
        for r in answers:
            where = f"{r.exchange}:{r.symbol}" if r.symbol else account
            reason = f": {r.reason}" if r.reason else ""
            typer.echo(f"{where}: {r.status}{reason}  params {r.params}")
        if any(r.status == "rejected" for r in answers):
            raise typer.Exit(1)
