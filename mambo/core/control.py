"""Control of a running pipeline: the commands of the ``control`` topic, as the stages apply them.

A :class:`~mambo.schemas.events.ControlCommand` acts on one account: on one of its strategies (start,
stop, pause, set_params: the market stages apply them, :class:`StrategyControl`), or on the account
(halt, resume, reduce_only, force_exit: the account stage applies them). Each is answered by a
:class:`~mambo.schemas.events.ControlResult`, applied or rejected with the reason, never an exception.

Where a command takes effect: in line with the market's stream. A runtime puts a copy of the command
in each market it concerns (one market, or every market of the account: :func:`expand`) after the
trades it has taken so far, so the strategy changes from the market's next candle on, and an account
command enters the account's event-time merge right after the market's last trade (time ``last trade
+ 1 ns``). On Kafka the copy is a record in line on the market's md.trades partition: a replay of the
topics applies it at the same point, and so gives the same orders.

* ``stop`` drops the strategy's state, it gives holds; ``start`` starts it again, warming up anew;
* ``pause`` keeps it running on every bar (its state stays warm) and gives holds; ``start`` resumes it;
* ``set_params`` checks the new parameters by building the strategy with them (its own validation:
  types, ranges) and replaces it, warming up anew; indicators it needs that the set lacks start then;
* ``halt`` refuses entries until ``resume`` (the kill switch's state); ``reduce_only`` with
  ``{"on": true}`` (the default) refuses entries until ``{"on": false}``; ``force_exit`` closes the
  market's position at market (through risk, as a strategy's exit would).

``version`` increases per account and strategy (per account for account commands): one at or below
the version applied is stale and refused, so a command delivered twice or out of order acts once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from mambo.core.strategies import Strategy, load_strategy
from mambo.schemas.events import STRATEGY_ACTIONS, ControlCommand, ControlResult, make_id, split_key

__all__ = ["StrategyControl", "check", "command_params", "expand", "result"]

Status = Literal["running", "paused", "stopped"]


def command_params(cmd: ControlCommand) -> dict[str, Any]:
    """The command's ``params`` as a dict; ValueError when they are not a JSON object."""
    try:
        params = json.loads(cmd.params or "{}")
    except ValueError as e:
        raise ValueError(f"params are not JSON: {e}") from e
    if not isinstance(params, dict):
        raise ValueError(f"params must be a JSON object, got {cmd.params!r}")
    return params


def check(cmd: ControlCommand) -> str | None:
    """Why a command cannot be applied anywhere (before it is sent), or None."""
    if cmd.action in STRATEGY_ACTIONS and not cmd.strategy:
        return f"{cmd.action} names a strategy"
    if cmd.action not in STRATEGY_ACTIONS and cmd.strategy:
        return f"{cmd.action} acts on the account, not on a strategy"
    if bool(cmd.exchange) != bool(cmd.symbol):
        return "a market is an exchange and a symbol, or neither (every market of the account)"
    try:
        params = command_params(cmd)
    except ValueError as e:
        return str(e)
    if cmd.action == "set_params" and not params:
        return "set_params with no parameters"
    if cmd.action == "reduce_only" and set(params) - {"on"}:
        return f"reduce_only takes only 'on', got {', '.join(sorted(params))}"
    if cmd.action not in ("set_params", "reduce_only") and params:
        return f"{cmd.action} takes no parameters"
    return None


def _as_declared(ref: str, params: dict[str, Any]) -> dict[str, Any]:
    """Whole numbers given for parameters the strategy declares as floats, as floats (JSON, and so a
    browser, cannot tell 30.0 from 30); everything else as given, for the strategy to judge."""
    import dataclasses

    from mambo.core.strategies import StrategyConfigError, strategy_class

    try:
        cls = strategy_class(ref)
    except StrategyConfigError:
        return params
    if not dataclasses.is_dataclass(cls):
        return params
    floats = {f.name for f in dataclasses.fields(cls) if isinstance(f.default, float)}
    return {
        k: float(v) if k in floats and isinstance(v, int) and not isinstance(v, bool) else v
        for k, v in params.items()
    }


def expand(cmd: ControlCommand, markets: list[str]) -> list[ControlCommand]:
    """The command's copy for each market it concerns: its own, else each of ``markets``."""
    if cmd.market:
        return [cmd]
    out = []
    for key in markets:
        exchange, symbol = split_key(key)
        out.append(cmd.model_copy(update={"exchange": exchange, "symbol": symbol}))
    return out


def result(
    cmd: ControlCommand, status: Literal["applied", "rejected"], reason: str = "", params: str = "{}"
) -> ControlResult:
    return ControlResult(
        event_id=make_id("control_result", cmd.command_id, cmd.market, status),
        ts_event=cmd.ts_event,
        ts_init=cmd.ts_init,
        command_id=cmd.command_id,
        account=cmd.account,
        action=cmd.action,
        strategy=cmd.strategy,
        exchange=cmd.exchange,
        symbol=cmd.symbol,
        status=status,
        reason=reason,
        params=params,
        version=cmd.version,
        who=cmd.who,
    )


@dataclass
class StrategyControl:
    """One strategy of an account in one market, as commands left it: its status, the parameters it
    runs with (the configuration's, changed by ``set_params``), the last version applied."""

    #: how the configuration names it (a registered name or ``module:Class``), and its own name (the
    #: one on its signals, and the one commands give)
    ref: str
    name: str
    params: dict[str, Any]
    status: Status = "running"
    version: int = 0
    strategy: Strategy | None = field(default=None, repr=False)

    def build(self) -> Strategy:
        """The strategy instance (made anew after a stop or a parameter change)."""
        if self.strategy is None:
            self.strategy = load_strategy(self.ref, **self.params)
        return self.strategy

    def apply(self, cmd: ControlCommand) -> tuple[ControlResult, Strategy | None]:
        """Apply ``cmd``; its result, and the new instance when one was built (its indicators may be
        new to the set)."""
        if cmd.version <= self.version:
            return result(cmd, "rejected", f"stale: version {cmd.version}, {self.version} applied"), None
        problem = check(cmd)
        if problem is not None:
            return result(cmd, "rejected", problem, self._shown()), None
        built: Strategy | None = None
        if cmd.action == "set_params":
            params = {**self.params, **_as_declared(self.ref, command_params(cmd))}
            try:
                built = load_strategy(self.ref, **params)
            except Exception as e:  # the strategy's own validation: types, ranges, unknown names
                return result(cmd, "rejected", f"invalid parameters: {e}", self._shown()), None
            self.params, self.strategy = params, built
        elif cmd.action == "stop":
            self.status, self.strategy = "stopped", None
        elif cmd.action == "pause":
            self.status = "paused"
        elif cmd.action == "start":
            if self.status == "stopped":
                built = self.build()
            self.status = "running"
        self.version = cmd.version
        return result(cmd, "applied", "", self._shown()), built

    def _shown(self) -> str:
        return json.dumps(self.params, sort_keys=True, default=str)
