"""Carbon options of the planning commands, read once into what the planner needs."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import typer
from numpy.typing import NDArray

from placement.carbon.emissions import (
    BudgetBelowIdleError,
    Emissions,
    domain_intensity,
    root_name,
    with_carbon,
)
from placement.carbon.intensity import (
    IntensitySeries,
    on_grid,
    whole_days,
)
from placement.carbon.intensity_csv import IntensityCsvError, read_intensity_csv
from placement.carbon.policy import DEFAULT_POLICY, CapPolicy, carbon_aware_rows
from placement.metrics import Metrics
from placement.problem import CarbonTerms, Problem
from placement.strategies import Plan
from powercap.console import fail, print_problems
from powercap.options import (
    CSV_OPTIONS,
    BudgetDomainOpt,
    BudgetOpt,
    DayOpt,
    FloorOpt,
    IntensitySpecsOpt,
    PolicyDomainsOpt,
    PolicyOpt,
    TimeColumnOpt,
    TzOpt,
    UnitOpt,
    ValueColumnOpt,
    WindowKind,
    WindowOpt,
)


def policy_of(text: str | None, floor: float | None) -> CapPolicy:
    if text is None:
        if floor is None:
            return DEFAULT_POLICY
        return CapPolicy(DEFAULT_POLICY.intensities, DEFAULT_POLICY.fractions, floor)
    return CapPolicy.parse(text, DEFAULT_POLICY.floor if floor is None else floor)


def read_intensity(
    path: Path, time_column: str | None, value_column: str | None, *, tz: str, unit: str
) -> IntensitySeries:
    try:
        return read_intensity_csv(path, time_column, value_column, tz=tz, unit=unit)
    except IntensityCsvError as exc:
        option = CSV_OPTIONS.get(exc.column or "")
        hint = f" (--intensity; set {option})" if option else " (--intensity, --tz, --unit)"
        print_problems(exc, hint)
        raise typer.Exit(2) from None


def planning_day(series: Sequence[IntensitySeries], problem: Problem, text: str | None) -> date:
    """The day ``--day`` names, or the last whole day every series covers."""
    common = set(whole_days(series[0], problem.grid))
    for other in series[1:]:
        common &= set(whole_days(other, problem.grid))
    covered = sorted(common)
    if not covered:
        what = "the series does not" if len(series) == 1 else "the series do not together"
        raise fail(f"--intensity: {what} cover one whole day of the grid")
    if text is None:
        return covered[-1]
    try:
        chosen = date.fromisoformat(text)
    except ValueError:
        raise fail(f"--day: expected YYYY-MM-DD, got {text!r}") from None
    if chosen not in set(covered):
        raise fail(
            f"--day: {chosen} is not covered by the intensity series; "
            f"pick a day from {covered[0]} to {covered[-1]}"
        )
    return chosen


@dataclass(frozen=True)
class CarbonOptions:
    """The raw values of the options above, as one command received them."""

    intensity: list[str] | None = None
    time_column: str | None = None
    value_column: str | None = None
    tz: str = "UTC"
    unit: str = "g/kWh"
    day: str | None = None
    window: WindowKind = WindowKind.day
    policy: str | None = None
    floor: float | None = None
    domains: list[str] | None = None
    emission_budget: float | None = None
    budget_domain: str | None = None


@dataclass(frozen=True)
class CarbonSetup:
    """What ``plan``/``compare`` report about the carbon terms they planned with."""

    window: str
    sources: dict[str, str]
    policy: CapPolicy | None
    policy_domains: list[str]

    def as_dict(self) -> dict[str, Any]:
        policy = None
        if self.policy is not None:
            policy = {
                "points": [
                    list(p)
                    for p in zip(self.policy.intensities, self.policy.fractions, strict=True)
                ],
                "floor": self.policy.floor,
                "domains": self.policy_domains,
            }
        return {"window": self.window, "intensity": self.sources, "policy": policy}


def intensity_specs(problem: Problem, texts: list[str]) -> dict[str, Path]:
    """``CSV`` (the site) or ``DOMAIN=CSV`` → {domain: path}; a path that exists as
    written is a path even if it holds '='."""
    tree = problem.tree
    out: dict[str, Path] = {}
    for text in texts:
        if "=" in text and not Path(text).exists():
            name, path = text.split("=", 1)
            name = name.strip()
            if name not in tree.index:
                raise fail(
                    "--intensity: " + tree.unknown_domain_message(name, detail=f" in {text!r}")
                )
        else:
            name, path = root_name(problem), text
        if name in out:
            raise fail(
                f"--intensity: two files for {name!r}; give one CSV per domain "
                "(DOMAIN=CSV for all but the site)"
            )
        out[name] = Path(path)
    return out


def planning_problem(problem: Problem, opts: CarbonOptions) -> tuple[Problem, CarbonSetup | None]:
    """``problem`` with the carbon terms (and carbon-aware caps) the options ask for;
    ``(problem, None)`` without ``--intensity``. Bad input exits 2 naming the option."""
    if not opts.intensity:
        _reject_without_intensity(opts)
        return problem, None
    _check_budget_options(problem, opts)
    specs = intensity_specs(problem, opts.intensity)
    series = {
        name: read_intensity(path, opts.time_column, opts.value_column, tz=opts.tz, unit=opts.unit)
        for name, path in specs.items()
    }
    chosen = planning_day(list(series.values()), problem, opts.day)
    intensity, periods, label = _window_intensity(problem, series, chosen, opts.window)
    policy = None
    policy_domains: list[str] = []
    if opts.policy is not None or opts.floor is not None or opts.domains:
        policy = _policy_option(opts)
        policy_domains = list(opts.domains or specs)
        try:
            problem = carbon_aware_rows(problem, intensity, policy, domains=policy_domains)
        except ValueError as exc:
            raise fail(f"--domain: {exc}") from None
    terms = CarbonTerms(
        intensity, float(periods), opts.emission_budget, opts.budget_domain, label=label
    )
    planned = _with_terms(problem, terms)
    sources = {name: str(path) for name, path in specs.items()}
    return planned, CarbonSetup(label, sources, policy, policy_domains)


def _reject_without_intensity(opts: CarbonOptions) -> None:
    """Exit 2 naming the first carbon option given, which needs ``--intensity``."""
    needs = [
        flag
        for flag, given in (
            ("--emission-budget", opts.emission_budget is not None),
            ("--budget-domain", opts.budget_domain is not None),
            ("--policy", opts.policy is not None),
            ("--floor", opts.floor is not None),
            ("--domain", bool(opts.domains)),
            ("--day", opts.day is not None),
        )
        if given
    ]
    if needs:
        raise fail(
            f"{needs[0]} needs --intensity: give a carbon-intensity CSV (or DOMAIN=CSV per site)"
        )


def _check_budget_options(problem: Problem, opts: CarbonOptions) -> None:
    """Exit 2 unless ``--emission-budget`` and ``--budget-domain`` fit together and
    ``problem``."""
    if opts.budget_domain is not None and opts.emission_budget is None:
        raise fail("--budget-domain needs --emission-budget (kg CO2e over the window)")
    if opts.emission_budget is not None and not (
        opts.emission_budget >= 0 and np.isfinite(opts.emission_budget)
    ):
        raise fail("--emission-budget: give a finite, non-negative number of kg CO2e")
    if opts.budget_domain is not None and opts.budget_domain not in problem.tree.index:
        raise fail(f"--budget-domain: {problem.tree.unknown_domain_message(opts.budget_domain)}")


def _window_intensity(
    problem: Problem, series: dict[str, IntensitySeries], chosen: date, window: WindowKind
) -> tuple[NDArray[np.float64], int, str]:
    """Every domain's per-slot intensity over the window (``chosen``, or its calendar
    month), the periods the window spans and its label; exit 2 when a series falls short."""
    try:
        if window is WindowKind.day:
            start, periods = chosen, 1
            label = f"{chosen} (1 day)"
        else:
            start = chosen.replace(day=1)
            periods = ((start + timedelta(days=32)).replace(day=1) - start).days
            label = f"{start:%Y-%m} ({periods} days)"
        rows = {name: on_grid(s, problem.grid, start, days=periods) for name, s in series.items()}
        return domain_intensity(problem, rows), periods, label
    except ValueError as exc:
        raise fail(f"--intensity/--day/--window: {exc}") from None


def _policy_option(opts: CarbonOptions) -> CapPolicy:
    try:
        return policy_of(opts.policy, opts.floor)
    except ValueError as exc:
        raise fail(f"--policy/--floor: {exc}") from None


def _with_terms(problem: Problem, terms: CarbonTerms) -> Problem:
    """``problem`` planned with ``terms``; exit 2 when the budget cannot hold (naming the
    idle floor when it is below it)."""
    try:
        return with_carbon(problem, terms)
    except BudgetBelowIdleError as exc:
        raise fail(
            f"--emission-budget: {exc.budget_kg:,.1f} kg is below the idle floor of "
            f"{exc.domain!r}, {exc.floor_kg:,.1f} kg (its nodes' idle draw over {terms.label}); "
            f"raise --emission-budget to at least {exc.floor_kg:,.1f} or pick another "
            "--budget-domain"
        ) from None
    except ValueError as exc:
        raise fail(f"--emission-budget/--budget-domain: {exc}") from None


@dataclass(frozen=True)
class Side:
    """One planning run: its problem (caps), plan, metrics and emissions."""

    problem: Problem
    plan: Plan
    metrics: Metrics
    emissions: Emissions


# The carbon options as the planning commands declare them; with_carbon_options adds them.
_CARBON_PARAMETERS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
    for name, kind, default in (
        ("intensity", IntensitySpecsOpt, None),
        ("time_column", TimeColumnOpt, None),
        ("value_column", ValueColumnOpt, None),
        ("tz", TzOpt, "UTC"),
        ("unit", UnitOpt, "g/kWh"),
        ("day", DayOpt, None),
        ("window", WindowOpt, WindowKind.day),
        ("policy", PolicyOpt, None),
        ("floor", FloorOpt, None),
        ("domains", PolicyDomainsOpt, None),
        ("emission_budget", BudgetOpt, None),
        ("budget_domain", BudgetDomainOpt, None),
    )
]


def with_carbon_options(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` with the carbon planning options (``--intensity`` … ``--budget-domain``)
    added to its command line; it receives them as one keyword argument,
    ``carbon: CarbonOptions``. One place declares them for every planning command."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "carbon"]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        carbon = CarbonOptions(**{p.name: kwargs.pop(p.name) for p in _CARBON_PARAMETERS})
        command(*args, carbon=carbon, **kwargs)

    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*own, *_CARBON_PARAMETERS]
    )
    wrapper.__annotations__ = {p.name: p.annotation for p in [*own, *_CARBON_PARAMETERS]} | {
        "return": signature.return_annotation
    }
    return wrapper
