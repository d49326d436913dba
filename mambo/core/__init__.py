"""Pure, incremental trading logic: no I/O, no asyncio, no Kafka, ClickHouse or HTTP.

Where to start reading: :mod:`mambo.core.stages` shows how the operators fit together;
then :mod:`~mambo.core.candles`, :mod:`~mambo.core.indicators`, :mod:`~mambo.core.strategies`,
:mod:`~mambo.core.aggregation`, :mod:`~mambo.core.intents`, :mod:`~mambo.core.risk`,
:mod:`~mambo.core.execution` and :mod:`~mambo.core.portfolio`; for perpetual futures,
:mod:`~mambo.core.margin` (leverage brackets, margin, funding, liquidation). Every operator keeps its
state in a plain object per market key that pickles and compares, so Faust tables and checkpoints can
hold it.
"""
