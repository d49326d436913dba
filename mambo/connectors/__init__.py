"""Connectors: sources that bring market data in (file replay) and sinks that keep it (ClickHouse).

Start with :mod:`mambo.connectors.replay` and :mod:`mambo.connectors.clickhouse`;
:mod:`mambo.connectors.history` fills the history from traders' files and over REST.
"""
