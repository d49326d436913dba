"""Faust agents: the pipeline's stages on Kafka through faust-streaming (start at :mod:`mambo.agents.app`).

Topology decision (issue 3, and issue 13's two stage groups): ONE agent on md.trades that runs each
market's stages fused, in the order :mod:`mambo.core.stages` dispatches them (candles, watermarks,
strategies, aggregation, indicators), and ONE agent on account.feed that runs each account's stage
(intents, risk, execution, portfolio, fused as well), as Kafka Streams fuses the processors of a
sub-topology into one task per partition, with a repartition topic between two sub-topologies. The
stages' topics (candles, signals, orders, fills, ...) are still written, for the sink and the API,
but no agent reads them back: account.feed is the one topic read back, and one topic's order is
all the account stage needs (it merges its markets in event time).

Why not an agent per stage, reading the previous stage's topic: determinism. Execution fills an order
at the next candle's open, so it must see an order before the candle after it and never before the
candle it was decided on; the portfolio marks on candles and books fills; risk reads the portfolio.
Those are reads of two topics (candles and orders) whose interleaving Kafka does not keep: an agent
on two topics sees them in whatever order the fetches arrive, so the same input could fill at another
candle's price on another run. The embedded runtime gets the order from its depth-first bus, and the
fused agent keeps that bus per market (:class:`~mambo.streams.markets.MarketPipelines`), so its
orders and fills are the reference's, id for id, whatever the partition count or number of workers.
Splitting a stage off is sound only where its input is one topic and nothing downstream waits on
its order relative to another topic (a pure observer, such as the ClickHouse sink, which is a
consumer of its own).

State: each market's stages and each account's stage, pickled, in the Faust table ``state`` (changelog
topic ``<app id>-state-changelog``, the partition of the key's input), restored on assignment.
"""

from mambo.agents.app import GUARANTEES, FaustPipeline, faust_worker

__all__ = ["GUARANTEES", "FaustPipeline", "faust_worker"]
