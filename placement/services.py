"""Services and their per-replica power profiles."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Services:
    """Parallel arrays over services.

    ``profiles[s, t]`` is the watts one replica of service ``s`` draws above node
    idle in slot ``t`` (a chosen quantile, p95 by default, of what was measured);
    ``nameplate`` is the per-replica TDP sum above idle, used by the nameplate
    baseline. ``demand`` is how many replicas the service wants.
    """

    names: tuple[str, ...]
    demand: NDArray[np.int64]
    gpus: NDArray[np.int64]  # per replica
    priority: NDArray[np.int64]
    nameplate: NDArray[np.float64]
    profiles: NDArray[np.float64]
    index: dict[str, int] = field(repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        if not self.index:
            object.__setattr__(self, "index", {n: i for i, n in enumerate(self.names)})
        for arr in (self.demand, self.gpus, self.priority, self.nameplate, self.profiles):
            arr.setflags(write=False)

    @property
    def size(self) -> int:
        return len(self.names)

    @property
    def peaks(self) -> NDArray[np.float64]:
        """Per-replica peak watts over the period."""
        return self.profiles.max(axis=1) if self.size else np.zeros(0)
