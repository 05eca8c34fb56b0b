"""Place a queue of replicas one at a time, the way a scheduler does.

``greedy`` and the two baselines differ only in what profile a replica is
accounted at (its real profile, its nameplate or its peak) and in how candidate
nodes are ranked.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from placement.admission import fitting_domains
from placement.assignment import Assignment
from placement.ledger import Ledger
from placement.problem import Problem

# Rank candidate leaf domains: lower is better. Arguments: ledger, profile, caps.
DomainCost = Callable[[Ledger, NDArray[np.float64], NDArray[np.float64]], NDArray[np.float64]]


def replica_queue(problem: Problem) -> list[int]:
    """The deterministic order replicas are offered in: highest priority first; within a
    priority, larger replicas first (first-fit decreasing, so small replicas do not
    fragment the nodes a whole-node replica needs); services of the same priority and
    size take turns, by name, so none starves another."""
    svc = problem.services
    order: list[int] = []
    tiers = sorted({(int(p), int(g)) for p, g in zip(svc.priority, svc.gpus, strict=True)})
    for prio, gpus in reversed(tiers):
        tier = sorted(
            (s for s in range(svc.size) if svc.priority[s] == prio and svc.gpus[s] == gpus),
            key=lambda s: svc.names[s],
        )
        remaining = {s: int(svc.demand[s]) for s in tier}
        while any(remaining.values()):
            for s in tier:
                if remaining[s]:
                    order.append(s)
                    remaining[s] -= 1
    return order


def place_sequentially(
    problem: Problem,
    accounted: NDArray[np.float64],
    domain_cost: DomainCost,
    *,
    pack: bool,
) -> Assignment:
    """Offer every replica of :func:`replica_queue` in turn.

    ``accounted[s]`` is the (T,) profile service ``s`` is admitted and ranked at.
    A replica goes to the node of the cheapest fitting leaf domain; among nodes of
    that domain, ``pack`` picks the fullest node that still fits (fewer stranded
    GPUs), otherwise the emptiest (spread). A replica that fits nowhere stays unplaced.

    With an emission budget (``problem.carbon``) a replica is admitted under the budgeted
    domain only while the emissions of everything admitted there, at the accounted
    profile, stay within the budget: the check an online scheduler can make one pod at
    a time. Nodes outside the budgeted domain are not limited by it.
    """
    from placement.carbon.emissions import budget_allowance, replica_kg

    fleet = problem.fleet
    caps = problem.effective_caps
    ledger = Ledger(problem.tree, problem.idle_by_domain)
    budget = budget_allowance(problem)
    if budget is not None:
        budget_dom, left_kg = budget
        emits = replica_kg(problem, accounted)[:, fleet.domain]  # (S × N)
        budgeted = problem.tree.membership[budget_dom, fleet.domain]  # (N,)
    counts = np.zeros((problem.services.size, fleet.size), dtype=np.int64)
    free = fleet.gpus.copy()
    exhausted: set[int] = set()  # a service that failed once fails again until load drops
    for s in replica_queue(problem):
        if s in exhausted:
            continue
        need = int(problem.services.gpus[s])
        profile = accounted[s]
        fits = fitting_domains(ledger, profile, caps)
        node_ok = (free >= need) & fits[fleet.domain]
        if budget is not None:
            node_ok &= ~budgeted | (emits[s] <= left_kg)
        if not node_ok.any():
            exhausted.add(s)
            continue
        cost = domain_cost(ledger, profile, caps)[fleet.domain]
        candidates = np.flatnonzero(node_ok)
        best_cost = cost[candidates].min()
        best = candidates[cost[candidates] <= best_cost + 1e-12]
        # Ties go to the same leaf domain first (lowest index), then by GPUs.
        leaf = fleet.domain[best].min()
        best = best[fleet.domain[best] == leaf]
        node = int(best[np.argmin(free[best])] if pack else best[np.argmax(free[best])])
        counts[s, node] += 1
        free[node] -= need
        ledger.add(profile, int(fleet.domain[node]))
        if budget is not None and budgeted[node]:
            left_kg -= float(emits[s, node])
    return Assignment(counts)
