"""Faust agents: thin wiring of the core operators to topics (see :mod:`mambo.agents.app`)."""
