"""The embedded runtime's in-process event bus: the registry's topic names, depth-first dispatch.

Publishing an event hands it to every observer (sinks, the API hub, progress counters) and then to
every stage that reads the topic, in registration order; whatever a stage returns is published in
turn before the next stage runs. So one input event is processed to the end, through every stage,
before the next: the order of a live run and of a backtest are the same by construction.

Errors: a stage that raises does not stop the run. The message goes to ``<topic>.dlq`` as a
:class:`~mambo.schemas.events.DeadLetter` with the stage and the reason, the failure is logged and
counted, and dispatch goes on with the next stage and the next message.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import structlog

from mambo.core.stages import Stage
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import DeadLetter, Event, make_id
from mambo.schemas.topics import DLQ_SUFFIX, dlq_topic

__all__ = ["EventBus", "Observer"]

log = structlog.get_logger("mambo.bus")
Observer = Callable[[str, Any], None]


def _describe(payload: Any) -> tuple[str, str, int]:
    """(key, JSON payload, ts_event) of a message, for its dead letter."""
    if isinstance(payload, TradeBatch):
        first = int(payload.ts[0]) if len(payload) else 0
        return ",".join(payload.keys), json.dumps({"trades": len(payload), "first_ts": first}), first
    if isinstance(payload, Event):
        return str(getattr(payload, "key", "")), payload.model_dump_json(), payload.ts_event
    return "", json.dumps(repr(payload)), 0


class EventBus:
    def __init__(self) -> None:
        self._stages: dict[str, list[Stage]] = defaultdict(list)
        self._observers: list[Observer] = []
        self.counts: Counter[str] = Counter()

    def add_stage(self, stage: Stage) -> None:
        """Deliver the topics of ``stage.inputs`` to it, each once (a topic listed twice is refused: it
        would hand the stage every message twice)."""
        if len(set(stage.inputs)) != len(stage.inputs):
            raise ValueError(f"stage {stage.name} lists an input topic twice: {stage.inputs}")
        if any(stage in self._stages[t] for t in stage.inputs):
            raise ValueError(f"stage {stage.name} is already subscribed")
        for topic in stage.inputs:
            subs = self._stages[topic]
            if stage.splits_batches and subs:
                raise ValueError(f"splitting stage {stage.name} must be the first reader of {topic}")
            subs.append(stage)

    def observe(self, observer: Observer) -> None:
        """Call ``observer(topic, payload)`` for every message on every topic, before the stages."""
        self._observers.append(observer)

    def publish(self, topic: str, payload: Any) -> None:
        self.counts[topic] += len(payload) if isinstance(payload, TradeBatch) else 1
        for obs in self._observers:
            obs(topic, payload)
        stages = self._stages.get(topic)
        if not stages:
            return
        if isinstance(payload, TradeBatch) and stages[0].splits_batches:
            self._publish_split(topic, payload, stages[0], stages[1:])
        else:
            self._deliver(stages, topic, payload)

    def _publish_split(self, topic: str, batch: TradeBatch, splitter: Stage, rest: list[Stage]) -> None:
        try:
            positioned = splitter.split(batch)  # type: ignore[attr-defined]
        except Exception as exc:  # an operator fault must not stop the pipeline
            self.dead_letter(topic, batch, f"{splitter.name}: {exc!r}")
            positioned = []
        prev = 0
        for idx, out_topic, event in positioned:
            if idx > prev:
                self._deliver(rest, topic, batch.slice(prev, idx))
                prev = idx
            self.publish(out_topic, event)
        if prev < len(batch):
            self._deliver(rest, topic, batch.slice(prev, len(batch)) if prev else batch)

    def _deliver(self, stages: list[Stage], topic: str, payload: Any) -> None:
        for stage in stages:
            try:
                outs = stage.handle(topic, payload)
            except Exception as exc:
                self.dead_letter(topic, payload, f"{stage.name}: {exc!r}")
                continue
            for out_topic, event in outs:
                self.publish(out_topic, event)

    def dead_letter(self, topic: str, payload: Any, reason: str) -> None:
        """Send a message that could not be processed to ``<topic>.dlq`` with the reason."""
        if topic.endswith(DLQ_SUFFIX):  # never loop on a dead-letter topic
            log.error("dead letter handling failed", topic=topic, reason=reason)
            return
        key, body, ts = _describe(payload)
        log.warning("dead letter", topic=topic, key=key, reason=reason)
        letter = DeadLetter(
            event_id=make_id("dlq", topic, key, body, reason),
            ts_event=max(ts, 0),
            ts_init=getattr(payload, "ts_init", 0),
            topic=topic,
            key=key,
            reason=reason,
            payload=body,
        )
        self.publish(dlq_topic(topic), letter)
