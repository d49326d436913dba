"""Control through the API: where ``POST /control`` sends a command.

A :class:`Controller` takes a :class:`~mambo.schemas.events.ControlCommand` to the running pipeline:
:class:`EmbeddedController` into the embedded runtime of ``mambo api --demo`` (in its event loop,
between two batches of the replay: the command acts where the markets' streams are then), and
:class:`KafkaController` to the distributed runtime (the ``control`` topic and a copy in line on each
market's md.trades partition, as ``mambo ctl`` sends it). The answers come back on
``control.results`` through the API's live feed (:meth:`~mambo.api.service.SignalService.on_event`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from mambo.schemas.events import ControlCommand

__all__ = ["Controller", "EmbeddedController", "KafkaController"]


class Controller(Protocol):
    def send(self, command: ControlCommand) -> int:
        """Send the command; the number of markets it goes to."""
        ...

    def next_version(self, account: str, strategy: str) -> int: ...


class _Versions:
    """The last version sent per account and strategy, starting from ``known`` (what was sent before)."""

    def __init__(self, known: dict[str, int] | None = None) -> None:
        self._last = dict(known or {})
        self._lock = threading.Lock()

    def next(self, account: str, strategy: str) -> int:
        with self._lock:
            key = f"{account}/{strategy}"
            self._last[key] = self._last.get(key, 0) + 1
            return self._last[key]


class EmbeddedController:
    """Commands into an :class:`~mambo.streams.embedded.EmbeddedRuntime`. ``loop``: the event loop the
    runtime runs in (``mambo api --demo``'s replay), where the command is handed over between two of its
    batches (a request handler's thread never touches the runtime); None: call it directly."""

    def __init__(self, runtime: Any, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.runtime = runtime
        self.loop = loop
        self._versions = _Versions()

    def next_version(self, account: str, strategy: str) -> int:
        return self._versions.next(account, strategy)

    def send(self, command: ControlCommand) -> int:
        from mambo.core.control import expand

        if self.loop is None:
            self.runtime.control(command)
        else:

            async def hand_over() -> None:
                self.runtime.control(command)

            asyncio.run_coroutine_threadsafe(hand_over(), self.loop).result(timeout=30)
        return len(expand(command, self.runtime._account_markets(command.account)))


class KafkaController:
    """Commands to the distributed runtime, as ``mambo ctl`` sends them; ``markets``: each account's
    markets from the settings (an account over every market needs the command to name one)."""

    def __init__(self, bootstrap: str, markets: Mapping[str, Sequence[str]], prefix: str = "") -> None:
        self.bootstrap, self.markets, self.prefix = bootstrap, markets, prefix
        self._versions: _Versions | None = None

    def next_version(self, account: str, strategy: str) -> int:
        if self._versions is None:  # what was sent before, from the compacted control topic
            from mambo.commands.ctl import _read
            from mambo.schemas.topics import CONTROL

            known: dict[str, int] = {}
            for c in _read(self.bootstrap, CONTROL.name, self.prefix):
                known[c.key] = max(known.get(c.key, 0), c.version)
            self._versions = _Versions(known)
        return self._versions.next(account, strategy)

    def send(self, command: ControlCommand) -> int:
        from mambo.core.control import expand
        from mambo.streams.kafka.producer import KafkaPublisher

        markets = list(self.markets.get(command.account, ()))
        if not command.market and not markets:
            raise ValueError(f"account {command.account} names no markets in the settings: name the market")
        with KafkaPublisher(self.bootstrap, self.prefix) as pub:
            pub.publish_control(command, markets)
        return len(expand(command, markets))
