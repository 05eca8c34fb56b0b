"""Planning by parts (placement.strategies.cpsat.subtrees and .split): every cap held at
every level, the bound a bound on the whole problem, small problems untouched."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings

from placement.admission import violations
from placement.assignment import Assignment
from placement.metrics import evaluate, priority_weights
from placement.problem import Problem
from placement.strategies.cpsat import plan_cpsat
from placement.strategies.cpsat.split import find_cut, split_capacity
from placement.strategies.cpsat.subtrees import SPLIT_NODES
from tests.problems import SMALL_GRID, problem_from_dict, problems

SOLVER = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _site(*, site_cap: float, hall_cap: float, seed: int = 0) -> Problem:
    """site → 2 halls → 2 rows each → 2 racks each → 2 nodes of 8 GPUs each (16 nodes),
    4 services peaking at different times; T = 12."""
    rng = np.random.default_rng(seed)
    slots = 12
    domains: list[dict[str, Any]] = [{"name": "site", "cap": site_cap}]
    nodes: list[dict[str, Any]] = []
    for h in range(2):
        domains.append({"name": f"hall-{h}", "parent": "site", "cap": hall_cap})
        for r in range(2):
            row = f"row-{h}-{r}"
            domains.append({"name": row, "parent": f"hall-{h}", "cap": 30_000})
            for k in range(2):
                rack = f"rack-{h}-{r}-{k}"
                domains.append({"name": rack, "parent": row, "cap": 16_000})
                for n in range(2):
                    nodes.append(
                        {"name": f"n-{h}{r}{k}{n}", "domain": rack, "gpus": 8, "idleWatts": 1000}
                    )
    services = []
    for s, gpus in enumerate([8, 8, 4, 2]):
        shape = np.roll(np.hanning(slots + 2)[1:-1], 3 * s - slots // 2)
        high = float(rng.uniform(3000, 5000)) * gpus / 8
        profile = (0.3 * high + 0.7 * high * shape).round(1).tolist()
        services.append(
            {
                "name": f"svc-{s}",
                "replicas": 12,
                "gpusPerReplica": gpus,
                "priority": [200, 100, 100, 0][s],
                "nameplateWatts": 8200.0 * gpus / 8,
                "profile": profile,
            }
        )
    return problem_from_dict(
        {
            "metadata": {"name": "small-site"},
            "grid": SMALL_GRID,
            "domains": domains,
            "nodes": nodes,
            "services": services,
        }
    )


def _weighted(problem: Problem, assignment: Assignment) -> float:
    return float(priority_weights(problem.services.priority) @ assignment.hosted)


def _assert_feasible(problem: Problem, assignment: Assignment) -> None:
    assert (assignment.counts >= 0).all()
    assert (assignment.hosted <= problem.services.demand).all()
    assert (assignment.gpus_used(problem) <= problem.fleet.gpus).all()
    assert not violations(assignment.load(problem), problem.effective_caps).any()


def test_the_cut_is_the_level_above_the_racks() -> None:
    problem = _site(site_cap=150_000, hall_cap=80_000)
    cut = find_cut(problem)
    assert cut is not None
    assert sorted(problem.tree.names[p] for p in cut.parts) == [
        "row-0-0",
        "row-0-1",
        "row-1-0",
        "row-1-1",
    ]
    assert sorted(problem.tree.names[a] for a in cut.above) == ["hall-0", "hall-1", "site"]
    # Every node is in the part its rack hangs off.
    for n, p in enumerate(cut.part_of_node):
        rack = problem.tree.names[problem.fleet.domain[n]]
        assert rack.startswith(problem.tree.names[cut.parts[p]].replace("row", "rack"))


def test_a_tree_with_racks_under_the_root_has_no_cut() -> None:
    problem = problem_from_dict(
        {
            "metadata": {"name": "flat"},
            "grid": SMALL_GRID,
            "domains": [
                {"name": "site", "cap": 50_000},
                {"name": "rack-a", "parent": "site", "cap": 30_000},
            ],
            "nodes": [{"name": "n", "domain": "rack-a", "gpus": 8, "idleWatts": 0}],
            "services": [
                {
                    "name": "s",
                    "replicas": 1,
                    "gpusPerReplica": 8,
                    "priority": 0,
                    "nameplateWatts": 100.0,
                    "profile": [50.0] * 12,
                }
            ],
        }
    )
    assert find_cut(problem) is None
    plan = plan_cpsat(problem, time_limit_s=5, workers=1, split_nodes=1)
    assert "decomposed" not in plan.stats.extra


def test_shares_never_sum_past_a_domain_above() -> None:
    # The site and the halls bind below their rows' sum, so the shares must split them.
    problem = _site(site_cap=110_000, hall_cap=60_000)
    cut = find_cut(problem)
    assert cut is not None
    split = split_capacity(problem, cut, deadline=time.perf_counter() + 10)
    assert split is not None
    allow = problem.effective_caps - problem.idle_by_domain[:, None]
    for a in cut.above:
        inside = problem.tree.membership[a, cut.parts]
        assert (split.allowance[inside].sum(axis=0) <= allow[a] + 1e-6).all()
    assert (split.allowance <= allow[cut.parts] + 1e-6).all()
    # Demand handed out never exceeds what a service asks for.
    assert (split.demand.sum(axis=1) <= problem.services.demand).all()


def test_by_parts_holds_every_cap_and_its_bound_bounds_the_optimum() -> None:
    problem = _site(site_cap=110_000, hall_cap=60_000)
    parts = plan_cpsat(problem, time_limit_s=20, workers=1, split_nodes=1)
    assert parts.stats.extra["decomposed"] is True
    _assert_feasible(problem, parts.assignment)
    assert evaluate(problem, parts.assignment).violations == 0
    whole = plan_cpsat(problem, time_limit_s=60, workers=1, split_nodes=None)
    assert "decomposed" not in whole.stats.extra
    assert whole.stats.status == "OPTIMAL"  # small enough to prove
    optimum = _weighted(problem, whole.assignment)
    assert parts.stats.bound is not None
    assert parts.stats.bound >= optimum
    assert _weighted(problem, parts.assignment) <= optimum
    assert parts.stats.objective == _weighted(problem, parts.assignment)
    assert parts.stats.gap is not None and parts.stats.gap >= 0


def test_by_parts_never_hosts_less_than_greedy() -> None:
    from placement.strategies.greedy import plan_greedy

    for seed in range(3):
        problem = _site(site_cap=100_000, hall_cap=55_000, seed=seed)
        parts = plan_cpsat(problem, time_limit_s=10, workers=1, split_nodes=1)
        greedy = plan_greedy(problem)
        assert _weighted(problem, parts.assignment) >= _weighted(problem, greedy.assignment)


def test_a_replan_by_parts_takes_the_current_placement_and_a_hint() -> None:
    problem = _site(site_cap=110_000, hall_cap=60_000)
    first = plan_cpsat(problem, time_limit_s=10, workers=1, split_nodes=1)
    again = replace(problem, current=first.assignment.counts)
    second = plan_cpsat(again, time_limit_s=10, workers=1, split_nodes=1, hint=first.assignment)
    assert second.stats.extra["decomposed"] is True
    _assert_feasible(again, second.assignment)
    # Moves are counted per domain, as the one model counts them: at most the
    # replicas that left their node.
    by_node = int(np.clip(first.assignment.counts - second.assignment.counts, 0, None).sum())
    assert 0 <= second.stats.extra["moves"] <= by_node


def test_small_problems_are_one_model_by_default() -> None:
    problem = _site(site_cap=110_000, hall_cap=60_000)
    assert problem.fleet.size < SPLIT_NODES
    plan = plan_cpsat(problem, time_limit_s=5, workers=1)
    assert "decomposed" not in plan.stats.extra


@SOLVER
@given(problems(max_services=3))
def test_by_parts_is_feasible_and_bounded_on_drawn_trees(problem: Problem) -> None:
    if (problem.idle_by_domain[:, None] > problem.effective_caps).any():
        return
    plan = plan_cpsat(problem, time_limit_s=5, workers=1, split_nodes=1)
    _assert_feasible(problem, plan.assignment)
    if plan.stats.extra.get("decomposed"):
        from placement.strategies.greedy import plan_greedy

        assert plan.stats.bound is not None
        assert plan.stats.bound >= _weighted(problem, plan.assignment)
        # The bound is the whole problem's: it bounds every feasible placement.
        assert plan.stats.bound >= _weighted(problem, plan_greedy(problem).assignment)


@SOLVER
@given(problems(max_services=3))
def test_shares_hold_the_domains_above_on_drawn_trees(problem: Problem) -> None:
    cut = find_cut(problem)
    if cut is None or (problem.idle_by_domain[:, None] > problem.effective_caps).any():
        return
    split = split_capacity(problem, cut, deadline=time.perf_counter() + 5)
    assert split is not None
    allow = problem.effective_caps - problem.idle_by_domain[:, None]
    for a in cut.above:
        inside = problem.tree.membership[a, cut.parts]
        assert (split.allowance[inside].sum(axis=0) <= allow[a] + 1e-6).all()
    assert (split.demand.sum(axis=1) <= problem.services.demand).all()
    assert (split.demand >= 0).all()
    # The LP relaxes the whole problem: greedy's placement never beats its bound.
    from placement.strategies.greedy import plan_greedy

    assert split.bound is not None
    assert split.bound >= _weighted(problem, plan_greedy(problem).assignment)


def test_the_split_has_an_optimum_even_past_its_deadline() -> None:
    problem = _site(site_cap=110_000, hall_cap=60_000)
    cut = find_cut(problem)
    assert cut is not None
    split = split_capacity(problem, cut, deadline=time.perf_counter() - 1.0)
    assert split is not None
    assert split.rounds == 1
    assert split.bound is not None
    # So a plan with no time at all is still planned by parts, and feasible.
    plan = plan_cpsat(problem, time_limit_s=0, workers=1, split_nodes=1)
    assert plan.stats.extra["decomposed"] is True
    _assert_feasible(problem, plan.assignment)
