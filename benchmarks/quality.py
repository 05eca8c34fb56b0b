"""Placement quality on a scenario built from real ServeGen traces.

    python -m benchmarks.quality                       # defaults: 40 services, seed 0
    python -m benchmarks.quality --seeds 0 1 2 3 4     # other client mixes
    python -m benchmarks.quality --rack-fraction 0.6 --quantile 0.99

Quality bar (DESIGN): on trace-derived scenarios, ≥ 30% more replicas than
``nameplate`` and ≥ 13% more than ``peak-sum``, with zero predicted violations.

The scenario is :func:`placement.scenario.servegen.build_servegen` over the ServeGen m-large and
m-mid clients (alibaba/ServeGen, arXiv 2505.09999; Apache-2.0), sized with the H100 /
Llama-3-70B TP4 power curve (grantwilkins/powertrace-sim, see
``placement/powermodel.py``), on 4 rows × 10 racks × 8 nodes of 8×H100 (2 kW idle,
8.2 kW nameplate above idle), racks capped at half their nameplate, rows and site at
90% of their children. The first ``--train-days`` days make the profiles (p95 per slot).

Columns: replicas hosted and priority-weighted (rank weights, as the planner uses);
gains in replicas hosted over the two baselines; predicted violations (domain-slots
over cap); replicas hosted per priority tier (200/100/0); the site's asynchrony
(Σ per-replica peaks / peak of the sum: how well the hosted mix interleaves);
``replay over``: domain-slots over cap, and the worst load/cap, when the same
placement draws what the traces show on the days after training (10-minute windows,
the real rates rather than a p95) — how far the predictions hold; CP-SAT's relative
gap to its bound; wall time.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from placement.admission import violations
from placement.assignment import Assignment
from placement.metrics import Metrics, evaluate, gain
from placement.powermodel import H100_LLAMA70B_TP4
from placement.problem import Problem
from placement.scenario.building import problem_from_spec
from placement.scenario.servegen import TIER_PRIORITIES as TIERS
from placement.scenario.servegen import Topology, build_servegen, replay_watts
from placement.strategies import Plan, run_strategy

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "servegen"
FOLDERS = ("language/m-large", "language/m-mid")


def servegen_folders(parser: argparse.ArgumentParser, data: Path) -> list[Path]:
    """The trace folders under ``data``; a usage error naming them when one is missing."""
    missing = [f for f in FOLDERS if not (data / f).is_dir()]
    if missing:
        parser.error(
            f"ServeGen traces not found: expected {', '.join(str(data / f) for f in missing)} "
            "(shared data, see shared/data/README.md); pass --data"
        )
    return [data / f for f in FOLDERS]


STRATEGIES = ("nameplate", "peak-sum", "greedy", "cpsat")
BAR_NAMEPLATE = 0.30
BAR_PEAK_SUM = 0.13

COLUMNS = (
    ("seed", 4),
    ("strategy", 9),
    ("hosted", 6),
    ("weighted", 8),
    ("vs nameplate", 12),
    ("vs peak-sum", 11),
    ("viol.", 5),
    ("by tier", 11),
    ("site async", 10),
    ("replay over", 11),
    ("gap", 6),
    ("wall s", 6),
)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:+.1%}"


def timed_plan(
    name: str, problem: Problem, *, time_limit_s: float, workers: int
) -> tuple[Plan, float]:
    """Strategy ``name``'s plan of ``problem`` and its wall time in seconds (CP-SAT with
    ``time_limit_s`` and ``workers``; the other strategies take no options)."""
    options: dict[str, Any] = (
        {"time_limit_s": time_limit_s, "workers": workers} if name == "cpsat" else {}
    )
    began = time.perf_counter()
    plan = run_strategy(name, problem, **options)
    return plan, time.perf_counter() - began


def replay_check(
    problem: Problem, assignment: Assignment, replay: NDArray[np.float64]
) -> tuple[int, float]:
    """Domain-slots over cap and the worst load/cap when replicas draw ``replay``
    (services × windows, watts per replica above node idle); caps are constant here."""
    per_domain = assignment.by_domain(problem).astype(np.float64)  # (S × D)
    load = problem.idle_by_domain[:, None] + per_domain.T @ replay
    caps = problem.tree.caps[:, :1]  # the real caps, not the planning margin
    return int(violations(load, caps).sum()), float((load / caps).max())


def run_seed(
    data: Path,
    seed: int,
    topology: Topology,
    *,
    services: int,
    train_days: int,
    quantile: float,
    demand_scale: float,
    replay_days: int,
    headroom: float,
    time_limit_s: float,
    workers: int,
) -> tuple[str, list[dict[str, Any]], dict[str, Metrics]]:
    """Build one scenario and run every strategy; returns a summary line, rows, metrics."""
    dirs = [data / f for f in FOLDERS]
    built = build_servegen(
        dirs,
        services=services,
        train_days=train_days,
        topology=topology,
        quantile=quantile,
        seed=seed,
        demand_scale=demand_scale,
        name=f"servegen-seed{seed}",
    )
    # Headroom is the planner's safety margin: every strategy admits up to cap × (1 − h).
    problem = problem_from_spec(built.spec.model_copy(update={"headroom": headroom}))
    svc = problem.services
    replay: NDArray[np.float64] | None = None
    if replay_days > 0:
        watts = replay_watts(
            dirs, svc.names, replay_days, curve=H100_LLAMA70B_TP4, sizing=built.sizing
        )
        replay = np.array([watts[n] for n in svc.names])
    summary = (
        f"seed {seed}: {svc.size} services, demand {int(svc.demand.sum())} replicas "
        f"({int(svc.demand @ svc.gpus)} GPUs) on {problem.fleet.size} nodes "
        f"({int(problem.fleet.gpus.sum())} GPUs); per-replica peak "
        f"{svc.peaks.min():.0f}–{svc.peaks.max():.0f} W, nameplate {svc.nameplate[0]:.0f} W; "
        f"caps rack {topology.rack_cap_watts():.0f} W, row {topology.row_cap_watts():.0f} W, "
        f"site {topology.site_cap_watts():.0f} W"
    )
    metrics: dict[str, Metrics] = {}
    rows: list[dict[str, Any]] = []
    for name in STRATEGIES:
        plan, wall = timed_plan(name, problem, time_limit_s=time_limit_s, workers=workers)
        m = evaluate(problem, plan.assignment)
        metrics[name] = m
        hosted = plan.assignment.hosted
        tiers = "/".join(str(int(hosted[svc.priority == t].sum())) for t in TIERS)
        replayed = "—"
        if replay is not None:
            over, worst = replay_check(problem, plan.assignment, replay)
            replayed = f"{over} ({worst:.3f})"
        rows.append(
            {
                "seed": seed,
                "strategy": name,
                "hosted": m.hosted_total,
                "weighted": f"{m.priority_weighted_hosted:.0f}",
                "vs nameplate": _pct(gain(m.hosted_total, metrics["nameplate"].hosted_total)),
                "vs peak-sum": (
                    _pct(gain(m.hosted_total, metrics["peak-sum"].hosted_total))
                    if "peak-sum" in metrics
                    else "—"
                ),
                "viol.": m.violations,
                "by tier": tiers,
                "replay over": replayed,
                "site async": f"{m.asynchrony:.3f}",
                "gap": "—" if plan.stats.gap is None else f"{plan.stats.gap:.2%}",
                "wall s": f"{wall:.2f}",
            }
        )
    return summary, rows, metrics


def verdict(metrics: dict[str, Metrics], strategy: str) -> str:
    """Whether ``strategy`` meets the DESIGN bar against both baselines."""
    m = metrics[strategy]
    vs_np = gain(m.hosted_total, metrics["nameplate"].hosted_total) or 0.0
    vs_ps = gain(m.hosted_total, metrics["peak-sum"].hosted_total) or 0.0
    ok = vs_np >= BAR_NAMEPLATE and vs_ps >= BAR_PEAK_SUM and m.violations == 0
    short = []
    if vs_np < BAR_NAMEPLATE:
        short.append(f"{BAR_NAMEPLATE - vs_np:.1%} short vs nameplate")
    if vs_ps < BAR_PEAK_SUM:
        short.append(f"{BAR_PEAK_SUM - vs_ps:.1%} short vs peak-sum")
    if m.violations:
        short.append(f"{m.violations} violations")
    return (
        f"{strategy}: {'MEETS' if ok else 'MISSES'} the bar "
        f"(≥ {BAR_NAMEPLATE:.0%} vs nameplate, ≥ {BAR_PEAK_SUM:.0%} vs peak-sum, 0 violations)"
        + ("" if ok else ": " + ", ".join(short))
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=DATA, help="the servegen data folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--services", type=int, default=40)
    parser.add_argument("--train-days", type=int, default=7)
    parser.add_argument("--quantile", type=float, default=0.95)
    parser.add_argument("--demand-scale", type=float, default=1.0)
    parser.add_argument(
        "--replay-days", type=int, default=7, help="days after training to replay (0: none)"
    )
    parser.add_argument("--rack-fraction", type=float, default=0.5)
    parser.add_argument("--row-fraction", type=float, default=0.9)
    parser.add_argument("--site-fraction", type=float, default=0.9)
    parser.add_argument("--headroom", type=float, default=0.0, help="plan to cap × (1 − headroom)")
    parser.add_argument("--time-limit", type=float, default=60.0, help="CP-SAT limit, seconds")
    parser.add_argument("--workers", type=int, default=2, help="CP-SAT threads")
    args = parser.parse_args(argv)
    servegen_folders(parser, args.data)
    topology = Topology(
        rack_cap_fraction=args.rack_fraction,
        row_fraction=args.row_fraction,
        site_fraction=args.site_fraction,
    )
    print(
        f"ServeGen {' + '.join(FOLDERS)} from {args.data}; train {args.train_days} days, "
        f"p{args.quantile * 100:g} profiles, demand ×{args.demand_scale:g}, "
        f"headroom {args.headroom:g}; racks "
        f"{args.rack_fraction:g} of nameplate, rows {args.row_fraction:g}, site "
        f"{args.site_fraction:g}; cpsat {args.time_limit:g} s, {args.workers} workers; "
        f"{os.cpu_count()} CPUs"
    )
    all_rows: list[dict[str, Any]] = []
    verdicts: list[str] = []
    for seed in args.seeds:
        summary, rows, metrics = run_seed(
            args.data,
            seed,
            topology,
            services=args.services,
            train_days=args.train_days,
            quantile=args.quantile,
            demand_scale=args.demand_scale,
            replay_days=args.replay_days,
            headroom=args.headroom,
            time_limit_s=args.time_limit,
            workers=args.workers,
        )
        print(summary)
        all_rows += rows
        verdicts += [f"seed {seed}: {verdict(metrics, s)}" for s in ("cpsat", "greedy")]
    print("  ".join(name.rjust(width) for name, width in COLUMNS))
    for row in all_rows:
        print("  ".join(str(row[name]).rjust(width) for name, width in COLUMNS))
    for line in verdicts:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
