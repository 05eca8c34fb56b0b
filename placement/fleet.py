"""Nodes: where replicas run. Each node hangs off one leaf domain."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Fleet:
    """Parallel arrays over nodes."""

    names: tuple[str, ...]
    domain: NDArray[np.int64]  # index into PowerTree.names
    gpus: NDArray[np.int64]
    idle_watts: NDArray[np.float64]
    index: dict[str, int] = field(repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        if not self.index:
            object.__setattr__(self, "index", {n: i for i, n in enumerate(self.names)})
        for arr in (self.domain, self.gpus, self.idle_watts):
            arr.setflags(write=False)

    @property
    def size(self) -> int:
        return len(self.names)

    def idle_by_domain(self, membership: NDArray[np.bool_]) -> NDArray[np.float64]:
        """Idle watts summed into every domain (leaf and above): a vector over domains."""
        leaf_idle = np.zeros(membership.shape[0], dtype=np.float64)
        np.add.at(leaf_idle, self.domain, self.idle_watts)
        return membership.astype(np.float64) @ leaf_idle
