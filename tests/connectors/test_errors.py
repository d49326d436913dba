"""ccxt errors by what the caller should do, and the retry helper (a fake sleep: no waiting)."""

from __future__ import annotations

import asyncio
import random

import ccxt
import pytest

from mambo.connectors.errors import (
    Backoff,
    InvalidRequest,
    OperationalError,
    RateLimited,
    TemporaryError,
    classify,
    with_retry,
)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ccxt.RequestTimeout("t"), TemporaryError),
        (ccxt.ExchangeNotAvailable("down"), TemporaryError),
        (ccxt.NetworkError("reset"), TemporaryError),
        (ccxt.DDoSProtection("418"), RateLimited),
        (ccxt.RateLimitExceeded("429"), RateLimited),
        (ccxt.InsufficientFunds("poor"), InvalidRequest),
        (ccxt.OrderNotFound("gone"), InvalidRequest),
        (ccxt.BadSymbol("XYZ"), InvalidRequest),
        (ccxt.InvalidOrder("lot size"), InvalidRequest),
        (ccxt.AuthenticationError("bad key"), OperationalError),
        (ccxt.PermissionDenied("no"), OperationalError),
        (ccxt.ExchangeError("unknown"), OperationalError),
        (RuntimeError("bug"), OperationalError),
        (TimeoutError(), TemporaryError),
    ],
)
def test_classify_by_what_the_caller_should_do(error: Exception, kind: type[Exception]) -> None:
    fault = classify(error)
    assert type(fault) is kind
    assert fault.__cause__ is error


class _Client:
    def __init__(self) -> None:
        self.last_response_headers = {"Retry-After": "7"}


def test_retry_waits_backoff_then_retry_after_and_gives_up() -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    errors = [ccxt.RequestTimeout("t"), ccxt.RateLimitExceeded("429")]

    async def flaky() -> str:
        if errors:
            raise errors.pop(0)
        return "ok"

    backoff = Backoff(base=1.0, cap=4.0, attempts=5, rng=random.Random(1))
    assert asyncio.run(with_retry(flaky, what="x", backoff=backoff, client=_Client(), sleep=sleep)) == "ok"
    assert len(waits) == 2 and 0 <= waits[0] <= 1.0 and waits[1] >= 7.0  # jittered; then Retry-After

    async def always_down() -> str:
        raise ccxt.ExchangeNotAvailable("down")

    waits.clear()
    with pytest.raises(TemporaryError):
        asyncio.run(with_retry(always_down, what="x", backoff=backoff, sleep=sleep))
    assert len(waits) == 4  # five tries, four waits
    assert all(w <= 4.0 for w in waits)  # capped


def test_invalid_and_operational_errors_are_never_retried() -> None:
    calls = 0

    async def sleep(seconds: float) -> None:
        raise AssertionError("must not wait")

    async def bad() -> None:
        nonlocal calls
        calls += 1
        raise ccxt.InvalidOrder("min notional")

    with pytest.raises(InvalidRequest):
        asyncio.run(with_retry(bad, what="x", sleep=sleep))

    async def unauthorized() -> None:
        nonlocal calls
        calls += 1
        raise ccxt.AuthenticationError("key")

    with pytest.raises(OperationalError):
        asyncio.run(with_retry(unauthorized, what="x", sleep=sleep))
    assert calls == 2


def test_backoff_grows_exponentially_with_full_jitter() -> None:
    backoff = Backoff(base=0.5, cap=30.0, rng=random.Random(3))
    samples = [[backoff.delay(n) for _ in range(200)] for n in range(8)]
    for n, s in enumerate(samples):
        assert min(s) >= 0 and max(s) <= min(30.0, 0.5 * 2**n)
        assert max(s) > 0.8 * min(30.0, 0.5 * 2**n)  # spread over the whole range
