"""Delivery: notifications to channels through apprise, with retries, backoff, deduplication and a
dead-letter policy.

:class:`Notifier` takes notifications in outbox order (:meth:`Notifier.offer`, each with the token
its source commits by) and delivers each to every channel (:meth:`Notifier.step`):

* **In order per channel, channels apart.** Each channel has its own queue: a channel that is down
  holds back only its own messages; the others go on.
* **Retries back off.** A failed send is retried after ``retry_seconds``, doubling up to
  ``retry_max_seconds``; after ``max_attempts`` the message is given up for that channel: a dead
  letter (a JSON line in the dead-letter file and a warning in the log), and the queue goes on.
* **At most ``max_per_minute`` sends a minute per channel** (the channels' own rate limits).
* **Duplicates are dropped by event id.** :class:`DeliveryLog` (SQLite) records each (event id,
  channel) delivered or given up; a replayed or re-read notification is not sent again.
* **Commit after delivery.** :meth:`Notifier.acked` gives the tokens of the notifications done on
  every channel, oldest first and in order, so the source commits only what was delivered.

The pipeline never waits for any of it: it only appends to the outbox. The notifier reads ahead at most
``max_pending`` notifications (:attr:`Notifier.full`), then stops reading until some are done.

Secrets: a channel is named by its scheme and a hash of its URL (``tgram:3f2a9c1e``), never by its
URL; :class:`Redactor` removes the URLs' secret parts from apprise's own log records.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import structlog

from mambo.schemas.events import Notification, make_id

__all__ = ["Channel", "DeliveryLog", "Notifier", "Redactor", "RetryPolicy", "channel_label", "make_channels"]

log = structlog.get_logger("mambo.notify")

#: Schemes whose host is an address, not a secret (a plain webhook): it stays readable in logs.
_ADDRESS_SCHEMES = frozenset({"json", "jsons", "form", "forms", "xml", "xmls"})


def channel_label(url: str) -> str:
    """A channel's name for logs and the delivery log: its scheme and a hash of its URL."""
    return f"{url.split('://', 1)[0]}:{make_id('channel', url)[:8]}"


def secret_parts(url: str) -> list[str]:
    """The parts of an apprise URL that may be secrets: user, password, path segments, query values,
    and the host (but for plain webhooks, whose host is an address), longest first, with the URL.
    Redaction errs on the side of hiding: a path segment such as ``hooks`` is hidden too."""
    parts = urlsplit(url)
    found = {url}
    if parts.scheme.lower() not in _ADDRESS_SCHEMES:
        found.add(unquote(parts.netloc.rpartition("@")[2]))
        found.add(parts.hostname or "")
    found |= {unquote(parts.username or ""), unquote(parts.password or "")}
    found |= {unquote(seg) for seg in parts.path.split("/")}
    found |= {value for _, value in parse_qsl(parts.query)}
    # short pieces (ports, "1", "bot") are no secret and would mangle every line they occur in
    return sorted((p for p in found if len(p) >= 4), key=len, reverse=True)


class Redactor(logging.Filter):
    """A logging filter that replaces secret parts of the channel URLs in a record by ``***``.

    Installed on apprise's logger (whose debug lines hold request URLs, and so the tokens)."""

    def __init__(self, urls: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({p for u in urls for p in secret_parts(u)}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg = self.redact(record.getMessage())
            record.args = None
        return True


@dataclass(frozen=True)
class RetryPolicy:
    retry_seconds: float = 1.0
    retry_max_seconds: float = 60.0
    max_attempts: int = 10
    max_per_minute: int = 20
    max_pending: int = 1_000

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed send."""
        return min(self.retry_max_seconds, self.retry_seconds * 2 ** (attempts - 1))


class Channel:
    """One destination: an apprise plugin, named by :func:`channel_label`. ``send`` says whether the
    channel accepted the message (a refusal or a connection error is False, never an exception)."""

    def __init__(self, url: str, timeout: float = 5.0, plugin: Any = None) -> None:
        import apprise

        self.label = channel_label(url)
        self.plugin: Any = plugin if plugin is not None else apprise.Apprise.instantiate(url)
        if not self.plugin:
            raise ValueError(f"channel {self.label}: apprise does not accept this URL")
        self.plugin.socket_connect_timeout = timeout
        self.plugin.socket_read_timeout = timeout

    def send(self, n: Notification) -> bool:
        from apprise import NotifyType

        body = f"{n.body}\nid {n.event_id}"
        try:
            # apprise's NotifyType values are the levels' names (info, success, warning, failure)
            return bool(self.plugin.notify(body=body, title=n.title, notify_type=NotifyType(n.level)))
        except Exception as exc:  # a plugin bug must not stop the notifier: it counts as a failure
            log.warning("notify.channel_error", channel=self.label, error=type(exc).__name__)
            return False


def make_channels(urls: Sequence[str], timeout: float = 5.0) -> list[Channel]:
    """The channels of ``urls``, with apprise's log redacted of their secrets; ValueError names (by
    index, not by URL) one apprise does not accept."""
    _install_redactor(urls)
    out = []
    for i, url in enumerate(urls):
        try:
            out.append(Channel(url, timeout))
        except ValueError:
            raise ValueError(
                f"notify.channels[{i}] ({url.split('://', 1)[0]}://...) is not a URL apprise accepts"
            ) from None
    labels = [c.label for c in out]
    if len(set(labels)) != len(labels):
        raise ValueError("notify.channels lists a channel twice")
    return out


def _install_redactor(urls: Sequence[str]) -> None:
    logger = logging.getLogger("apprise")
    for f in list(logger.filters):
        if isinstance(f, Redactor):
            logger.removeFilter(f)
    logger.addFilter(Redactor(urls))


class DeliveryLog:
    """What was delivered (or given up), by (event id, channel), in SQLite: the deduplication that
    survives restarts and replays. ``path=None`` keeps it in memory (tests). Also a small key-value
    store for a source's cursor."""

    def __init__(self, path: Path | None = None) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(
            ":memory:" if path is None else str(path), isolation_level=None, check_same_thread=False
        )
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS delivered (event_id TEXT, channel TEXT, outcome TEXT, at REAL,"
            " PRIMARY KEY (event_id, channel))"
        )
        self.db.execute("CREATE TABLE IF NOT EXISTS cursor (name TEXT PRIMARY KEY, value TEXT)")

    def done(self, event_id: str, channel: str) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM delivered WHERE event_id = ? AND channel = ?", (event_id, channel)
        ).fetchone()
        return row is not None

    def record(self, event_id: str, channel: str, outcome: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO delivered VALUES (?, ?, ?, ?)", (event_id, channel, outcome, time.time())
        )

    def get_cursor(self, name: str) -> str | None:
        row = self.db.execute("SELECT value FROM cursor WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_cursor(self, name: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO cursor VALUES (?, ?)", (name, value))

    def close(self) -> None:
        self.db.close()


@dataclass
class _Job:
    notification: Notification
    token: Any
    waiting: set[str]  # labels of the channels it is still to go to


@dataclass
class _Lane:
    """One channel's queue and its backoff."""

    channel: Channel
    queue: deque[_Job] = field(default_factory=deque)
    attempts: int = 0  # failed sends of the head
    next_at: float = 0.0
    sent_at: deque[float] = field(default_factory=deque)  # sends of the last minute


@dataclass
class NotifierStats:
    delivered: int = 0
    failures: int = 0  # failed sends (each retried or given up)
    dead: int = 0
    duplicates: int = 0  # (notification, channel) pairs dropped as already done
    skipped: int = 0  # notifications of a kind not delivered


class Notifier:
    """Delivers notifications to channels; see the module docstring. ``clock``: seconds, monotonic."""

    def __init__(
        self,
        channels: Sequence[Channel],
        policy: RetryPolicy | None = None,
        kinds: Iterable[str] | None = None,
        delivered: DeliveryLog | None = None,
        dead_letters: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy or RetryPolicy()
        self.kinds = None if kinds is None else frozenset(kinds)
        self.log = delivered or DeliveryLog()
        self.dead_letters = dead_letters
        self.clock = clock
        self.lanes = [_Lane(c) for c in channels]
        self.jobs: deque[_Job] = deque()
        self.stats = NotifierStats()

    @property
    def full(self) -> bool:
        """True when ``max_pending`` notifications wait: read no more until some are done."""
        return len(self.jobs) >= self.policy.max_pending

    @property
    def pending(self) -> int:
        return len(self.jobs)

    def offer(self, n: Notification, token: Any = None) -> None:
        """Queue a notification for every channel it has not reached yet."""
        job = _Job(n, token, set())
        if not n.event_id or (self.kinds is not None and n.kind not in self.kinds):
            self.stats.skipped += 1
        else:
            for lane in self.lanes:
                label = lane.channel.label
                if self.log.done(n.event_id, label) or any(
                    j.notification.event_id == n.event_id for j in lane.queue
                ):
                    self.stats.duplicates += 1
                    continue
                job.waiting.add(label)
                lane.queue.append(job)
        self.jobs.append(job)

    def step(self) -> float:
        """Send what is due on every channel; the seconds until something is next due (1 when idle)."""
        now = self.clock()
        wait = min((self._run_lane(lane, now) for lane in self.lanes), default=math.inf)
        return 1.0 if wait == math.inf else max(0.0, wait)

    def _run_lane(self, lane: _Lane, now: float) -> float:
        p = self.policy
        while lane.queue:
            if now < lane.next_at:
                return lane.next_at - now
            while lane.sent_at and lane.sent_at[0] <= now - 60.0:
                lane.sent_at.popleft()
            if len(lane.sent_at) >= p.max_per_minute:
                return lane.sent_at[0] + 60.0 - now
            job = lane.queue[0]
            n, label = job.notification, lane.channel.label
            lane.sent_at.append(now)
            if lane.channel.send(n):
                self.stats.delivered += 1
                self._finish(lane, job, "delivered")
                log.info("notify.delivered", channel=label, kind=n.kind, event_id=n.event_id)
            else:
                lane.attempts += 1
                self.stats.failures += 1
                if lane.attempts >= p.max_attempts:
                    self.stats.dead += 1
                    self._dead_letter(job, label, lane.attempts)
                    self._finish(lane, job, "dead")
                else:
                    lane.next_at = now + p.delay(lane.attempts)
                    log.warning(
                        "notify.retry",
                        channel=label,
                        event_id=n.event_id,
                        attempt=lane.attempts,
                        retry_in=round(lane.next_at - now, 3),
                    )
                return 0.0 if not lane.queue else max(0.0, lane.next_at - now)
            now = self.clock()
        return math.inf

    def _finish(self, lane: _Lane, job: _Job, outcome: str) -> None:
        label = lane.channel.label
        self.log.record(job.notification.event_id, label, outcome)
        lane.queue.popleft()
        lane.attempts = 0
        job.waiting.discard(label)

    def _dead_letter(self, job: _Job, label: str, attempts: int) -> None:
        n = job.notification
        log.warning("notify.dead_letter", channel=label, event_id=n.event_id, kind=n.kind, attempts=attempts)
        if self.dead_letters is None:
            return
        self.dead_letters.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "channel": label,
            "attempts": attempts,
            "at": time.time(),
            "notification": json.loads(n.model_dump_json()),
        }
        with self.dead_letters.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def acked(self) -> list[Any]:
        """The tokens of the notifications done on every channel since the last call, oldest first;
        stops at the oldest one still waiting (so a source never commits past it)."""
        out = []
        while self.jobs and not self.jobs[0].waiting:
            out.append(self.jobs.popleft().token)
        return out
