"""Solving a problem with every strategy asked for (and the baselines) under a progress display,
the JSON of the results, emissions per plan, and the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.progress import Progress

from placement.carbon.emissions import PlanEmissions, plan_emissions
from placement.metrics import Metrics, evaluate, gains
from placement.problem import Problem
from placement.provisioning import limits_by_service, throughput_hosted, throughput_unit
from placement.strategies import Plan, run_strategy
from powercap.carbon_setup import CarbonSetup
from powercap.console import progress_step

BASELINES = ("nameplate", "peak-sum")


def solve(
    progress: Progress, problem: Problem, name: str, *, options: dict[str, Any], label: str = ""
) -> tuple[Plan, Metrics]:
    """Run one strategy under a progress line; metrics come from the shared evaluator."""
    opts = options if name == "cpsat" else {}
    limit = f" (time limit {opts['time_limit_s']:g} s)" if "time_limit_s" in opts else ""
    plan = progress_step(
        progress, f"{label}{name}{limit}", lambda: run_strategy(name, problem, **opts)
    )
    return plan, evaluate(problem, plan.assignment)


def solve_all(
    progress: Progress,
    problem: Problem,
    names: Sequence[str],
    *,
    options: dict[str, Any],
    label: str = "",
) -> tuple[dict[str, Plan], dict[str, Metrics]]:
    """``names`` plus the baselines the gains are measured against (fast), in that order
    of appearance: the baselines first, so a slow solve is the last line."""
    order = [b for b in BASELINES if b not in names] + list(names)
    plans: dict[str, Plan] = {}
    metrics: dict[str, Metrics] = {}
    for name in order:
        plans[name], metrics[name] = solve(progress, problem, name, options=options, label=label)
    return plans, metrics


def gains_of(name: str, metrics: dict[str, Metrics]) -> dict[str, float | None]:
    return gains(metrics[name], {b: metrics[b] for b in BASELINES if b in metrics})


def metrics_json(
    name: str, metrics: dict[str, Metrics], with_domains: bool = True
) -> dict[str, Any]:
    out = metrics[name].as_dict(with_domains=with_domains)
    out["gains"] = gains_of(name, metrics)
    return out


def provisioning_json(problem: Problem, metrics: Metrics, hosted: Any) -> dict[str, Any]:
    """One provisioning's outcome: ``hosted`` replicas, ``throughputHosted`` (Σ hosted ×
    one replica's throughput at its limit, in ``unit``), ``violations`` (predicted
    domain-slots over cap) and ``limits`` (service → fraction of the default limit, for
    the services below it)."""
    return {
        "hosted": metrics.hosted_total,
        "throughputHosted": round(throughput_hosted(problem, hosted), 3),
        "unit": throughput_unit(problem),
        "violations": metrics.violations,
        "limits": limits_by_service(problem),
    }


def describe_problem(problem: Problem) -> str:
    tree, fleet, svc, grid = problem.tree, problem.fleet, problem.services, problem.grid
    return (
        f"{tree.size} domains ({len(tree.leaves)} leaves), {fleet.size} nodes "
        f"({int(fleet.gpus.sum())} GPUs), {svc.size} services, {grid.slots} slots"
    )


def emissions_of(problem: Problem, plans: dict[str, Plan]) -> dict[str, PlanEmissions]:
    """Emissions of every plan, when the problem was planned with carbon terms."""
    if problem.carbon is None:
        return {}
    return {name: plan_emissions(problem, p.assignment) for name, p in plans.items()}


def emissions_json(e: PlanEmissions, setup: CarbonSetup | None) -> dict[str, Any]:
    out = e.as_dict()
    if setup is not None:
        out["window"] = setup.window
    return out


def write_plan_report(
    progress: Progress,
    directory: Path,
    problem: Problem,
    *,
    plans: dict[str, Plan],
    metrics: dict[str, Metrics],
    focus: str | None,
) -> Path:
    from powercap.report import write_report

    return progress_step(
        progress,
        f"report → {directory}",
        lambda: write_report(directory, problem, plans, metrics=metrics, focus=focus),
    )
