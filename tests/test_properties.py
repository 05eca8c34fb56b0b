"""Property tests of the core invariants."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from placement.admission import first_breach, fitting_domains, violations
from placement.assignment import Assignment
from placement.ledger import Ledger
from placement.metrics import evaluate, priority_weights
from placement.problem import Problem
from placement.strategies import run_strategy
from tests.problems import problems

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOLVER = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(problems(), st.data())
def test_ledger_add_remove_is_symmetric(problem: Problem, data: st.DataObject) -> None:
    ledger = Ledger(problem.tree, problem.idle_by_domain)
    start = ledger.load.copy()
    leaves = problem.tree.leaves.tolist()
    moves = data.draw(
        st.lists(
            st.tuples(
                st.integers(0, problem.services.size - 1),
                st.sampled_from(leaves),
                st.integers(1, 3),
            ),
            max_size=12,
        )
    )
    for s, d, k in moves:
        ledger.add(problem.services.profiles[s], d, k)
    if moves:
        # Each add raised exactly its leaf and ancestors.
        s, d, k = moves[-1]
        assert ledger.load[problem.tree.ancestors(d)].min() >= 0
    for s, d, k in data.draw(st.permutations(moves)):
        ledger.remove(problem.services.profiles[s], d, k)
    np.testing.assert_allclose(ledger.load, start, atol=1e-6)


@FAST
@given(problems(), st.data())
def test_admitted_placements_never_exceed_any_cap(problem: Problem, data: st.DataObject) -> None:
    """Offer random replicas to random leaves; admit only what the check accepts."""
    ledger = Ledger(problem.tree, problem.idle_by_domain)
    caps = problem.effective_caps
    leaves = problem.tree.leaves.tolist()
    if (ledger.load > caps).any():
        return  # idle alone is over a cap: nothing can ever be admitted, nothing to check
    offers = data.draw(
        st.lists(
            st.tuples(st.integers(0, problem.services.size - 1), st.sampled_from(leaves)),
            max_size=40,
        )
    )
    for s, d in offers:
        profile = problem.services.profiles[s]
        fits = bool(fitting_domains(ledger, profile, caps)[d])
        breach = first_breach(ledger, profile, d, caps=caps, grid=problem.grid)
        assert fits == (breach is None)
        if breach is not None:
            assert breach.over_watts > 0
            assert breach.domain in {problem.tree.names[a] for a in problem.tree.ancestors(d)}
        if fits:
            ledger.add(profile, d)
        assert not violations(ledger.load, caps).any()


def _hosted(problem: Problem, strategy: str) -> tuple[Assignment, int]:
    options = {"time_limit_s": 5.0} if strategy == "cpsat" else {}
    plan = run_strategy(strategy, problem, **options)
    return plan.assignment, int(plan.assignment.hosted.sum())


def _check_feasible(problem: Problem, assignment: Assignment) -> None:
    assert (assignment.counts >= 0).all()
    assert (assignment.hosted <= problem.services.demand).all()
    assert (assignment.gpus_used(problem) <= problem.fleet.gpus).all()
    assert not violations(assignment.load(problem), problem.effective_caps).any()


@FAST
@given(problems())
def test_heuristic_strategies_never_violate(problem: Problem) -> None:
    if (problem.idle_by_domain[:, None] > problem.effective_caps).any():
        return
    for strategy in ("nameplate", "peak-sum", "greedy"):
        assignment, _ = _hosted(problem, strategy)
        _check_feasible(problem, assignment)
        assert evaluate(problem, assignment).violations == 0


@SOLVER
@given(problems(max_services=3))
def test_cpsat_hosts_at_least_greedy_and_peak_sum(problem: Problem) -> None:
    if (problem.idle_by_domain[:, None] > problem.effective_caps).any():
        return
    weights = priority_weights(problem.services.priority)
    cpsat, _ = _hosted(problem, "cpsat")
    _check_feasible(problem, cpsat)
    for other in ("greedy", "peak-sum"):
        baseline, _ = _hosted(problem, other)
        assert weights @ cpsat.hosted >= weights @ baseline.hosted - 1e-9, other


@SOLVER
@given(problems(uniform_priority=True, max_services=3))
def test_cpsat_hosts_at_least_as_many_replicas_as_greedy(problem: Problem) -> None:
    if (problem.idle_by_domain[:, None] > problem.effective_caps).any():
        return
    _, n_cpsat = _hosted(problem, "cpsat")
    _, n_greedy = _hosted(problem, "greedy")
    assert n_cpsat >= n_greedy


@FAST
@given(problems(uniform_priority=True, uniform_size=True))
def test_greedy_hosts_at_least_peak_sum_when_services_differ_only_in_timing(
    problem: Problem,
) -> None:
    """Greedy admits everything peak-sum would and more, as long as one replica is as big as
    another. With replicas of different sizes no sequential rule dominates another: greedy
    may admit a big replica that peak-sum refuses and that later blocks two small ones
    (cpsat, which is global, dominates both — tested above)."""
    if (problem.idle_by_domain[:, None] > problem.effective_caps).any():
        return
    _, n_greedy = _hosted(problem, "greedy")
    _, n_peak = _hosted(problem, "peak-sum")
    assert n_greedy >= n_peak
