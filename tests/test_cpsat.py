"""The CP-SAT planner on problems whose optimum is known by reasoning, plus invariants."""

from __future__ import annotations

from typing import Any, TypedDict, cast

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from numpy.typing import NDArray

from placement.admission import violations
from placement.assignment import Assignment
from placement.metrics import priority_weights
from placement.problem import Problem
from placement.strategies import Plan, run_strategy
from placement.strategies.cpsat import model as cpsat_model
from placement.strategies.cpsat import plan_cpsat
from placement.strategies.cpsat import planning as cpsat_planning
from placement.strategies.greedy import plan_greedy
from tests.problems import problem_from_dict, problems

SOLVER = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class SolverOptions(TypedDict, total=False):
    """Keyword arguments of :func:`plan_cpsat` the tests set."""

    time_limit_s: float


QUICK: SolverOptions = {"time_limit_s": 5.0}


def service(
    name: str, profile: list[float], replicas: int, gpus: int = 8, **kw: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "replicas": replicas,
        "gpusPerReplica": gpus,
        "nameplateWatts": 8200.0 * gpus / 8,
        "profile": profile,
        **kw,
    }


def nodes(
    prefix: str, domain: str, count: int, gpus: int = 8, idle: float = 0.0
) -> list[dict[str, Any]]:
    return [
        {"name": f"{prefix}-{i}", "domain": domain, "gpus": gpus, "idleWatts": idle}
        for i in range(count)
    ]


def one_rack(
    services: list[dict[str, Any]],
    cap: float,
    node_list: list[dict[str, Any]],
    grid: dict[str, str],
) -> Problem:
    return problem_from_dict(
        {
            "grid": grid,
            "domains": [
                {"name": "site", "cap": cap * 10},
                {"name": "rack", "parent": "site", "cap": cap},
            ],
            "nodes": node_list,
            "services": services,
        }
    )


def assert_admissible(problem: Problem, plan: Plan) -> None:
    """Zero violations at every level and slot, GPUs and demand respected."""
    counts = plan.assignment.counts
    assert counts.shape == (problem.services.size, problem.fleet.size)
    assert (counts >= 0).all()
    load = plan.assignment.load(problem)
    over = violations(load, problem.effective_caps)
    # Only a domain whose idle draw alone is over its cap may show a violation.
    idle_only = violations(
        np.repeat(problem.idle_by_domain[:, None], load.shape[1], axis=1), problem.effective_caps
    )
    # ndarray.any with an axis is typed as "scalar or array"; a 2-D mask gives an array
    idle_rows = cast("NDArray[np.bool_]", idle_only.any(axis=1))
    idle_dead = (problem.tree.membership & idle_rows[:, None]).any(axis=0)
    assert not over[~idle_dead].any()
    assert (plan.assignment.gpus_used(problem) <= problem.fleet.gpus).all()
    assert (plan.assignment.hosted <= problem.services.demand).all()


def weighted(problem: Problem, assignment: Assignment) -> float:
    return float(priority_weights(problem.services.priority) @ assignment.hosted)


# ------------------------------------------------------------ optimum known by reasoning

TWO_SLOTS = {"period": "24h", "step": "12h"}
FOUR_SLOTS = {"period": "4h", "step": "1h"}


def test_anti_phased_services_share_a_rack_where_peak_sum_would_not() -> None:
    # Slot 0: 4000a + 1000b ≤ 10000, slot 1: 1000a + 4000b ≤ 10000, so a + b ≤ 4 and
    # only a = b = 2 reaches it; by peaks (4000 each) just 2 replicas fit.
    problem = one_rack(
        [service("eu", [4000, 1000], 3), service("us", [1000, 4000], 3)],
        cap=10_000,
        node_list=nodes("n", "rack", 6),
        grid=TWO_SLOTS,
    )
    plan = plan_cpsat(problem, **QUICK)
    assert plan.assignment.hosted.tolist() == [2, 2]
    assert plan.stats.status == "OPTIMAL"
    assert plan.stats.objective == plan.stats.bound == 4.0
    assert plan.stats.gap == 0.0
    assert_admissible(problem, plan)
    assert run_strategy("peak-sum", problem).assignment.hosted.sum() == 2


def test_priority_decides_who_gets_scarce_power() -> None:
    # Room for two replicas; the higher priority takes both even with a negative low one.
    problem = one_rack(
        [
            service("batch", [3000, 3000], 2, priority=-5),
            service("chat", [3000, 3000], 2, priority=0),
        ],
        cap=6500,
        node_list=nodes("n", "rack", 4),
        grid=TWO_SLOTS,
    )
    plan = plan_cpsat(problem, **QUICK)
    assert plan.assignment.hosted.tolist() == [0, 2]
    assert plan.stats.objective == 4.0  # weights: batch 1, chat 2
    assert_admissible(problem, plan)


def test_a_row_cap_binds_between_racks_and_site() -> None:
    # Two racks that each admit 3 replicas; the row above them admits 4.
    data = {
        "grid": TWO_SLOTS,
        "domains": [
            {"name": "site", "cap": 100_000},
            {"name": "row", "parent": "site", "cap": 4 * 2000 + 4 * 500},
            {"name": "rack-a", "parent": "row", "cap": 3 * 2000 + 2 * 500},
            {"name": "rack-b", "parent": "row", "cap": 3 * 2000 + 2 * 500},
        ],
        "nodes": nodes("a", "rack-a", 2, gpus=8, idle=500) + nodes("b", "rack-b", 2, idle=500),
        "services": [service("s", [2000, 1000], 10, gpus=2)],
    }
    problem = problem_from_dict(data)
    plan = plan_cpsat(problem, **QUICK)
    assert plan.assignment.hosted.tolist() == [4]
    assert plan.stats.bound == 4.0
    assert_admissible(problem, plan)


def lazy_problem() -> Problem:
    """Slot 1 binds (A + B ≤ 7) but no heuristic picks it: the full-demand peak and the
    potential peak are at slot 3 (three night services), the service peaks at 0, 2, 3."""
    night = [0.0, 0.0, 0.0, 1200.0]
    return one_rack(
        [
            service("a", [1000, 700, 0, 0], 5, gpus=1),
            service("b", [0, 700, 1000, 0], 5, gpus=1),
            service("c1", night, 4, gpus=1),
            service("c2", night, 4, gpus=1),
            service("c3", night, 4, gpus=1),
        ],
        cap=5000,
        node_list=nodes("n", "rack", 5),
        grid=FOUR_SLOTS,
    )


def test_lazy_generation_adds_the_binding_slot() -> None:
    problem = lazy_problem()
    plan = plan_cpsat(problem, **QUICK)
    # a + b ≤ 7 (slot 1), a, b ≤ 5, c1 + c2 + c3 ≤ 4 (slot 3): 11 replicas.
    assert plan.assignment.hosted.sum() == 11
    assert plan.stats.objective == plan.stats.bound == 11.0
    extra = plan.stats.extra
    assert extra["lp"]["rounds"] > 1  # the LP phase found slot 1 missing
    assert plan.stats.slot_constraints > extra["initial_slot_constraints"]
    assert plan.stats.iterations == extra["lp"]["rounds"] + extra["stage1"]["rounds"]
    assert_admissible(problem, plan)


def test_cpsat_rounds_add_slots_without_the_lp_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpsat_planning, "relaxed_slots", lambda *args, **kwargs: None)
    problem = lazy_problem()
    plan = plan_cpsat(problem, **QUICK)
    assert plan.stats.extra["stage1"]["rounds"] > 1
    assert plan.stats.iterations > 1
    assert plan.assignment.hosted.sum() == 11
    assert plan.stats.objective == plan.stats.bound == 11.0
    assert_admissible(problem, plan)


def test_unpackable_replica_is_dropped_and_reported() -> None:
    # Two 4-GPU nodes: the per-domain GPU rows admit 3+3+2 GPUs, but once each node
    # holds a 3-GPU replica no node has 2 GPUs left.
    problem = one_rack(
        [
            service("big", [100, 100], 2, gpus=3, priority=1),
            service("small", [100, 100], 1, gpus=2),
        ],
        cap=100_000,
        node_list=nodes("n", "rack", 2, gpus=4),
        grid=TWO_SLOTS,
    )
    plan = plan_cpsat(problem, **QUICK)
    assert plan.stats.extra["unpacked"] == 1
    assert plan.assignment.hosted.tolist() == [2, 0]
    assert_admissible(problem, plan)


# ---------------------------------------------------------------------------- moves


def two_rack_moves_problem(rack_a_cap: float, current: dict[str, dict[str, int]]) -> Problem:
    return problem_from_dict(
        {
            "grid": TWO_SLOTS,
            "domains": [
                {"name": "site", "cap": 100_000},
                {"name": "rack-a", "parent": "site", "cap": rack_a_cap},
                {"name": "rack-b", "parent": "site", "cap": 10_000},
            ],
            "nodes": nodes("a", "rack-a", 3) + nodes("b", "rack-b", 3),
            "services": [service("x", [3000, 3000], 2), service("y", [3000, 3000], 1)],
            "current": current,
        }
    )


def test_a_feasible_current_placement_is_kept() -> None:
    # Constant profiles: the current split (rack-a 2 at 30%, rack-b 1 at 30%) is
    # already the best spread, so only the moves stage decides: nothing should move.
    current = {"x": {"a-2": 1, "b-1": 1}, "y": {"a-0": 1}}
    problem = two_rack_moves_problem(20_000, current)
    assert problem.current is not None
    plan = plan_cpsat(problem, **QUICK)
    np.testing.assert_array_equal(plan.assignment.counts, problem.current)
    assert plan.stats.extra["moves"] == 0
    assert_admissible(problem, plan)


def test_an_infeasible_current_placement_moves_as_little_as_possible() -> None:
    # rack-a now admits one replica; it holds two. One moves to rack-b, the rest stay.
    # (Spread comes before moves: rack-b's cap is set so that emptying rack-a, 90% on
    # rack-b, would not lower the peak utilisation below one replica in rack-a, 86%.)
    current = {"x": {"a-0": 1, "b-2": 1}, "y": {"a-1": 1}}
    problem = two_rack_moves_problem(3500, current)
    assert problem.current is not None
    plan = plan_cpsat(problem, **QUICK)
    assert plan.assignment.hosted.tolist() == [2, 1]
    assert plan.stats.extra["moves"] == 1
    stayed = np.minimum(plan.assignment.counts, problem.current).sum()
    assert stayed == 2  # the two replicas that need not move are on their nodes
    assert_admissible(problem, plan)


# --------------------------------------------------------------------- greedy floor


def test_never_worse_than_greedy_even_if_the_solver_finds_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    problem = lazy_problem()

    def no_solution(self: Any, *args: Any) -> Any:
        return cpsat_model.Solve("UNKNOWN", None, float("nan"), float("nan"), 0)

    monkeypatch.setattr(cpsat_model.Model, "solve", no_solution)
    monkeypatch.setattr(cpsat_planning, "relaxed_slots", lambda *args, **kwargs: None)
    plan = plan_cpsat(problem, **QUICK)
    greedy = plan_greedy(problem)
    assert weighted(problem, plan.assignment) >= weighted(problem, greedy.assignment)
    assert plan.stats.bound is None
    assert_admissible(problem, plan)


def test_greedy_is_returned_when_packing_loses_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    problem = lazy_problem()

    def lose_everything(problem: Problem, *args: Any, **kwargs: Any) -> tuple[Assignment, int]:
        return Assignment.empty(problem), 0

    monkeypatch.setattr(cpsat_planning, "pack", lose_everything)
    plan = plan_cpsat(problem, **QUICK)
    greedy = plan_greedy(problem)
    np.testing.assert_array_equal(plan.assignment.counts, greedy.assignment.counts)
    assert plan.stats.extra["fallback"].startswith("greedy")


# ------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    "data",
    [
        {"domains": [{"name": "site", "cap": 1000}], "nodes": nodes("n", "site", 2)},
        {"domains": [{"name": "site", "cap": 1000}], "services": [service("s", [1.0, 1.0], 3)]},
        {
            "domains": [{"name": "site", "cap": 1000}],
            "nodes": nodes("n", "site", 1),
            "services": [service("s", [1.0, 1.0], 0)],
        },
    ],
    ids=["no-services", "no-nodes", "no-demand"],
)
def test_nothing_to_place_gives_an_empty_plan(data: dict[str, Any]) -> None:
    problem = problem_from_dict({"grid": TWO_SLOTS, **data})
    plan = plan_cpsat(problem, **QUICK)
    assert plan.assignment.counts.shape == (problem.services.size, problem.fleet.size)
    assert plan.assignment.counts.sum() == 0
    assert plan.stats.objective == 0.0


def test_domain_over_cap_at_idle_gets_nothing_and_is_named() -> None:
    problem = problem_from_dict(
        {
            "grid": TWO_SLOTS,
            "domains": [
                {"name": "site", "cap": 100_000},
                {"name": "hot", "parent": "site", "cap": 1000},
                {"name": "ok", "parent": "site", "cap": 20_000},
            ],
            "nodes": nodes("h", "hot", 1, idle=2000) + nodes("o", "ok", 1, idle=2000),
            "services": [service("s", [3000, 3000], 4)],
        }
    )
    plan = plan_cpsat(problem, **QUICK)
    assert plan.stats.extra["idle_over_cap"] == ["hot"]
    assert plan.assignment.hosted.tolist() == [1]
    assert plan.assignment.counts[:, problem.fleet.index["h-0"]].sum() == 0
    assert_admissible(problem, plan)


def test_wrong_shaped_hint_is_rejected() -> None:
    problem = lazy_problem()
    with pytest.raises(ValueError, match="hint has shape"):
        plan_cpsat(problem, hint=Assignment(np.zeros((1, 1), dtype=np.int64)))


def test_hint_and_run_strategy() -> None:
    problem = lazy_problem()
    start = plan_greedy(problem).assignment
    plan = run_strategy("cpsat", problem, hint=start, time_limit_s=5.0, workers=1, seed=3)
    assert plan.strategy == "cpsat"
    assert plan.assignment.hosted.sum() == 11
    assert_admissible(problem, plan)


# ------------------------------------------------------------------------ properties


@SOLVER
@given(problems())
def test_random_problems_are_admissible_and_beat_greedy(problem: Problem) -> None:
    plan = plan_cpsat(problem, time_limit_s=5.0)
    assert_admissible(problem, plan)
    assert weighted(problem, plan.assignment) >= weighted(problem, plan_greedy(problem).assignment)
    stats = plan.stats
    if stats.bound is not None:
        assert stats.objective is not None
        assert stats.objective <= stats.bound + 1e-9
        assert stats.gap is not None and stats.gap <= 0.005 + 1e-9
