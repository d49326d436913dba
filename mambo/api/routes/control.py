"""Control of the running pipeline (admin scope): commands, and their answers."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from mambo.api.deps import REFUSALS, Admin, Service
from mambo.schemas.events import ControlAction, ControlCommand, ControlResult

router = APIRouter(tags=["control"], responses=REFUSALS)


class ControlRequest(BaseModel):
    """A command (see ``mambo ctl``): the strategy for start, stop, pause and set_params; ``market``
    (``exchange:symbol``) or none for every market of the account; ``params`` for set_params (and
    ``{"on": false}`` to end reduce_only)."""

    action: ControlAction
    account: str = Field("main", min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.-]+$")
    strategy: str = Field("", max_length=200)
    market: str = Field("", max_length=200)
    params: dict[str, Any] = Field(default_factory=dict)
    why: str = Field("", max_length=1000)


class ControlAccepted(BaseModel):
    command_id: str
    version: int
    markets: int = Field(description="the markets the command went to (each answers a strategy command)")
    status: Literal["sent"] = "sent"


@router.post(
    "/control",
    status_code=202,
    response_model=ControlAccepted,
    responses={503: {"description": "no running pipeline to control"}},
)
def control(service: Service, key: Admin, request: ControlRequest) -> Any:
    """Send a command to the running pipeline; its answers come on ``GET /control/results`` (and the
    WebSocket's ``control.results``). A command that cannot apply anywhere is refused here (400)."""
    from mambo.core.control import check

    controller = service.controller
    if controller is None:
        return JSONResponse({"detail": "no running pipeline to control (mambo api --demo, or Kafka)"}, 503)
    exchange, _, symbol = request.market.partition(":")
    now = time.time_ns()
    try:
        cmd = ControlCommand(
            event_id=uuid.uuid4().hex,
            ts_event=now,
            ts_init=now,
            command_id=uuid.uuid4().hex,
            account=request.account,
            action=request.action,
            strategy=request.strategy,
            exchange=exchange,
            symbol=symbol,
            params=json.dumps(request.params, sort_keys=True),
            version=1,
            who=key.name or key.id,
            why=request.why,
        )
    except ValueError as e:
        return JSONResponse({"detail": str(e)}, 400)
    problem = check(cmd)
    if problem is not None:
        return JSONResponse({"detail": problem}, 400)
    cmd = cmd.model_copy(update={"version": controller.next_version(cmd.account, cmd.strategy)})
    try:
        markets = controller.send(cmd)
    except ValueError as e:
        return JSONResponse({"detail": str(e)}, 400)
    return ControlAccepted(command_id=cmd.command_id, version=cmd.version, markets=markets)


@router.get("/control/results", response_model=list[ControlResult])
def control_results(
    service: Service,
    _: Admin,
    command_id: str | None = Query(None, max_length=64, description="one command's answers"),
) -> list[ControlResult]:
    """The latest answers to commands (newest last), from the live feed."""
    return [r for r in service.control_results() if command_id is None or r.command_id == command_id]
