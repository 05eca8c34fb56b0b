"""The what-if transformations: pure, deterministic, and doing what their names say."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from placement.problem import Problem
from placement.variants import WhatIf, add_nodes, resolve_node_count, scale_caps, scale_demand
from tests.problems import SMALL_GRID, problem_from_dict, problems


def mixed_problem(**extra: Any) -> Problem:
    """Two leaf racks of mixed node types, one empty rack, and a scheduled cap."""
    return problem_from_dict(
        {
            "metadata": {"name": "mixed"},
            "grid": SMALL_GRID,
            "domains": [
                {"name": "site", "cap": 100_000},
                {"name": "row", "parent": "site", "cap": 80_000},
                {"name": "rack-a", "parent": "row", "cap": 30_000},
                {"name": "rack-b", "parent": "row", "cap": [20_000] * 6 + [25_000] * 6},
                {"name": "rack-empty", "parent": "row", "cap": 10_000},
            ],
            "nodes": [
                {"name": "a-8", "domain": "rack-a", "gpus": 8, "idleWatts": 2000},
                {"name": "a-4", "domain": "rack-a", "gpus": 4, "idleWatts": 900},
                {"name": "b-8", "domain": "rack-b", "gpus": 8, "idleWatts": 2100},
            ],
            "services": [
                {
                    "name": "chat",
                    "replicas": 5,
                    "gpusPerReplica": 4,
                    "nameplateWatts": 3000,
                    "profile": {"constant": 1500},
                },
                {
                    "name": "batch",
                    "replicas": 3,
                    "gpusPerReplica": 8,
                    "nameplateWatts": 6000,
                    "profile": {"constant": 4000},
                },
            ],
            **extra,
        }
    )


def test_scale_caps_multiplies_every_slot_and_keeps_the_input() -> None:
    problem = mixed_problem()
    before = problem.tree.caps.copy()
    scaled = scale_caps(problem, 0.9)
    np.testing.assert_allclose(scaled.tree.caps, before * 0.9)
    np.testing.assert_array_equal(problem.tree.caps, before)
    rack_b = scaled.tree.index["rack-b"]
    assert scaled.tree.caps[rack_b, 0] == pytest.approx(18_000)
    assert scaled.tree.caps[rack_b, -1] == pytest.approx(22_500)
    assert scaled.fleet is problem.fleet and scaled.services is problem.services


@pytest.mark.parametrize("factor", [0.0, -1.0, float("nan"), float("inf")])
def test_scale_caps_rejects_non_positive_factors(factor: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        scale_caps(mixed_problem(), factor)


def test_scale_demand_rounds_half_up() -> None:
    problem = mixed_problem()
    assert scale_demand(problem, 1.5).services.demand.tolist() == [8, 5]  # 7.5 → 8, 4.5 → 5
    assert scale_demand(problem, 0.0).services.demand.tolist() == [0, 0]
    assert problem.services.demand.tolist() == [5, 3]
    np.testing.assert_array_equal(
        scale_demand(problem, 2.0).services.profiles, problem.services.profiles
    )


def test_scale_demand_rejects_negative() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        scale_demand(mixed_problem(), -0.5)


@pytest.mark.parametrize(
    ("spec", "fleet", "expected"),
    [("0", 10, 0), ("7", 10, 7), (" 12 ", 3, 12), (3, 5, 3), ("10%", 25, 3), ("50%", 3, 2)],
)
def test_resolve_node_count(spec: str | int, fleet: int, expected: int) -> None:
    assert resolve_node_count(spec, fleet) == expected


@pytest.mark.parametrize("spec", ["ten", "5.5", "%", "nan%", "-3", "-10%"])
def test_resolve_node_count_rejects_nonsense(spec: str) -> None:
    with pytest.raises(ValueError, match="node"):
        resolve_node_count(spec, 10)


def test_add_nodes_round_robin_over_domains_with_nodes() -> None:
    problem = mixed_problem()
    grown = add_nodes(problem, 5)
    fleet = grown.fleet
    assert fleet.size == problem.fleet.size + 5
    assert fleet.names[: problem.fleet.size] == problem.fleet.names
    added = range(problem.fleet.size, fleet.size)
    domains = [grown.tree.names[fleet.domain[n]] for n in added]
    # rack-empty has no node to copy; the others take turns.
    assert domains == ["rack-a", "rack-b", "rack-a", "rack-b", "rack-a"]
    # rack-a's node types take turns too: the 8-GPU node, then the 4-GPU one.
    assert [fleet.names[n] for n in added] == [
        "a-8-clone-1",
        "b-8-clone-1",
        "a-4-clone-1",
        "b-8-clone-2",
        "a-8-clone-2",
    ]
    assert [int(fleet.gpus[n]) for n in added] == [8, 8, 4, 8, 8]
    assert [float(fleet.idle_watts[n]) for n in added] == [2000, 2100, 900, 2100, 2000]
    assert fleet.index["b-8-clone-2"] == problem.fleet.size + 3
    assert problem.fleet.size == 3  # the input is untouched


def test_add_nodes_names_stay_unique_when_clone_names_exist() -> None:
    problem = add_nodes(mixed_problem(), 3)
    again = add_nodes(problem, 6)
    assert len(set(again.fleet.names)) == again.fleet.size


def test_add_nodes_extends_the_current_placement_with_empty_nodes() -> None:
    problem = mixed_problem(current={"chat": {"a-4": 1}})
    grown = add_nodes(problem, 2)
    assert grown.current is not None
    assert grown.current.shape == (2, 5)
    assert grown.current[:, 3:].sum() == 0
    assert grown.current[0, problem.fleet.index["a-4"]] == 1


def test_add_nodes_zero_is_identity_and_errors_are_clear() -> None:
    problem = mixed_problem()
    assert add_nodes(problem, 0) is problem
    with pytest.raises(ValueError, match="negative"):
        add_nodes(problem, -1)
    empty = problem_from_dict({"domains": [{"name": "site", "cap": 1000}]})
    with pytest.raises(ValueError, match="without nodes"):
        add_nodes(empty, 1)


def test_whatif_applies_everything_and_names_the_change() -> None:
    problem = mixed_problem()
    change = WhatIf(scale_caps=1.1, add_nodes=2, scale_demand=2.0)
    assert change.describe() == "caps ×1.1, +2 nodes, demand ×2"
    changed = change.apply(problem)
    assert changed.fleet.size == 5
    assert changed.services.demand.tolist() == [10, 6]
    np.testing.assert_allclose(changed.tree.caps, problem.tree.caps * 1.1)
    assert changed.name == "mixed (caps ×1.1, +2 nodes, demand ×2)"
    assert WhatIf().apply(problem) is problem
    assert WhatIf().describe() == "no change"


@settings(max_examples=30, deadline=None)
@given(problems(), st.integers(0, 12), st.floats(0.5, 2.0), st.floats(0.0, 3.0))
def test_whatif_keeps_the_problem_consistent(
    problem: Problem, nodes: int, caps: float, demand: float
) -> None:
    changed = WhatIf(scale_caps=caps, add_nodes=nodes, scale_demand=demand).apply(problem)
    fleet = changed.fleet
    assert fleet.size == problem.fleet.size + nodes
    assert len(set(fleet.names)) == fleet.size
    assert set(fleet.index) == set(fleet.names)
    # New nodes sit in leaf domains that already had nodes.
    leaves_with_nodes = set(problem.fleet.domain.tolist())
    assert set(fleet.domain.tolist()) <= leaves_with_nodes
    assert changed.tree.caps.shape == problem.tree.caps.shape
    assert (changed.services.demand >= 0).all()
