"""Emission budgets and the carbon-aware tier in the planner (placement side)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from placement.admission import violations
from placement.carbon.emissions import (
    BudgetBelowIdleError,
    domain_intensity,
    idle_kg,
    plan_emissions,
    replica_kg,
    with_carbon,
)
from placement.metrics import priority_weights
from placement.problem import CarbonTerms, Problem
from placement.strategies import STRATEGY_NAMES, run_strategy
from tests.problems import SMALL_GRID, problem_from_dict, problems

SLOTS = 12
FAST = {"time_limit_s": 5.0, "workers": 1}


def two_sites(demand: int = 6, clean_nodes: int = 2) -> Problem:
    """A root over two sites, each with one rack of 8-GPU nodes; one service of
    8-GPU replicas that fits on either site alone."""
    nodes = [
        {"name": f"{site}-{i}", "domain": f"{site}-rack", "gpus": 8, "idleWatts": 1000}
        for site, count in (("dirty", 4), ("clean", clean_nodes))
        for i in range(count)
    ]
    return problem_from_dict(
        {
            "metadata": {"name": "two-sites"},
            "grid": SMALL_GRID,
            "domains": [
                {"name": "world", "cap": 1_000_000},
                {"name": "dirty", "parent": "world", "cap": 100_000},
                {"name": "clean", "parent": "world", "cap": 100_000},
                {"name": "dirty-rack", "parent": "dirty", "cap": 100_000},
                {"name": "clean-rack", "parent": "clean", "cap": 100_000},
            ],
            "nodes": nodes,
            "services": [
                {
                    "name": "chat",
                    "replicas": demand,
                    "gpusPerReplica": 8,
                    "priority": 100,
                    "nameplateWatts": 6000,
                    "profile": [4000.0 + 100 * t for t in range(SLOTS)],
                }
            ],
        }
    )


def sites_carbon(
    problem: Problem, budget: float | None = None, domain: str | None = None
) -> Problem:
    intensity = domain_intensity(
        problem, {"dirty": np.full(SLOTS, 500.0), "clean": np.full(SLOTS, 50.0)}
    )
    return with_carbon(problem, CarbonTerms(intensity, budget_kg=budget, budget_domain=domain))


def test_domain_intensity_inherits_down_the_tree() -> None:
    problem = two_sites()
    rows = domain_intensity(problem, {"world": np.full(SLOTS, 7.0), "clean": np.ones(SLOTS)})
    names = problem.tree.names
    assert rows[names.index("dirty-rack"), 0] == 7.0
    assert rows[names.index("clean-rack"), 0] == 1.0


def test_domain_intensity_errors_name_the_domain() -> None:
    problem = two_sites()
    with pytest.raises(ValueError, match="unknown domain 'nowhere'"):
        domain_intensity(problem, {"nowhere": np.ones(SLOTS)})
    with pytest.raises(ValueError, match="'dirty-rack' has nodes but no intensity"):
        domain_intensity(problem, {"clean": np.ones(SLOTS)})
    with pytest.raises(ValueError, match="has 3 values"):
        domain_intensity(problem, {"world": np.ones(3)})


def test_replica_and_idle_kg_match_hand_arithmetic() -> None:
    problem = sites_carbon(two_sites())
    d = problem.tree.index["dirty-rack"]
    # 2-hour slots: Σ_t 500 g/kWh · p(t) W · 2 h / 1e6 = kg.
    expected = 500 * sum(4000.0 + 100 * t for t in range(SLOTS)) * 2 / 1e6
    assert replica_kg(problem)[0, d] == pytest.approx(expected)
    # 4 dirty nodes at 1 kW and 2 clean ones, all day.
    assert idle_kg(problem)[problem.tree.index["dirty"]] == pytest.approx(4 * 500 * 24 / 1000)
    assert idle_kg(problem)[0] == pytest.approx(4 * 500 * 24 / 1000 + 2 * 50 * 24 / 1000)


def test_budget_below_idle_floor_is_a_clear_error() -> None:
    with pytest.raises(BudgetBelowIdleError, match=r"emission_budget .* below its idle floor"):
        sites_carbon(two_sites(), budget=10.0)
    with pytest.raises(ValueError, match="unknown budget domain 'nowhere'"):
        sites_carbon(two_sites(), budget=1e6, domain="nowhere")


def test_cpsat_emissions_tier_prefers_the_clean_site() -> None:
    base = two_sites(demand=2, clean_nodes=2)
    aware = sites_carbon(base)
    oblivious_plan = run_strategy("cpsat", base, **FAST)
    aware_plan = run_strategy("cpsat", aware, **FAST)
    assert aware_plan.assignment.hosted.sum() == oblivious_plan.assignment.hosted.sum() == 2
    e_aware = plan_emissions(aware, aware_plan.assignment).site_kg
    e_oblivious = plan_emissions(aware, oblivious_plan.assignment).site_kg
    clean = [aware.fleet.index[f"clean-{i}"] for i in range(2)]
    assert aware_plan.assignment.counts[:, clean].sum() == 2
    assert e_aware < e_oblivious or oblivious_plan.assignment.counts[:, clean].sum() == 2
    assert aware_plan.stats.extra["emissions"]["kg"] == pytest.approx(e_aware, abs=1e-3)


def test_cpsat_aware_beats_oblivious_when_oblivious_spreads_to_the_dirty_site() -> None:
    # Demand 3 on 2 clean + 4 dirty nodes: one replica must go to the dirty site; the
    # aware plan puts exactly one there, whatever the oblivious plan does.
    aware = sites_carbon(two_sites(demand=3, clean_nodes=2))
    plan = run_strategy("cpsat", aware, **FAST)
    clean = [aware.fleet.index[f"clean-{i}"] for i in range(2)]
    assert plan.assignment.hosted.sum() == 3
    assert plan.assignment.counts[:, clean].sum() == 2


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_every_strategy_respects_the_budget(strategy: str) -> None:
    base = sites_carbon(two_sites(demand=6))
    free = plan_emissions(base, run_strategy(strategy, base, **_opts(strategy)).assignment)
    budget = free.idle_kg[0] + 0.5 * (free.site_kg - free.idle_kg[0])
    problem = sites_carbon(two_sites(demand=6), budget=budget)
    plan = run_strategy(strategy, problem, **_opts(strategy))
    e = plan_emissions(problem, plan.assignment)
    assert e.holds
    assert e.site_kg <= budget + 1e-6
    assert plan.assignment.hosted.sum() < free_hosted(base, strategy)


def free_hosted(problem: Problem, strategy: str) -> int:
    return int(run_strategy(strategy, problem, **_opts(strategy)).assignment.hosted.sum())


def _opts(strategy: str) -> dict[str, Any]:
    return FAST if strategy == "cpsat" else {}


def test_budget_on_one_site_leaves_the_other_free() -> None:
    # Budget the dirty site at its idle floor: nothing may run there, the clean site
    # still takes what fits (2 nodes).
    floor = 4 * 500 * 24 / 1000
    problem = sites_carbon(two_sites(demand=6), budget=floor, domain="dirty")
    for strategy in ("greedy", "cpsat"):
        plan = run_strategy(strategy, problem, **_opts(strategy))
        dirty = [problem.fleet.index[f"dirty-{i}"] for i in range(4)]
        assert plan.assignment.counts[:, dirty].sum() == 0
        assert plan.assignment.hosted.sum() == 2


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=problems(), fractions=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=2))
def test_cpsat_budget_holds_and_tighter_hosts_no_more(
    problem: Problem, fractions: list[float]
) -> None:
    rng = np.random.default_rng(len(problem.fleet.names))
    intensity = domain_intensity(problem, {"site": rng.uniform(50, 600, SLOTS)})
    free = with_carbon(problem, CarbonTerms(intensity))
    plan = run_strategy("cpsat", free, **FAST)
    e = plan_emissions(free, plan.assignment)
    weights = priority_weights(problem.services.priority)
    hosted_before = np.inf
    for f in sorted(fractions, reverse=True):
        budget = float(e.idle_kg[0] + f * (e.site_kg - e.idle_kg[0]))
        tight = with_carbon(problem, CarbonTerms(intensity, budget_kg=budget))
        p = run_strategy("cpsat", tight, **FAST)
        got = plan_emissions(tight, p.assignment)
        assert got.site_kg <= budget + 1e-6
        over = violations(p.assignment.load(tight), tight.effective_caps)
        assert not over.any() or p.stats.extra["idle_over_cap"]
        weighted = float(weights @ p.assignment.hosted)
        # A tighter budget never hosts more (the solver is exact on these sizes).
        assert weighted <= hosted_before + 1e-9
        hosted_before = weighted
