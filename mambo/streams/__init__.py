"""Runtimes that drive the core's stages: the in-process bus (:mod:`~mambo.streams.bus`) and the
embedded runtime (:mod:`~mambo.streams.embedded`)."""
