"""Quality metrics of a placement — one module, used by the CLI, e2e and benchmarks."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from placement.admission import violations
from placement.assignment import Assignment
from placement.problem import Problem


@dataclass(frozen=True)
class DomainMetrics:
    domain: str
    level: int
    replicas: int
    peak_w: float  # max over slots of predicted load
    peak_slot: str  # time of day of that peak
    cap_at_peak_w: float
    peak_over_cap: float  # max over slots of load/cap
    stranded_w: float  # min over slots of (cap − load), ≥ 0: budget never used
    asynchrony: float  # Σ_i peak(p_i) / peak(Σ_i p_i) over replicas in the domain; 1 = in phase


@dataclass(frozen=True)
class Metrics:
    hosted: dict[str, int]
    unplaced: dict[str, int]
    hosted_total: int
    unplaced_total: int
    demand_total: int
    priority_weighted_hosted: float
    gpus_used: int
    gpus_total: int
    violations: int  # domain-slots over cap, every level
    violating_domains: list[str]
    worst_peak_over_cap: float
    stranded_w: float  # sum over leaf domains
    energy_slack_kwh: float  # root: Σ_t (cap − load)·Δt over one period
    asynchrony: float  # at the root
    domains: list[DomainMetrics]

    def as_dict(self, with_domains: bool = True) -> dict[str, Any]:
        out = asdict(self)
        if not with_domains:
            out.pop("domains")
        return out


def priority_weights(priority: NDArray[np.int64]) -> NDArray[np.float64]:
    """Positive weights that keep the order of priorities: the rank of each distinct
    priority, lowest = 1. Any positive, order-keeping map would do; ranks keep the
    weighted objective small and independent of the priority scale users choose."""
    distinct = np.unique(priority)
    return (np.searchsorted(distinct, priority) + 1).astype(np.float64)


def asynchrony(replicas_by_service: NDArray[np.int64], profiles: NDArray[np.float64]) -> float:
    """Σ_i peak(p_i) / peak(Σ_i p_i) for the given replica counts per service.

    1.0 means every replica peaks in the same slot; higher means peaks fall apart,
    which is what lets a domain host more than the sum of peaks would allow.
    """
    counts = replicas_by_service.astype(np.float64)
    if counts.sum() == 0:
        return 1.0
    total = counts @ profiles
    peak_total = float(total.max())
    if peak_total <= 0:
        return 1.0
    return float(counts @ profiles.max(axis=1)) / peak_total


def evaluate(problem: Problem, assignment: Assignment) -> Metrics:
    """Everything the CLI and reports show about one placement."""
    svc, tree, grid = problem.services, problem.tree, problem.grid
    hosted = assignment.hosted
    per_domain = assignment.by_domain(problem)
    load = problem.idle_by_domain[:, None] + per_domain.T.astype(np.float64) @ svc.profiles
    caps = tree.caps
    over = violations(load, caps)
    ratio = load / caps
    headroom = caps - load
    domains: list[DomainMetrics] = []
    for d in range(tree.size):
        t_peak = int(np.argmax(load[d]))
        domains.append(
            DomainMetrics(
                domain=tree.names[d],
                level=int(tree.depth[d]),
                replicas=int(per_domain[:, d].sum()),
                peak_w=float(load[d, t_peak]),
                peak_slot=grid.slot_label(t_peak),
                cap_at_peak_w=float(caps[d, t_peak]),
                peak_over_cap=float(ratio[d].max()),
                stranded_w=float(max(0.0, headroom[d].min())),
                asynchrony=asynchrony(per_domain[:, d], svc.profiles),
            )
        )
    leaves = tree.leaves
    roots = np.flatnonzero(tree.parents < 0)
    weights = priority_weights(svc.priority)
    return Metrics(
        hosted={n: int(hosted[s]) for s, n in enumerate(svc.names)},
        unplaced={n: int(svc.demand[s] - hosted[s]) for s, n in enumerate(svc.names)},
        hosted_total=int(hosted.sum()),
        unplaced_total=int((svc.demand - hosted).clip(min=0).sum()),
        demand_total=int(svc.demand.sum()),
        priority_weighted_hosted=float(weights @ hosted) if svc.size else 0.0,
        gpus_used=int(assignment.gpus_used(problem).sum()),
        gpus_total=int(problem.fleet.gpus.sum()),
        violations=int(over.sum()),
        violating_domains=[tree.names[d] for d in np.flatnonzero(over.any(axis=1))],
        worst_peak_over_cap=float(ratio.max()) if ratio.size else 0.0,
        stranded_w=float(headroom[leaves].min(axis=1).clip(min=0).sum()),
        energy_slack_kwh=float(headroom[roots].clip(min=0).sum() * grid.step_hours / 1000.0),
        asynchrony=asynchrony(per_domain[:, roots].sum(axis=1), svc.profiles),
        domains=domains,
    )


def gain(hosted: int, baseline_hosted: int) -> float | None:
    """Relative gain in replicas hosted over a baseline (0.3 = 30% more)."""
    if baseline_hosted <= 0:
        return None
    return hosted / baseline_hosted - 1.0


def gains(metrics: Metrics, baselines: dict[str, Metrics]) -> dict[str, float | None]:
    """``{"vs_nameplate": …, "vs_peak-sum": …}`` for whichever baselines are given.

    ``None`` throughout for a placement that exceeds a cap (a scheduler without the power
    check, read back from a cluster): hosting more by breaking caps is not a gain."""
    return {
        f"vs_{name}": None if metrics.violations else gain(metrics.hosted_total, base.hosted_total)
        for name, base in baselines.items()
    }
