"""The background planner: the live cluster as a planning problem, targets, re-planning."""

from __future__ import annotations

import time

import numpy as np

from extender.cluster.state import PodRecord
from extender.config.model import PlannerSettings
from extender.webhook.planner import Planner, planning_problem
from tests.scheduler_payloads import small_extender, small_problem


def test_planning_problem_mirrors_the_cluster() -> None:
    ext = small_extender()
    state, config = ext.state, ext.config
    eu = config.services["chat-eu"]
    assert eu.profile is not None
    state.add_pod(
        PodRecord("u1", "llm", "eu-0", "gpu-1a", "chat-eu", eu.profile, 8, "service:chat-eu")
    )
    flat = np.full(state.grid.slots, 3000.0)
    state.add_pod(PodRecord("u2", "llm", "odd-0", "gpu-2a", "other", flat, 8, "nameplate:3000"))
    problem = planning_problem(state, config)
    assert problem is not None
    assert problem.fleet.names == tuple(n.name for n in state.nodes())
    assert problem.services.names == ("chat-eu", "chat-us", "batch")
    assert problem.current is not None
    s, n = problem.services.index["chat-eu"], problem.fleet.index["gpu-1a"]
    assert problem.current[s, n] == 1 and problem.current.sum() == 1
    # The pod the plan does not cover shrinks the caps above its node by its load.
    d = problem.tree.index["rack-2"]
    np.testing.assert_allclose(problem.tree.caps[d], small_problem().tree.caps[d] - 3000.0)
    d = problem.tree.index["rack-1"]
    np.testing.assert_allclose(problem.tree.caps[d], small_problem().tree.caps[d])


def test_plan_now_publishes_targets_per_domain() -> None:
    ext = small_extender()
    planner = Planner(ext.state, ext.config, PlannerSettings(strategy="greedy"))
    assert planner.targets("chat-eu") is None
    plan = planner.plan_now()
    assert plan is not None
    targets = planner.targets("chat-eu")
    assert targets is not None and targets.shape == (ext.state.tree.size,)
    root = ext.state.tree.index["site"]
    assert targets[root] == plan.targets["chat-eu"][ext.state.tree.leaves].sum()
    assert plan.hosted == sum(int(t[root]) for t in plan.targets.values())
    info = planner.info()
    assert info is not None and info[2] == plan.hosted


def test_cpsat_plan_is_feasible() -> None:
    ext = small_extender()
    planner = Planner(ext.state, ext.config, PlannerSettings(strategy="cpsat", time_limit_s=10))
    plan = planner.plan_now()
    assert plan is not None and plan.strategy == "cpsat"
    problem = planning_problem(ext.state, ext.config)
    assert problem is not None
    assert plan.hosted <= int(problem.services.demand.sum())


def test_background_planner_replans_on_topology_changes() -> None:
    ext = small_extender()
    settings = PlannerSettings(strategy="greedy", debounce_s=0.05, interval_s=3600)
    planner = Planner(ext.state, ext.config, settings)
    planner.start()
    try:
        deadline = time.monotonic() + 5
        while planner.latest is None and time.monotonic() < deadline:
            time.sleep(0.01)
        first = planner.latest
        assert first is not None
        # A bind is not a reason to re-plan …
        eu = ext.config.services["chat-eu"].profile
        assert eu is not None
        ext.state.add_pod(PodRecord("u1", "llm", "a", "gpu-1a", "chat-eu", eu, 8))
        time.sleep(0.3)
        assert planner.latest is first
        # … a node leaving is.
        ext.state.remove_node("gpu-4b")
        deadline = time.monotonic() + 5
        while planner.latest is first and time.monotonic() < deadline:
            time.sleep(0.01)
        assert planner.latest is not first
        assert planner.latest is not None
        assert planner.latest.topology_version == ext.state.topology_version
    finally:
        planner.stop()


def test_a_planner_waiting_for_the_workloads_plans_only_once_their_demand_is_in() -> None:
    ext = small_extender()
    settings = PlannerSettings(strategy="greedy", debounce_s=0.05, interval_s=3600)
    planner = Planner(ext.state, ext.config, settings)
    planner.wait_for_demand = True
    planner.start()
    try:
        time.sleep(0.3)
        early = planner.latest
        assert early is None, "planned before the workloads' demand"
        planner.set_demand({"chat-eu": 2})
        deadline = time.monotonic() + 5
        while planner.latest is None and time.monotonic() < deadline:
            time.sleep(0.01)
        plan = planner.latest
        assert plan is not None
        assert plan.demand == 2
    finally:
        planner.stop()
