"""A placement problem: the tree, the fleet, the services, the safety margin and, optionally,
the carbon terms emissions are counted with."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from placement.fleet import Fleet
from placement.frozen import read_only
from placement.grid import Grid
from placement.services import Services
from placement.throughput import Provisioning
from placement.tree import PowerTree


@dataclass(frozen=True)
class CarbonTerms:
    """What a strategy needs to count emissions: the intensity every domain's power is
    drawn at and, optionally, an emission budget.

    ``intensity`` is (domains × T) g/kWh on the problem's grid — for each grid slot the
    mean over the window's ``periods`` (1 for a day; the number of days for a month).
    A placement is a periodic plan, so its emissions over the window are exactly
    ``periods · Σ_t intensity[d, t] · watts(t) · Δt`` per domain: using the window's
    mean per slot is not an approximation. Nodes draw at the row of the domain they
    hang off; a row of a higher domain only matters if nodes hang off it.

    ``budget_kg`` (kg CO2e over the window) holds for ``budget_domain`` (default: the
    site, the first root): idle of every node beneath it plus every replica placed
    beneath it. Idle counts because it is drawn whatever is placed, so the budget must
    at least cover it (see :func:`budget_allowance`).
    """

    intensity: NDArray[np.float64]
    periods: float = 1.0
    budget_kg: float | None = None
    budget_domain: str | None = None
    label: str = ""

    def __post_init__(self) -> None:
        values = np.asarray(self.intensity, dtype=np.float64)
        if values.ndim != 2:
            raise ValueError("intensity must be a (domains × slots) matrix")
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise ValueError("intensity values must be finite and non-negative")
        if not (math.isfinite(self.periods) and self.periods > 0):
            raise ValueError("periods must be a positive number of grid periods")
        if self.budget_kg is not None and not (
            math.isfinite(self.budget_kg) and self.budget_kg >= 0
        ):
            raise ValueError("emission_budget must be a finite, non-negative number of kg")
        object.__setattr__(self, "intensity", read_only(values))


@dataclass(frozen=True)
class Problem:
    """Everything a strategy needs. ``current`` is an optional (services × nodes)
    replica count matrix: where replicas run now, so a re-plan can avoid moves.
    ``carbon`` (see :func:`placement.carbon.emissions.with_carbon`) adds grid intensity and an
    optional emission budget: every strategy then respects the budget, and ``cpsat``
    prefers the least-emitting of equally good placements. ``provisioning`` (see
    :mod:`placement.provisioning`) says which services run at a GPU power limit; their
    profiles are already clipped at it."""

    name: str
    grid: Grid
    tree: PowerTree
    fleet: Fleet
    services: Services
    headroom: float = 0.0
    current: NDArray[np.int64] | None = None
    carbon: CarbonTerms | None = None
    provisioning: Provisioning | None = None

    @property
    def effective_caps(self) -> NDArray[np.float64]:
        """(domains × T) caps after the headroom margin: cap × (1 − headroom)."""
        return self.tree.caps * (1.0 - self.headroom)

    @property
    def idle_by_domain(self) -> NDArray[np.float64]:
        return self.fleet.idle_by_domain(self.tree.membership)

    def with_caps(self, caps: NDArray[np.float64]) -> Problem:
        return replace(self, tree=self.tree.with_caps(caps))
