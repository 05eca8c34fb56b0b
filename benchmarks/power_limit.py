"""Provisioning at a GPU power limit on the ServeGen scenario: uncapped vs capped.

    python -m benchmarks.power_limit                      # limits 0.8 and 0.6
    python -m benchmarks.power_limit --limits 0.8 --time-limit 30

The scenario is that of ``benchmarks.quality`` (40 ServeGen clients, seed 0, H100 /
Llama-3-70B TP4 power curve, 4 rows × 10 racks × 8 nodes of 8×H100). Every service is
provisioned uncapped, then at each ``--limits`` fraction of the 700 W default limit
(``placement.provisioning.at_limit``, the same path as ``powercap plan --power-limit``),
and every strategy places it.

Columns: the limit; the strategy; replicas hosted; throughput-weighted hosted (Σ hosted ×
relative throughput at the limit, from the default throughput curve: an uncapped replica
counts 1); its change from the same strategy uncapped; predicted violations; ``replay
over``: domain-slots over cap (and worst load/cap) when the placement draws the traces'
next week, each replica's draw clipped at its limit as the GPUs would enforce it;
CP-SAT's gap; wall time.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from benchmarks.quality import (
    DATA,
    FOLDERS,
    STRATEGIES,
    replay_check,
    servegen_folders,
    timed_plan,
)
from placement.metrics import evaluate
from placement.powermodel import H100_LLAMA70B_TP4
from placement.problem import Problem
from placement.provisioning import at_limit, provisioning_of, throughput_hosted, uncapped
from placement.scenario.building import problem_from_spec
from placement.scenario.servegen import Topology, build_servegen, replay_watts
from placement.throughput import capped_profile

COLUMNS = (
    ("limit", 8),
    ("strategy", 9),
    ("hosted", 6),
    ("throughput", 10),
    ("vs uncapped", 11),
    ("viol.", 5),
    ("replay over", 13),
    ("gap", 6),
    ("wall s", 6),
)


def clipped_replay(problem: Problem, replay: NDArray[np.float64]) -> NDArray[np.float64]:
    """``replay`` (services × windows, watts per replica) clipped at each service's limit."""
    prov = provisioning_of(problem)
    out = np.array(replay, dtype=np.float64)
    for s in range(out.shape[0]):
        if prov.applied[s] < 1.0:
            out[s], _ = capped_profile(
                out[s],
                float(prov.base_nameplate[s]),
                gpus=int(problem.services.gpus[s]),
                fraction=float(prov.applied[s]),
                gpu_watts=float(prov.gpu_watts[s]),
            )
    return out


def run_limit(
    problem: Problem,
    label: str,
    replay: NDArray[np.float64] | None,
    *,
    baseline: dict[str, float],
    time_limit_s: float,
    workers: int,
) -> list[dict[str, Any]]:
    """Every strategy on ``problem``; ``baseline`` (strategy → uncapped throughput) is
    filled when empty and compared with otherwise."""
    rows: list[dict[str, Any]] = []
    for name in STRATEGIES:
        plan, wall = timed_plan(name, problem, time_limit_s=time_limit_s, workers=workers)
        m = evaluate(problem, plan.assignment)
        weighted = throughput_hosted(problem, plan.assignment.hosted)
        base = baseline.setdefault(name, weighted)
        replayed = "—"
        if replay is not None:
            over, worst = replay_check(problem, plan.assignment, clipped_replay(problem, replay))
            replayed = f"{over} ({worst:.3f})"
        rows.append(
            {
                "limit": label,
                "strategy": name,
                "hosted": m.hosted_total,
                "throughput": f"{weighted:.1f}",
                "vs uncapped": f"{weighted / base - 1.0:+.1%}" if base else "—",
                "viol.": m.violations,
                "replay over": replayed,
                "gap": "—" if plan.stats.gap is None else f"{plan.stats.gap:.2%}",
                "wall s": f"{wall:.2f}",
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=DATA, help="the servegen data folder")
    parser.add_argument("--limits", nargs="+", default=["0.8", "0.6"], help="0.8 or 560W")
    parser.add_argument("--services", type=int, default=40)
    parser.add_argument("--train-days", type=int, default=7)
    parser.add_argument("--replay-days", type=int, default=7, help="0: no replay")
    parser.add_argument("--time-limit", type=float, default=60.0, help="CP-SAT limit, seconds")
    parser.add_argument("--workers", type=int, default=2, help="CP-SAT threads")
    args = parser.parse_args(argv)
    dirs = servegen_folders(parser, args.data)
    built = build_servegen(
        dirs,
        services=args.services,
        train_days=args.train_days,
        topology=Topology(),
        seed=0,
        name="servegen-seed0",
    )
    base = problem_from_spec(built.spec)
    svc = base.services
    replay: NDArray[np.float64] | None = None
    if args.replay_days > 0:
        watts = replay_watts(
            dirs, svc.names, args.replay_days, curve=H100_LLAMA70B_TP4, sizing=built.sizing
        )
        replay = np.array([watts[n] for n in svc.names])
    print(
        f"ServeGen {' + '.join(FOLDERS)} from {args.data}: {svc.size} services, demand "
        f"{int(svc.demand.sum())} replicas on {base.fleet.size} nodes; per-replica peak "
        f"{svc.peaks.min():.0f}–{svc.peaks.max():.0f} W, nameplate {svc.nameplate[0]:.0f} W "
        f"above idle ({int(svc.gpus[0])} GPUs); cpsat {args.time_limit:g} s, "
        f"{args.workers} workers; {os.cpu_count()} CPUs"
    )
    baseline: dict[str, float] = {}
    rows = run_limit(
        uncapped(base),
        "uncapped",
        replay,
        baseline=baseline,
        time_limit_s=args.time_limit,
        workers=args.workers,
    )
    for limit in args.limits:
        capped = at_limit(base, limit)
        prov = provisioning_of(capped)
        bound = capped.services.nameplate[0]
        print(
            f"limit {limit}: {prov.applied[0]:.3g} of {prov.gpu_watts[0]:.0f} W per GPU; "
            f"relative throughput {prov.relative_throughput()[0]:.3f}; per-replica bound "
            f"{bound:.0f} W; profile slots clipped "
            f"{int((capped.services.profiles < base.services.profiles - 1e-9).sum())}"
        )
        rows += run_limit(
            capped,
            limit,
            replay,
            baseline=baseline,
            time_limit_s=args.time_limit,
            workers=args.workers,
        )
    print("  ".join(name.rjust(width) for name, width in COLUMNS))
    for row in rows:
        print("  ".join(str(row[name]).rjust(width) for name, width in COLUMNS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
