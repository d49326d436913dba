"""Mambo: a Kafka-native streaming trading pipeline.

Where to start reading: :mod:`mambo.schemas` (the events and topics), :mod:`mambo.core` (the pure
trading logic), :mod:`mambo.streams` (the runtimes that drive it), :mod:`mambo.cli` (the commands).
"""

__version__ = "0.1.0"
