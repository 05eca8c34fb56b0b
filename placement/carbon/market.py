"""EU ETS: allowance (EUA) prices, the cost of emissions, the allowance position, and savings.

:class:`EuaPrice` is a constant price or a daily series (read from CSV by
:mod:`placement.carbon.price_csv`, which reports a bad file as a
:class:`PriceSeriesError`); a day without a settle takes the last one before it, and a
day before the first settle or more than :data:`MAX_PRICE_GAP_DAYS` days after the last
is an error. :func:`emission_cost_eur` prices the emissions of a window slot by slot;
:func:`allowance_position` gives an :class:`AllowancePosition` (surplus or deficit
against an allocation, valued at the window's mean price); :func:`savings` gives the
:class:`Savings` of a carbon-aware placement over a carbon-oblivious one. More:
docs/carbon.md, "EU ETS".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from placement.carbon.emissions import Emissions
from placement.carbon.intensity import SlotWindow
from placement.frozen import read_only
from placement.validation import ProblemsError


class PriceSeriesError(ProblemsError):
    """A price CSV that cannot be used; ``problems`` lists ``row N: …`` lines."""


# Exchanges do not settle at weekends and holidays; a gap longer than this after the
# last settle means the series does not cover the day, not a closed market.
MAX_PRICE_GAP_DAYS = 7


@dataclass(frozen=True)
class EuaPrice:
    """An EUA price in EUR/tCO2: a constant, or daily settles carried forward to each
    day (``days`` as numpy ``datetime64[D]``, increasing)."""

    constant: float | None = None
    days: NDArray[np.datetime64] | None = None
    settles: NDArray[np.float64] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if (self.constant is None) == (self.days is None or self.settles is None):
            raise ValueError("give either a constant price or a series of days and settles")
        if self.constant is not None and (not math.isfinite(self.constant) or self.constant < 0):
            raise ValueError("an EUA price must be a finite, non-negative EUR/tCO2")
        if self.days is not None and self.settles is not None:
            if self.days.size == 0 or self.days.shape != self.settles.shape:
                raise ValueError("a price series needs one settle per day, at least one")
            read_only(self.days)
            read_only(self.settles)

    def on(self, days: NDArray[np.datetime64]) -> NDArray[np.float64]:
        """Price on each day: the constant, or the last settle on or before it."""
        if self.constant is not None:
            return np.full(days.shape, self.constant)
        assert self.days is not None and self.settles is not None
        days = days.astype("datetime64[D]")
        at = np.searchsorted(self.days, days, side="right") - 1
        first, last = self.days[0], self.days[-1]
        if np.any(at < 0):
            raise ValueError(
                f"the EUA price series{' ' + self.source if self.source else ''} starts on "
                f"{first}; the window starts before it. Use a constant price or a longer series"
            )
        late = days > last + np.timedelta64(MAX_PRICE_GAP_DAYS, "D")
        if np.any(late):
            raise ValueError(
                f"the EUA price series{' ' + self.source if self.source else ''} ends on "
                f"{last}; the window reaches {days[late][-1]}. Use a constant price or a "
                "longer series"
            )
        return self.settles[at]

    def describe(self) -> str:
        if self.constant is not None:
            return f"{self.constant:g} EUR/t"
        assert self.days is not None
        return f"daily settle from {self.source or 'series'} ({self.days[0]} … {self.days[-1]})"


def _slot_days(window: SlotWindow) -> NDArray[np.datetime64]:
    """UTC day of each window slot's start."""
    return (window.edges_s[:-1].astype("datetime64[s]")).astype("datetime64[D]")


def emission_cost_eur(emissions: Emissions, price: EuaPrice, domain: str | None = None) -> float:
    """EUR: Σ over slots of tonnes emitted in the slot × the EUA price of its UTC day."""
    d = 0 if domain is None else emissions.domains.index(domain)
    prices = price.on(_slot_days(emissions.window))
    return float(emissions.kg[d] @ prices) / 1000.0


@dataclass(frozen=True)
class AllowancePosition:
    """Allowances held against emissions, in tCO2: a surplus can be sold, a deficit
    must be bought (at ``price_eur``, the mean price over the window)."""

    allocation_t: float
    emissions_t: float
    price_eur: float

    @property
    def surplus_t(self) -> float:
        """allocation − emissions; negative is a deficit."""
        return self.allocation_t - self.emissions_t

    @property
    def value_eur(self) -> float:
        return self.surplus_t * self.price_eur


def allowance_position(
    emissions: Emissions, allocation_t: float, price: EuaPrice, *, domain: str | None = None
) -> AllowancePosition:
    """The allowance position of ``domain`` (default: the site) over the window."""
    if not math.isfinite(allocation_t) or allocation_t < 0:
        raise ValueError("an allocation must be a finite, non-negative number of tonnes")
    d = 0 if domain is None else emissions.domains.index(domain)
    tonnes = float(emissions.kg[d].sum()) / 1000.0
    mean_price = float(price.on(_slot_days(emissions.window)).mean())
    return AllowancePosition(allocation_t, tonnes, mean_price)


@dataclass(frozen=True)
class Savings:
    """A carbon-aware placement against a carbon-oblivious one over the same window.

    A replica's profile does not depend on the node it runs on, so on one grid, at
    equal hosted replicas per service, both emit the same; what carbon-aware caps save
    comes from hosting less, or another mix, in dirty hours. (Sites on different grids
    are another matter: see :class:`CarbonTerms` and ``cpsat``'s emissions tier.)
    ``kg_per_replica`` (above idle) puts the two on a per-unit-of-service footing beside
    the totals.
    """

    oblivious_kg: float
    aware_kg: float
    oblivious_eur: float
    aware_eur: float
    oblivious_hosted: int
    aware_hosted: int
    oblivious_kg_per_replica: float | None
    aware_kg_per_replica: float | None

    @property
    def saved_kg(self) -> float:
        return self.oblivious_kg - self.aware_kg

    @property
    def saved_eur(self) -> float:
        return self.oblivious_eur - self.aware_eur

    @property
    def saved_fraction(self) -> float | None:
        return self.saved_kg / self.oblivious_kg if self.oblivious_kg > 0 else None


def savings(oblivious: Emissions, aware: Emissions, price: EuaPrice) -> Savings:
    """Site emissions and cost saved by ``aware`` over ``oblivious`` (same window)."""
    a, b = oblivious.window, aware.window
    if (a.grid, a.start_s, a.slots) != (b.grid, b.start_s, b.slots):
        raise ValueError("compare placements over the same window")

    def per_replica(e: Emissions) -> float | None:
        return e.service_kg / e.hosted if e.hosted else None

    return Savings(
        oblivious.site_kg,
        aware.site_kg,
        emission_cost_eur(oblivious, price),
        emission_cost_eur(aware, price),
        oblivious.hosted,
        aware.hosted,
        per_replica(oblivious),
        per_replica(aware),
    )
