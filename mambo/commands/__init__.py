"""The ``mambo`` command's areas: each module defines ``register(app)`` and is listed in mambo.cli."""
