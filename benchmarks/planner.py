"""Planner benchmark: greedy and CP-SAT on the DESIGN quality-bar instance.

    python -m benchmarks.planner                          # seed 0, 60 s limit, 2 workers
    python -m benchmarks.planner --seeds 0 1 2 3 4        # several instances
    python -m benchmarks.planner --nodes 5000 --racks 480 --rows 19

Quality bars (DESIGN): 1,000 nodes, 150 domains, 50 services, T = 144 — CP-SAT within
1% of its own bound in ≤ 60 s on 2 cores; greedy ≤ 1 s. The instance is
:func:`benchmarks.synthetic.synthetic_problem`. The nameplate and peak-sum baselines
are shown for scale. Columns: wall time of the whole strategy call; replicas hosted and
priority-weighted; CP-SAT's bound and relative gap; predicted violations (domain-slots
over cap, must be 0); lazy rounds (LP + CP-SAT) and (domain, slot) constraints emitted;
``stage1 s``, the time until the hosted objective was settled (the rest refines spread).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.synthetic import synthetic_problem
from placement.metrics import evaluate
from placement.problem import Problem
from placement.strategies import Plan, run_strategy

COLUMNS = (
    ("seed", 4),
    ("strategy", 9),
    ("wall s", 7),
    ("hosted", 7),
    ("weighted", 9),
    ("bound", 8),
    ("gap", 7),
    ("viol.", 5),
    ("rounds", 6),
    ("slots", 6),
    ("stage1 s", 8),
)


def _row(seed: int, problem: Problem, plan: Plan, wall: float) -> dict[str, Any]:
    metrics = evaluate(problem, plan.assignment)
    stats = plan.stats
    stage1 = stats.extra.get("stage1", {})
    return {
        "seed": seed,
        "strategy": plan.strategy,
        "wall s": f"{wall:.2f}",
        "hosted": metrics.hosted_total,
        "weighted": f"{metrics.priority_weighted_hosted:.0f}",
        "bound": "—" if stats.bound is None else f"{stats.bound:.0f}",
        "gap": "—" if stats.gap is None else f"{stats.gap:.2%}",
        "viol.": metrics.violations,
        "rounds": stats.iterations or "—",
        "slots": stats.slot_constraints or "—",
        "stage1 s": f"{stage1['wall_s']:.2f}" if "wall_s" in stage1 else "—",
    }


def _print_table(rows: list[dict[str, Any]]) -> None:
    print("  ".join(name.rjust(width) for name, width in COLUMNS))
    for row in rows:
        print("  ".join(str(row[name]).rjust(width) for name, width in COLUMNS))


def run(
    seeds: Sequence[int],
    nodes: int,
    racks: int,
    *,
    rows: int,
    services: int,
    time_limit_s: float,
    workers: int,
    gap: float,
    baselines: bool = True,
) -> list[dict[str, Any]]:
    """Run every strategy on every seed; returns one table row per (seed, strategy)."""
    out: list[dict[str, Any]] = []
    for seed in seeds:
        problem = synthetic_problem(
            nodes=nodes, racks=racks, rows=rows, services=services, seed=seed
        )
        names = ["nameplate", "peak-sum"] if baselines else []
        for name in [*names, "greedy", "cpsat"]:
            options: dict[str, Any] = (
                {"time_limit_s": time_limit_s, "workers": workers, "relative_gap": gap}
                if name == "cpsat"
                else {}
            )
            began = time.perf_counter()
            plan = run_strategy(name, problem, **options)
            out.append(_row(seed, problem, plan, time.perf_counter() - began))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--racks", type=int, default=140)
    parser.add_argument("--rows", type=int, default=9)
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--time-limit", type=float, default=60.0, help="CP-SAT limit, seconds")
    parser.add_argument("--workers", type=int, default=2, help="CP-SAT threads")
    parser.add_argument("--gap", type=float, default=0.005, help="CP-SAT relative gap")
    parser.add_argument("--no-baselines", action="store_true", help="greedy and cpsat only")
    args = parser.parse_args(argv)
    print(
        f"synthetic {args.nodes} nodes, {args.racks} racks, {args.rows} rows, "
        f"{args.services} services, T=144; cpsat: {args.time_limit:g} s limit, "
        f"{args.workers} workers, gap {args.gap:g}; {os.cpu_count()} CPUs"
    )
    rows = run(
        args.seeds,
        args.nodes,
        args.racks,
        rows=args.rows,
        services=args.services,
        time_limit_s=args.time_limit,
        workers=args.workers,
        gap=args.gap,
        baselines=not args.no_baselines,
    )
    _print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
