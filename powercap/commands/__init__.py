"""The command groups of the ``powercap`` CLI; each module has ``register(app)``."""
