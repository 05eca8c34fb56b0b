"""Carbon-aware caps, emissions of a placement, and their price under the EU ETS.

Units throughout: intensity in gCO2e/kWh, power in W, time in h, emissions in kg CO2e
(tonnes where the ETS speaks tonnes), prices in EUR per tonne CO2 (one EUA).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from placement.assignment import Assignment
from placement.frozen import read_only
from placement.intensity import SlotWindow
from placement.problem import Problem
from placement.validation import ProblemsError

# ---------------------------------------------------------------- cap policy


@dataclass(frozen=True)
class CapPolicy:
    """A piecewise-linear map from intensity (g/kWh) to a cap fraction, with a floor.

    Between points the fraction is interpolated; below the first point it is the first
    fraction, above the last the last; it never drops under ``floor``. Fractions lie in
    (0, 1] and never rise with intensity, so a dirtier grid never buys a higher cap and
    a carbon-aware cap never exceeds the cap it scales.
    """

    intensities: tuple[float, ...]
    fractions: tuple[float, ...]
    floor: float = 0.0

    def __post_init__(self) -> None:
        xs, ys = self.intensities, self.fractions
        if not xs or len(xs) != len(ys):
            raise ValueError("a cap policy needs one fraction per intensity, at least one point")
        if any(not math.isfinite(x) or x < 0 for x in xs):
            raise ValueError("policy intensities must be finite and non-negative (g/kWh)")
        if any(b <= a for a, b in pairwise(xs)):
            raise ValueError("policy intensities must be strictly increasing")
        if any(not (0.0 < y <= 1.0) for y in ys):
            raise ValueError("policy fractions must be in (0, 1]: a cap can only be lowered")
        if any(b > a for a, b in pairwise(ys)):
            raise ValueError(
                "policy fractions must not rise with intensity (a dirtier grid never "
                "earns a higher cap)"
            )
        if not (0.0 <= self.floor <= 1.0):
            raise ValueError("the policy floor must be in [0, 1]")

    @staticmethod
    def parse(text: str, floor: float = 0.0) -> CapPolicy:
        """``"200:1.0,400:0.8,600:0.6"`` — intensity:fraction pairs, in order."""
        xs: list[float] = []
        ys: list[float] = []
        for part in (p.strip() for p in text.split(",")):
            pieces = part.split(":")
            try:
                if len(pieces) != 2:
                    raise ValueError
                xs.append(float(pieces[0]))
                ys.append(float(pieces[1]))
            except ValueError:
                raise ValueError(
                    f"bad policy point {part!r}; write intensity:fraction pairs such as "
                    "'200:1.0,400:0.8,600:0.6'"
                ) from None
        return CapPolicy(tuple(xs), tuple(ys), floor)

    def fraction(self, intensity: float) -> float:
        """Cap fraction for one (live) intensity value."""
        return float(self.fractions_of(np.array([intensity], dtype=np.float64))[0])

    def fractions_of(self, intensity: NDArray[np.float64]) -> NDArray[np.float64]:
        """Cap fractions for an array of intensities (a forecast)."""
        values = np.interp(intensity, self.intensities, self.fractions)
        return np.maximum(values, self.floor)

    def describe(self) -> str:
        points = ",".join(
            f"{x:g}:{y:g}" for x, y in zip(self.intensities, self.fractions, strict=True)
        )
        return f"{points} floor {self.floor:g}"


# Full power on a clean grid (≤ 150 g/kWh: wind- or nuclear-heavy hours), 30% less on a
# coal-heavy one (≥ 450 g/kWh), linear between; the floor keeps any user policy from
# starving the site below half its cap.
DEFAULT_POLICY = CapPolicy((150.0, 450.0), (1.0, 0.7), floor=0.5)


def cap_schedule(
    problem: Problem,
    intensity: NDArray[np.float64],
    policies: Mapping[str, CapPolicy],
) -> NDArray[np.float64]:
    """(domains × T) caps: each named domain's cap times its policy's fraction in every
    slot; other domains keep theirs. ``intensity`` is the (T,) forecast on the grid."""
    tree = problem.tree
    values = np.asarray(intensity, dtype=np.float64)
    if values.shape != (problem.grid.slots,):
        raise ValueError(
            f"intensity has {values.size} values; the grid has {problem.grid.slots} slots"
        )
    unknown = [d for d in policies if d not in tree.index]
    if unknown:
        raise ValueError(
            f"unknown domain {unknown[0]!r}; domains are: {', '.join(tree.names[:10])}"
            + (", …" if tree.size > 10 else "")
        )
    caps = np.array(tree.caps, dtype=np.float64)
    for name, policy in policies.items():
        d = tree.index[name]
        caps[d] = caps[d] * policy.fractions_of(values)
    return caps


def carbon_aware(
    problem: Problem,
    intensity: NDArray[np.float64],
    policy: CapPolicy = DEFAULT_POLICY,
    domains: Sequence[str] | None = None,
) -> Problem:
    """The problem with carbon-aware caps on ``domains`` (default: the root, the site).

    Only the named domains are scaled: the site's cap binds everything beneath it, and
    scaling racks too would cut the same watts twice.
    """
    names = list(domains) if domains is not None else [root_name(problem)]
    caps = cap_schedule(problem, intensity, dict.fromkeys(names, policy))
    return problem.with_caps(caps)


def carbon_aware_rows(
    problem: Problem,
    intensity: NDArray[np.float64],
    policy: CapPolicy = DEFAULT_POLICY,
    domains: Sequence[str] | None = None,
) -> Problem:
    """Like :func:`carbon_aware`, with a (domains × T) intensity: each named domain's
    cap follows its own row (the grid its site draws from, see
    :func:`domain_intensity`). ``domains`` defaults to the site."""
    tree = problem.tree
    rows = np.asarray(intensity, dtype=np.float64)
    if rows.shape != (tree.size, problem.grid.slots):
        raise ValueError(
            f"intensity is {rows.shape}; expected (domains, slots) = "
            f"({tree.size}, {problem.grid.slots})"
        )
    names = list(domains) if domains is not None else [root_name(problem)]
    unknown = [d for d in names if d not in tree.index]
    if unknown:
        raise ValueError(
            f"unknown domain {unknown[0]!r}; domains are: {', '.join(tree.names[:10])}"
            + (", …" if tree.size > 10 else "")
        )
    caps = np.array(tree.caps, dtype=np.float64)
    for name in names:
        d = tree.index[name]
        caps[d] = caps[d] * policy.fractions_of(rows[d])
    return problem.with_caps(caps)


def root_name(problem: Problem) -> str:
    """The site: the first root of the tree."""
    return problem.tree.names[int(np.flatnonzero(problem.tree.parents < 0)[0])]


# ---------------------------------------------------------------- emissions


def emissions_kg(
    load_w: NDArray[np.float64],
    intensity: NDArray[np.float64],
    step_h: float,
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
    kg = emissions_kg(load, window.intensity, step_h, slots)
    idle = np.repeat(problem.idle_by_domain[:, None], problem.grid.slots, axis=1)
    idle_kg = emissions_kg(idle, window.intensity, step_h, slots).sum(axis=1)
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


# ---------------------------------------------------------------- EU ETS


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


def read_eua_csv(
    path: Path | str, price_column: str = "settle", date_column: str | None = None
) -> EuaPrice:
    """Daily EUA prices from a CSV with a header (e.g. ETS-Watch's ``market_prices.csv``:
    ``datetime`` and ``settle``). ``date_column`` defaults to the first column. Rows with
    an empty price are skipped (no trade that day); other bad rows are errors."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise PriceSeriesError([f"cannot read the file: {exc.strerror or exc}"], source) from None
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise PriceSeriesError(["the file is empty; expected a header row"], source)
    header = [h.strip() for h in rows[0]]
    if price_column not in header:
        raise PriceSeriesError(
            [f"no price column {price_column!r}; the columns are: {', '.join(header)}"], source
        )
    p_col = header.index(price_column)
    if date_column is not None and date_column not in header:
        raise PriceSeriesError(
            [f"no date column {date_column!r}; the columns are: {', '.join(header)}"], source
        )
    d_col = 0 if date_column is None else header.index(date_column)
    days: list[date] = []
    prices: list[float] = []
    problems: list[str] = []
    for number, row in enumerate(rows[1:], start=2):
        if not row or len(row) <= max(p_col, d_col):
            continue
        d_text, p_text = row[d_col].strip(), row[p_col].strip()
        if not p_text:
            continue
        try:
            day = datetime.fromisoformat(d_text).date()
            price = float(p_text)
        except ValueError:
            problems.append(
                f"row {number}: expected a date (2020-06-01) and a price, got {d_text!r}, "
                f"{p_text!r}"
            )
        else:
            if not math.isfinite(price) or price < 0:
                problems.append(f"row {number}: price {p_text} is not a non-negative number")
            elif days and day <= days[-1]:
                problems.append(f"row {number}: {day} is not after the previous row; sort the file")
            else:
                days.append(day)
                prices.append(price)
        if len(problems) >= 10:
            break
    if problems:
        raise PriceSeriesError(problems, source)
    if not days:
        raise PriceSeriesError([f"no prices in column {price_column!r}"], source)
    return EuaPrice(
        days=np.array(days, dtype="datetime64[D]"),
        settles=np.array(prices, dtype=np.float64),
        source=source,
    )


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
    emissions: Emissions, allocation_t: float, price: EuaPrice, domain: str | None = None
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


# ---------------------------------------------------------------- planning with emissions


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
        raise ValueError(
            f"unknown domain {unknown[0]!r}; domains are: {', '.join(tree.names[:10])}"
            + (", …" if tree.size > 10 else "")
        )
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
        raise ValueError(
            f"unknown budget domain {name!r}; domains are: {', '.join(problem.tree.names[:10])}"
            + (", …" if problem.tree.size > 10 else "")
        )
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
