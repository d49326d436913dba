"""API keys: scopes, tiers with rate limits, stored hashed.

A key reads ``mambo_<id>_<secret>``. The key file (JSON, mode 0600) keeps the id, the SHA-256 of the
secret, the scopes and the tier, never the key itself; :meth:`KeyStore.create` returns the key once.
SHA-256 rather than a slow password hash is deliberate: the secret is 256 random bits, so there is
nothing to brute-force, and every request is checked in microseconds. The id finds the record, and
the hashes are compared in constant time.

Scopes: ``signals:read`` (market data, signals, trading state, the WebSocket), ``analytics:read``
(``/analytics``), ``admin`` (everything). Tiers limit requests per minute per key (:data:`TIERS`),
with a token bucket that allows a burst of one minute's worth.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "OPEN_ACCESS",
    "SCOPES",
    "TIERS",
    "ApiKey",
    "AuthError",
    "Authorizer",
    "KeyStore",
    "RateLimiter",
    "Scope",
    "Tier",
]

Scope = Literal["signals:read", "analytics:read", "admin"]
Tier = Literal["basic", "pro", "enterprise"]
SCOPES: tuple[Scope, ...] = ("signals:read", "analytics:read", "admin")
#: Requests per minute per key.
TIERS: dict[str, int] = {"basic": 60, "pro": 600, "enterprise": 6_000}
_PREFIX = "mambo"


class AuthError(Exception):
    """A missing or bad key (401), a missing scope (403) or a spent rate limit (429, with the seconds to
    wait); the message is safe to show."""

    def __init__(self, status: int, reason: str, retry_after: float = 0.0) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


@dataclass(frozen=True)
class ApiKey:
    """A key's record (without its secret)."""

    id: str
    hash: str
    scopes: tuple[str, ...]
    tier: str
    name: str = ""
    created: int = 0  # ns

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


#: The identity of requests when the API runs open (local demo): every scope, no rate limit.
OPEN_ACCESS = ApiKey(id="open", hash="", scopes=("admin",), tier="open", name="open access (local)")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass
class KeyStore:
    """The key file; reloaded when it changes on disk, so ``mambo keys create`` works on a running API."""

    path: Path
    _keys: dict[str, ApiKey] = field(default_factory=dict, init=False)
    _mtime: float = field(default=-1.0, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def list_keys(self) -> list[ApiKey]:
        self._reload()
        return list(self._keys.values())

    def create(self, scopes: Iterable[str], tier: str = "basic", name: str = "") -> str:
        """Add a key and return it: the only time the full key exists outside the caller."""
        scopes = tuple(dict.fromkeys(scopes))
        bad = [s for s in scopes if s not in SCOPES]
        if not scopes or bad:
            raise ValueError(f"scopes must be some of {', '.join(SCOPES)}; got {list(scopes)}")
        if tier not in TIERS:
            raise ValueError(f"tier must be one of {', '.join(TIERS)}; got {tier!r}")
        with self._lock:
            self._reload()
            key_id = secrets.token_hex(4)
            while key_id in self._keys:
                key_id = secrets.token_hex(4)
            secret = secrets.token_urlsafe(32)
            self._keys[key_id] = ApiKey(key_id, _digest(secret), scopes, tier, name, time.time_ns())
            self._save()
        return f"{_PREFIX}_{key_id}_{secret}"

    def revoke(self, key_id: str) -> bool:
        with self._lock:
            self._reload()
            found = self._keys.pop(key_id, None) is not None
            if found:
                self._save()
        return found

    def verify(self, key: str) -> ApiKey:
        """The record of a valid key; :class:`AuthError` (401) otherwise."""
        prefix, _, rest = key.partition("_")
        key_id, _, secret = rest.partition("_")
        self._reload()
        record = self._keys.get(key_id) if prefix == _PREFIX and secret else None
        # compare even when the id is unknown, so timing does not tell which ids exist
        expected = record.hash if record else "0" * 64
        if not hmac.compare_digest(expected, _digest(secret)) or record is None:
            raise AuthError(401, "invalid API key")
        return record

    def _reload(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self._keys, self._mtime = {}, -1.0
            return
        if mtime == self._mtime:
            return
        data = json.loads(self.path.read_text())
        self._keys = {k["id"]: ApiKey(**{**k, "scopes": tuple(k["scopes"])}) for k in data.get("keys", [])}
        self._mtime = mtime

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"keys": [asdict(k) for k in self._keys.values()]}, f, indent=1)
        os.replace(tmp, self.path)
        self._mtime = self.path.stat().st_mtime


class RateLimiter:
    """A token bucket per key: ``TIERS[tier]`` requests a minute, bursts up to a minute's worth."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, at)
        self._lock = threading.Lock()

    def check(self, key: ApiKey) -> float:
        """0 if the request may go; else the seconds to wait before the next one will."""
        per_minute = TIERS.get(key.tier)
        if per_minute is None:  # open access
            return 0.0
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.get(key.id, (float(per_minute), now))
            tokens = min(float(per_minute), tokens + (now - at) * per_minute / 60.0)
            if tokens < 1.0:
                self._buckets[key.id] = (tokens, now)
                return (1.0 - tokens) * 60.0 / per_minute
            self._buckets[key.id] = (tokens - 1.0, now)
        return 0.0


class Authorizer:
    """Decides each request: ``store=None`` is open access (the local demo), else a valid key with the
    scope, within its tier's rate."""

    def __init__(self, store: KeyStore | None, limiter: RateLimiter | None = None) -> None:
        self.store = store
        self.limiter = limiter or RateLimiter()

    @property
    def open(self) -> bool:
        return self.store is None

    def authorize(self, key: str | None, scope: str) -> ApiKey:
        if self.store is None:
            return OPEN_ACCESS
        if not key:
            raise AuthError(401, "missing API key: send it in the X-API-Key header (mambo keys create)")
        record = self.store.verify(key)
        if not record.allows(scope):
            raise AuthError(403, f"this key lacks the {scope} scope")
        wait = self.limiter.check(record)
        if wait:
            raise AuthError(
                429, f"rate limit of the {record.tier} tier ({TIERS[record.tier]}/min) reached", wait
            )
        return record
