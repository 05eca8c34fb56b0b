"""Read-only numpy arrays for the core's frozen dataclasses.

A frozen dataclass stops attribute assignment, not writes into an array it holds; marking
the array read-only makes the value truly immutable, so one caller cannot change what
another was handed.
"""

from __future__ import annotations

from typing import Any, TypeVar

from numpy.typing import NDArray

A = TypeVar("A", bound=NDArray[Any])


def read_only(a: A) -> A:
    """``a`` itself, no longer writable."""
    a.setflags(write=False)
    return a
