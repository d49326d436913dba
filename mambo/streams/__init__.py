"""Runtimes that drive the core's stages: the in-process bus (:mod:`~mambo.streams.bus`) and the
embedded runtime (:mod:`~mambo.streams.embedded`); the exchange venue that sends the execution
stage's orders through ccxt and brings the fills back (:mod:`~mambo.streams.exchange_venue`, wired
with a market data source in :mod:`mambo.live`)."""
