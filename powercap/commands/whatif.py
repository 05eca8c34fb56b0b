"""``powercap whatif``: a scenario changed (caps, nodes, demand) and re-planned, or run
live on a KWOK cluster."""

from __future__ import annotations

import re
from enum import StrEnum
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import Progress

from placement.cluster_run import (
    SCHEDULERS,
    ClusterBackend,
    ClusterRun,
    LiveSettings,
    ReplayOutcome,
    ReplaySettings,
    speed_problem,
)
from placement.grid import parse_duration
from placement.metrics import Metrics, evaluate
from placement.problem import Problem
from placement.replay_file import read_replay
from placement.strategies import Plan, SolverStats
from powercap.console import (
    OutputFormat,
    emit_json,
    fail,
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
from powercap.plans import metrics_json, solve_all, write_plan_report
from powercap.tables import (
    compare_table,
    domain_table,
    live_line,
    pending_summary,
    replay_table,
    summary_table,
    whatif_table,
)

if TYPE_CHECKING:
    from placement.variants import WhatIf

# Backends that run a problem on a cluster for `whatif --kwok` (see placement.cluster_run).
CLUSTER_GROUP = "powercap.clusters"


class ControllerChoice(StrEnum):
    """``--controller``: ``both`` replays the window without, then with the controller on
    the same placement."""

    on = "on"
    off = "off"
    both = "both"


class PowerLimitsChoice(StrEnum):
    """``--power-limits``: ``on`` runs a simulated powercap agent on every fake node, so the
    controller may cap GPU power limits; ``off`` runs none."""

    on = "on"
    off = "off"


class SchedulerChoice(StrEnum):
    powercap = "powercap"
    default = "default"
    both = "both"


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
    power_limits: Annotated[
        PowerLimitsChoice | None,
        typer.Option(
            "--power-limits",
            help="With --replay: run a simulated powercap agent on every fake node, so GPUs "
            "hold to their power limits and the controller may cap them (on), or none "
            "(off, the default). See docs/power-limits.md.",
        ),
    ] = None,
) -> None:
    """Plan before and after a change to caps, nodes or demand, and show the difference.

    With --kwok, schedule the scenario (after any change) on a throwaway local KWOK cluster
    with the real kube-scheduler instead, and judge the placement it made. With --replay,
    then replay measured power on that placement, with or without the controller.
    """
    problem = load_scenario(scenario)
    replay_settings = _replay_settings(
        problem, replay, replay_day, start, duration, speed, controller, kwok, power_limits
    )
    change, changed = _changed(
        problem, scale_caps=scale_caps, add_nodes=add_nodes, scale_demand=scale_demand
    )
    options = {"time_limit_s": time_limit, "workers": workers}
    if kwok:
        _whatif_live(
            changed,
            _live_schedulers(scheduler, planner, replay_settings, controller),
            planner=planner,
            reserve_plan=reserve_plan,
            replay=replay_settings,
            baseline=controller is ControllerChoice.both,
            options=options,
            output=output,
            report=report,
            all_domains=all_domains,
        )
        return
    if report is not None:
        raise fail("--report goes with --kwok here; use `powercap compare --report` offline")
    _whatif_offline(problem, changed, change, strategy=strategy, options=options, output=output)


def _changed(
    problem: Problem, *, scale_caps: float, add_nodes: str, scale_demand: float
) -> tuple[WhatIf, Problem]:
    """The change the options ask for and ``problem`` with it applied (``problem`` itself
    when nothing changes); exit 2 with the reason when it cannot be applied."""
    from placement.variants import WhatIf, resolve_node_count

    try:
        change = WhatIf(
            scale_caps=scale_caps,
            add_nodes=resolve_node_count(add_nodes, problem.fleet.size),
            scale_demand=scale_demand,
        )
        return change, change.apply(problem)
    except ValueError as exc:
        raise fail(str(exc)) from None


def _live_schedulers(
    scheduler: SchedulerChoice,
    planner: str,
    replay: ReplaySettings | None,
    controller: ControllerChoice | None,
) -> list[str]:
    """The schedulers ``--kwok`` runs, in order, once ``--planner`` and ``--controller``
    are known to fit them; exit 2 naming the option otherwise."""
    if planner not in ("cpsat", "greedy"):
        raise fail(f"--planner must be cpsat or greedy, got {planner!r}")
    schedulers = list(SCHEDULERS) if scheduler is SchedulerChoice.both else [scheduler.value]
    if replay is not None and replay.controller and schedulers != ["powercap"]:
        raise fail(
            f"--controller {controller or 'on'} needs --scheduler powercap "
            "(it runs in the extender)"
        )
    return schedulers


def _whatif_offline(
    problem: Problem,
    changed: Problem,
    change: WhatIf,
    *,
    strategy: str,
    options: dict[str, Any],
    output: OutputFormat,
) -> None:
    """Plan ``problem`` and ``changed`` with ``strategy`` and print the difference."""
    if changed is problem:
        stderr().print("[yellow]warning:[/] no change requested; before and after are equal")
    with progress_display() as progress:
        before = solve_all(progress, problem, [strategy], options=options, label="before: ")
        after = solve_all(progress, changed, [strategy], options=options, label="after:  ")
    if output is OutputFormat.json:
        emit_json(
            {
                "strategy": strategy,
                "changes": {
                    "scale_caps": change.scale_caps,
                    "add_nodes": change.add_nodes,
                    "scale_demand": change.scale_demand,
                },
                **{
                    label: {
                        "metrics": metrics_json(strategy, side[1], with_domains=False),
                        "solver": side[0][strategy].stats.as_dict(),
                    }
                    for label, side in (("before", before), ("after", after))
                },
            }
        )
    else:
        stdout().print(
            whatif_table(problem, changed, change, strategy=strategy, before=before, after=after)
        )


def _replay_settings(
    problem: Problem,
    path: Path | None,
    day: int | None,
    start: str | None,
    duration: str | None,
    speed: float | None,
    controller: ControllerChoice | None,
    kwok: bool,
    power_limits: PowerLimitsChoice | None = None,
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
                ("--power-limits", power_limits),
            )
            if value is not None
        ]
        if given:
            raise fail(f"{', '.join(given)} go{'es' if len(given) == 1 else ''} with --replay")
        return None
    if not kwok:
        raise fail("--replay goes with --kwok (it replays power on a live placement)")
    try:
        step_s, watts = read_replay(path)
    except ValueError as exc:
        raise fail(f"--replay: {exc}") from None
    known = set(problem.services.names)
    if not known & set(watts):
        raise fail(f"--replay: {path} names none of the scenario's services")
    start_s = 0 if start is None else _seconds_of_day(start)
    try:
        duration_s = parse_duration(duration) if duration is not None else 4 * 3600
    except ValueError as exc:
        raise fail(f"--duration: {exc}") from None
    speed_value = 60.0 if speed is None else speed
    on = controller is not ControllerChoice.off
    if speed_value <= 0:
        raise fail(f"--speed must be > 0, got {speed_value:g}")
    if on and (why := speed_problem(problem.grid, speed_value)) is not None:
        raise fail(f"--speed {why}")
    shortest = min(len(v) for v in watts.values())
    days = max(1, shortest * step_s // 86400)
    day_value = 0 if day is None else day
    if not 0 <= day_value < days:
        raise fail(f"--replay-day must be in 0..{days - 1} ({path} holds {days} days), got {day}")
    try:
        return ReplaySettings(
            watts=watts,
            step_s=step_s,
            day=day_value,
            start_s=start_s,
            duration_s=duration_s,
            speed=speed_value,
            controller=on,
            power_limits=power_limits is PowerLimitsChoice.on,
        )
    except ValueError as exc:
        raise fail(f"--replay: {exc}") from None


def _seconds_of_day(text: str) -> int:
    """``--start`` HH:MM as seconds after midnight; exit 2 unless it is a time of day."""
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", text.strip())
    if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise fail(f"--start must be HH:MM within the day, got {text!r}")
    return int(match.group(1)) * 3600 + int(match.group(2)) * 60


def _cluster_backend(name: str) -> ClusterBackend:
    """The installed cluster backend ``name``; exit 2 naming the fix when there is none."""
    found = [ep for ep in entry_points(group=CLUSTER_GROUP) if ep.name == name]
    if not found:
        raise fail(
            f"no {name!r} cluster backend is installed (entry-point group {CLUSTER_GROUP}); "
            "install powercap from its source tree with `pip install -e .`"
        )
    try:
        backend: ClusterBackend = found[0].load()
    except Exception as exc:  # foreign code: report what broke
        raise fail(f"the {name!r} cluster backend failed to load: {exc}") from None
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
        raise fail(f"the {settings.scheduler} run on KWOK failed: {exc}", code=1) from None
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
    with progress_display() as progress:
        plans, metrics = solve_all(progress, problem, ["cpsat"], options=options, label="offline: ")
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
        index = (
            write_plan_report(progress, report, problem, plans=plans, metrics=metrics, focus=focus)
            if report
            else None
        )
    if output is OutputFormat.json:
        emit_json(_live_json(problem, runs, plans, metrics))
    else:
        _print_live(problem, runs, plans, metrics, focus=focus, all_domains=all_domains)
    if index is not None:
        stderr().print(f"report: {index}")


def _live_json(
    problem: Problem,
    runs: dict[str, ClusterRun],
    plans: dict[str, Plan],
    metrics: dict[str, Metrics],
) -> dict[str, Any]:
    """One run's JSON object, or ``{"scenario", "runs"}`` keyed by run when there are more."""
    objects = {
        name: {
            "strategy": name,
            "scheduler": run.scheduler,
            "placement": run.assignment.as_mapping(problem),
            "metrics": metrics_json(name, metrics),
            "solver": plans[name].stats.as_dict(),
            "throughput_pods_per_s": run.throughput_pods_per_s,
            "pending": pending_summary(run),
            **_replay_json(run),
        }
        for name, run in runs.items()
    }
    if len(objects) == 1:
        return next(iter(objects.values()))
    return {"scenario": problem.name, "runs": objects}


def _print_live(
    problem: Problem,
    runs: dict[str, ClusterRun],
    plans: dict[str, Plan],
    metrics: dict[str, Metrics],
    *,
    focus: str,
    all_domains: bool,
) -> None:
    """The live runs' tables: ``focus``'s summary (one run only) and domains, every plan
    compared, then each run's line and replay tables."""
    console = stdout()
    if len(runs) == 1:
        console.print(summary_table(problem, plans[focus], metrics))
    console.print(domain_table(problem, metrics[focus], all_domains))
    console.print(compare_table(problem, plans, metrics))
    for name, run in runs.items():
        console.print(live_line(name, run, metrics[name]))
        for outcome in (run.baseline, run.replay):
            if outcome is not None:
                console.print(replay_table(name, outcome))


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
        "throughput_lost_fraction": r.throughput_lost_fraction,
        "evicted_by_priority": {str(k): v for k, v in r.evicted_by_priority.items()},
        "replay": {
            "window": dict(r.window),
            "domain_breach_minutes": dict(r.domain_breach_minutes),
            "daily_breach_minutes": {str(k): v for k, v in r.daily_breach_minutes.items()},
            "evictions_by_day": {str(k): v for k, v in r.evictions_by_day.items()},
            "samples": r.samples,
        },
    }


def register(app: typer.Typer) -> None:
    """Add ``whatif`` to ``app``."""
    app.command()(whatif)
