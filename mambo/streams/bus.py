"""The embedded runtime's in-process event bus: the registry's topic names, depth-first dispatch.

Publishing an event hands it to every observer (sinks, the API hub, progress counters) and then to
every stage that reads the topic, in registration order; whatever a stage returns is published in
turn before the next stage runs. So one input event is processed to the end, through every stage,
before the next: the order of a live run and of a backtest are the same by construction.

Metrics: unless ``metrics=False`` (or ``MAMBO_METRICS=0``), a :class:`~mambo.metrics.BusMetrics` sees
every message before the observers, and each trade batch is timed through every stage and per stage
(see :mod:`mambo.metrics`).

Errors: a stage that raises does not stop the run. The message goes to ``<topic>.dlq`` as a
:class:`~mambo.schemas.events.DeadLetter` with the stage and the reason, the failure is logged and
counted, and dispatch goes on with the next stage and the next message.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import structlog

from mambo import metrics as _metrics
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
    def __init__(self, metrics: bool | None = None) -> None:
        """``metrics``: instrument this bus (default: unless ``MAMBO_METRICS=0``)."""
        self._stages: dict[str, list[Stage]] = defaultdict(list)
        self._observers: list[Observer] = []
        self.counts: Counter[str] = Counter()
        on = _metrics.ENABLED if metrics is None else metrics
        self.metrics: _metrics.BusMetrics | None = _metrics.BusMetrics(self.counts) if on else None
        self._handlers = self.metrics.handlers if self.metrics is not None else None

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
        if isinstance(payload, TradeBatch):
            self._publish_batch(topic, payload)
            return
        self.counts[topic] += 1
        if self._handlers is not None:
            handler = self._handlers.get(type(payload))
            if handler is not None:
                handler(payload)
        for obs in self._observers:
            obs(topic, payload)
        stages = self._stages.get(topic)
        if stages:
            self._deliver(stages, topic, payload)

    def _publish_batch(self, topic: str, batch: TradeBatch) -> None:
        t0 = time.perf_counter()
        self.counts[topic] += len(batch)
        m = self.metrics
        if m is not None:
            m.on_trades(topic, batch)
        for obs in self._observers:
            obs(topic, batch)
        stages = self._stages.get(topic)
        if stages and stages[0].splits_batches:
            self._publish_split(topic, batch, stages[0], stages[1:])
        elif stages:
            self._deliver(stages, topic, batch)
        if m is not None:  # the batch's time through every stage, with the events it caused
            m.on_batch(topic, time.perf_counter() - t0)

    def _publish_split(self, topic: str, batch: TradeBatch, splitter: Stage, rest: list[Stage]) -> None:
        t0 = time.perf_counter()
        try:
            positioned = splitter.split(batch)  # type: ignore[attr-defined]
        except Exception as exc:  # an operator fault must not stop the pipeline
            self.dead_letter(topic, batch, f"{splitter.name}: {exc!r}")
            positioned = []
        if self.metrics is not None:
            self.metrics.on_stage(splitter.name, time.perf_counter() - t0)
        prev = 0
        for idx, out_topic, event in positioned:
            if idx > prev:
                self._deliver(rest, topic, batch.slice(prev, idx))
                prev = idx
            self.publish(out_topic, event)
        if prev < len(batch):
            self._deliver(rest, topic, batch.slice(prev, len(batch)) if prev else batch)

    def _deliver(self, stages: list[Stage], topic: str, payload: Any) -> None:
        # stages are timed over trade batches only: per event, the clock would cost more than many
        # stages (the batch's time covers the events it causes)
        m = self.metrics if isinstance(payload, TradeBatch) else None
        for stage in stages:
            t0 = time.perf_counter() if m is not None else 0.0
            try:
                outs = stage.handle(topic, payload)
            except Exception as exc:
                self.dead_letter(topic, payload, f"{stage.name}: {exc!r}")
                continue
            finally:
                if m is not None:
                    m.on_stage(stage.name, time.perf_counter() - t0)
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
