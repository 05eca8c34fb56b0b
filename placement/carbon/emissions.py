"""Emissions of a placement, emission budgets, and the carbon terms strategies plan with.

Accounting: :func:`emissions_kg` and :func:`placement_emissions` (an :class:`Emissions`
per domain over a window), :func:`check_budget` (a :class:`BudgetCheck`). Planning:
:func:`domain_intensity` (intensity per domain from the nearest named domain above),
:func:`with_carbon` (a problem carrying :class:`~placement.problem.CarbonTerms`),
:func:`replica_kg`, :func:`idle_kg`, :func:`budget_allowance` (refusing a budget below the
idle floor with :class:`BudgetBelowIdleError`) and :func:`plan_emissions` (a
:class:`PlanEmissions`). Cap policies are :mod:`placement.carbon.policy`, prices and the
allowance position :mod:`placement.carbon.market`.

Units throughout: intensity in gCO2e/kWh, power in W, time in h, emissions in kg CO2e
(tonnes where the ETS speaks tonnes), prices in EUR per tonne CO2 (one EUA). More:
docs/carbon.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from placement.assignment import Assignment
from placement.carbon.intensity import SlotWindow
from placement.frozen import read_only
from placement.problem import CarbonTerms, Problem


def root_name(problem: Problem) -> str:
    """The site: the first root of the tree."""
    return problem.tree.names[int(np.flatnonzero(problem.tree.parents < 0)[0])]


def emissions_kg(
    load_w: NDArray[np.float64],
    intensity: NDArray[np.float64],
    step_h: float,
    *,
    grid_slots: NDArray[np.int64] | None = None,
) -> NDArray[np.float64]:
    """kg CO2e per domain and slot: ``intensity[k] · load[:, grid_slots[k]] · Δt``.

    ``load_w`` is (domains × T) watts on the periodic grid; ``intensity`` holds one value
    per window slot (g/kWh); ``grid_slots`` maps window slots to grid slots (default: the
    window is one period, slot k ↦ k). g/kWh · W/1000 · h = g; /1000 = kg.
    """
    slots = np.arange(load_w.shape[1]) if grid_slots is None else grid_slots
    if slots.shape != intensity.shape:
        raise ValueError("one grid slot per intensity value is needed")
    return load_w[:, slots] * intensity[None, :] * step_h / 1e6


@dataclass(frozen=True)
class Emissions:
    """Emissions of one placement over a window. ``kg[d, k]`` is domain ``d`` in window
    slot ``k`` (every level: a row's figure includes its racks); ``idle_kg[d]`` is the
    part drawn by idle nodes, which no placement changes."""

    domains: tuple[str, ...]
    window: SlotWindow
    kg: NDArray[np.float64]
    idle_kg: NDArray[np.float64]
    energy_kwh: NDArray[np.float64]  # per domain over the window
    hosted: int  # replicas placed

    def __post_init__(self) -> None:
        for arr in (self.kg, self.idle_kg, self.energy_kwh):
            read_only(arr)

    @property
    def total_kg(self) -> NDArray[np.float64]:
        """Per domain over the window."""
        return self.kg.sum(axis=1)

    def of(self, domain: str | None = None) -> float:
        """kg over the window for ``domain`` (default: the site, the first domain)."""
        d = 0 if domain is None else self.domains.index(domain)
        return float(self.kg[d].sum())

    @property
    def site_kg(self) -> float:
        return self.of()

    @property
    def tonnes(self) -> float:
        return self.site_kg / 1000.0

    @property
    def service_kg(self) -> float:
        """Site emissions above idle: what the placed replicas add."""
        return self.site_kg - float(self.idle_kg[0])


def placement_emissions(problem: Problem, assignment: Assignment, window: SlotWindow) -> Emissions:
    """Emissions of ``assignment`` over ``window``: its predicted periodic load (idle
    included), repeated over the window, times the window's intensity."""
    if window.grid != problem.grid:
        raise ValueError("the window is on another grid than the problem")
    load = assignment.load(problem)
    slots = window.grid_slots
    step_h = problem.grid.step_hours
    kg = emissions_kg(load, window.intensity, step_h, grid_slots=slots)
    idle = np.repeat(problem.idle_by_domain[:, None], problem.grid.slots, axis=1)
    idle_kg = emissions_kg(idle, window.intensity, step_h, grid_slots=slots).sum(axis=1)
    energy = load[:, slots].sum(axis=1) * step_h / 1000.0
    # The tree is stored parents first, so row 0 is a root: the site.
    return Emissions(problem.tree.names, window, kg, idle_kg, energy, int(assignment.hosted.sum()))


@dataclass(frozen=True)
class BudgetCheck:
    """Emissions of one domain over a window against its budget."""

    domain: str
    window: str
    budget_kg: float
    emissions_kg: float
    # The largest factor on the replicas' own (above-idle) emissions that still fits:
    # how far the placed load could grow, caps aside. None when nothing is placed.
    max_service_scale: float | None

    @property
    def fits(self) -> bool:
        return self.emissions_kg <= self.budget_kg

    @property
    def margin_kg(self) -> float:
        """Budget left (negative: over budget)."""
        return self.budget_kg - self.emissions_kg


def check_budget(emissions: Emissions, budget_kg: float, domain: str | None = None) -> BudgetCheck:
    """Does ``domain`` (default: the site) stay within ``budget_kg`` over the window?

    Emissions are linear in the replicas' power, so the largest scale of the placed
    service load that fits is (budget − idle) / (emissions − idle); below zero means
    idle nodes alone exceed the budget.
    """
    if not math.isfinite(budget_kg) or budget_kg < 0:
        raise ValueError("an emission budget must be a finite, non-negative number of kg")
    d = 0 if domain is None else emissions.domains.index(domain)
    total = float(emissions.kg[d].sum())
    idle = float(emissions.idle_kg[d])
    service = total - idle
    scale = (budget_kg - idle) / service if service > 0 else None
    return BudgetCheck(emissions.domains[d], emissions.window.label(), budget_kg, total, scale)


class BudgetBelowIdleError(ValueError):
    """An emission budget smaller than what the domain's idle nodes emit anyway."""

    def __init__(self, domain: str, budget_kg: float, floor_kg: float) -> None:
        super().__init__(
            f"emission_budget {budget_kg:,.1f} kg for {domain!r} is below its idle floor of "
            f"{floor_kg:,.1f} kg (the idle draw of its nodes over the window); raise it to "
            f"at least {floor_kg:,.1f} kg or budget another domain"
        )
        self.domain = domain
        self.budget_kg = budget_kg
        self.floor_kg = floor_kg


def domain_intensity(
    problem: Problem, by_domain: Mapping[str, NDArray[np.float64]]
) -> NDArray[np.float64]:
    """(domains × T) intensity from (T,) profiles for some domains: every domain takes
    the profile of the nearest named domain at or above it (a site's grid feeds its rows
    and racks). Raises ``ValueError`` for an unknown domain, a profile of the wrong length
    or a domain with nodes that no profile reaches."""
    tree, slots = problem.tree, problem.grid.slots
    unknown = [d for d in by_domain if d not in tree.index]
    if unknown:
        raise ValueError(tree.unknown_domain_message(unknown[0]))
    out = np.full((tree.size, slots), np.nan)
    named = np.zeros(tree.size, dtype=bool)
    for name, values in by_domain.items():
        row = np.asarray(values, dtype=np.float64)
        if row.shape != (slots,):
            raise ValueError(f"intensity for {name!r} has {row.size} values; the grid has {slots}")
        out[tree.index[name]] = row
        named[tree.index[name]] = True
    for d in range(tree.size):  # parents come first, so theirs is settled
        p = int(tree.parents[d])
        if not named[d] and p >= 0 and not np.isnan(out[p, 0]):
            out[d] = out[p]
    used = np.unique(problem.fleet.domain)
    missing = [tree.names[d] for d in used if np.isnan(out[d, 0])]
    if missing:
        raise ValueError(
            f"domain {missing[0]!r} has nodes but no intensity; give one for it or a "
            "domain above it"
        )
    return np.nan_to_num(out, nan=0.0)


def with_carbon(problem: Problem, terms: CarbonTerms) -> Problem:
    """``problem`` planned with ``terms``: strategies then count emissions, respect the
    budget, and ``cpsat`` prefers the least-emitting placement among equally good ones.
    Raises ``ValueError`` for a mis-shaped intensity or an unknown budget domain, and
    :class:`BudgetBelowIdleError` for a budget below the idle floor."""
    if terms.intensity.shape != (problem.tree.size, problem.grid.slots):
        raise ValueError(
            f"intensity is {terms.intensity.shape}; expected (domains, slots) = "
            f"({problem.tree.size}, {problem.grid.slots})"
        )
    out = replace(problem, carbon=terms)
    budget_allowance(out)
    return out


def replica_kg(
    problem: Problem, profiles: NDArray[np.float64] | None = None
) -> NDArray[np.float64]:
    """(services × domains) kg one replica emits over the window when it runs on a node
    of each domain (above node idle). ``profiles`` defaults to the services' own; the
    baselines pass the flat profile they account at. Zeros without carbon terms."""
    svc = problem.services
    p = svc.profiles if profiles is None else profiles
    terms = problem.carbon
    if terms is None:
        return np.zeros((svc.size, problem.tree.size))
    factor = terms.periods * problem.grid.step_hours / 1e6  # g/kWh · W · h → kg
    return np.asarray(np.clip(p, 0.0, None) @ terms.intensity.T * factor, dtype=np.float64)


def idle_kg(problem: Problem) -> NDArray[np.float64]:
    """(domains,) kg the idle nodes under each domain emit over the window."""
    terms = problem.carbon
    if terms is None:
        return np.zeros(problem.tree.size)
    factor = terms.periods * problem.grid.step_hours / 1e6
    per_node = problem.fleet.idle_watts * terms.intensity[problem.fleet.domain].sum(axis=1)
    leaf = np.zeros(problem.tree.size)
    np.add.at(leaf, problem.fleet.domain, per_node * factor)
    return np.asarray(problem.tree.membership.astype(np.float64) @ leaf, dtype=np.float64)


def budget_allowance(problem: Problem) -> tuple[int, float] | None:
    """The budgeted domain's index and the kg its replicas may emit above idle, or
    ``None`` without a budget. Raises ``ValueError`` for an unknown domain and
    :class:`BudgetBelowIdleError` when idle alone exceeds the budget."""
    terms = problem.carbon
    if terms is None or terms.budget_kg is None:
        return None
    name = terms.budget_domain if terms.budget_domain is not None else root_name(problem)
    if name not in problem.tree.index:
        raise ValueError(problem.tree.unknown_domain_message(name, kind="budget domain"))
    d = problem.tree.index[name]
    floor = float(idle_kg(problem)[d])
    if terms.budget_kg < floor:
        raise BudgetBelowIdleError(name, terms.budget_kg, floor)
    return d, terms.budget_kg - floor


@dataclass(frozen=True)
class PlanEmissions:
    """Emissions of a placement under a problem's carbon terms, kg over the window.
    ``kg[d]`` includes the idle of every node under ``d`` (every level)."""

    domains: tuple[str, ...]
    kg: NDArray[np.float64]
    idle_kg: NDArray[np.float64]
    periods: float
    budget_domain: str | None
    budget_kg: float | None

    def __post_init__(self) -> None:
        read_only(self.kg)
        read_only(self.idle_kg)

    @property
    def site_kg(self) -> float:
        return float(self.kg[0])

    @property
    def budget_used_kg(self) -> float | None:
        if self.budget_domain is None:
            return None
        return float(self.kg[self.domains.index(self.budget_domain)])

    @property
    def holds(self) -> bool | None:
        """Whether the budget holds; ``None`` without one. A thousandth of a gram of
        slack absorbs float summation order."""
        used = self.budget_used_kg
        if used is None or self.budget_kg is None:
            return None
        return used <= self.budget_kg + 1e-6

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kg": round(self.site_kg, 3),
            "idle_kg": round(float(self.idle_kg[0]), 3),
            "periods": self.periods,
            "by_domain_kg": {
                n: round(float(k), 3) for n, k in zip(self.domains, self.kg, strict=True)
            },
            "budget": None,
        }
        if self.budget_domain is not None and self.budget_kg is not None:
            used = self.budget_used_kg
            assert used is not None
            d = self.domains.index(self.budget_domain)
            out["budget"] = {
                "domain": self.budget_domain,
                "budget_kg": self.budget_kg,
                "emissions_kg": round(used, 3),
                "idle_floor_kg": round(float(self.idle_kg[d]), 3),
                "margin_kg": round(self.budget_kg - used, 3),
                "holds": self.holds,
            }
        return out


def plan_emissions(problem: Problem, assignment: Assignment) -> PlanEmissions:
    """Emissions per domain of ``assignment`` under ``problem.carbon`` (required)."""
    terms = problem.carbon
    if terms is None:
        raise ValueError("the problem has no carbon terms; plan it with with_carbon()")
    node_dom = problem.fleet.domain
    per_replica = replica_kg(problem)  # (S × D)
    node_kg = (per_replica[:, node_dom] * assignment.counts).sum(axis=0)  # (N,)
    leaf = np.zeros(problem.tree.size)
    np.add.at(leaf, node_dom, node_kg)
    idle = idle_kg(problem)
    kg = problem.tree.membership.astype(np.float64) @ leaf + idle
    budget = budget_allowance(problem)
    name = None if budget is None else problem.tree.names[budget[0]]
    return PlanEmissions(problem.tree.names, kg, idle, terms.periods, name, terms.budget_kg)
