"""Site-scale planning: solve the parts of a big tree as independent problems.

Why: one CP-SAT model of a 10,000-node site with 200 services has a quarter of a
million count variables and ~190,000 (domain, slot) power rows to check; building it
alone takes minutes and CP-SAT finds no solution in the time a re-plan has. The tree
allows a cut: the rows (the level above the racks) only share the caps of the domains
above them. So:

1. :func:`~placement.strategies.cpsat.split.split_capacity` solves an LP over (service,
   row) counts with every cap at the rows and above. Its optimum is a valid upper bound
   on the whole problem (the racks are relaxed, nothing is cut), and its solution gives
   each row a demand per service and a power allowance per slot whose sums never pass
   a hall's or the site's allowance.
2. Every row is planned on its own by the ordinary planner (``solve_part``): its racks,
   its nodes, the services the LP gave it, its cap lowered to its allowance; the
   current placement and the hint restricted to its nodes (so a re-plan starts warm
   and minimises moves there). The time left is shared between the rows still to
   solve, in proportion to their size.
3. The rows' placements together keep every cap (each row within its allowance, so
   every domain above within its own); the greedy rule then fills in what still fits
   anywhere in the whole tree, checked at every level. Greedy's own plan is returned
   instead if it hosts more (as the single model does).

The bound reported is the LP's (the whole problem's relaxation), never a sum of the
rows' own bounds, and the gap is measured against it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from placement.admission import violations
from placement.assignment import Assignment
from placement.fleet import Fleet
from placement.metrics import priority_weights
from placement.problem import Problem
from placement.services import Services
from placement.strategies import Plan, SolverStats
from placement.strategies.cpsat.packing import fix_float_violations
from placement.strategies.cpsat.split import Cut, Split, find_cut, split_capacity
from placement.strategies.greedy import plan_greedy
from placement.strategies.sequential import place_sequentially
from placement.tree import PowerTree

SPLIT_NODES = 8000
"""Default node count from which :func:`~placement.strategies.cpsat.plan_cpsat` plans by
parts: the 1,000- and 5,000-node benchmarks (and every smaller problem) stay one model."""

SolvePart = Callable[..., Plan]
"""The planner for one part: ``solve_part(problem, time_limit_s=..., hint=...)``."""

# Share of the time limit the LP over the parts may take; the rows get the rest.
_LP_SHARE = 0.25


def plan_by_parts(
    problem: Problem,
    *,
    time_limit_s: float,
    hint: Assignment | None,
    solve_part: SolvePart,
) -> Plan | None:
    """Plan ``problem`` part by part (see the module docstring); ``None`` if the tree
    has no cut below the root, or the problem has carbon terms (an emission budget
    spans the parts), or the LP has no optimum (a domain whose idle draw exceeds its
    cap makes it infeasible) — the caller then solves one model."""
    start = time.perf_counter()
    if problem.carbon is not None:
        return None
    cut = find_cut(problem)
    if cut is None or cut.parts.size < 2:
        return None
    limit = max(0.0, float(time_limit_s))
    greedy = plan_greedy(problem)
    # The fill after the parts replays the greedy rule on what is left: keep back about
    # as long as greedy took, so the whole plan ends near the limit.
    end = start + limit - min(0.1 * limit, 1.5 * greedy.stats.wall_s)
    keep = problem.current
    if keep is None and hint is not None:
        keep = hint.counts
    split = split_capacity(problem, cut, deadline=start + _LP_SHARE * limit, keep=keep)
    if split is None:
        return None
    counts = np.zeros((problem.services.size, problem.fleet.size), dtype=np.int64)
    reports: list[dict[str, Any]] = []
    order = np.argsort(-np.bincount(cut.part_of_node, minlength=cut.parts.size), kind="stable")
    remaining_nodes = problem.fleet.size
    for p in order.tolist():
        nodes = np.flatnonzero(cut.part_of_node == p)
        left = max(0.0, end - time.perf_counter())
        share = left * nodes.size / max(1, remaining_nodes)
        remaining_nodes -= nodes.size
        sub, services = part_problem(problem, cut, split, part=p)
        if sub is None:
            continue
        sub_hint = None if hint is None else Assignment(hint.counts[np.ix_(services, nodes)])
        plan = solve_part(sub, time_limit_s=share, hint=sub_hint)
        counts[np.ix_(services, nodes)] += plan.assignment.counts
        reports.append(_part_report(problem, cut, p, plan))
    before_fill = _weighted(problem, counts)
    filled = place_sequentially(
        problem, problem.services.profiles, "peak-increase", pack=True, start=counts
    )
    assignment = fix_float_violations(problem, filled, _dead(problem))
    fallback = None
    if _weighted(problem, greedy.assignment.counts) > _weighted(problem, assignment.counts):
        assignment = greedy.assignment
        fallback = "greedy: the placement by parts hosted less"
    stats = _stats(problem, cut, split, assignment, before_fill, reports, start=start)
    stats.extra["fallback"] = fallback
    return Plan("cpsat", assignment, stats)


def _moves(problem: Problem, assignment: Assignment) -> int:
    """Replicas taken away from the domain they run in now (as the one model counts)."""
    if problem.current is None:
        return 0
    leaf = np.zeros((problem.tree.size, problem.services.size), dtype=np.int64)
    np.add.at(leaf, problem.fleet.domain, (problem.current - assignment.counts).T)
    return int(np.clip(leaf, 0, None).sum())


def _dead(problem: Problem) -> NDArray[np.bool_]:
    """Domains under a domain whose idle draw alone exceeds its cap in some slot."""
    over = np.asarray((problem.idle_by_domain[:, None] > problem.effective_caps).any(axis=1))
    return np.asarray((problem.tree.membership & over[:, None]).any(axis=0), dtype=bool)


def part_problem(
    problem: Problem, cut: Cut, split: Split, *, part: int
) -> tuple[Problem | None, NDArray[np.int64]]:
    """Part ``p`` as a problem of its own: its subtree (its cap lowered to its
    allowance), its nodes, the services the split gave it (and their indices in the
    whole problem). ``None`` if it was given nothing."""
    p = part
    tree, fleet, svc = problem.tree, problem.fleet, problem.services
    services = np.flatnonzero(split.demand[:, p] > 0)
    if services.size == 0:
        return None, services
    root = int(cut.parts[p])
    domains = np.flatnonzero(tree.membership[root])  # the part and everything under it
    position = np.full(tree.size, -1, dtype=np.int64)
    position[domains] = np.arange(domains.size)
    names = [tree.names[d] for d in domains]
    parents: list[str | None] = [
        None if d == root else tree.names[int(tree.parents[d])] for d in domains.tolist()
    ]
    caps = problem.effective_caps[domains].copy()
    idle = problem.idle_by_domain[root]
    caps[0] = np.minimum(caps[0], idle + split.allowance[p])
    sub_tree = PowerTree.build(names, parents, caps)
    nodes = np.flatnonzero(cut.part_of_node == p)
    sub_fleet = Fleet(
        names=tuple(fleet.names[n] for n in nodes),
        domain=np.array(
            [sub_tree.index[tree.names[d]] for d in fleet.domain[nodes]], dtype=np.int64
        ),
        gpus=fleet.gpus[nodes].copy(),
        idle_watts=fleet.idle_watts[nodes].copy(),
    )
    sub_svc = Services(
        names=tuple(svc.names[s] for s in services),
        demand=split.demand[services, p].copy(),
        gpus=svc.gpus[services].copy(),
        priority=svc.priority[services].copy(),
        nameplate=svc.nameplate[services].copy(),
        profiles=svc.profiles[services].copy(),
    )
    current = None if problem.current is None else problem.current[np.ix_(services, nodes)]
    sub = replace(
        problem,
        name=f"{problem.name}/{tree.names[root]}",
        tree=sub_tree,
        fleet=sub_fleet,
        services=sub_svc,
        headroom=0.0,  # the caps above are effective caps already
        current=current,
        provisioning=None,
    )
    return sub, services


def _weighted(problem: Problem, counts: NDArray[np.int64]) -> float:
    return float(priority_weights(problem.services.priority) @ counts.sum(axis=1))


def _part_report(problem: Problem, cut: Cut, p: int, plan: Plan) -> dict[str, Any]:
    st = plan.stats
    return {
        "part": problem.tree.names[int(cut.parts[p])],
        "objective": st.objective,
        "bound": st.bound,
        "gap": None if st.gap is None else round(st.gap, 5),
        "wall_s": round(st.wall_s, 3),
    }


def _stats(
    problem: Problem,
    cut: Cut,
    split: Split,
    assignment: Assignment,
    before_fill: float,
    reports: list[dict[str, Any]],
    *,
    start: float,
) -> SolverStats:
    weighted = _weighted(problem, assignment.counts)
    bound = split.bound
    if bound is not None and weighted > bound:  # the LP is in floats; never report less
        bound = weighted
    gap = None if bound is None else (bound - weighted) / max(1.0, abs(bound))
    over = violations(assignment.load(problem), problem.effective_caps) & ~_dead(problem)[:, None]
    extra: dict[str, Any] = {
        "decomposed": True,
        "parts": int(cut.parts.size),
        "split": {
            "lp_objective": round(split.lp_objective, 3),
            "rounds": split.rounds,
            "converged": split.converged,
            "slot_constraints": split.slot_constraints,
            "wall_s": round(split.wall_s, 3),
        },
        "parts_objective": before_fill,
        "fill_objective": weighted - before_fill,
        "part_reports": reports,
        "hosted": int(assignment.hosted.sum()),
        "predicted_violations": int(over.sum()),
        "idle_over_cap": [problem.tree.names[d] for d in np.flatnonzero(_dead(problem))],
        "fallback": None,
        "unpacked": 0,
        "moves": _moves(problem, assignment),
    }
    return SolverStats(
        status="OPTIMAL" if gap is not None and gap <= 0 else "FEASIBLE",
        objective=weighted,
        bound=bound,
        gap=gap,
        wall_s=time.perf_counter() - start,
        iterations=split.rounds + len(reports),
        slot_constraints=split.slot_constraints,
        extra=extra,
    )
