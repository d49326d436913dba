"""Signal aggregation: the strategies' signals on one bar combined into one
:class:`~mambo.schemas.events.AggregatedSignal`, each strategy weighted by how well its own calls
have done so far.

Start with :class:`SignalAggregator`; one instance serves one market and timeframe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from mambo.schemas.events import AggregatedSignal, Signal, SignalSide, make_id

__all__ = ["DIRECTION", "SignalAggregator"]

#: The direction of a signal side in the score.
DIRECTION: dict[str, int] = {"buy": 1, "sell": -1, "hold": 0}


@dataclass
class SignalAggregator:
    """Combines one signal per strategy per bar into an aggregated signal for one market and timeframe.

    **Weights.** Each strategy's hit rate has a Beta(α, β) posterior, starting from ``prior``. A
    round trip runs from a strategy's directional signal (buy or sell) at price p to its next
    *opposite* directional signal at price q; repeated signals of the same side leave its entry at p,
    and the opposite signal closes the round trip and opens the next one. The round trip is a hit if it
    made money (buy then sell at q > p, sell then buy at q < p; fees ignored) and adds 1 to α, else it
    adds 1 to β. A strategy's weight is the posterior mean α / (α + β). Round trips are scored as each
    signal arrives, so the weights used for a bar include what that bar's closes settled, and nothing
    later.

    **Score.** Once every strategy has reported on a bar (same ``ts_event``):
    ``score = Σ w·dir·conf / Σ w`` with dir +1 for buy, -1 for sell, 0 for hold; the side is buy if
    score > ``threshold``, sell if score < -``threshold``, else hold; confidence = |score|. Each
    strategy's contribution is its ``w·dir·conf / Σ w`` (they add up to the score); the lead strategy
    is the one with the largest |w·dir·conf|, ties going to the first in ``strategies``. Values are
    the strategies' values merged, the first strategy in ``strategies`` winning a shared name.

    **Delivery.** A signal a strategy already sent for that bar or an earlier one (a redelivery) is
    ignored. A bar that a later bar overtakes before every strategy reported is dropped without an
    aggregate; its signals still score their round trips. A signal from another market or timeframe,
    or from a strategy not in ``strategies``, is a ValueError (a wiring fault: dead-letter it).
    """

    strategies: Sequence[str]
    threshold: float = 0.0
    prior: tuple[float, float] = (1.0, 1.0)
    _market: tuple[str, str, str] | None = field(default=None, init=False)
    _hits: dict[str, int] = field(default_factory=dict, init=False)
    _misses: dict[str, int] = field(default_factory=dict, init=False)
    _entries: dict[str, tuple[SignalSide, float]] = field(default_factory=dict, init=False)
    _last_ts: dict[str, int] = field(default_factory=dict, init=False)
    _bar_ts: int = field(default=-1, init=False)
    _bar: dict[str, Signal] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.strategies = tuple(self.strategies)
        if not self.strategies or len(set(self.strategies)) != len(self.strategies):
            raise ValueError(f"strategies must be distinct names, at least one; got {self.strategies!r}")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {self.threshold!r}")
        alpha, beta = self.prior
        if not (math.isfinite(alpha) and math.isfinite(beta) and alpha > 0 and beta > 0):
            raise ValueError(f"prior (alpha, beta) must be finite and > 0, got {self.prior!r}")
        self.prior = (float(alpha), float(beta))
        self._hits = dict.fromkeys(self.strategies, 0)
        self._misses = dict.fromkeys(self.strategies, 0)

    def posteriors(self) -> dict[str, tuple[float, float]]:
        """The Beta posterior (α, β) of each strategy's hit rate."""
        alpha, beta = self.prior
        return {s: (alpha + self._hits[s], beta + self._misses[s]) for s in self.strategies}

    def weights(self) -> dict[str, float]:
        """Each strategy's weight: the posterior mean of its hit rate, α / (α + β)."""
        return {s: a / (a + b) for s, (a, b) in self.posteriors().items()}

    def on_signal(self, sig: Signal, ts_init: int) -> AggregatedSignal | None:
        """Take one strategy's signal; the aggregated signal once all strategies reported on its bar,
        else None."""
        if sig.strategy not in self._hits:
            raise ValueError(f"signal from strategy {sig.strategy!r}, not one of {self.strategies!r}")
        self._check_market(sig.exchange, sig.symbol, sig.timeframe)
        if sig.ts_event <= self._last_ts.get(sig.strategy, -1):
            return None
        self._last_ts[sig.strategy] = sig.ts_event
        self._score_round_trip(sig.strategy, sig.side, sig.price)
        if sig.ts_event > self._bar_ts:
            self._bar_ts, self._bar = sig.ts_event, {}
        elif sig.ts_event < self._bar_ts:
            return None  # its bar was overtaken before every strategy reported
        self._bar[sig.strategy] = sig
        if len(self._bar) < len(self.strategies):
            return None
        bar, self._bar = self._bar, {}
        values: dict[str, float] = {}
        for s in reversed(self.strategies):
            values.update(bar[s].values)
        calls = [(bar[s].side, bar[s].confidence) for s in self.strategies]
        return self._combine(calls, bar[self.strategies[0]].price, values, ts_init)

    def on_calls(
        self,
        exchange: str,
        symbol: str,
        timeframe: str,
        ts_event: int,
        price: float,
        calls: Sequence[tuple[SignalSide, float]],
        ts_init: int,
    ) -> AggregatedSignal:
        """What :meth:`on_signal` returns for a bar on which every strategy reports at once: one call
        (side, confidence) per strategy, in the order of ``strategies``, priced at ``price`` and
        with no values (a backtest's batch decisions), without building their Signal events.

        The bar must come after every bar seen so far (on_signal would drop a redelivered one);
        a bar still waiting for some strategy is overtaken, as on_signal does.
        """
        self._check_market(exchange, symbol, timeframe)
        if len(calls) != len(self.strategies):
            raise ValueError(
                f"{len(calls)} calls for the {len(self.strategies)} strategies {self.strategies!r}"
            )
        if ts_event <= max(self._last_ts.values(), default=-1):
            raise ValueError(f"bar {ts_event} is not after the last one seen")
        for strategy, (side, _) in zip(self.strategies, calls, strict=True):
            self._last_ts[strategy] = ts_event
            self._score_round_trip(strategy, side, price)
        self._bar_ts, self._bar = ts_event, {}
        return self._combine(calls, price, {}, ts_init)

    def _check_market(self, exchange: str, symbol: str, timeframe: str) -> None:
        market = (exchange, symbol, timeframe)
        if self._market is None:
            self._market = market
        elif market != self._market:
            raise ValueError(f"signal for {market!r} reached the aggregator of {self._market!r}")

    def _score_round_trip(self, strategy: str, side: SignalSide, price: float) -> None:
        if side == "hold":
            return
        entry = self._entries.get(strategy)
        if entry is not None:
            entry_side, entry_price = entry
            if entry_side == side:
                return
            made_money = price > entry_price if entry_side == "buy" else price < entry_price
            tally = self._hits if made_money else self._misses
            tally[strategy] += 1
        self._entries[strategy] = (side, price)

    def _combine(
        self, calls: Sequence[tuple[SignalSide, float]], price: float, values: dict[str, float], ts_init: int
    ) -> AggregatedSignal:
        """The aggregate of the current bar (``self._bar_ts``) from each strategy's (side, confidence)."""
        assert self._market is not None
        exchange, symbol, timeframe = self._market
        weights = self.weights()
        total = math.fsum(weights.values())
        pulls = {
            s: weights[s] * DIRECTION[side] * confidence
            for s, (side, confidence) in zip(self.strategies, calls, strict=True)
        }
        score = min(1.0, max(-1.0, math.fsum(pulls.values()) / total)) + 0.0  # + 0.0: no -0.0
        agg_side: SignalSide = (
            "buy" if score > self.threshold else "sell" if score < -self.threshold else "hold"
        )
        return AggregatedSignal(
            event_id=make_id("aggregated_signal", exchange, symbol, timeframe, self._bar_ts),
            ts_event=self._bar_ts,
            ts_init=ts_init,
            exchange=exchange,
            symbol=symbol,
            timeframe=timeframe,
            side=agg_side,
            score=score,
            confidence=abs(score),
            price=price,
            weights=weights,
            contributions={s: pull / total + 0.0 for s, pull in pulls.items()},
            lead_strategy=max(self.strategies, key=lambda s: abs(pulls[s])),
            values=values,
        )
