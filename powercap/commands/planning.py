"""``powercap plan`` and ``powercap compare``: placements of a scenario, without a cluster."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from placement.strategies import STRATEGY_NAMES
from powercap.carbon_setup import CarbonOptions, planning_problem, with_carbon_options
from powercap.console import (
    OutputFormat,
    emit_json,
    load_scenario,
    progress_display,
    stderr,
    stdout,
)
from powercap.options import (
    FormatOpt,
    ReportOpt,
    ScenarioArg,
    StrategyOpt,
    TimeLimitOpt,
    WorkersOpt,
)
from powercap.plans import emissions_json, emissions_of, metrics_json, solve_all, write_plan_report
from powercap.tables import compare_table, domain_table, summary_table


@with_carbon_options
def plan(
    scenario: ScenarioArg = None,
    strategy: StrategyOpt = "cpsat",
    time_limit: TimeLimitOpt = 30.0,
    workers: WorkersOpt = 2,
    output: FormatOpt = OutputFormat.table,
    report: ReportOpt = None,
    all_domains: Annotated[
        bool, typer.Option("--all-domains", help="List every domain in the table.")
    ] = False,
    *,
    carbon: CarbonOptions,
) -> None:
    """Place the scenario's services with one strategy and show the result.

    Gains are measured against the nameplate and peak-sum baselines, which are run too.
    With --intensity, emissions are counted per domain, every strategy respects
    --emission-budget, and cpsat prefers the least-emitting of equally good placements;
    --policy makes caps follow the intensity.
    """
    problem, setup = planning_problem(
        load_scenario(scenario),
        carbon,
    )
    options = {"time_limit_s": time_limit, "workers": workers}
    with progress_display() as progress:
        plans, metrics = solve_all(progress, problem, [strategy], options=options)
        index = (
            write_plan_report(
                progress, report, problem, plans=plans, metrics=metrics, focus=strategy
            )
            if report
            else None
        )
    chosen = plans[strategy]
    emissions = emissions_of(problem, {strategy: chosen})
    if output is OutputFormat.json:
        payload: dict[str, Any] = {
            "strategy": strategy,
            "placement": chosen.assignment.as_mapping(problem),
            "metrics": metrics_json(strategy, metrics),
            "solver": chosen.stats.as_dict(),
        }
        if setup is not None:
            payload["emissions"] = emissions_json(emissions[strategy], setup)
            payload["carbon"] = setup.as_dict()
        emit_json(payload)
    else:
        console = stdout()
        console.print(summary_table(problem, chosen, metrics, emissions=emissions.get(strategy)))
        console.print(domain_table(problem, metrics[strategy], all_domains))
    if index is not None:
        stderr().print(f"report: {index}")


@with_carbon_options
def compare(
    scenario: ScenarioArg = None,
    time_limit: TimeLimitOpt = 30.0,
    workers: WorkersOpt = 2,
    output: FormatOpt = OutputFormat.table,
    report: ReportOpt = None,
    *,
    carbon: CarbonOptions,
) -> None:
    """Run every strategy on the scenario and compare them side by side.

    The carbon options are those of ``plan``: with --intensity every strategy's
    emissions are shown, and --emission-budget binds them all.
    """
    problem, setup = planning_problem(
        load_scenario(scenario),
        carbon,
    )
    options = {"time_limit_s": time_limit, "workers": workers}
    with progress_display() as progress:
        plans, metrics = solve_all(progress, problem, STRATEGY_NAMES, options=options)
        index = (
            write_plan_report(progress, report, problem, plans=plans, metrics=metrics, focus=None)
            if report
            else None
        )
    emissions = emissions_of(problem, plans)
    if output is OutputFormat.json:
        strategies: dict[str, Any] = {}
        for name, plan in plans.items():
            strategies[name] = {
                "metrics": metrics_json(name, metrics, with_domains=False),
                "solver": plan.stats.as_dict(),
            }
            if setup is not None:
                strategies[name]["emissions"] = emissions_json(emissions[name], setup)
        payload: dict[str, Any] = {"scenario": problem.name, "strategies": strategies}
        if setup is not None:
            payload["carbon"] = setup.as_dict()
        emit_json(payload)
    else:
        stdout().print(compare_table(problem, plans, metrics, emissions=emissions))
    if index is not None:
        stderr().print(f"report: {index}")


def register(app: typer.Typer) -> None:
    """Add ``plan`` and ``compare`` to ``app``."""
    app.command()(plan)
    app.command()(compare)
