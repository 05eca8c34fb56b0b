"""A placement problem: the tree, the fleet, the services and the safety margin."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from placement.fleet import Fleet
from placement.grid import Grid
from placement.services import Services
from placement.tree import PowerTree

if TYPE_CHECKING:
    from placement.carbon.terms import CarbonTerms


@dataclass(frozen=True)
class Problem:
    """Everything a strategy needs. ``current`` is an optional (services × nodes)
    replica count matrix: where replicas run now, so a re-plan can avoid moves.
    ``carbon`` (see :func:`placement.carbon.emissions.with_carbon`) adds grid intensity and an
    optional emission budget: every strategy then respects the budget, and ``cpsat``
    prefers the least-emitting of equally good placements."""

    name: str
    grid: Grid
    tree: PowerTree
    fleet: Fleet
    services: Services
    headroom: float = 0.0
    current: NDArray[np.int64] | None = None
    carbon: CarbonTerms | None = None

    @property
    def effective_caps(self) -> NDArray[np.float64]:
        """(domains × T) caps after the headroom margin: cap × (1 − headroom)."""
        return self.tree.caps * (1.0 - self.headroom)

    @property
    def idle_by_domain(self) -> NDArray[np.float64]:
        return self.fleet.idle_by_domain(self.tree.membership)

    def with_caps(self, caps: NDArray[np.float64]) -> Problem:
        return replace(self, tree=self.tree.with_caps(caps))
