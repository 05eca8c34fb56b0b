"""``powercap``: plan, compare and stress placements on scenario files, without a cluster.

::

    powercap plan                         # cpsat on the embedded default scenario
    powercap plan site.yaml --strategy greedy --format json
    powercap compare site.yaml --report out/report
    powercap whatif site.yaml --scale-caps 0.9 --add-nodes 10% --scale-demand 1.2
    powercap whatif site.yaml --kwok --replay week.json --replay-day 2 --start 08:00 \
        --duration 4h --speed 600 --controller both --format json
    powercap scenario default -o site.yaml
    powercap scenario validate site.yaml

Results go to stdout (a rich table, or exactly one JSON object with ``--format json``);
progress, warnings and errors go to stderr, so ``powercap plan --format json | jq`` works.
Exit codes: 0 success, 1 ``scenario validate`` found problems, 2 bad input (a scenario
that does not load, an unknown strategy, a bad option).

Other packages add commands through the ``powercap.commands`` entry-point group: each
entry point is a callable ``register(app: typer.Typer) -> None`` (see :func:`load_plugins`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import numpy as np
import orjson
import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from placement.carbon import PlanEmissions, plan_emissions
from placement.carbon_cli import (
    BudgetDomainOpt,
    BudgetOpt,
    CarbonOptions,
    CarbonSetup,
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
    planning_problem,
)
from placement.carbon_cli import register as register_carbon
from placement.grid import parse_duration
from placement.live import (
    SCHEDULERS,
    ClusterBackend,
    ClusterRun,
    LiveSettings,
    ReplayOutcome,
    ReplaySettings,
    read_replay,
    speed_problem,
)
from placement.metrics import Metrics, evaluate, gains
from placement.problem import Problem
from placement.report import domain_order
from placement.scenario import ScenarioError, load_problem
from placement.strategies import STRATEGY_NAMES, Plan, SolverStats, run_strategy

if TYPE_CHECKING:
    from placement.scenario import ScenarioSpec
    from placement.whatif import WhatIf

PLUGIN_GROUP = "powercap.commands"
# Backends that run a problem on a cluster for `whatif --kwok` (see placement.live).
CLUSTER_GROUP = "powercap.clusters"
BASELINES = ("nameplate", "peak-sum")
# Below this many domains the per-domain table lists them all; above it, every domain
# with children and the most loaded leaves only (unless --all-domains).
ALL_DOMAINS_UP_TO = 30
TOP_LEAVES = 10
# A FailedScheduling message lists every node group's reason; the table shows its start.
REASON_CHARS = 160

T = TypeVar("T")

app = typer.Typer(
    name="powercap",
    help="Power-aware placement of LLM inference services into a datacenter power tree.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    # Locals of a solver frame are large numpy arrays; printing them helps nobody.
    pretty_exceptions_show_locals=False,
)
scenario_app = typer.Typer(
    help="Write, convert and check scenario files.", no_args_is_help=True, add_completion=False
)
app.add_typer(scenario_app, name="scenario")


class OutputFormat(StrEnum):
    table = "table"
    json = "json"


class ControllerChoice(StrEnum):
    """``--controller``: ``both`` replays the window without, then with the controller on
    the same placement."""

    on = "on"
    off = "off"
    both = "both"


class SchedulerChoice(StrEnum):
    powercap = "powercap"
    default = "default"
    both = "both"


# ---------------------------------------------------------------- consoles and errors


def _stdout() -> Console:
    """Console for results. Piped output keeps wide tables readable instead of 80 columns."""
    console = Console()
    return console if console.is_terminal else Console(width=max(console.width, 140))


def _stderr() -> Console:
    # soft_wrap: an error line stays one line, whole for grep and copy-paste.
    return Console(stderr=True, soft_wrap=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    _stderr().print(Text(f"error: {message}", style="bold red"))
    return typer.Exit(code)


def _print_scenario_problems(exc: ScenarioError) -> None:
    console = _stderr()
    count = len(exc.problems)
    console.print(
        Text(f"{exc.source}: {count} problem{'s' if count != 1 else ''}", style="bold red")
    )
    for problem in exc.problems:
        console.print(Text(f"  {problem}", style="red"))


def _cli_module() -> Any:
    """This module, for helpers (``carbon_cli``) that report errors through it."""
    import sys

    return sys.modules[__name__]


def _load(scenario: Path | None) -> Problem:
    """The scenario's problem, or the embedded default; exit 2 listing every problem."""
    try:
        if scenario is None:
            from placement.default_scenario import default_problem

            return default_problem()
        return load_problem(scenario)
    except ScenarioError as exc:
        _print_scenario_problems(exc)
        raise typer.Exit(2) from None


def _check_strategy(value: str) -> str:
    if value not in STRATEGY_NAMES:
        raise typer.BadParameter(
            f"unknown strategy {value!r}; choose one of {', '.join(STRATEGY_NAMES)}"
        )
    return value


def _complete_strategy(incomplete: str) -> list[str]:
    return [n for n in STRATEGY_NAMES if n.startswith(incomplete)]


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def _emit_json(payload: dict[str, Any]) -> None:
    data = orjson.dumps(
        payload,
        default=_json_default,
        option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS,
    )
    typer.echo(data.decode())


# ---------------------------------------------------------------- running strategies


@contextmanager
def _progress() -> Iterator[Progress]:
    """Spinner and elapsed time per step, on stderr (a final summary when not a TTY)."""
    progress = Progress(
        SpinnerColumn(finished_text="[green]✓[/]"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=_stderr(),
    )
    with progress:
        yield progress


def _step(progress: Progress, description: str, work: Callable[[], T]) -> T:
    task = progress.add_task(description, total=None)
    try:
        return work()
    finally:
        progress.update(task, total=1, completed=1)


def _solve(
    progress: Progress, problem: Problem, name: str, options: dict[str, Any], label: str = ""
) -> tuple[Plan, Metrics]:
    """Run one strategy under a progress line; metrics come from the shared evaluator."""
    opts = options if name == "cpsat" else {}
    limit = f" (time limit {opts['time_limit_s']:g} s)" if "time_limit_s" in opts else ""
    plan = _step(progress, f"{label}{name}{limit}", lambda: run_strategy(name, problem, **opts))
    return plan, evaluate(problem, plan.assignment)


def _solve_all(
    progress: Progress,
    problem: Problem,
    names: Sequence[str],
    options: dict[str, Any],
    label: str = "",
) -> tuple[dict[str, Plan], dict[str, Metrics]]:
    """``names`` plus the baselines the gains are measured against (fast), in that order
    of appearance: the baselines first, so a slow solve is the last line."""
    order = [b for b in BASELINES if b not in names] + list(names)
    plans: dict[str, Plan] = {}
    metrics: dict[str, Metrics] = {}
    for name in order:
        plans[name], metrics[name] = _solve(progress, problem, name, options, label)
    return plans, metrics


def _gains_of(name: str, metrics: dict[str, Metrics]) -> dict[str, float | None]:
    return gains(metrics[name], {b: metrics[b] for b in BASELINES if b in metrics})


def _metrics_json(
    name: str, metrics: dict[str, Metrics], with_domains: bool = True
) -> dict[str, Any]:
    out = metrics[name].as_dict(with_domains=with_domains)
    out["gains"] = _gains_of(name, metrics)
    return out


def _write_report(
    progress: Progress,
    directory: Path,
    problem: Problem,
    plans: dict[str, Plan],
    metrics: dict[str, Metrics],
    focus: str | None,
) -> Path:
    from placement.report import write_report

    return _step(
        progress,
        f"report → {directory}",
        lambda: write_report(directory, problem, plans, metrics, focus=focus),
    )


# ---------------------------------------------------------------- formatting


def _pct(value: float | None, signed: bool = True) -> str:
    if value is None:
        return "—"
    return f"{value:+.1%}" if signed else f"{value:.1%}"


def _ratio_text(ratio: float) -> Text:
    style = "bold red" if ratio > 1.0 + 1e-9 else "yellow" if ratio >= 0.95 else "green"
    return Text(f"{ratio:.1%}", style=style)


def _violations_text(count: int) -> Text:
    return Text(str(count), style="bold red" if count else "green")


def _gain_text(value: float | None) -> Text:
    if value is None:
        return Text("—", style="dim")
    return Text(_pct(value), style="green" if value > 0 else "red" if value < 0 else "")


def _kw(watts: float) -> str:
    return f"{watts / 1000:,.1f}"


def _solver_text(plan: Plan) -> str:
    s = plan.stats
    parts = [s.status]
    if s.objective is not None:
        parts.append(f"objective {s.objective:,.0f}")
    if s.bound is not None:
        parts.append(f"bound {s.bound:,.0f}")
    if s.gap is not None:
        parts.append(f"gap {s.gap:.2%}")
    parts.append(f"{s.wall_s:.2f} s")
    if s.iterations:
        parts.append(f"{s.iterations} rounds, {s.slot_constraints} slot constraints")
    fallback = s.extra.get("fallback")
    if fallback:
        parts.append(f"fallback: {fallback}")
    return ", ".join(parts)


def _describe(problem: Problem) -> str:
    tree, fleet, svc, grid = problem.tree, problem.fleet, problem.services, problem.grid
    return (
        f"{tree.size} domains ({len(tree.leaves)} leaves), {fleet.size} nodes "
        f"({int(fleet.gpus.sum())} GPUs), {svc.size} services, {grid.slots} slots"
    )


def _emissions_of(problem: Problem, plans: dict[str, Plan]) -> dict[str, PlanEmissions]:
    """Emissions of every plan, when the problem was planned with carbon terms."""
    if problem.carbon is None:
        return {}
    return {name: plan_emissions(problem, p.assignment) for name, p in plans.items()}


def _emissions_json(e: PlanEmissions, setup: CarbonSetup | None) -> dict[str, Any]:
    out = e.as_dict()
    if setup is not None:
        out["window"] = setup.window
    return out


def _budget_text(e: PlanEmissions, short: bool = False) -> Text:
    if e.budget_kg is None or e.budget_used_kg is None:
        return Text("—", style="dim")
    margin = e.budget_kg - e.budget_used_kg
    if e.holds:
        return Text(f"{margin:,.1f} left" if short else f"holds, {margin:,.1f} kg left", "green")
    return Text(f"over {-margin:,.1f}" if short else f"over by {-margin:,.1f} kg", "bold red")


def _summary_table(
    problem: Problem,
    plan: Plan,
    metrics: dict[str, Metrics],
    emissions: PlanEmissions | None = None,
) -> Table:
    m = metrics[plan.strategy]
    g = _gains_of(plan.strategy, metrics)
    table = Table(
        title=f"[bold]{problem.name}[/] — {plan.strategy}",
        caption=_describe(problem),
        show_header=False,
        title_justify="left",
    )
    table.add_column(style="bold cyan")
    table.add_column()
    share = m.hosted_total / m.demand_total if m.demand_total else 1.0
    table.add_row("hosted", f"{m.hosted_total:,} / {m.demand_total:,} replicas ({share:.1%})")
    gains_line = Text()
    for i, base in enumerate(BASELINES):
        if i:
            gains_line.append(", ")
        gains_line.append_text(_gain_text(g.get(f"vs_{base}")))
        gains_line.append(f" vs {base}")
    table.add_row("gain", gains_line)
    unplaced = sorted(((n, k) for n, k in m.unplaced.items() if k > 0), key=lambda x: -x[1])
    detail = ", ".join(f"{n} {k}" for n, k in unplaced[:4])
    more = f", … {len(unplaced) - 4} more services" if len(unplaced) > 4 else ""
    table.add_row(
        "unplaced",
        f"{m.unplaced_total:,}" + (f" ({detail}{more})" if unplaced else ""),
    )
    violations = _violations_text(m.violations)
    if m.violating_domains:
        violations.append(f" domain-slots over cap in {', '.join(m.violating_domains[:5])}")
    table.add_row("violations", violations)
    table.add_row("worst peak/cap", _ratio_text(m.worst_peak_over_cap))
    table.add_row("stranded power", f"{_kw(m.stranded_w)} kW (leaf headroom at their peaks)")
    table.add_row("energy slack", f"{m.energy_slack_kwh:,.0f} kWh per period (root)")
    table.add_row("asynchrony", f"{m.asynchrony:.3f} (root; 1 = every replica peaks together)")
    table.add_row("GPUs", f"{m.gpus_used:,} / {m.gpus_total:,} in use")
    if emissions is not None and problem.carbon is not None:
        table.add_row(
            "emissions",
            f"{emissions.site_kg:,.1f} kg CO2e over {problem.carbon.label or 'the window'} "
            f"(idle {emissions.idle_kg[0]:,.1f} kg)",
        )
        if emissions.budget_domain is not None:
            budget = Text(f"{emissions.budget_kg:,.1f} kg for {emissions.budget_domain}: ")
            budget.append_text(_budget_text(emissions))
            table.add_row("emission budget", budget)
    table.add_row("solver", _solver_text(plan))
    return table


def _domain_table(problem: Problem, m: Metrics, all_domains: bool) -> Table:
    tree = problem.tree
    order = domain_order(problem)
    hidden = 0
    if not all_domains and tree.size > ALL_DOMAINS_UP_TO:
        leaves = set(tree.leaves.tolist())
        loaded = sorted(leaves, key=lambda d: -m.domains[d].peak_over_cap)[:TOP_LEAVES]
        keep = (set(range(tree.size)) - leaves) | set(loaded)
        hidden = tree.size - len(keep)
        order = [d for d in order if d in keep]
    caption = (
        f"{hidden} less loaded leaf domains not shown (--all-domains lists them)"
        if hidden
        else None
    )
    table = Table(title="per domain", title_justify="left", caption=caption)
    table.add_column("domain")
    table.add_column("replicas", justify="right")
    table.add_column("peak kW", justify="right")
    table.add_column("cap kW", justify="right")
    table.add_column("at", justify="center")
    table.add_column("peak/cap", justify="right")
    table.add_column("stranded kW", justify="right")
    table.add_column("asynchrony", justify="right")
    for d in order:
        dm = m.domains[d]
        table.add_row(
            "  " * dm.level + dm.domain,
            str(dm.replicas),
            _kw(dm.peak_w),
            _kw(dm.cap_at_peak_w),
            dm.peak_slot,
            _ratio_text(dm.peak_over_cap),
            _kw(dm.stranded_w),
            f"{dm.asynchrony:.2f}",
        )
    return table


def _compare_table(
    problem: Problem,
    plans: dict[str, Plan],
    metrics: dict[str, Metrics],
    emissions: dict[str, PlanEmissions] | None = None,
) -> Table:
    table = Table(
        title=f"[bold]{problem.name}[/] — strategies compared",
        caption=_describe(problem),
        title_justify="left",
    )
    for column, justify in (
        ("strategy", "left"),
        ("hosted", "right"),
        ("GPUs used", "right"),
        ("vs nameplate", "right"),
        ("vs peak-sum", "right"),
        ("violations", "right"),
        ("worst peak/cap", "right"),
        ("stranded kW", "right"),
        ("solve s", "right"),
        ("gap", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    if emissions:
        table.add_column("kg CO2e", justify="right")
        if any(e.budget_kg is not None for e in emissions.values()):
            table.add_column("budget kg", justify="right")
    demand = next(iter(metrics.values())).demand_total
    best = max(metrics[n].priority_weighted_hosted for n in plans)
    for name, plan in plans.items():
        m = metrics[name]
        g = _gains_of(name, metrics)
        carbon: list[str | Text] = []
        if emissions:
            e = emissions[name]
            carbon.append(f"{e.site_kg:,.1f}")
            if e.budget_kg is not None:
                carbon.append(_budget_text(e, short=True))
        table.add_row(
            Text(name, style="bold" if m.priority_weighted_hosted == best else ""),
            f"{m.hosted_total:,} / {demand:,}",
            f"{m.gpus_used:,}",
            _gain_text(g.get("vs_nameplate")),
            _gain_text(g.get("vs_peak-sum")),
            _violations_text(m.violations),
            _ratio_text(m.worst_peak_over_cap),
            _kw(m.stranded_w),
            f"{plan.stats.wall_s:.2f}",
            "—" if plan.stats.gap is None else f"{plan.stats.gap:.2%}",
            *carbon,
        )
    return table


# ---------------------------------------------------------------- commands

ScenarioArg = Annotated[
    Path | None,
    typer.Argument(
        help="Scenario file (YAML or JSON). Omit it for the embedded default scenario.",
        show_default=False,
    ),
]
StrategyOpt = Annotated[
    str,
    typer.Option(
        "--strategy",
        "-s",
        help=f"One of: {', '.join(STRATEGY_NAMES)}.",
        callback=_check_strategy,
        autocompletion=_complete_strategy,
    ),
]
TimeLimitOpt = Annotated[
    float,
    typer.Option("--time-limit", "-t", min=0.0, help="CP-SAT time limit in seconds."),
]
WorkersOpt = Annotated[int, typer.Option("--workers", min=1, help="CP-SAT worker threads.")]
FormatOpt = Annotated[
    OutputFormat,
    typer.Option("--format", "-f", help="table for people, json for programs (stdout)."),
]
ReportOpt = Annotated[
    Path | None,
    typer.Option("--report", help="Also write an HTML report with charts into this directory."),
]


@app.command()
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
    intensity: IntensitySpecsOpt = None,
    time_column: TimeColumnOpt = None,
    value_column: ValueColumnOpt = None,
    tz: TzOpt = "UTC",
    unit: UnitOpt = "g/kWh",
    day: DayOpt = None,
    window: WindowOpt = WindowKind.day,
    policy: PolicyOpt = None,
    floor: FloorOpt = None,
    domains: PolicyDomainsOpt = None,
    emission_budget: BudgetOpt = None,
    budget_domain: BudgetDomainOpt = None,
) -> None:
    """Place the scenario's services with one strategy and show the result.

    Gains are measured against the nameplate and peak-sum baselines, which are run too.
    With --intensity, emissions are counted per domain, every strategy respects
    --emission-budget, and cpsat prefers the least-emitting of equally good placements;
    --policy makes caps follow the intensity.
    """
    problem, setup = planning_problem(
        _cli_module(),
        _load(scenario),
        CarbonOptions(
            intensity,
            time_column,
            value_column,
            tz,
            unit,
            day,
            window,
            policy,
            floor,
            domains,
            emission_budget,
            budget_domain,
        ),
    )
    options = {"time_limit_s": time_limit, "workers": workers}
    with _progress() as progress:
        plans, metrics = _solve_all(progress, problem, [strategy], options)
        index = (
            _write_report(progress, report, problem, plans, metrics, strategy) if report else None
        )
    chosen = plans[strategy]
    emissions = _emissions_of(problem, {strategy: chosen})
    if output is OutputFormat.json:
        payload: dict[str, Any] = {
            "strategy": strategy,
            "placement": chosen.assignment.as_mapping(problem),
            "metrics": _metrics_json(strategy, metrics),
            "solver": chosen.stats.as_dict(),
        }
        if setup is not None:
            payload["emissions"] = _emissions_json(emissions[strategy], setup)
            payload["carbon"] = setup.as_dict()
        _emit_json(payload)
    else:
        console = _stdout()
        console.print(_summary_table(problem, chosen, metrics, emissions.get(strategy)))
        console.print(_domain_table(problem, metrics[strategy], all_domains))
    if index is not None:
        _stderr().print(f"report: {index}")


@app.command()
def compare(
    scenario: ScenarioArg = None,
    time_limit: TimeLimitOpt = 30.0,
    workers: WorkersOpt = 2,
    output: FormatOpt = OutputFormat.table,
    report: ReportOpt = None,
    intensity: IntensitySpecsOpt = None,
    time_column: TimeColumnOpt = None,
    value_column: ValueColumnOpt = None,
    tz: TzOpt = "UTC",
    unit: UnitOpt = "g/kWh",
    day: DayOpt = None,
    window: WindowOpt = WindowKind.day,
    policy: PolicyOpt = None,
    floor: FloorOpt = None,
    domains: PolicyDomainsOpt = None,
    emission_budget: BudgetOpt = None,
    budget_domain: BudgetDomainOpt = None,
) -> None:
    """Run every strategy on the scenario and compare them side by side.

    The carbon options are those of ``plan``: with --intensity every strategy's
    emissions are shown, and --emission-budget binds them all.
    """
    problem, setup = planning_problem(
        _cli_module(),
        _load(scenario),
        CarbonOptions(
            intensity,
            time_column,
            value_column,
            tz,
            unit,
            day,
            window,
            policy,
            floor,
            domains,
            emission_budget,
            budget_domain,
        ),
    )
    options = {"time_limit_s": time_limit, "workers": workers}
    with _progress() as progress:
        plans, metrics = _solve_all(progress, problem, STRATEGY_NAMES, options)
        index = _write_report(progress, report, problem, plans, metrics, None) if report else None
    emissions = _emissions_of(problem, plans)
    if output is OutputFormat.json:
        strategies: dict[str, Any] = {}
        for name, plan in plans.items():
            strategies[name] = {
                "metrics": _metrics_json(name, metrics, with_domains=False),
                "solver": plan.stats.as_dict(),
            }
            if setup is not None:
                strategies[name]["emissions"] = _emissions_json(emissions[name], setup)
        payload: dict[str, Any] = {"scenario": problem.name, "strategies": strategies}
        if setup is not None:
            payload["carbon"] = setup.as_dict()
        _emit_json(payload)
    else:
        _stdout().print(_compare_table(problem, plans, metrics, emissions))
    if index is not None:
        _stderr().print(f"report: {index}")


@app.command()
def whatif(
    scenario: ScenarioArg = None,
    strategy: StrategyOpt = "cpsat",
    scale_caps: Annotated[
        float, typer.Option("--scale-caps", help="Multiply every cap (0.9 = 10% less power).")
    ] = 1.0,
    add_nodes: Annotated[
        str,
        typer.Option(
            "--add-nodes",
            help="Nodes to add, N or P% of the fleet; copies of existing nodes, dealt "
            "round-robin over the leaf domains.",
        ),
    ] = "0",
    scale_demand: Annotated[
        float, typer.Option("--scale-demand", help="Multiply every service's demand.")
    ] = 1.0,
    time_limit: TimeLimitOpt = 30.0,
    workers: WorkersOpt = 2,
    output: FormatOpt = OutputFormat.table,
    kwok: Annotated[
        bool,
        typer.Option(
            "--kwok",
            help="Run the (changed) scenario through the real kube-scheduler on a local KWOK "
            "cluster and read the placement back, instead of planning before and after.",
        ),
    ] = False,
    scheduler: Annotated[
        SchedulerChoice,
        typer.Option(
            "--scheduler",
            help="With --kwok: powercap (kube-scheduler calling the extender), default "
            "(kube-scheduler's upstream default profile) or both, side by side.",
        ),
    ] = SchedulerChoice.powercap,
    planner: Annotated[
        str,
        typer.Option(
            "--planner", help="With --kwok: the extender's background planner, cpsat or greedy."
        ),
    ] = "cpsat",
    reserve_plan: Annotated[
        bool,
        typer.Option(
            "--reserve-plan/--no-reserve-plan",
            help="With --kwok: make the extender's plan binding (scoring.reservePlan).",
        ),
    ] = True,
    report: ReportOpt = None,
    all_domains: Annotated[
        bool, typer.Option("--all-domains", help="With --kwok: list every domain.")
    ] = False,
    replay: Annotated[
        Path | None,
        typer.Option(
            "--replay",
            help="With --kwok: once placed, replay measured power from this JSON file "
            '({"step_s": 600, "watts": {service: [w0, ...]}}, watts per replica above node '
            "idle from midnight of replay day 0) and measure cap breaches.",
        ),
    ] = None,
    replay_day: Annotated[
        int | None, typer.Option("--replay-day", help="With --replay: the day to start (0-based).")
    ] = None,
    start: Annotated[
        str | None, typer.Option("--start", help="With --replay: start time of day, HH:MM (UTC).")
    ] = None,
    duration: Annotated[
        str | None,
        typer.Option("--duration", help="With --replay: simulated length, e.g. 4h (default)."),
    ] = None,
    speed: Annotated[
        float | None,
        typer.Option(
            "--speed",
            help="With --replay: simulated seconds per wall second (default 60); with the "
            "controller it must divide the grid step.",
        ),
    ] = None,
    controller: Annotated[
        ControllerChoice | None,
        typer.Option(
            "--controller",
            help="With --replay: run the companion controller (on), or replay the window "
            "without then with it on the same placement (both).",
        ),
    ] = None,
) -> None:
    """Plan before and after a change to caps, nodes or demand, and show the difference.

    With --kwok, schedule the scenario (after any change) on a throwaway local KWOK cluster
    with the real kube-scheduler instead, and judge the placement it made. With --replay,
    then replay measured power on that placement, with or without the controller.
    """
    from placement.whatif import WhatIf, resolve_node_count

    problem = _load(scenario)
    replay_settings = _replay_settings(
        problem, replay, replay_day, start, duration, speed, controller, kwok
    )
    try:
        change = WhatIf(
            scale_caps=scale_caps,
            add_nodes=resolve_node_count(add_nodes, problem.fleet.size),
            scale_demand=scale_demand,
        )
        changed = change.apply(problem)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if kwok:
        if planner not in ("cpsat", "greedy"):
            raise _fail(f"--planner must be cpsat or greedy, got {planner!r}")
        schedulers = list(SCHEDULERS) if scheduler is SchedulerChoice.both else [scheduler.value]
        if (
            replay_settings is not None
            and replay_settings.controller
            and schedulers != ["powercap"]
        ):
            raise _fail(
                f"--controller {controller or 'on'} needs --scheduler powercap "
                "(it runs in the extender)"
            )
        _whatif_live(
            changed,
            schedulers,
            planner=planner,
            reserve_plan=reserve_plan,
            replay=replay_settings,
            baseline=controller is ControllerChoice.both,
            options={"time_limit_s": time_limit, "workers": workers},
            output=output,
            report=report,
            all_domains=all_domains,
        )
        return
    if report is not None:
        raise _fail("--report goes with --kwok here; use `powercap compare --report` offline")
    if changed is problem:
        _stderr().print("[yellow]warning:[/] no change requested; before and after are equal")
    options = {"time_limit_s": time_limit, "workers": workers}
    with _progress() as progress:
        before = _solve_all(progress, problem, [strategy], options, "before: ")
        after = _solve_all(progress, changed, [strategy], options, "after:  ")
    if output is OutputFormat.json:
        _emit_json(
            {
                "strategy": strategy,
                "changes": {
                    "scale_caps": change.scale_caps,
                    "add_nodes": change.add_nodes,
                    "scale_demand": change.scale_demand,
                },
                **{
                    label: {
                        "metrics": _metrics_json(strategy, side[1], with_domains=False),
                        "solver": side[0][strategy].stats.as_dict(),
                    }
                    for label, side in (("before", before), ("after", after))
                },
            }
        )
    else:
        _stdout().print(_whatif_table(problem, changed, change, strategy, before, after))


def _replay_settings(
    problem: Problem,
    path: Path | None,
    day: int | None,
    start: str | None,
    duration: str | None,
    speed: float | None,
    controller: ControllerChoice | None,
    kwok: bool,
) -> ReplaySettings | None:
    """The replay options checked and resolved; exit 2 naming the option at fault."""
    if path is None:
        given = [
            name
            for name, value in (
                ("--replay-day", day),
                ("--start", start),
                ("--duration", duration),
                ("--speed", speed),
                ("--controller", controller),
            )
            if value is not None
        ]
        if given:
            raise _fail(f"{', '.join(given)} go{'es' if len(given) == 1 else ''} with --replay")
        return None
    if not kwok:
        raise _fail("--replay goes with --kwok (it replays power on a live placement)")
    try:
        step_s, watts = read_replay(path)
    except ValueError as exc:
        raise _fail(f"--replay: {exc}") from None
    known = set(problem.services.names)
    if not known & set(watts):
        raise _fail(f"--replay: {path} names none of the scenario's services")
    start_s = 0
    if start is not None:
        match = re.fullmatch(r"(\d{1,2}):(\d{2})", start.strip())
        if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
            raise _fail(f"--start must be HH:MM within the day, got {start!r}")
        start_s = int(match.group(1)) * 3600 + int(match.group(2)) * 60
    try:
        duration_s = parse_duration(duration) if duration is not None else 4 * 3600
    except ValueError as exc:
        raise _fail(f"--duration: {exc}") from None
    speed_value = 60.0 if speed is None else speed
    on = controller is not ControllerChoice.off
    if speed_value <= 0:
        raise _fail(f"--speed must be > 0, got {speed_value:g}")
    if on and (why := speed_problem(problem.grid, speed_value)) is not None:
        raise _fail(f"--speed {why}")
    shortest = min(len(v) for v in watts.values())
    days = max(1, shortest * step_s // 86400)
    day_value = 0 if day is None else day
    if not 0 <= day_value < days:
        raise _fail(f"--replay-day must be in 0..{days - 1} ({path} holds {days} days), got {day}")
    try:
        return ReplaySettings(
            watts=watts,
            step_s=step_s,
            day=day_value,
            start_s=start_s,
            duration_s=duration_s,
            speed=speed_value,
            controller=on,
        )
    except ValueError as exc:
        raise _fail(f"--replay: {exc}") from None


def _cluster_backend(name: str) -> ClusterBackend:
    """The installed cluster backend ``name``; exit 2 naming the fix when there is none."""
    found = [ep for ep in entry_points(group=CLUSTER_GROUP) if ep.name == name]
    if not found:
        raise _fail(
            f"no {name!r} cluster backend is installed (entry-point group {CLUSTER_GROUP}); "
            "install powercap from its source tree with `pip install -e .`"
        )
    try:
        backend: ClusterBackend = found[0].load()
    except Exception as exc:  # foreign code: report what broke
        raise _fail(f"the {name!r} cluster backend failed to load: {exc}") from None
    return backend


def _live_name(scheduler: str) -> str:
    return f"kwok-{scheduler}"


def _run_live(
    progress: Progress,
    backend: ClusterBackend,
    problem: Problem,
    settings: LiveSettings,
) -> ClusterRun:
    """One backend run, each of its steps a progress line; exit 1 with the reason if it fails."""
    tasks: list[Any] = []
    label = f"{settings.scheduler}: "

    def step(description: str) -> None:
        if tasks:
            progress.update(tasks[-1], total=1, completed=1)
        tasks.append(progress.add_task(label + description, total=None))

    try:
        return backend(problem, settings, step)
    except Exception as exc:  # toolchain missing, a component that died, a timeout
        raise _fail(f"the {settings.scheduler} run on KWOK failed: {exc}", code=1) from None
    finally:
        if tasks:
            progress.update(tasks[-1], total=1, completed=1)


def _live_stats(run: ClusterRun) -> SolverStats:
    return SolverStats(
        status="SCHEDULED",
        wall_s=run.schedule_s,
        extra={
            "throughput_pods_per_s": run.throughput_pods_per_s,
            "pending": len(run.pending),
            "timings_s": dict(run.timings),
            "extender_plan": dict(run.planner),
        },
    )


def _pending_summary(run: ClusterRun, limit: int = 3) -> dict[str, Any]:
    """How many pods were left Pending and the distinct reasons the scheduler gave."""
    reasons: dict[str, int] = {}
    for message in run.pending.values():
        reasons[message] = reasons.get(message, 0) + 1
    top = sorted(reasons.items(), key=lambda kv: -kv[1])[:limit]
    return {"count": len(run.pending), "reasons": [{"pods": n, "message": m} for m, n in top]}


def _whatif_live(
    problem: Problem,
    schedulers: list[str],
    *,
    planner: str,
    reserve_plan: bool,
    options: dict[str, Any],
    output: OutputFormat,
    report: Path | None,
    all_domains: bool,
    replay: ReplaySettings | None = None,
    baseline: bool = False,
) -> None:
    """``whatif --kwok``: the problem through each scheduler on a fresh cluster, judged by
    the shared evaluator beside the baselines and the offline cpsat plan. With
    ``baseline`` the replay runs first without the controller on the same placement."""
    backend = _cluster_backend("kwok")
    runs: dict[str, ClusterRun] = {}
    with _progress() as progress:
        plans, metrics = _solve_all(progress, problem, ["cpsat"], options, "offline: ")
        for scheduler in schedulers:
            settings = LiveSettings(
                scheduler=scheduler,
                planner=planner,
                reserve_plan=reserve_plan,
                planner_time_limit_s=float(options["time_limit_s"]),
                replay=replay,
                baseline=baseline,
            )
            name = _live_name(scheduler)
            runs[name] = run = _run_live(progress, backend, problem, settings)
            plans[name] = Plan(name, run.assignment, _live_stats(run))
            metrics[name] = evaluate(problem, run.assignment)
        focus = _live_name(schedulers[0])
        index = _write_report(progress, report, problem, plans, metrics, focus) if report else None
    if output is OutputFormat.json:
        objects = {
            name: {
                "strategy": name,
                "scheduler": run.scheduler,
                "placement": run.assignment.as_mapping(problem),
                "metrics": _metrics_json(name, metrics),
                "solver": plans[name].stats.as_dict(),
                "throughput_pods_per_s": run.throughput_pods_per_s,
                "pending": _pending_summary(run),
                **_replay_json(run),
            }
            for name, run in runs.items()
        }
        if len(objects) == 1:
            _emit_json(next(iter(objects.values())))
        else:
            _emit_json({"scenario": problem.name, "runs": objects})
    else:
        console = _stdout()
        if len(runs) == 1:
            console.print(_summary_table(problem, plans[focus], metrics))
        console.print(_domain_table(problem, metrics[focus], all_domains))
        console.print(_compare_table(problem, plans, metrics))
        for name, run in runs.items():
            console.print(_live_line(name, run, metrics[name]))
            for outcome in (run.baseline, run.replay):
                if outcome is not None:
                    console.print(_replay_table(name, outcome))
    if index is not None:
        _stderr().print(f"report: {index}")


def _replay_json(run: ClusterRun) -> dict[str, Any]:
    """The replay keys of a live run's JSON object (none without a replay); with a
    baseline, the same keys for it under ``"baseline"``."""
    if run.replay is None:
        return {}
    out = _outcome_json(run.replay)
    if run.baseline is not None:
        out["baseline"] = _outcome_json(run.baseline)
    return out


def _outcome_json(r: ReplayOutcome) -> dict[str, Any]:
    return {
        "breach_domain_minutes": r.breach_domain_minutes,
        "actions": dict(r.actions),
        "evicted_by_priority": {str(k): v for k, v in r.evicted_by_priority.items()},
        "replay": {
            "window": dict(r.window),
            "domain_breach_minutes": dict(r.domain_breach_minutes),
            "daily_breach_minutes": {str(k): v for k, v in r.daily_breach_minutes.items()},
            "evictions_by_day": {str(k): v for k, v in r.evictions_by_day.items()},
            "samples": r.samples,
        },
    }


def _replay_table(name: str, r: ReplayOutcome) -> Table:
    w = r.window
    controller = "on" if w.get("controller") else "off"
    table = Table(
        title=f"[bold]{name}[/] — replay day {w.get('day', 0):g}, "
        f"{w.get('duration_s', 0) / 3600:g} h at speed {w.get('speed', 0):g}, "
        f"controller {controller}",
        title_justify="left",
    )
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("breach domain-minutes", f"{r.breach_domain_minutes:,.1f}")
    worst = sorted(r.domain_breach_minutes.items(), key=lambda kv: -kv[1])[:5]
    for domain, minutes in worst:
        table.add_row(f"  {domain}", f"{minutes:,.1f}")
    actions = ", ".join(f"{k} {v}" for k, v in r.actions.items()) or "none"
    table.add_row("actions", actions)
    evicted = ", ".join(f"priority {k}: {v}" for k, v in r.evicted_by_priority.items()) or "none"
    table.add_row("evicted", evicted)
    return table


def _live_line(name: str, run: ClusterRun, m: Metrics) -> Text:
    rate = run.throughput_pods_per_s
    line = Text.assemble(
        (name, "bold"),
        f": {m.hosted_total:,} pods bound in {run.schedule_s:.1f} s",
        f" ({rate:,.1f} pods/s)" if rate is not None else "",
        f", {len(run.pending):,} Pending",
    )
    summary = _pending_summary(run, limit=1)
    if summary["reasons"]:
        message = summary["reasons"][0]["message"]
        if len(message) > REASON_CHARS:
            message = message[: REASON_CHARS - 1] + "…"
        line.append(f"; most say: {message}", style="dim")
    return line


def _whatif_table(
    problem: Problem,
    changed: Problem,
    change: WhatIf,
    strategy: str,
    before: tuple[dict[str, Plan], dict[str, Metrics]],
    after: tuple[dict[str, Plan], dict[str, Metrics]],
) -> Table:
    table = Table(
        title=f"[bold]{problem.name}[/] — what if {change.describe()} ({strategy})",
        title_justify="left",
    )
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("change", justify="right")
    mb, ma = before[1][strategy], after[1][strategy]
    gb, ga = _gains_of(strategy, before[1]), _gains_of(strategy, after[1])

    def count_row(label: str, b: float, a: float, fmt: str = "{:,.0f}", good: int = 0) -> None:
        """``good`` is the sign of a welcome change (0: an input or neither, uncoloured)."""
        delta = a - b
        style = "" if abs(delta) < 1e-9 or not good else "green" if delta * good > 0 else "red"
        sign = "+" if delta > 0 else ""
        table.add_row(
            label, fmt.format(b), fmt.format(a), Text(sign + fmt.format(delta), style=style)
        )

    count_row("nodes", problem.fleet.size, changed.fleet.size)
    count_row("GPUs", int(problem.fleet.gpus.sum()), int(changed.fleet.gpus.sum()))
    root = int(np.flatnonzero(problem.tree.parents < 0)[0])
    count_row(
        "root cap kW (max)",
        float(problem.tree.caps[root].max()) / 1000,
        float(changed.tree.caps[root].max()) / 1000,
        "{:,.1f}",
    )
    count_row("demand", mb.demand_total, ma.demand_total)
    count_row("hosted", mb.hosted_total, ma.hosted_total, good=1)
    count_row("GPUs used", mb.gpus_used, ma.gpus_used, good=1)
    count_row("unplaced", mb.unplaced_total, ma.unplaced_total, good=-1)
    for base in BASELINES:
        table.add_row(
            f"gain vs {base}",
            _gain_text(gb.get(f"vs_{base}")),
            _gain_text(ga.get(f"vs_{base}")),
            "",
        )
    count_row("violations", mb.violations, ma.violations, good=-1)
    table.add_row(
        "worst peak/cap",
        _ratio_text(mb.worst_peak_over_cap),
        _ratio_text(ma.worst_peak_over_cap),
        "",
    )
    count_row("stranded kW", mb.stranded_w / 1000, ma.stranded_w / 1000, "{:,.1f}", good=-1)
    count_row("energy slack kWh", mb.energy_slack_kwh, ma.energy_slack_kwh)
    count_row("asynchrony", mb.asynchrony, ma.asynchrony, "{:.3f}")
    table.add_row(
        "solver",
        before[0][strategy].stats.status,
        after[0][strategy].stats.status,
        "",
    )
    return table


# ---------------------------------------------------------------- scenario commands


def _write_text(text: str, output: Path | None) -> None:
    if output is None:
        typer.echo(text, nl=not text.endswith("\n"))
        return
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise _fail(f"cannot write {output}: {exc.strerror}") from None
    _stderr().print(f"wrote {output}")


def _spec_yaml(spec: ScenarioSpec) -> str:
    return spec.to_yaml()


@scenario_app.command("default")
def scenario_default(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")
    ] = None,
) -> None:
    """Write the embedded default scenario as YAML."""
    from placement.default_scenario import default_spec

    _write_text(_spec_yaml(default_spec()), output)


@scenario_app.command("from-servegen")
def scenario_from_servegen(
    dirs: Annotated[
        list[Path],
        typer.Argument(
            help="Folders of ServeGen chunk-N-trace.csv files (or folders above them).",
            show_default=False,
        ),
    ],
    services: Annotated[
        int, typer.Option("--services", min=1, help="Clients to turn into services.")
    ] = 40,
    train_days: Annotated[
        int, typer.Option("--train-days", min=1, help="Leading days of each trace to learn from.")
    ] = 7,
    quantile: Annotated[
        float, typer.Option("--quantile", min=0.0, max=1.0, help="Sizing and profile quantile.")
    ] = 0.95,
    curve: Annotated[
        str | None,
        typer.Option(
            "--curve",
            help="Power curve 'rate:watts,...' (req/s per model instance → watts per GPU), "
            "e.g. '0:118,0.5:408,2:473,4:495'. Default: H100, Llama-3-70B TP4.",
        ),
    ] = None,
    gpus_per_instance: Annotated[
        int | None, typer.Option("--gpus-per-instance", min=1, help="Tensor-parallel GPUs.")
    ] = None,
    instances_per_replica: Annotated[
        int | None, typer.Option("--instances-per-replica", min=1, help="Model instances.")
    ] = None,
    rows: Annotated[int | None, typer.Option("--rows", min=1)] = None,
    racks_per_row: Annotated[int | None, typer.Option("--racks-per-row", min=1)] = None,
    nodes_per_rack: Annotated[int | None, typer.Option("--nodes-per-rack", min=1)] = None,
    gpus_per_node: Annotated[int | None, typer.Option("--gpus-per-node", min=1)] = None,
    idle_watts: Annotated[float | None, typer.Option("--idle-watts", min=0.0)] = None,
    nameplate_watts: Annotated[
        float | None, typer.Option("--nameplate-watts", help="Rated watts above idle per 8 GPUs.")
    ] = None,
    rack_cap: Annotated[float | None, typer.Option("--rack-cap", help="Watts per rack.")] = None,
    row_cap: Annotated[float | None, typer.Option("--row-cap", help="Watts per row.")] = None,
    site_cap: Annotated[
        float | None, typer.Option("--site-cap", help="Watts for the site.")
    ] = None,
    rack_cap_fraction: Annotated[
        float | None,
        typer.Option("--rack-cap-fraction", help="Rack cap as a share of its nameplate."),
    ] = None,
    row_fraction: Annotated[
        float | None, typer.Option("--row-fraction", help="Row cap as a share of its racks'.")
    ] = None,
    site_fraction: Annotated[
        float | None, typer.Option("--site-fraction", help="Site cap as a share of its rows'.")
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="0: the busiest clients; other: a random draw.")
    ] = 0,
    demand_scale: Annotated[float, typer.Option("--demand-scale", min=0.0)] = 1.0,
    max_replicas: Annotated[int, typer.Option("--max-replicas", min=1)] = 64,
    name: Annotated[str, typer.Option("--name", help="metadata.name of the scenario.")] = (
        "servegen"
    ),
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File to write, .yaml or .json (default: stdout)."),
    ] = None,
) -> None:
    """Build a scenario from ServeGen production traces (real clients, real asynchrony).

    Topology options left out keep the defaults of placement.servegen.Topology.
    """
    from dataclasses import replace

    from placement.powermodel import H100_LLAMA70B_TP4, parse_curve
    from placement.scenario import problem_from_spec
    from placement.servegen import Topology, build_servegen

    given: dict[str, Any] = {
        "rows": rows,
        "racks_per_row": racks_per_row,
        "nodes_per_rack": nodes_per_rack,
        "gpus_per_node": gpus_per_node,
        "idle_watts": idle_watts,
        "nameplate_watts": nameplate_watts,
        "rack_cap": rack_cap,
        "row_cap": row_cap,
        "site_cap": site_cap,
        "rack_cap_fraction": rack_cap_fraction,
        "row_fraction": row_fraction,
        "site_fraction": site_fraction,
    }
    curve_given: dict[str, Any] = {
        "gpus_per_instance": gpus_per_instance,
        "instances_per_replica": instances_per_replica,
    }
    try:
        topology = Topology(**{k: v for k, v in given.items() if v is not None})
        if curve is not None:
            curve_given["points"] = parse_curve(curve)
        # Unset curve options keep the H100 calibration (bare idle, host power, capacity).
        power = replace(
            H100_LLAMA70B_TP4, **{k: v for k, v in curve_given.items() if v is not None}
        )
        with _progress() as progress:
            built = _step(
                progress,
                f"reading ServeGen traces from {', '.join(str(d) for d in dirs)}",
                lambda: build_servegen(
                    dirs,
                    services=services,
                    train_days=train_days,
                    curve=power,
                    topology=topology,
                    quantile=quantile,
                    seed=seed,
                    name=name,
                    demand_scale=demand_scale,
                    max_replicas=max_replicas,
                ),
            )
    except ValueError as exc:
        raise _fail(str(exc)) from None
    try:
        problem = problem_from_spec(built.spec)
    except ScenarioError as exc:  # a bug in the builder rather than in the user's input
        _print_scenario_problems(exc)
        raise typer.Exit(2) from None
    if output is not None and output.suffix == ".json":
        data = built.spec.model_dump(by_alias=True, exclude_defaults=True, mode="json")
        text = orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n"
    else:
        text = built.spec.to_yaml()
    _write_text(text, output)
    _stderr().print(
        f"{problem.name}: {_describe(problem)}; "
        f"{int(problem.services.demand.sum()):,} replicas demanded"
    )


@scenario_app.command("validate")
def scenario_validate(
    file: Annotated[Path, typer.Argument(help="Scenario file (YAML or JSON).")],
) -> None:
    """Check a scenario file: print OK with its size, or every problem (exit code 1)."""
    try:
        problem = load_problem(file)
    except ScenarioError as exc:
        _print_scenario_problems(exc)
        raise typer.Exit(1) from None
    svc = problem.services
    _stdout().print(
        Text.assemble(
            ("OK ", "bold green"),
            f"{file}: {problem.name!r} — {_describe(problem)}; "
            f"{int(svc.demand.sum()):,} replicas demanded",
        )
    )


# `powercap carbon report` lives in its own module; it imports this one only when it runs.
register_carbon(app)


def load_plugins(target: typer.Typer) -> list[str]:
    """Let installed packages add commands to ``target``.

    Every entry point of the ``powercap.commands`` group is loaded and called as
    ``register(target)``. A plugin that fails to import or register is reported on
    stderr and skipped: one broken extra must not take the whole CLI down. Returns the
    names of the plugins that registered.
    """
    loaded: list[str] = []
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            register = ep.load()
            register(target)
        except Exception as exc:  # any failure in foreign code: warn and carry on
            _stderr().print(
                Text(
                    f"warning: powercap plugin {ep.name!r} ({ep.value}) failed to load: "
                    f"{type(exc).__name__}: {exc}",
                    style="yellow",
                )
            )
        else:
            loaded.append(ep.name)
    return loaded


_plugins_loaded = False


def main() -> None:
    """Console-script entry point: load plugins once, then run the CLI."""
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        load_plugins(app)
    app()
