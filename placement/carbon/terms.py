"""What a strategy needs to count emissions: intensity per domain and an optional budget."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from placement.frozen import read_only


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
