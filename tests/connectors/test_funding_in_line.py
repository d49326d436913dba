"""Funding in line with the trades, whatever the interleaving (hypothesis): the exchange source's trade
side and mark side race (two connections), trades come in batches of any size, and a funding time is
learnt from the mark frames before or after the trades pass it. Whatever happens, what is published is
every trade once and in order, each funding time once, after every trade before it and before every
trade at or after it, with the exchange's settled rate. A fake ccxt client answers the REST calls."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from hypothesis import given, note, settings
from hypothesis import strategies as st

from mambo.connectors.exchange_source import ExchangeSource, SourceConfig
from mambo.schemas.batches import TradeBatch
from mambo.schemas.events import Candle, FeedHealth, FundingRate, MarkPrice, Quote

SYMBOL = "BTC/USDT:USDT"
MS = 1_000_000
HOUR = 3_600_000


class Client:
    """What the source asks over REST: the settled funding history (every funding time passed)."""

    def __init__(self, rates: dict[int, float]) -> None:
        self.rates = rates

    async def fetch_funding_rate_history(
        self, symbol: str, since: int, limit: int, params: dict[str, Any]
    ) -> list[dict[str, Any]]:
        until = params["until"]
        rows = [{"timestamp": t, "fundingRate": r, "info": {}} for t, r in sorted(self.rates.items())]
        return [r for r in rows if since <= r["timestamp"] <= until][:limit]


class Published:
    def __init__(self) -> None:
        self.items: list[tuple[str, Any]] = []

    def trades(self, batch: TradeBatch) -> None:
        self.items += [("trade", int(t)) for t in batch.ts]

    def funding(self, rates: Sequence[FundingRate]) -> None:
        self.items += [("funding", r) for r in rates]

    def quotes(self, quotes: Sequence[Quote]) -> None: ...
    def candles(self, candles: Sequence[Candle]) -> None: ...
    def health(self, event: FeedHealth) -> None: ...
    def marks(self, marks: Sequence[MarkPrice]) -> None:
        self.items += [("mark", m) for m in marks]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[int], dict[int, float], list[list[int]], list[int]]:
    """Trade times (ms, ascending, some sharing a millisecond, some exactly at a funding time), the
    funding times among them with rates, the trades cut in batches, and after which batch the mark
    side learns each funding time (it can be late: after trades past it were published; it learns them
    in their order)."""
    times_count = draw(st.integers(1, 3))
    funding = {HOUR * (i + 1): draw(st.sampled_from([0.0001, -0.0002, 0.00005])) for i in range(times_count)}
    gaps = draw(st.lists(st.integers(0, 900_000), min_size=2, max_size=60))
    trades, t = [], HOUR // 2
    for g in gaps:
        t += g
        trades.append(t)
    trades += [f for f in funding if draw(st.booleans())]  # a trade exactly at a funding time
    trades.sort()
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(trades) - 1)), max_size=8)))
    batches = [trades[a:b] for a, b in zip([0, *cuts], [*cuts, len(trades)], strict=True) if trades[a:b]]
    # -1: before any trade; in time order (a mark frame names the next funding time only once the
    # one before has come)
    learnt = sorted(draw(st.integers(-1, len(batches) - 1)) for _ in funding)
    return trades, funding, batches, learnt


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_every_funding_time_goes_once_between_the_trades_before_and_after_it(
    scenario: tuple[list[int], dict[int, float], list[list[int]], list[int]],
) -> None:
    trades, funding, batches, learnt = scenario
    note(repr(scenario))
    published = Published()
    source = ExchangeSource(Client(funding), published, SourceConfig("binanceusdm", [SYMBOL]))

    async def run() -> None:
        times = sorted(funding)
        for t, when in zip(times, learnt, strict=True):
            if when == -1:
                source._next_funding.setdefault(SYMBOL, set()).add(t)
        for i, batch in enumerate(batches):
            first = sum(len(b) for b in batches[:i])
            rows = [{"id": str(n), "timestamp": t, "price": 1.0, "amount": 1.0, "symbol": SYMBOL,
                     "side": "buy"} for n, t in enumerate(batch, start=first)]  # fmt: skip
            await source._publish_trades(SYMBOL, rows)
            for t, when in zip(times, learnt, strict=True):
                if when == i:  # the mark side hears of it now: funding the trades passed goes out now
                    source._next_funding.setdefault(SYMBOL, set()).add(t)
                    await source._publish_due_funding(SYMBOL)

    asyncio.run(run())
    assert [t for kind, t in published.items if kind == "trade"] == [t * MS for t in trades]
    fundings = [(i, r) for i, (kind, r) in enumerate(published.items) if kind == "funding"]
    # each funding time the trades passed, once, in time order, with the settled rate
    assert [r.ts_event // MS for _, r in fundings] == [t for t in sorted(funding) if trades[-1] >= t]
    for i, rate in fundings:
        t = rate.ts_event // MS
        assert rate.rate == funding[t]
        before = [x // MS for kind, x in published.items[:i] if kind == "trade"]
        after = [x // MS for kind, x in published.items[i + 1 :] if kind == "trade"]
        assert all(x >= t for x in after)  # every trade before it went first
        when = learnt[sorted(funding).index(t)]
        if when == -1 or all(x < t for b in batches[: when + 1] for x in b):  # known in time: in line
            assert all(x < t for x in before)


@st.composite
def mark_scenarios(draw: st.DrawFn) -> tuple[list[int], list[list[int]], list[int], list[int]]:
    """Trade times (ms, ascending), the trades cut in batches, mark frame times (some at a trade's
    millisecond), and after which batch the mark side delivers each frame (-1: before any trade; in
    time order, as one stream delivers them)."""
    gaps = draw(st.lists(st.integers(0, 3_000), min_size=2, max_size=40))
    trades, t = [], 1_000_000
    for g in gaps:
        t += g
        trades.append(t)
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(trades) - 1)), max_size=8)))
    batches = [trades[a:b] for a, b in zip([0, *cuts], [*cuts, len(trades)], strict=True) if trades[a:b]]
    marks = sorted(
        set(draw(st.lists(st.integers(trades[0] - 500, trades[-1] + 2_000), max_size=12)))
        | set(draw(st.lists(st.sampled_from(trades), max_size=3)))
    )
    delivered = sorted(draw(st.integers(-1, len(batches) - 1)) for _ in marks)
    return trades, batches, marks, delivered


@settings(max_examples=150, deadline=None)
@given(mark_scenarios())
def test_every_mark_goes_once_after_the_trades_at_or_before_it(
    scenario: tuple[list[int], list[list[int]], list[int], list[int]],
) -> None:
    """Marks go in line where paper trading takes them: each once, in order, after every trade before
    its time; before every trade after it when the frame came before the trades passed it; a frame past
    the last trade waits for the trades."""
    trades, batches, marks, delivered = scenario
    note(repr(scenario))
    published = Published()
    source = ExchangeSource(Client({}), published, SourceConfig("binanceusdm", [SYMBOL]))

    def deliver(i: int) -> None:
        for t, when in zip(marks, delivered, strict=True):
            if when == i:
                mark = MarkPrice(event_id=f"m{t}", ts_event=t * MS, ts_init=0, exchange="binanceusdm",
                                 symbol=SYMBOL, mark_price=1.0)  # fmt: skip
                source._queue_mark(SYMBOL, mark)

    async def run() -> None:
        deliver(-1)
        for i, batch in enumerate(batches):
            first = sum(len(b) for b in batches[:i])
            rows = [{"id": str(n), "timestamp": t, "price": 1.0, "amount": 1.0, "symbol": SYMBOL,
                     "side": "buy"} for n, t in enumerate(batch, start=first)]  # fmt: skip
            await source._publish_trades(SYMBOL, rows)
            deliver(i)

    asyncio.run(run())
    assert [t for kind, t in published.items if kind == "trade"] == [t * MS for t in trades]
    out = [(i, m.ts_event // MS) for i, (kind, m) in enumerate(published.items) if kind == "mark"]
    assert [t for _, t in out] == [t for t in marks if t <= trades[-1]]  # once, in order; later ones wait
    for i, t in out:
        before = [x // MS for kind, x in published.items[:i] if kind == "trade"]
        after = [x // MS for kind, x in published.items[i + 1 :] if kind == "trade"]
        # every trade before it went first (one at its millisecond can come after: the source cannot
        # know another is coming; a candle closed at the mark's time ends before that millisecond)
        assert all(x >= t for x in after)
        when = delivered[marks.index(t)]
        if when == -1 or all(x <= t for b in batches[: when + 1] for x in b):  # came in time: in line
            assert all(x <= t for x in before)


def test_a_mark_waits_for_trades_held_for_a_funding_time() -> None:
    """Trades past a funding time are held until its settled rate comes over REST; a mark frame that
    comes meanwhile, timed among the held trades, waits for them too (published before them, it would
    close their candles ahead of them)."""
    published = Published()
    gate = asyncio.Event()

    class SlowClient(Client):
        async def fetch_funding_rate_history(
            self, symbol: str, since: int, limit: int, params: dict[str, Any]
        ) -> list[dict[str, Any]]:
            await gate.wait()  # the exchange has not published the rate yet
            return await super().fetch_funding_rate_history(symbol, since, limit, params)

    source = ExchangeSource(SlowClient({HOUR: 0.0001}), published, SourceConfig("binanceusdm", [SYMBOL]))
    source._next_funding[SYMBOL] = {HOUR}
    times = [HOUR - 2_000, HOUR - 1_000, HOUR + 1_000, HOUR + 2_000]
    rows = [{"id": str(n), "timestamp": t, "price": 1.0, "amount": 1.0, "symbol": SYMBOL, "side": "buy"}
            for n, t in enumerate(times)]  # fmt: skip

    async def run() -> None:
        held = asyncio.create_task(source._publish_trades(SYMBOL, rows))
        await asyncio.sleep(0.05)  # the trades wait for the rate (the source has seen them all)
        assert published.items == [] and source._trades[SYMBOL].last_ts == times[-1]
        mark = MarkPrice(event_id="m", ts_event=(HOUR + 1_500) * MS, ts_init=0, exchange="binanceusdm",
                         symbol=SYMBOL, mark_price=1.0)  # fmt: skip
        source._queue_mark(SYMBOL, mark)
        assert not [kind for kind, _ in published.items if kind == "mark"]
        gate.set()
        await held

    asyncio.run(run())
    kinds = [(kind, x if kind == "trade" else x.ts_event) for kind, x in published.items]
    assert [k for k, _ in kinds] == ["trade", "trade", "funding", "trade", "mark", "trade"], kinds
