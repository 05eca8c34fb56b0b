"""``powercap carbon report``: emissions, EU ETS cost and allowance position of a plan,
carbon-oblivious against carbon-aware caps, over a day or a month of real intensity.

::

    powercap carbon report site.yaml --intensity gb_ci.csv --day 2020-06-01 \
        --price-series market_prices.csv --emission-budget 5000 --report out/carbon

:func:`register` adds the ``carbon`` command group to a typer app.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer
from rich.table import Table
from rich.text import Text

from placement.carbon import (
    DEFAULT_POLICY,
    AllowancePosition,
    BudgetBelowIdleError,
    BudgetCheck,
    CapPolicy,
    CarbonTerms,
    Emissions,
    EuaPrice,
    PriceSeriesError,
    Savings,
    allowance_position,
    carbon_aware,
    carbon_aware_rows,
    check_budget,
    domain_intensity,
    emission_cost_eur,
    placement_emissions,
    read_eua_csv,
    root_name,
    savings,
    with_carbon,
)
from placement.intensity import (
    IntensityCsvError,
    IntensitySeries,
    SlotWindow,
    day_window,
    month_window,
    on_grid,
    read_intensity_csv,
    whole_days,
)
from placement.problem import Problem
from placement.strategies import STRATEGY_NAMES
from placement.validation import ProblemsError

if TYPE_CHECKING:
    from placement.metrics import Metrics
    from placement.strategies import Plan

DEFAULT_TIME_LIMIT_S = 10.0
_CSV_OPTIONS = {"time": "--time-column", "value": "--value-column"}


class OutputFormat(StrEnum):
    table = "table"
    json = "json"


class WindowKind(StrEnum):
    day = "day"
    month = "month"


@dataclass(frozen=True)
class Side:
    """One planning run: its problem (caps), plan, metrics and emissions."""

    problem: Problem
    plan: Plan
    metrics: Metrics
    emissions: Emissions


def register(app: typer.Typer) -> None:
    """Add the ``carbon`` command group (``carbon report``) to ``app``."""
    carbon_app = typer.Typer(
        help="Carbon-aware caps, emissions and EU ETS cost of a placement.",
        no_args_is_help=True,
        add_completion=False,
    )
    carbon_app.command("report")(report)
    app.add_typer(carbon_app, name="carbon")


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
        typer.Option("--report", help="Also write charts and an HTML page into this directory."),
    ] = None,
) -> None:
    """Plan carbon-oblivious (the scenario's caps) and carbon-aware (caps scaled by the
    policy from the day's intensity), then show emissions, EUA cost, allowance position
    and the savings of the carbon-aware plan."""
    from placement import cli as base

    if strategy not in STRATEGY_NAMES:
        raise base._fail(
            f"--strategy: unknown strategy {strategy!r}; choose one of {', '.join(STRATEGY_NAMES)}"
        )
    if intensity is None:
        raise base._fail("--intensity is required: a carbon-intensity CSV (time, gCO2e/kWh)")
    if price is not None and price_series is not None:
        raise base._fail("give --price or --price-series, not both")
    try:
        cap_policy = _policy(policy, floor)
    except ValueError as exc:
        raise base._fail(f"--policy/--floor: {exc}") from None
    problem = base._load(scenario)
    series = _read_intensity(base, intensity, time_column, value_column, tz, unit)
    eua = _read_price(base, price, price_series)
    chosen = _day(base, [series], problem, day)
    try:
        if window is WindowKind.day:
            slot_window = day_window(series, problem.grid, chosen)
            forecast = on_grid(series, problem.grid, chosen)
        else:
            slot_window = month_window(series, problem.grid, chosen)
            first = chosen.replace(day=1)
            days = slot_window.slots * problem.grid.step_s // 86400
            forecast = on_grid(series, problem.grid, first, days)
        aware_problem = carbon_aware(problem, forecast, cap_policy, domains)
    except ValueError as exc:
        raise base._fail(f"--intensity/--day/--window/--domain: {exc}") from None

    options = {"time_limit_s": time_limit, "workers": workers}
    with base._progress() as progress:
        plan_o, metrics_o = base._solve(progress, problem, strategy, options, "oblivious: ")
        plan_a, metrics_a = base._solve(progress, aware_problem, strategy, options, "aware:     ")
    oblivious = Side(
        problem, plan_o, metrics_o, placement_emissions(problem, plan_o.assignment, slot_window)
    )
    aware = Side(
        aware_problem,
        plan_a,
        metrics_a,
        placement_emissions(aware_problem, plan_a.assignment, slot_window),
    )
    try:
        result = _account(oblivious, aware, eua, allocation, emission_budget)
    except ValueError as exc:
        raise base._fail(f"--price-series/--allocation/--emission-budget: {exc}") from None
    payload = _payload(problem, series, slot_window, cap_policy, domains, oblivious, aware, result)
    index = None
    if report_dir is not None:
        index = _write_report(
            report_dir, problem, forecast, slot_window, oblivious, aware, payload, domains
        )
    if output is OutputFormat.json:
        base._emit_json(payload)
    else:
        base._stdout().print(_table(problem, slot_window, cap_policy, oblivious, aware, result))
    if index is not None:
        base._stderr().print(f"report: {index}")


# ---------------------------------------------------------------- inputs


def _policy(text: str | None, floor: float | None) -> CapPolicy:
    if text is None:
        if floor is None:
            return DEFAULT_POLICY
        return CapPolicy(DEFAULT_POLICY.intensities, DEFAULT_POLICY.fractions, floor)
    return CapPolicy.parse(text, DEFAULT_POLICY.floor if floor is None else floor)


def _print_problems(base: Any, exc: ProblemsError, hint: str = "") -> None:
    console = base._stderr()
    console.print(Text(f"error: {exc.source}{hint}", style="bold red"))
    for line in exc.problems:
        console.print(Text(f"  {line}", style="red"))


def _read_intensity(
    base: Any, path: Path, time_column: str | None, value_column: str | None, tz: str, unit: str
) -> IntensitySeries:
    try:
        return read_intensity_csv(path, time_column, value_column, tz, unit)
    except IntensityCsvError as exc:
        option = _CSV_OPTIONS.get(exc.column or "")
        hint = f" (--intensity; set {option})" if option else " (--intensity, --tz, --unit)"
        _print_problems(base, exc, hint)
        raise typer.Exit(2) from None


def _read_price(base: Any, price: float | None, series: Path | None) -> EuaPrice | None:
    try:
        if series is not None:
            return read_eua_csv(series)
        return None if price is None else EuaPrice(constant=price)
    except PriceSeriesError as exc:
        _print_problems(base, exc, " (--price-series)")
        raise typer.Exit(2) from None
    except ValueError as exc:
        raise base._fail(f"--price: {exc}") from None


def _day(base: Any, series: Sequence[IntensitySeries], problem: Problem, text: str | None) -> date:
    """The day ``--day`` names, or the last whole day every series covers."""
    common = set(whole_days(series[0], problem.grid))
    for other in series[1:]:
        common &= set(whole_days(other, problem.grid))
    covered = sorted(common)
    if not covered:
        what = "the series does not" if len(series) == 1 else "the series do not together"
        raise base._fail(f"--intensity: {what} cover one whole day of the grid")
    if text is None:
        return covered[-1]
    try:
        chosen = date.fromisoformat(text)
    except ValueError:
        raise base._fail(f"--day: expected YYYY-MM-DD, got {text!r}") from None
    if chosen not in set(covered):
        raise base._fail(
            f"--day: {chosen} is not covered by the intensity series; "
            f"pick a day from {covered[0]} to {covered[-1]}"
        )
    return chosen


# ---------------------------------------------------------------- accounting


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


# ---------------------------------------------------------------- table


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
    if acc.cost_eur is not None and acc.price is not None:
        table.add_row(
            "EUA cost EUR",
            f"{acc.cost_eur[0]:,.2f}",
            f"{acc.cost_eur[1]:,.2f}",
            f"{s.saved_eur:,.2f}",
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
    table.add_row(
        "violations",
        Text(str(mo.violations), style="bold red" if mo.violations else "green"),
        Text(str(ma.violations), style="bold red" if ma.violations else "green"),
        "",
    )
    return table


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


# ---------------------------------------------------------------- report


def _write_report(
    directory: Path,
    problem: Problem,
    forecast: np.ndarray[Any, np.dtype[np.float64]],
    window: SlotWindow,
    oblivious: Side,
    aware: Side,
    payload: dict[str, Any],
    domains: list[str] | None,
) -> Path:
    """``carbon.html``, ``carbon-caps.png`` and ``carbon-emissions.png`` in ``directory``."""
    from placement.report import _figure, _hour_ticks, _save

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    grid = problem.grid
    step_h = grid.step_hours
    edges = np.arange(grid.slots + 1) * step_h

    def stepped(values: np.ndarray[Any, np.dtype[np.float64]]) -> Any:
        return np.append(values, values[-1])

    names = domains or [root_name(problem)]
    fig = _figure(10.0, 4.2)
    ax = fig.subplots()
    ax.step(edges, stepped(forecast), where="post", color="#2b6cb0", lw=2, label="intensity")
    ax.set_ylabel("gCO2e/kWh", color="#2b6cb0")
    ax.set_ylim(0, float(forecast.max()) * 1.15 if forecast.max() > 0 else 1.0)
    _hour_ticks(ax, problem)
    right = ax.twinx()
    for name in names[:4]:
        d = problem.tree.index[name]
        right.step(
            edges,
            stepped(problem.tree.caps[d] / 1000),
            where="post",
            color="#888",
            ls="--",
            label=f"{name} cap (scenario)",
        )
        right.step(
            edges,
            stepped(aware.problem.tree.caps[d] / 1000),
            where="post",
            color="#111",
            lw=2,
            label=f"{name} cap (carbon-aware)",
        )
        load = aware.plan.assignment.load(aware.problem)[d] / 1000
        right.step(
            edges, stepped(load), where="post", color="#2f9e44", label=f"{name} load (aware)"
        )
    right.set_ylabel("kW")
    low = min(float(aware.problem.tree.caps[problem.tree.index[n]].min()) for n in names[:4])
    right.set_ylim(
        0,
        max(float(problem.tree.caps[problem.tree.index[n]].max()) for n in names[:4]) / 1000 * 1.08,
    )
    ax.set_title(
        f"{problem.name}: {'mean daily ' if window.slots > grid.slots else ''}intensity and "
        f"cap schedule (lowest cap {low / 1000:,.0f} kW)",
        fontsize=11,
    )
    handles = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], loc="lower left", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, out / "carbon-caps.png")

    fig = _figure(10.0, 4.2)
    ax = fig.subplots()
    hours = np.arange(window.slots + 1) * step_h
    for side, label, color in (
        (oblivious, "carbon-oblivious", "#888"),
        (aware, "carbon-aware", "#2f9e44"),
    ):
        # Within a slot the rate is constant, so a straight line between slot edges is exact.
        running = np.concatenate(([0.0], np.cumsum(side.emissions.kg[0])))
        ax.plot(
            hours,
            running,
            color=color,
            lw=2,
            label=f"{label}: {side.emissions.site_kg:,.0f} kg",
        )
    ax.set_xlabel(f"hours from {window.label().split(' + ')[0]}")
    ax.set_ylabel("cumulative kg CO2e (site)")
    ax.set_xlim(0, float(hours[-1]))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    ax.set_title(f"{problem.name}: emissions over {window.hours:g} h", fontsize=11)
    _save(fig, out / "carbon-emissions.png")

    index = out / "carbon.html"
    index.write_text(_html(problem, payload), encoding="utf-8")
    return index


def _html(problem: Problem, payload: dict[str, Any]) -> str:
    esc = html.escape
    rows = []
    for key, label in (
        ("hosted", "hosted replicas"),
        ("energy_kwh", "energy kWh"),
        ("emissions_kg", "emissions kg CO2e"),
        ("cost_eur", "EUA cost EUR"),
    ):
        o, a = payload["oblivious"].get(key), payload["aware"].get(key)
        if o is None:
            continue
        rows.append(f"<tr><td>{label}</td><td>{o:,}</td><td>{a:,}</td></tr>")
    s = payload["savings"]
    saved = f"{s['kg']:,} kg" + ("" if s["eur"] is None else f", {s['eur']:,} EUR")
    intensity = payload["intensity"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>powercap carbon — {esc(problem.name)}</title>
<style>body {{ font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; }}
table {{ border-collapse: collapse; }} td, th {{ padding: .25em .8em; border-bottom: 1px solid
#e6e9ef; text-align: right; }} td:first-child {{ text-align: left; }}
img {{ max-width: 100%; }}</style></head><body>
<h1>powercap carbon report — {esc(problem.name)}</h1>
<p>{esc(intensity["window"])}, intensity from {esc(intensity["source"])}: mean
{intensity["mean_g_per_kwh"]:.0f} g/kWh. Strategy {esc(payload["strategy"])}; price
{esc(str(payload["price"]))}.</p>
<table><tr><th></th><th>carbon-oblivious</th><th>carbon-aware</th></tr>{"".join(rows)}</table>
<p>Saved: {esc(saved)}; hosted difference {s["hosted_difference"]:+d} replicas.</p>
<img src="carbon-caps.png" alt="intensity and cap schedule">
<img src="carbon-emissions.png" alt="cumulative emissions">
</body></html>
"""


# ---------------------------------------------------------------- plan and compare

# The options `powercap plan` and `powercap compare` take to plan with grid intensity;
# CSV parsing and the policy are shared with `carbon report`.
IntensitySpecsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--intensity",
        help="Carbon-intensity CSV for the site, or DOMAIN=CSV for one domain's grid "
        "(repeat for sites on different grids; a domain's racks inherit its grid).",
        show_default=False,
    ),
]
TimeColumnOpt = Annotated[
    str | None, typer.Option("--time-column", help="Time column (default: the first).")
]
ValueColumnOpt = Annotated[
    str | None,
    typer.Option("--value-column", help="Intensity column (default: the only other one)."),
]
TzOpt = Annotated[
    str, typer.Option("--tz", help="IANA time zone of times written without an offset.")
]
UnitOpt = Annotated[
    str, typer.Option("--unit", help="Unit of the values: g/kWh, kg/MWh or lbs/MWh.")
]
DayOpt = Annotated[
    str | None,
    typer.Option(
        "--day",
        help="Day of the series to plan for, YYYY-MM-DD (default: the last whole day all "
        "series cover).",
    ),
]
WindowOpt = Annotated[
    WindowKind,
    typer.Option(
        "--window",
        help="Emission window: the day, or its calendar month (the plan is held all month; "
        "emissions use the month's intensity per slot of the day).",
    ),
]
PolicyOpt = Annotated[
    str | None,
    typer.Option(
        "--policy",
        "--cap-policy",
        help="Carbon-aware caps: intensity:fraction pairs in g/kWh, e.g. "
        f"'200:1.0,400:0.8,600:0.6' (with --floor or --domain alone: {DEFAULT_POLICY.describe()}).",
        show_default=False,
    ),
]
FloorOpt = Annotated[
    float | None,
    typer.Option("--floor", help="Lowest cap fraction of the policy.", show_default=False),
]
PolicyDomainsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--domain",
        help="Domain whose cap follows the policy (repeat; default: the domains given a "
        "grid with DOMAIN=CSV, else the site).",
        show_default=False,
    ),
]
BudgetOpt = Annotated[
    float | None,
    typer.Option(
        "--emission-budget",
        help="kg CO2e over the window for --budget-domain, idle included: a constraint "
        "every strategy respects.",
        show_default=False,
    ),
]
BudgetDomainOpt = Annotated[
    str | None,
    typer.Option(
        "--budget-domain", help="Domain the emission budget holds for (default: the site)."
    ),
]


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
    budget: float | None = None
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


def _specs(base: Any, problem: Problem, texts: list[str]) -> dict[str, Path]:
    """``CSV`` (the site) or ``DOMAIN=CSV`` → {domain: path}; a path that exists as
    written is a path even if it holds '='."""
    tree = problem.tree
    out: dict[str, Path] = {}
    for text in texts:
        if "=" in text and not Path(text).exists():
            name, path = text.split("=", 1)
            name = name.strip()
            if name not in tree.index:
                raise base._fail(
                    f"--intensity: unknown domain {name!r} in {text!r}; domains are: "
                    f"{', '.join(tree.names[:10])}{', …' if tree.size > 10 else ''}"
                )
        else:
            name, path = root_name(problem), text
        if name in out:
            raise base._fail(
                f"--intensity: two files for {name!r}; give one CSV per domain "
                "(DOMAIN=CSV for all but the site)"
            )
        out[name] = Path(path)
    return out


def planning_problem(
    base: Any, problem: Problem, opts: CarbonOptions
) -> tuple[Problem, CarbonSetup | None]:
    """``problem`` with the carbon terms (and carbon-aware caps) the options ask for;
    ``(problem, None)`` without ``--intensity``. Bad input exits 2 naming the option."""
    if not opts.intensity:
        needs = [
            flag
            for flag, given in (
                ("--emission-budget", opts.budget is not None),
                ("--budget-domain", opts.budget_domain is not None),
                ("--policy", opts.policy is not None),
                ("--floor", opts.floor is not None),
                ("--domain", bool(opts.domains)),
                ("--day", opts.day is not None),
            )
            if given
        ]
        if needs:
            raise base._fail(
                f"{needs[0]} needs --intensity: give a carbon-intensity CSV "
                "(or DOMAIN=CSV per site)"
            )
        return problem, None
    if opts.budget_domain is not None and opts.budget is None:
        raise base._fail("--budget-domain needs --emission-budget (kg CO2e over the window)")
    if opts.budget is not None and not (opts.budget >= 0 and np.isfinite(opts.budget)):
        raise base._fail("--emission-budget: give a finite, non-negative number of kg CO2e")
    if opts.budget_domain is not None and opts.budget_domain not in problem.tree.index:
        raise base._fail(
            f"--budget-domain: unknown domain {opts.budget_domain!r}; domains are: "
            f"{', '.join(problem.tree.names[:10])}{', …' if problem.tree.size > 10 else ''}"
        )
    specs = _specs(base, problem, opts.intensity)
    series = {
        name: _read_intensity(base, path, opts.time_column, opts.value_column, opts.tz, opts.unit)
        for name, path in specs.items()
    }
    chosen = _day(base, list(series.values()), problem, opts.day)
    grid = problem.grid
    try:
        if opts.window is WindowKind.day:
            start, periods = chosen, 1
            label = f"{chosen} (1 day)"
        else:
            start = chosen.replace(day=1)
            periods = ((start + timedelta(days=32)).replace(day=1) - start).days
            label = f"{start:%Y-%m} ({periods} days)"
        rows = {name: on_grid(s, grid, start, periods) for name, s in series.items()}
        intensity = domain_intensity(problem, rows)
    except ValueError as exc:
        raise base._fail(f"--intensity/--day/--window: {exc}") from None

    policy = None
    policy_domains: list[str] = []
    if opts.policy is not None or opts.floor is not None or opts.domains:
        try:
            policy = _policy(opts.policy, opts.floor)
        except ValueError as exc:
            raise base._fail(f"--policy/--floor: {exc}") from None
        policy_domains = list(opts.domains or specs)
        try:
            problem = carbon_aware_rows(problem, intensity, policy, policy_domains)
        except ValueError as exc:
            raise base._fail(f"--domain: {exc}") from None

    terms = CarbonTerms(intensity, float(periods), opts.budget, opts.budget_domain, label=label)
    try:
        planned = with_carbon(problem, terms)
    except BudgetBelowIdleError as exc:
        raise base._fail(
            f"--emission-budget: {exc.budget_kg:,.1f} kg is below the idle floor of "
            f"{exc.domain!r}, {exc.floor_kg:,.1f} kg (its nodes' idle draw over {label}); "
            f"raise --emission-budget to at least {exc.floor_kg:,.1f} or pick another "
            "--budget-domain"
        ) from None
    except ValueError as exc:
        raise base._fail(f"--emission-budget/--budget-domain: {exc}") from None
    sources = {name: str(path) for name, path in specs.items()}
    return planned, CarbonSetup(label, sources, policy, policy_domains)
