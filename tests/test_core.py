"""Grid, tree, ledger, admission, scoring and metrics on hand-checked cases."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from placement.admission import first_breach, fitting_domains
from placement.assignment import Assignment
from placement.grid import Grid, format_duration, parse_duration
from placement.ledger import Ledger
from placement.metrics import asynchrony, evaluate, gains, priority_weights
from placement.problem import Problem
from placement.scoring import peak_increase, scores_0_to_10
from placement.strategies import run_strategy
from placement.strategies.sequential import replica_queue
from tests.problems import problem_from_dict

T = 144


def day_bump(peak_hour: float, low: float, high: float) -> list[float]:
    hours = (np.arange(T) + 0.5) / 6
    dist = np.minimum(np.abs(hours - peak_hour), 24 - np.abs(hours - peak_hour))
    bump: list[float] = (low + (high - low) * np.exp(-0.5 * (dist / 2.0) ** 2)).round(3).tolist()
    return bump


def two_rack_problem(rack_cap: float = 20_000, **extra: Any) -> Problem:
    """Two racks of four 8-GPU nodes; EU and US chat peak 8 hours apart."""
    data: dict[str, Any] = {
        "domains": [
            {"name": "site", "cap": 2 * rack_cap},
            {"name": "rack-a", "parent": "site", "cap": rack_cap},
            {"name": "rack-b", "parent": "site", "cap": rack_cap},
        ],
        "nodeGroups": [
            {
                "namePrefix": "n",
                "domains": ["rack-a", "rack-b"],
                "countPerDomain": 4,
                "gpus": 8,
                "idleWatts": 1000,
            }
        ],
        "services": [
            {
                "name": "chat-eu",
                "replicas": 4,
                "gpusPerReplica": 8,
                "nameplateWatts": 8200,
                "priority": 10,
                "profile": day_bump(10, 1000, 5000),
            },
            {
                "name": "chat-us",
                "replicas": 4,
                "gpusPerReplica": 8,
                "nameplateWatts": 8200,
                "priority": 10,
                "profile": day_bump(18, 1000, 5000),
            },
        ],
    }
    data.update(extra)
    return problem_from_dict(data)


def test_durations_and_grid() -> None:
    assert parse_duration("24h") == 86400
    assert parse_duration("1h30m") == 5400
    assert parse_duration(600) == 600
    assert format_duration(86400) == "24h"
    assert format_duration(600) == "10m"
    for bad in ("", "10", "10x", "-5m", "0s", "1.5s"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    g = Grid()
    assert g.slots == 144
    assert g.slot_of(0) == 0
    assert g.slot_of(86400 + 10 * 3600 + 5) == 60
    assert g.slot_label(60) == "10:00"
    assert Grid(offset_s=3600).slot_of(0) == 6
    assert Grid(period_s=7 * 86400, step_s=3600).slot_label(25) == "01:00+1d"
    with pytest.raises(ValueError):
        Grid(step_s=7 * 60)


def test_tree_membership_and_leaves() -> None:
    p = two_rack_problem()
    tree = p.tree
    assert tree.leaves.tolist() == [1, 2]
    assert tree.ancestors(tree.index["rack-b"]).tolist() == [0, 2]
    assert tree.depth.tolist() == [0, 1, 1]
    np.testing.assert_array_equal(p.idle_by_domain, [8000, 4000, 4000])


def test_ledger_updates_leaf_and_ancestors_only() -> None:
    p = two_rack_problem()
    ledger = Ledger(p.tree, p.idle_by_domain)
    profile = p.services.profiles[0]
    ledger.add(profile, p.tree.index["rack-a"], 2)
    np.testing.assert_allclose(ledger.load[1], 4000 + 2 * profile)
    np.testing.assert_allclose(ledger.load[0], 8000 + 2 * profile)
    np.testing.assert_allclose(ledger.load[2], 4000)


def test_breach_names_domain_time_and_watts() -> None:
    p = two_rack_problem(rack_cap=12_000)
    ledger = Ledger(p.tree, p.idle_by_domain)
    rack_a = p.tree.index["rack-a"]
    eu = p.services.profiles[0]
    caps = p.effective_caps
    ledger.add(eu, rack_a)  # 4000 idle + 5000 peak at 10:00
    breach = first_breach(ledger, eu, rack_a, caps=caps, grid=p.grid)
    assert breach is not None
    assert breach.domain == "rack-a"
    assert breach.time_of_day in {"09:50", "10:00"}
    assert breach.over_watts == pytest.approx(4000 + 2 * eu.max() - 12_000)
    assert breach.message().startswith(
        f"domain rack-a would exceed its cap at {breach.time_of_day} by "
    )
    # The US service peaks eight hours later and still fits beside it.
    us = p.services.profiles[1]
    assert first_breach(ledger, us, rack_a, caps=caps, grid=p.grid) is None
    fits = fitting_domains(ledger, eu, caps)
    assert fits.tolist() == [True, False, True]


def test_headroom_tightens_the_check() -> None:
    p = two_rack_problem(rack_cap=10_000, headroom=0.2)
    ledger = Ledger(p.tree, p.idle_by_domain)
    # 4000 idle + 5000 peak = 9000 > 10000 × 0.8
    assert not fitting_domains(ledger, p.services.profiles[0], p.effective_caps)[1]


def test_peak_increase_prefers_the_anti_phased_domain() -> None:
    p = two_rack_problem()
    ledger = Ledger(p.tree, p.idle_by_domain)
    ledger.add(p.services.profiles[0], 1)  # EU in rack-a
    ledger.add(p.services.profiles[0], 2)  # EU in rack-b
    ledger.add(p.services.profiles[1], 2)  # US in rack-b
    # Another US replica raises rack-a's peak less than rack-b's.
    cost = peak_increase(ledger, p.services.profiles[1], p.effective_caps)
    assert cost[1] < cost[2]
    assert scores_0_to_10(cost[[1, 2]]).tolist() == [10, 0]
    assert scores_0_to_10(np.array([3.0, 3.0])).tolist() == [10, 10]


def test_queue_is_priority_first_then_round_robin() -> None:
    p = two_rack_problem()
    svc = p.services
    data_prio = np.array([10, 10])
    assert svc.priority.tolist() == data_prio.tolist()
    assert replica_queue(p)[:4] == [0, 1, 0, 1]
    p2 = problem_from_dict(
        {
            "domains": [{"name": "site", "cap": 1e6}],
            "services": [
                {
                    "name": "b",
                    "replicas": 2,
                    "nameplateWatts": 1,
                    "priority": 1,
                    "profile": [1.0] * T,
                },
                {
                    "name": "a",
                    "replicas": 1,
                    "nameplateWatts": 1,
                    "priority": 5,
                    "profile": [1.0] * T,
                },
            ],
        }
    )
    assert replica_queue(p2) == [1, 0, 0]


def test_strategies_on_anti_phased_services() -> None:
    # Per rack: 4000 idle; nameplate 8200 → 1 replica under 13 kW; peak 5000 → 1;
    # an EU and a US replica together peak at ~6000 → 2 per rack.
    p = two_rack_problem(rack_cap=13_000)
    hosted = {
        s: int(run_strategy(s, p).assignment.hosted.sum())
        for s in ("nameplate", "peak-sum", "greedy")
    }
    assert hosted == {"nameplate": 2, "peak-sum": 2, "greedy": 4}
    greedy = run_strategy("greedy", p).assignment
    # Each rack got one EU and one US replica.
    per = greedy.by_domain(p)
    assert per[:, 1].tolist() == [1, 1] and per[:, 2].tolist() == [1, 1]


def test_metrics_of_a_known_placement() -> None:
    p = two_rack_problem(rack_cap=13_000)
    counts = np.zeros((2, p.fleet.size), dtype=np.int64)
    counts[0, 0] = 1
    counts[1, 1] = 1
    m = evaluate(p, Assignment(counts))
    assert m.hosted == {"chat-eu": 1, "chat-us": 1}
    assert m.unplaced_total == 6
    assert m.violations == 0
    rack_a = next(d for d in m.domains if d.domain == "rack-a")
    eu, us = p.services.profiles
    assert rack_a.peak_w == pytest.approx(4000 + (eu + us).max())
    assert rack_a.asynchrony == pytest.approx((eu.max() + us.max()) / (eu + us).max())
    assert rack_a.stranded_w == pytest.approx(13_000 - rack_a.peak_w)
    # Two EU replicas in one 13 kW rack: 4000 + 2×5000 = 14 kW, over cap at the EU peak.
    counts2 = np.zeros_like(counts)
    counts2[0, 0] = 2
    m2 = evaluate(p, Assignment(counts2))
    assert m2.violations > 0
    assert m2.violating_domains == ["rack-a"]
    assert m2.worst_peak_over_cap > 1
    assert gains(m, {"nameplate": m2}) == {"vs_nameplate": 0.0}
    # Breaking a cap earns no gain, however much is hosted.
    assert gains(m2, {"nameplate": m}) == {"vs_nameplate": None}


def test_asynchrony_and_weights() -> None:
    profiles = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert asynchrony(np.array([1, 1]), profiles) == 2.0
    assert asynchrony(np.array([2, 0]), profiles) == 1.0
    assert asynchrony(np.array([0, 0]), profiles) == 1.0
    assert priority_weights(np.array([100, -5, 100, 7])).tolist() == [3.0, 1.0, 3.0, 2.0]


def test_empty_problem_runs_every_heuristic() -> None:
    p = problem_from_dict({"domains": [{"name": "site", "cap": 1000}]})
    for s in ("nameplate", "peak-sum", "greedy"):
        plan = run_strategy(s, p)
        assert plan.assignment.counts.shape == (0, 0)
        assert evaluate(p, plan.assignment).hosted_total == 0
    with pytest.raises(ValueError, match="unknown strategy"):
        run_strategy("random", p)
