"""The real kube-scheduler on KWOK: throughput with and without the extender, and how close
the live placement gets to the offline plan.

    python -m benchmarks.kwok throughput            # 1,000 nodes, 10,000 pods, both ways
    python -m benchmarks.kwok servegen              # ServeGen scenario: live vs offline cpsat
    python -m benchmarks.kwok throughput --nodes 200 --pods 2000   # a quicker look
    python -m benchmarks.kwok throughput --no-filter-to-plan       # every fitting node offered
    python -m benchmarks.kwok throughput --nodes 5000 --pods 1000 --only with
    python -m benchmarks.kwok replay                # ServeGen days 8–14 replayed, ± controller
    python -m benchmarks.kwok replay --power-limits both   # … and capping vs evict-only

Quality bars (DESIGN / issue 4):

* **throughput** — 1,000 fake nodes, 10,000 pods: pods/s with the extender ≥ 50% of the
  same scheduler without it, in the same run. "The same scheduler" is the shipped
  KubeSchedulerConfiguration (``percentageOfNodesToScore: 100``, GPU MostAllocated, client
  QPS) with the ``extenders`` stanza removed; the raised bar (issue 16) is ≥ 80%. Every
  pod fits by GPUs and caps in both runs (16 GPUs a node, caps at the racks' nameplate),
  so both runs do the same scheduling work and the difference is the extender's cost.
  The extender runs as shipped (``cpsat``, ``filterToPlan`` on) with ``reservePlan``.
  Pods are created before the scheduler starts; the rate is pods bound per second between
  the first and the last binding, timed from a pod watch (see ``e2e/backend.py``).
* **servegen** — on the ServeGen-built scenario of ``benchmarks.quality`` (40 services,
  320 nodes), replicas hosted through kube-scheduler + extender (cpsat planner,
  ``reservePlan``) ≥ 97% of the offline cpsat plan, with zero predicted violations.
* **replay** — the same scenario placed through the extender, then the traces' days after
  training (8–14 by default) replayed as measured power (``powercap whatif --kwok
  --replay``), once without and once with the companion controller, on the same
  cluster and placement: breach domain-minutes per day (the power simulator's ground truth) with the
  controller ≤ 10% of the figure without it, and evictions per day. With
  ``--power-limits both`` (issue 15) the window is replayed a third time: the controller
  capping GPUs first, then (after it) evict-only; goal: at least 80% fewer evictions with
  power limits at equal or lower breach minutes, with the throughput lost stated.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from e2e.backend import run_on_kwok
from placement.cluster_run import DAY_S, ClusterRun, LiveSettings, ReplayOutcome, ReplaySettings
from placement.metrics import evaluate
from placement.powermodel import H100_LLAMA70B_TP4
from placement.problem import Problem
from placement.replay_file import write_replay
from placement.scenario.building import problem_from_spec
from placement.scenario.servegen import Topology, build_servegen, replay_watts
from placement.scenario.spec import spec_from_data
from placement.strategies import run_strategy

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "servegen"
FOLDERS = ("language/m-large", "language/m-mid")
BAR_THROUGHPUT = 0.50
BAR_THROUGHPUT_RAISED = 0.80  # DESIGN "Quality bars", raised (issue 16)
BAR_LIVE_VS_PLAN = 0.97
BAR_REPLAY = 0.10
BAR_FEWER_EVICTIONS = 0.80  # power limits: evictions cut by at least this share
TRAIN_DAYS = 7
OUT = Path("out") / "benchmarks"

GPUS_PER_NODE = 16
NODE_IDLE_W = 2000.0
REPLICA_PEAK_W = 700.0


def throughput_problem(nodes: int, pods: int, services: int = 50) -> Problem:
    """``nodes`` fake 16-GPU nodes in racks of 8 under 5 rows, ``pods`` one-GPU replicas of
    ``services`` services peaking at different hours, T = 144; caps that every placement
    keeps (see the module doc)."""
    racks = max(1, nodes // 8)
    rows = min(5, racks)
    rack_names = [f"rack-{r:03d}" for r in range(racks)]
    rack_cap = 8 * (NODE_IDLE_W + GPUS_PER_NODE * REPLICA_PEAK_W)
    domains: list[dict[str, Any]] = [{"name": "site", "cap": rack_cap * racks}]
    for w in range(rows):
        members = rack_names[w::rows]
        domains.append({"name": f"row-{w}", "parent": "site", "cap": rack_cap * len(members)})
        domains += [{"name": r, "parent": f"row-{w}", "cap": rack_cap} for r in members]
    base, extra = divmod(pods, services)
    spec = {
        "apiVersion": "powercap.io/v1alpha1",
        "kind": "Scenario",
        "metadata": {"name": f"throughput-{nodes}n-{pods}p"},
        "grid": {"period": "24h", "step": "10m"},
        "domains": domains,
        "nodeGroups": [
            {
                "namePrefix": "gpu",
                "domains": rack_names,
                "countPerDomain": nodes // racks,
                "gpus": GPUS_PER_NODE,
                "idleWatts": NODE_IDLE_W,
            }
        ],
        "services": [
            {
                "name": f"svc-{s:02d}",
                "replicas": base + (1 if s < extra else 0),
                "gpusPerReplica": 1,
                "nameplateWatts": REPLICA_PEAK_W,
                "profile": {
                    "diurnal": {
                        "low": 150,
                        "high": REPLICA_PEAK_W,
                        "peakAt": f"{(s * 24 // services) % 24:02d}:{(s * 7) % 60:02d}",
                        "width": "6h",
                    }
                },
            }
            for s in range(services)
        ],
    }
    return problem_from_spec(spec_from_data(spec))


def _step(label: str) -> Any:
    started = time.monotonic()

    def step(description: str) -> None:
        print(f"  [{time.monotonic() - started:6.1f}s] {label}: {description}", flush=True)

    return step


def _summary(name: str, problem: Problem, run: ClusterRun) -> dict[str, Any]:
    m = evaluate(problem, run.assignment)
    return {
        "run": name,
        "bound": m.hosted_total,
        "pending": len(run.pending),
        "window s": f"{run.schedule_s:.1f}",
        "pods/s": "—" if run.throughput_pods_per_s is None else f"{run.throughput_pods_per_s:.1f}",
        "violations": m.violations,
        "cpu busy": "—" if run.cpu_busy is None else f"{run.cpu_busy:.0%}",
        "timings s": " ".join(f"{k.removesuffix('_s')}={v:g}" for k, v in run.timings.items()),
    }


def _table(rows: list[dict[str, Any]]) -> None:
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    print("  ".join(k.rjust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(str(r[k]).rjust(widths[k]) for k in keys))


def bench_throughput(
    nodes: int,
    pods: int,
    planner: str,
    *,
    only: str | None = None,
    filter_to_plan: bool = True,
) -> int:
    """Both runs and the verdict; ``only`` (``"with"`` or ``"without"``) runs that half
    alone and prints its row, no verdict (a quicker look at a large cluster).
    ``filter_to_plan``: the extender's ``scoring.filterToPlan``."""
    problem = throughput_problem(nodes, pods)
    print(
        f"throughput: {problem.fleet.size} nodes ({int(problem.fleet.gpus.sum())} GPUs), "
        f"{int(problem.services.demand.sum())} pods of {problem.services.size} services, "
        f"{problem.tree.size} domains, T = {problem.grid.slots}; planner {planner}"
        f", filterToPlan {'on' if filter_to_plan else 'off'}"
    )
    settings = {
        "without": LiveSettings(scheduler="default", stock_default=False, settle_timeout_s=1800),
        "with": LiveSettings(
            scheduler="powercap",
            planner=planner,
            settle_timeout_s=1800,
            filter_to_plan=filter_to_plan,
        ),
    }
    runs = {
        f"{half} extender": run_on_kwok(problem, live, _step(half))
        for half, live in settings.items()
        if only in (None, half)
    }
    _table([_summary(name, problem, run) for name, run in runs.items()])
    if only is not None:
        return 0
    base = runs["without extender"].throughput_pods_per_s
    ours = runs["with extender"].throughput_pods_per_s
    if base is None or ours is None:
        print("verdict: too few bindings to measure a rate")
        return 1
    share = ours / base

    def met(bar: float) -> str:
        return f"≥ {bar:.0%} {'met' if share >= bar else 'NOT met'}"

    print(
        f"verdict: with the extender {ours:.1f} pods/s = {share:.0%} of {base:.1f} pods/s "
        f"without (bar {met(BAR_THROUGHPUT)}; raised bar {met(BAR_THROUGHPUT_RAISED)})"
    )
    return 0


def bench_servegen(data: Path, time_limit_s: float) -> int:
    missing = [f for f in FOLDERS if not (data / f).is_dir()]
    if missing:
        raise SystemExit(
            f"ServeGen traces not found under {data} ({', '.join(missing)}); they are the "
            "shared data (see shared/data/README.md); pass --data"
        )
    built = build_servegen(
        [data / f for f in FOLDERS], services=40, train_days=7, topology=Topology(), seed=0
    )
    problem = problem_from_spec(built.spec)
    svc = problem.services
    print(
        f"servegen: {svc.size} services, demand {int(svc.demand.sum())} replicas on "
        f"{problem.fleet.size} nodes; cpsat {time_limit_s:g} s offline and as the planner"
    )
    plan = run_strategy("cpsat", problem, time_limit_s=time_limit_s, workers=2)
    offline = evaluate(problem, plan.assignment)
    run = run_on_kwok(
        problem,
        LiveSettings(scheduler="powercap", planner="cpsat", planner_time_limit_s=time_limit_s),
        _step("live"),
    )
    live = evaluate(problem, run.assignment)
    rows = [
        {
            "run": "offline cpsat",
            "hosted": offline.hosted_total,
            "violations": offline.violations,
            "gap": "—" if plan.stats.gap is None else f"{plan.stats.gap:.2%}",
        },
        {
            "run": "kube-scheduler + extender",
            "hosted": live.hosted_total,
            "violations": live.violations,
            "gap": f"plan {run.planner.get('hosted_replicas', float('nan')):.0f} hosted",
        },
    ]
    _table(rows)
    share = live.hosted_total / offline.hosted_total if offline.hosted_total else 1.0
    met = share >= BAR_LIVE_VS_PLAN and live.violations == 0
    print(
        f"verdict: live {live.hosted_total} = {share:.1%} of offline {offline.hosted_total}, "
        f"{live.violations} violations (bar ≥ {BAR_LIVE_VS_PLAN:.0%}, 0): "
        f"{'met' if met else 'NOT met'}"
    )
    return 0


def _servegen(data: Path) -> Any:
    missing = [f for f in FOLDERS if not (data / f).is_dir()]
    if missing:
        raise SystemExit(
            f"ServeGen traces not found under {data} ({', '.join(missing)}); they are the "
            "shared data (see shared/data/README.md); pass --data"
        )
    return build_servegen(
        [data / f for f in FOLDERS], services=40, train_days=TRAIN_DAYS, topology=Topology(), seed=0
    )


def bench_replay(
    data: Path,
    time_limit_s: float,
    first: int,
    *,
    last: int,
    speed: float,
    baseline_speed: float,
    power_limits: str = "off",
    limit_hold_h: float = 24.0,
) -> int:
    """Days ``first``..``last`` of the traces (1-based; training is days 1–7) replayed on
    the live placement: without the controller, then with it. ``power_limits`` ``on``
    lets the controller cap GPUs (simulated agents on every node); ``both`` replays the
    window a third time, the controller on but without power limits, so the cap rung is
    judged against the evict-only ladder on the same placement. ``limit_hold_h``: the
    controller's ``powerLimits.settle.hold`` in simulated hours (the shipped 24 h by
    default)."""
    if not TRAIN_DAYS < first <= last:
        raise SystemExit(f"--days must be within the days after training (> {TRAIN_DAYS})")
    built = _servegen(data)
    problem = problem_from_spec(built.spec)
    svc = problem.services
    watts = replay_watts(
        [data / f for f in FOLDERS],
        svc.names,
        last - TRAIN_DAYS,
        curve=H100_LLAMA70B_TP4,
        sizing=built.sizing,
    )
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "servegen-replay.json"
    write_replay(path, watts)
    days = last - first + 1
    controlled = days * DAY_S / speed / 60
    print(
        f"replay: {svc.size} services, demand {int(svc.demand.sum())} replicas on "
        f"{problem.fleet.size} nodes; trace days {first}–{last} ({path}) without the "
        f"controller at speed {baseline_speed:g} ({days * DAY_S / baseline_speed / 60:.1f} min), "
        f"with it at speed {speed:g} ({controlled:.1f} min"
        f"{', twice: power limits on, then off' if power_limits == 'both' else ''}); "
        f"power limits {power_limits} (held {limit_hold_h:g} h after a cap); "
        f"cpsat planner {time_limit_s:g} s"
    )
    replay = ReplaySettings(
        watts=watts,
        day=first - TRAIN_DAYS - 1,
        start_s=0,
        duration_s=days * DAY_S,
        speed=speed,
        controller=True,
        power_limits=power_limits != "off",
        limit_hold_s=limit_hold_h * 3600.0,
    )
    started = time.monotonic()
    # One placement, replayed two or three times: without the controller (nothing
    # moves), then with it; with ``both``, capping first, so that the evict-only window
    # after it starts from the same placement unless capping evicted too.
    run = run_on_kwok(
        problem,
        LiveSettings(
            scheduler="powercap",
            planner="cpsat",
            planner_time_limit_s=time_limit_s,
            replay=replay,
            baseline=True,
            baseline_speed=baseline_speed,
            without_limits=power_limits == "both",
        ),
        _step("replay"),
    )
    assert run.baseline is not None and run.replay is not None
    passes: dict[str, ReplayOutcome] = {"off": run.baseline}
    if run.without_limits is not None:
        passes["evict only"] = run.without_limits
    passes["caps" if power_limits != "off" else "on"] = run.replay
    m = evaluate(problem, run.assignment)
    print(
        f"  placed: {m.hosted_total} hosted, {m.violations} predicted violations; "
        f"{time.monotonic() - started:.0f} s in all",
        flush=True,
    )
    for mode, r in passes.items():
        print(
            f"  controller {mode}: {r.breach_domain_minutes:,.1f} breach domain-minutes; "
            f"actions {dict(r.actions)}; evicted by priority {dict(r.evicted_by_priority)}; "
            f"throughput lost {r.throughput_lost_fraction:.3%}",
            flush=True,
        )
    first_day = first - TRAIN_DAYS - 1
    rows = [
        _replay_day_row(passes, d + TRAIN_DAYS + 1, d) for d in range(first_day, last - TRAIN_DAYS)
    ]
    rows.append(_replay_day_row(passes, "total", None))
    _table(rows)
    for mode, r in passes.items():
        before = sum(n for d, n in r.evictions_by_day.items() if d < first_day)
        if before:
            print(f"  ({mode}: {before} evictions before the window's first day)")
        worst = sorted(r.domain_breach_minutes.items(), key=lambda kv: -kv[1])[:8]
        print(f"  {mode}: breach minutes by domain {dict(worst)}")
    off = run.baseline
    if not off.breach_domain_minutes:
        print("verdict: nothing breached without the controller; nothing to judge")
        return 0
    for mode, r in passes.items():
        if mode == "off":
            continue
        share = r.breach_domain_minutes / off.breach_domain_minutes
        print(
            f"verdict: controller {mode}: {share:.1%} of the uncontrolled breach domain-minutes "
            f"(goal ≤ {BAR_REPLAY:.0%}): {'met' if share <= BAR_REPLAY else 'NOT met'}"
        )
    if "evict only" in passes:
        evict, caps = passes["evict only"], passes["caps"]
        n_evict, n_caps = _evictions(evict), _evictions(caps)
        fewer = 1 - n_caps / n_evict if n_evict else None
        equal_or_lower = caps.breach_domain_minutes <= evict.breach_domain_minutes
        met = fewer is not None and fewer >= BAR_FEWER_EVICTIONS and equal_or_lower
        print(
            f"verdict: power limits: {n_caps} evictions against {n_evict} evict-only"
            f"{f' ({fewer:.0%} fewer)' if fewer is not None else ''}, breach "
            f"{caps.breach_domain_minutes:,.1f} against {evict.breach_domain_minutes:,.1f} "
            f"domain-minutes, throughput lost {caps.throughput_lost_fraction:.3%} "
            f"(goal ≥ {BAR_FEWER_EVICTIONS:.0%} fewer evictions at equal or lower breach "
            f"minutes): {'met' if met else 'NOT met'}"
        )
    return 0


def _evictions(r: ReplayOutcome) -> int:
    return sum(r.evicted_by_priority.values())


def _replay_day_row(
    passes: Mapping[str, ReplayOutcome], label: int | str, day: int | None
) -> dict[str, Any]:
    """One row of the replay table: breach minutes of each pass (and the share of the
    uncontrolled figure) and evictions of each controlled pass, on replay day ``day``
    (``None``: the whole window)."""
    off = passes["off"]

    def breach(r: ReplayOutcome) -> float:
        return r.breach_domain_minutes if day is None else r.daily_breach_minutes.get(day, 0.0)

    def evictions(r: ReplayOutcome) -> int:
        return sum(r.evictions_by_day.values()) if day is None else r.evictions_by_day.get(day, 0)

    row: dict[str, Any] = {"day": label, "breach off": f"{breach(off):,.1f}"}
    for mode, r in passes.items():
        if mode == "off":
            continue
        b = breach(r)
        row[f"breach {mode}"] = f"{b:,.1f}"
        row[f"{mode}/off"] = f"{b / breach(off):.1%}" if breach(off) else "—"
    for mode, r in passes.items():
        if mode != "off":
            row[f"evictions {mode}"] = evictions(r)
    return row


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="which", required=True)
    tp = sub.add_parser("throughput", help="pods/s with and without the extender")
    tp.add_argument("--nodes", type=int, default=1000)
    tp.add_argument("--pods", type=int, default=10_000)
    tp.add_argument("--planner", choices=("cpsat", "greedy"), default="cpsat")
    tp.add_argument("--only", choices=("with", "without"), help="run one half alone (no verdict)")
    tp.add_argument(
        "--filter-to-plan",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the extender offers only the plan's domains (scoring.filterToPlan, on by default)",
    )
    sg = sub.add_parser("servegen", help="replicas hosted live vs the offline cpsat plan")
    sg.add_argument("--data", type=Path, default=DATA)
    sg.add_argument("--time-limit", type=float, default=30.0)
    rp = sub.add_parser("replay", help="breach minutes of replayed days, ± the controller")
    rp.add_argument("--data", type=Path, default=DATA)
    rp.add_argument("--time-limit", type=float, default=30.0)
    rp.add_argument("--first-day", type=int, default=8, help="first trace day (1-based)")
    rp.add_argument("--last-day", type=int, default=14, help="last trace day (1-based)")
    rp.add_argument(
        "--speed", type=float, default=300.0, help="simulated s per wall s, with the controller"
    )
    rp.add_argument(
        "--baseline-speed",
        type=float,
        default=600.0,
        help="simulated s per wall s without the controller (nothing acts: only sampling)",
    )
    rp.add_argument(
        "--power-limits",
        choices=("off", "on", "both"),
        default="off",
        help="the controller may cap GPUs (on); both: also the same window evict-only after it",
    )
    rp.add_argument(
        "--limit-hold",
        type=float,
        default=24.0,
        help="controller.powerLimits.settle.hold in simulated hours (shipped: 24)",
    )
    args = parser.parse_args(argv)
    print(f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}")
    if args.which == "throughput":
        return bench_throughput(
            args.nodes,
            args.pods,
            args.planner,
            only=args.only,
            filter_to_plan=args.filter_to_plan,
        )
    if args.which == "replay":
        return bench_replay(
            args.data,
            args.time_limit,
            args.first_day,
            last=args.last_day,
            speed=args.speed,
            baseline_speed=args.baseline_speed,
            power_limits=args.power_limits,
            limit_hold_h=args.limit_hold,
        )
    return bench_servegen(args.data, args.time_limit)


if __name__ == "__main__":
    raise SystemExit(main())
