"""``powercap plan`` and ``powercap compare``: placements of a scenario, without a cluster."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from placement.problem import Problem
from placement.provisioning import at_limit, limited, uncapped
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
    PowerLimitOpt,
    ReportOpt,
    ScenarioArg,
    StrategyOpt,
    TimeLimitOpt,
    WorkersOpt,
)
from powercap.plans import (
    emissions_json,
    emissions_of,
    metrics_json,
    provisioning_json,
    solve,
    solve_all,
    write_plan_report,
)
from powercap.tables import compare_table, domain_table, provisioning_table, summary_table


def with_power_limit(problem: Problem, power_limit: str | None) -> Problem:
    """``problem`` with ``--power-limit`` applied where a service sets none; exit 2 on a
    bad value, naming the option."""
    if power_limit is None:
        return problem
    try:
        return at_limit(problem, power_limit)
    except ValueError as exc:
        stderr().print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None


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
    power_limit: PowerLimitOpt = None,
    *,
    carbon: CarbonOptions,
) -> None:
    """Place the scenario's services with one strategy and show the result.

    Gains are measured against the nameplate and peak-sum baselines, which are run too.
    With --intensity, emissions are counted per domain, every strategy respects
    --emission-budget, and cpsat prefers the least-emitting of equally good placements;
    --policy makes caps follow the intensity. With --power-limit (or services with their
    own powerLimit), the strategy runs uncapped too, and both provisionings are shown.
    """
    problem, setup = planning_problem(
        with_power_limit(load_scenario(scenario), power_limit),
        carbon,
    )
    options = {"time_limit_s": time_limit, "workers": workers}
    trade: dict[str, Any] = {}
    with progress_display() as progress:
        plans, metrics = solve_all(progress, problem, [strategy], options=options)
        if limited(problem):
            free = uncapped(problem)
            free_plan, free_metrics = solve(
                progress, free, strategy, options=options, label="uncapped: "
            )
            trade = {
                "uncapped": provisioning_json(free, free_metrics, free_plan.assignment.hosted),
                "capped": provisioning_json(
                    problem, metrics[strategy], plans[strategy].assignment.hosted
                ),
            }
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
        if trade:
            payload["provisioning"] = trade
        emit_json(payload)
    else:
        console = stdout()
        console.print(summary_table(problem, chosen, metrics, emissions=emissions.get(strategy)))
        console.print(domain_table(problem, metrics[strategy], all_domains))
        if trade:
            console.print(provisioning_table({strategy: trade}))
    if index is not None:
        stderr().print(f"report: {index}")


@with_carbon_options
def compare(
    scenario: ScenarioArg = None,
    time_limit: TimeLimitOpt = 30.0,
    workers: WorkersOpt = 2,
    output: FormatOpt = OutputFormat.table,
    report: ReportOpt = None,
    power_limit: PowerLimitOpt = None,
    *,
    carbon: CarbonOptions,
) -> None:
    """Run every strategy on the scenario and compare them side by side.

    The carbon options are those of ``plan``: with --intensity every strategy's
    emissions are shown, and --emission-budget binds them all. With --power-limit (or
    services with their own powerLimit) every strategy runs uncapped too.
    """
    problem, setup = planning_problem(
        with_power_limit(load_scenario(scenario), power_limit),
        carbon,
    )
    options = {"time_limit_s": time_limit, "workers": workers}
    trades: dict[str, dict[str, Any]] = {}
    with progress_display() as progress:
        plans, metrics = solve_all(progress, problem, STRATEGY_NAMES, options=options)
        if limited(problem):
            free = uncapped(problem)
            for name in plans:
                free_plan, free_metrics = solve(
                    progress, free, name, options=options, label="uncapped: "
                )
                trades[name] = {
                    "uncapped": provisioning_json(free, free_metrics, free_plan.assignment.hosted),
                    "capped": provisioning_json(
                        problem, metrics[name], plans[name].assignment.hosted
                    ),
                }
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
            if name in trades:
                strategies[name]["provisioning"] = trades[name]
        payload: dict[str, Any] = {"scenario": problem.name, "strategies": strategies}
        if setup is not None:
            payload["carbon"] = setup.as_dict()
        emit_json(payload)
    else:
        stdout().print(compare_table(problem, plans, metrics, emissions=emissions))
        if trades:
            stdout().print(provisioning_table(trades))
    if index is not None:
        stderr().print(f"report: {index}")


def register(app: typer.Typer) -> None:
    """Add ``plan`` and ``compare`` to ``app``."""
    app.command()(plan)
    app.command()(compare)
