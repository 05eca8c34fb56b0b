"""powercap placement core: pure functions and frozen dataclasses over numpy arrays.

Nothing in this package performs I/O against Kubernetes or the network; the
``extender`` package adapts the world to it.
"""

__version__ = "0.1.0"
