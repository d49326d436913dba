"""Exchange errors by what the caller should do, and the one retry helper.

ccxt raises a rich tree of exceptions; a caller needs three answers (STYLE.md, after freqtrade):

* :class:`TemporaryError`: try again after a backoff (network trouble, timeouts, the exchange busy).
  :class:`RateLimited` is one, carrying the ``Retry-After`` the exchange asked for (429, 418).
* :class:`InvalidRequest`: never retry, the same request fails the same way (a bad symbol, an
  invalid order, insufficient funds, an unknown order).
* :class:`OperationalError`: stop loudly, a human must act (bad keys, no permission, an account
  suspended, anything unclassified).

:func:`classify` maps a ccxt exception to one of these (the original is the ``__cause__``), and
:func:`with_retry` runs a call with exponential backoff and full jitter, honouring ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import ccxt
import structlog

__all__ = [
    "Backoff",
    "ExchangeFault",
    "InvalidRequest",
    "OperationalError",
    "RateLimited",
    "TemporaryError",
    "classify",
    "with_retry",
]

log = structlog.get_logger(__name__)
T = TypeVar("T")


class ExchangeFault(Exception):
    """Base of the errors a connector raises; the ccxt exception is the ``__cause__``."""


class TemporaryError(ExchangeFault):
    """Retry after a backoff."""


class RateLimited(TemporaryError):
    """The exchange asked us to slow down (HTTP 429) or banned us for a while (418)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidRequest(ExchangeFault):
    """Never retry: the request itself is wrong."""


class OperationalError(ExchangeFault):
    """Stop loudly: credentials, permissions, or something unclassified."""


# Order matters: the first matching class wins (subclasses before their parents).
_TABLE: tuple[tuple[type[BaseException], type[ExchangeFault]], ...] = (
    (ccxt.DDoSProtection, RateLimited),
    (ccxt.RateLimitExceeded, RateLimited),
    (ccxt.NetworkError, TemporaryError),  # timeouts, unavailable, nonce, checksum
    (ccxt.BadResponse, TemporaryError),
    (ccxt.CancelPending, TemporaryError),
    (ccxt.AuthenticationError, OperationalError),
    (ccxt.InsufficientFunds, InvalidRequest),
    (ccxt.InvalidOrder, InvalidRequest),  # includes OrderNotFound and DuplicateOrderId
    (ccxt.BadRequest, InvalidRequest),  # includes BadSymbol
    (ccxt.ArgumentsRequired, InvalidRequest),
    (ccxt.NotSupported, InvalidRequest),
    (ccxt.OperationRejected, InvalidRequest),
)


def _retry_after(headers: Any) -> float | None:
    if not isinstance(headers, dict):
        return None
    for name, value in headers.items():
        if name.lower() == "retry-after":
            try:
                return float(value)
            except (TypeError, ValueError):
                return None
    return None


def classify(exc: BaseException, client: Any = None) -> ExchangeFault:
    """The Mambo error for a ccxt exception (``client``: where to read ``Retry-After`` from)."""
    if isinstance(exc, ExchangeFault):
        return exc
    transient = isinstance(exc, (asyncio.TimeoutError, ConnectionError))
    ours = next(
        (mapped for ccxt_type, mapped in _TABLE if isinstance(exc, ccxt_type)),
        TemporaryError if transient else OperationalError,
    )
    message = f"{type(exc).__name__}: {exc}"
    if ours is RateLimited:
        headers = getattr(client, "last_response_headers", None)
        fault: ExchangeFault = RateLimited(message, _retry_after(headers))
    else:
        fault = ours(message)
    fault.__cause__ = exc
    return fault


@dataclass
class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base × 2ⁿ))."""

    base: float = 0.5
    cap: float = 30.0
    attempts: int = 6  # tries in all, for :func:`with_retry`
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int) -> float:
        return self.rng.uniform(0, min(self.cap, self.base * 2**attempt))


async def with_retry(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    backoff: Backoff | None = None,
    client: Any = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Await ``call()``; on a :class:`TemporaryError` wait and try again (at most ``attempts`` tries).

    A :class:`RateLimited` answer waits at least its ``Retry-After``. :class:`InvalidRequest` and
    :class:`OperationalError` are raised at once. Errors raised are Mambo's, from ccxt's.
    """
    backoff = backoff or Backoff()
    attempt = 0
    while True:
        try:
            return await call()
        except Exception as exc:  # classified below; nothing is swallowed
            fault = classify(exc, client)
            if not isinstance(fault, TemporaryError) or attempt + 1 >= backoff.attempts:
                raise fault from exc
            wait = backoff.delay(attempt)
            if isinstance(fault, RateLimited) and fault.retry_after is not None:
                wait = max(wait, fault.retry_after)
            log.warning(
                "exchange.retry", what=what, attempt=attempt + 1, wait_s=round(wait, 3), error=str(fault)
            )
            await sleep(wait)
            attempt += 1
