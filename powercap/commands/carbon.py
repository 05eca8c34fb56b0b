"""``powercap carbon report``: emissions, EU ETS cost and allowance position of a plan,
carbon-oblivious against carbon-aware caps, over a day or a month of real intensity.

::

    powercap carbon report site.yaml --intensity gb_ci.csv --day 2020-06-01 \
        --price-series market_prices.csv --emission-budget 5000 --report out/carbon

:func:`register` adds the ``carbon`` command group to a typer app.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from numpy.typing import NDArray
from rich.table import Table
from rich.text import Text

from placement.carbon.emissions import (
    BudgetCheck,
    check_budget,
    placement_emissions,
    root_name,
)
from placement.carbon.intensity import (
    IntensitySeries,
    SlotWindow,
    day_window,
    month_window,
    on_grid,
)
from placement.carbon.market import (
    AllowancePosition,
    EuaPrice,
    PriceSeriesError,
    Savings,
    allowance_position,
    emission_cost_eur,
    savings,
)
from placement.carbon.policy import DEFAULT_POLICY, CapPolicy, carbon_aware
from placement.carbon.price_csv import read_eua_csv
from placement.problem import Problem
from placement.strategies import STRATEGY_NAMES
from powercap.carbon_report import write_carbon_report
from powercap.carbon_setup import Side, planning_day, policy_of, read_intensity
from powercap.console import (
    OutputFormat,
    emit_json,
    fail,
    load_scenario,
    print_problems,
    progress_display,
    stderr,
    stdout,
)
from powercap.options import WindowKind, report_dir
from powercap.plans import solve

DEFAULT_TIME_LIMIT_S = 10.0


carbon_app = typer.Typer(
    help="Carbon-aware caps, emissions and EU ETS cost of a placement.",
    no_args_is_help=True,
    add_completion=False,
)


@carbon_app.command("report")
def report(
    scenario: Annotated[
        Path | None,
        typer.Argument(help="Scenario file; omit it for the embedded default.", show_default=False),
    ] = None,
    intensity: Annotated[
        Path | None,
        typer.Option(
            "--intensity",
            help="Carbon-intensity CSV with a header row (e.g. Time,Carbon Intensity).",
            show_default=False,
        ),
    ] = None,
    time_column: Annotated[
        str | None, typer.Option("--time-column", help="Time column (default: the first).")
    ] = None,
    value_column: Annotated[
        str | None,
        typer.Option("--value-column", help="Intensity column (default: the only other one)."),
    ] = None,
    tz: Annotated[
        str, typer.Option("--tz", help="IANA time zone of times written without an offset.")
    ] = "UTC",
    unit: Annotated[
        str, typer.Option("--unit", help="Unit of the values: g/kWh, kg/MWh or lbs/MWh.")
    ] = "g/kWh",
    day: Annotated[
        str | None,
        typer.Option(
            "--day", help="Day to plan and account, YYYY-MM-DD (default: the last whole day)."
        ),
    ] = None,
    window: Annotated[
        WindowKind,
        typer.Option(
            "--window",
            help="Account emissions over the day, or over its calendar month (caps then "
            "follow the month's mean daily intensity).",
        ),
    ] = WindowKind.day,
    policy: Annotated[
        str | None,
        typer.Option(
            "--policy",
            help="Cap policy as intensity:fraction pairs in g/kWh, e.g. "
            f"'200:1.0,400:0.8,600:0.6' (default {DEFAULT_POLICY.describe()}).",
            show_default=False,
        ),
    ] = None,
    floor: Annotated[
        float | None,
        typer.Option("--floor", help=f"Lowest cap fraction (default {DEFAULT_POLICY.floor:g})."),
    ] = None,
    domains: Annotated[
        list[str] | None,
        typer.Option(
            "--domain", help="Domain whose cap follows the policy (repeat; default: the site)."
        ),
    ] = None,
    price: Annotated[
        float | None,
        typer.Option("--price", help="EUA price, EUR per tonne CO2.", show_default=False),
    ] = None,
    price_series: Annotated[
        Path | None,
        typer.Option(
            "--price-series",
            help="Daily EUA prices CSV (column 'settle', carried forward over closed days).",
            show_default=False,
        ),
    ] = None,
    allocation: Annotated[
        float | None,
        typer.Option(
            "--allocation", help="Allowances held for the window, tonnes CO2.", show_default=False
        ),
    ] = None,
    emission_budget: Annotated[
        float | None,
        typer.Option(
            "--emission-budget", help="Site budget for the window, kg CO2e.", show_default=False
        ),
    ] = None,
    strategy: Annotated[
        str, typer.Option("--strategy", "-s", help=f"One of: {', '.join(STRATEGY_NAMES)}.")
    ] = "cpsat",
    time_limit: Annotated[
        float, typer.Option("--time-limit", "-t", min=0.0, help="CP-SAT time limit per plan, s.")
    ] = DEFAULT_TIME_LIMIT_S,
    workers: Annotated[int, typer.Option("--workers", min=1, help="CP-SAT worker threads.")] = 2,
    output: Annotated[
        OutputFormat,
        typer.Option("--format", "-f", help="table for people, json for programs (stdout)."),
    ] = OutputFormat.table,
    report_dir: Annotated[
        Path | None,
        typer.Option(
            "--report",
            callback=report_dir,
            help="Also write charts and an HTML page into this directory "
            "(needs the report extra: matplotlib).",
        ),
    ] = None,
) -> None:
    """Plan carbon-oblivious (the scenario's caps) and carbon-aware (caps scaled by the
    policy from the day's intensity), then show emissions, EUA cost, allowance position
    and the savings of the carbon-aware plan."""
    intensity_csv, cap_policy = _checked_options(
        strategy=strategy,
        intensity=intensity,
        price=price,
        price_series=price_series,
        policy=policy,
        floor=floor,
    )
    problem = load_scenario(scenario)
    series = read_intensity(intensity_csv, time_column, value_column, tz=tz, unit=unit)
    eua = _read_price(price, price_series)
    chosen = planning_day([series], problem, day)
    slot_window, forecast, aware_problem = _carbon_window(
        problem, series, chosen, window=window, policy=cap_policy, domains=domains
    )
    oblivious, aware = _plan_both(
        problem,
        aware_problem,
        strategy=strategy,
        options={"time_limit_s": time_limit, "workers": workers},
        window=slot_window,
    )
    try:
        result = _account(oblivious, aware, eua, allocation, emission_budget)
    except ValueError as exc:
        raise fail(f"--price-series/--allocation/--emission-budget: {exc}") from None
    payload = _payload(problem, series, slot_window, cap_policy, domains, oblivious, aware, result)
    index = None
    if report_dir is not None:
        index = write_carbon_report(
            report_dir,
            problem,
            forecast,
            window=slot_window,
            oblivious=oblivious,
            aware=aware,
            payload=payload,
            domains=domains,
        )
    if output is OutputFormat.json:
        emit_json(payload)
    else:
        stdout().print(_table(problem, slot_window, cap_policy, oblivious, aware, result))
    if index is not None:
        stderr().print(f"report: {index}")


def _checked_options(
    *,
    strategy: str,
    intensity: Path | None,
    price: float | None,
    price_series: Path | None,
    policy: str | None,
    floor: float | None,
) -> tuple[Path, CapPolicy]:
    """The intensity CSV and the cap policy, once the options are known to fit together;
    exit 2 naming the first option at fault."""
    if strategy not in STRATEGY_NAMES:
        raise fail(
            f"--strategy: unknown strategy {strategy!r}; choose one of {', '.join(STRATEGY_NAMES)}"
        )
    if intensity is None:
        raise fail("--intensity is required: a carbon-intensity CSV (time, gCO2e/kWh)")
    if price is not None and price_series is not None:
        raise fail("give --price or --price-series, not both")
    try:
        return intensity, policy_of(policy, floor)
    except ValueError as exc:
        raise fail(f"--policy/--floor: {exc}") from None


def _carbon_window(
    problem: Problem,
    series: IntensitySeries,
    chosen: date,
    *,
    window: WindowKind,
    policy: CapPolicy,
    domains: list[str] | None,
) -> tuple[SlotWindow, NDArray[np.float64], Problem]:
    """The accounting window (``chosen`` or its month), the per-slot intensity forecast the
    caps follow (the month's mean day for a month) and ``problem`` with carbon-aware caps
    on ``domains``; exit 2 when the series does not cover them."""
    try:
        if window is WindowKind.day:
            slot_window = day_window(series, problem.grid, chosen)
            forecast = on_grid(series, problem.grid, chosen)
        else:
            slot_window = month_window(series, problem.grid, chosen)
            first = chosen.replace(day=1)
            days = slot_window.slots * problem.grid.step_s // 86400
            forecast = on_grid(series, problem.grid, first, days=days)
        return slot_window, forecast, carbon_aware(problem, forecast, policy, domains=domains)
    except ValueError as exc:
        raise fail(f"--intensity/--day/--window/--domain: {exc}") from None


def _plan_both(
    oblivious: Problem,
    aware: Problem,
    *,
    strategy: str,
    options: dict[str, Any],
    window: SlotWindow,
) -> tuple[Side, Side]:
    """Plan the scenario's caps and the carbon-aware ones with ``strategy``, each with its
    emissions over ``window``."""
    with progress_display() as progress:
        plan_o, metrics_o = solve(
            progress, oblivious, strategy, options=options, label="oblivious: "
        )
        plan_a, metrics_a = solve(progress, aware, strategy, options=options, label="aware:     ")
    return (
        Side(
            oblivious,
            plan_o,
            metrics_o,
            placement_emissions(oblivious, plan_o.assignment, window),
        ),
        Side(aware, plan_a, metrics_a, placement_emissions(aware, plan_a.assignment, window)),
    )


def _read_price(price: float | None, series: Path | None) -> EuaPrice | None:
    try:
        if series is not None:
            return read_eua_csv(series)
        return None if price is None else EuaPrice(constant=price)
    except PriceSeriesError as exc:
        print_problems(exc, " (--price-series)")
        raise typer.Exit(2) from None
    except ValueError as exc:
        raise fail(f"--price: {exc}") from None


@dataclass(frozen=True)
class Accounts:
    price: EuaPrice | None
    cost_eur: tuple[float, float] | None  # oblivious, aware
    positions: tuple[AllowancePosition, AllowancePosition] | None
    budgets: tuple[BudgetCheck, BudgetCheck] | None
    saved: Savings | None


def _account(
    oblivious: Side,
    aware: Side,
    price: EuaPrice | None,
    allocation: float | None,
    budget: float | None,
) -> Accounts:
    cost = None
    positions = None
    saved = None
    # Without a price, savings are still worth showing in kg: price them at zero.
    pricing = price if price is not None else EuaPrice(constant=0.0)
    saved = savings(oblivious.emissions, aware.emissions, pricing)
    if price is not None:
        cost = (
            emission_cost_eur(oblivious.emissions, price),
            emission_cost_eur(aware.emissions, price),
        )
    if allocation is not None:
        positions = (
            allowance_position(oblivious.emissions, allocation, pricing),
            allowance_position(aware.emissions, allocation, pricing),
        )
    budgets = None
    if budget is not None:
        budgets = (check_budget(oblivious.emissions, budget), check_budget(aware.emissions, budget))
    return Accounts(price, cost, positions, budgets, saved)


def _side_json(side: Side, index: int, acc: Accounts) -> dict[str, Any]:
    e = side.emissions
    out: dict[str, Any] = {
        "hosted": side.metrics.hosted_total,
        "demand": side.metrics.demand_total,
        "violations": side.metrics.violations,
        "emissions_kg": round(e.site_kg, 3),
        "idle_kg": round(float(e.idle_kg[0]), 3),
        "energy_kwh": round(float(e.energy_kwh[0]), 3),
        "kg_per_kwh": round(e.site_kg / float(e.energy_kwh[0]), 6) if e.energy_kwh[0] else None,
        "emissions_by_domain_kg": {
            name: round(float(kg), 3) for name, kg in zip(e.domains, e.total_kg, strict=True)
        },
        "solver": side.plan.stats.as_dict(),
    }
    if acc.cost_eur is not None:
        out["cost_eur"] = round(acc.cost_eur[index], 2)
    if acc.positions is not None:
        p = acc.positions[index]
        out["allowance"] = {
            "allocation_t": p.allocation_t,
            "emissions_t": round(p.emissions_t, 6),
            "surplus_t": round(p.surplus_t, 6),
            "value_eur": round(p.value_eur, 2) if acc.price is not None else None,
        }
    if acc.budgets is not None:
        b = acc.budgets[index]
        out["budget"] = {
            "budget_kg": b.budget_kg,
            "fits": b.fits,
            "margin_kg": round(b.margin_kg, 3),
            "max_service_scale": None
            if b.max_service_scale is None
            else round(b.max_service_scale, 4),
        }
    return out


def _payload(
    problem: Problem,
    series: IntensitySeries,
    window: SlotWindow,
    policy: CapPolicy,
    domains: list[str] | None,
    oblivious: Side,
    aware: Side,
    acc: Accounts,
) -> dict[str, Any]:
    s = acc.saved
    assert s is not None
    return {
        "scenario": problem.name,
        "strategy": oblivious.plan.strategy,
        "intensity": {
            "source": series.source,
            "window": window.label(),
            "slots": window.slots,
            "mean_g_per_kwh": round(float(window.intensity.mean()), 3),
            "min_g_per_kwh": round(float(window.intensity.min()), 3),
            "max_g_per_kwh": round(float(window.intensity.max()), 3),
        },
        "policy": {
            "points": [list(p) for p in zip(policy.intensities, policy.fractions, strict=True)],
            "floor": policy.floor,
            "domains": domains or [root_name(problem)],
        },
        "price": None if acc.price is None else acc.price.describe(),
        "oblivious": _side_json(oblivious, 0, acc),
        "aware": _side_json(aware, 1, acc),
        "savings": {
            "kg": round(s.saved_kg, 3),
            "fraction": None if s.saved_fraction is None else round(s.saved_fraction, 6),
            "eur": round(s.saved_eur, 2) if acc.price is not None else None,
            "hosted_difference": s.aware_hosted - s.oblivious_hosted,
            "oblivious_kg_per_replica": _round(s.oblivious_kg_per_replica),
            "aware_kg_per_replica": _round(s.aware_kg_per_replica),
        },
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _table(
    problem: Problem,
    window: SlotWindow,
    policy: CapPolicy,
    oblivious: Side,
    aware: Side,
    acc: Accounts,
) -> Table:
    table = Table(
        title=f"[bold]{problem.name}[/] — carbon, {oblivious.plan.strategy}",
        caption=(
            f"{window.label()}: intensity mean {window.intensity.mean():.0f}, "
            f"{window.intensity.min():.0f}–{window.intensity.max():.0f} g/kWh; "
            f"policy {policy.describe()}"
        ),
        title_justify="left",
    )
    table.add_column("", style="bold cyan")
    table.add_column("carbon-oblivious", justify="right")
    table.add_column("carbon-aware", justify="right")
    table.add_column("saved", justify="right")
    s = acc.saved
    assert s is not None
    mo, ma = oblivious.metrics, aware.metrics
    table.add_row(
        "hosted replicas",
        f"{mo.hosted_total:,} / {mo.demand_total:,}",
        f"{ma.hosted_total:,} / {ma.demand_total:,}",
        f"{s.aware_hosted - s.oblivious_hosted:+,}",
    )
    eo, ea = oblivious.emissions, aware.emissions
    table.add_row("energy kWh", f"{eo.energy_kwh[0]:,.0f}", f"{ea.energy_kwh[0]:,.0f}", "")
    fraction = "" if s.saved_fraction is None else f" ({s.saved_fraction:.1%})"
    table.add_row(
        "emissions kg CO2e",
        f"{eo.site_kg:,.1f}",
        f"{ea.site_kg:,.1f}",
        f"{s.saved_kg:,.1f}{fraction}",
    )
    table.add_row(
        "kg per replica (above idle)",
        _num(s.oblivious_kg_per_replica, ".2f"),
        _num(s.aware_kg_per_replica, ".2f"),
        "",
    )
    _account_rows(table, acc, s)
    table.add_row(
        "violations",
        Text(str(mo.violations), style="bold red" if mo.violations else "green"),
        Text(str(ma.violations), style="bold red" if ma.violations else "green"),
        "",
    )
    return table


def _account_rows(table: Table, acc: Accounts, saved: Savings) -> None:
    """The rows of whichever of EUA cost, allowance position and budget were asked for."""
    if acc.cost_eur is not None and acc.price is not None:
        table.add_row(
            "EUA cost EUR",
            f"{acc.cost_eur[0]:,.2f}",
            f"{acc.cost_eur[1]:,.2f}",
            f"{saved.saved_eur:,.2f}",
        )
    if acc.positions is not None:
        po, pa = acc.positions
        table.add_row(
            f"allowances vs {po.allocation_t:g} t",
            _position(po, acc.price is not None),
            _position(pa, acc.price is not None),
            "",
        )
    if acc.budgets is not None:
        bo, ba = acc.budgets
        table.add_row(f"budget {bo.budget_kg:,.0f} kg", _budget(bo), _budget(ba), "")


def _num(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _position(p: AllowancePosition, priced: bool) -> Text:
    word = "surplus" if p.surplus_t >= 0 else "deficit"
    value = f", {p.value_eur:+,.2f} EUR" if priced else ""
    return Text(
        f"{word} {abs(p.surplus_t):,.3f} t{value}", style="green" if p.surplus_t >= 0 else "red"
    )


def _budget(b: BudgetCheck) -> Text:
    scale = "" if b.max_service_scale is None else f", load ×{b.max_service_scale:.2f} fits"
    if b.fits:
        return Text(f"fits, {b.margin_kg:,.1f} kg left{scale}", style="green")
    return Text(f"over by {-b.margin_kg:,.1f} kg{scale}", style="bold red")


def register(app: typer.Typer) -> None:
    """Add the ``carbon`` command group (``carbon report``) to ``app``."""
    app.add_typer(carbon_app, name="carbon")
