"""Place a queue of replicas one at a time, the way a scheduler does.

``greedy`` and the two baselines differ only in what profile a replica is
accounted at (its real profile, its nameplate or its peak) and in how candidate
nodes are ranked.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import NDArray

from placement.admission import TOLERANCE_W
from placement.assignment import Assignment
from placement.ledger import Ledger
from placement.problem import Problem

Cost = Literal["peak-increase", "utilisation-after"]
"""How candidate domains are ranked, lower is better, summed over a domain and its
ancestors: the rise of peak utilisation if the replica joined
(:func:`placement.scoring.peak_increase`), or the peak utilisation after it joined
(:func:`placement.scoring.path_utilisation_after`)."""

# Elements of the (services × domains × T) temporaries one numpy step may make: a
# path's refresh is one step, the first fill of the caches a few tens of MB at a time.
_STEP_ELEMENTS = 4_000_000


def replica_queue(problem: Problem, *, demand: NDArray[np.int64] | None = None) -> list[int]:
    """The deterministic order replicas are offered in: highest priority first; within a
    priority, larger replicas first (first-fit decreasing, so small replicas do not
    fragment the nodes a whole-node replica needs); services of the same priority and
    size take turns, by name, so none starves another. ``demand`` (per service)
    replaces the services' own."""
    svc = problem.services
    wanted = svc.demand if demand is None else demand
    order: list[int] = []
    tiers = sorted({(int(p), int(g)) for p, g in zip(svc.priority, svc.gpus, strict=True)})
    for prio, gpus in reversed(tiers):
        tier = sorted(
            (s for s in range(svc.size) if svc.priority[s] == prio and svc.gpus[s] == gpus),
            key=lambda s: svc.names[s],
        )
        remaining = {s: max(0, int(wanted[s])) for s in tier}
        while any(remaining.values()):
            for s in tier:
                if remaining[s]:
                    order.append(s)
                    remaining[s] -= 1
    return order


def place_sequentially(
    problem: Problem,
    accounted: NDArray[np.float64],
    cost: Cost,
    *,
    pack: bool,
    start: NDArray[np.int64] | None = None,
) -> Assignment:
    """Offer every replica of :func:`replica_queue` in turn.

    ``accounted[s]`` is the (T,) profile service ``s`` is admitted and ranked at.
    A replica goes to the node of the cheapest fitting leaf domain (``cost``); among
    nodes of that domain, ``pack`` picks the fullest node that still fits (fewer
    stranded GPUs), otherwise the emptiest (spread). A replica that fits nowhere stays
    unplaced. The admission check and the costs are those of
    :func:`placement.admission.fitting_domains` and :mod:`placement.scoring`, kept per
    service and updated only on the path a replica joins, so a placement costs
    (services × path × T) work instead of (domains × T) per replica offered.

    ``start`` (services × nodes) is a placement to add to: its replicas are in the
    ledger from the outset and only the demand it leaves is offered (a fill).

    With an emission budget (``problem.carbon``) a replica is admitted under the budgeted
    domain only while the emissions of everything admitted there, at the accounted
    profile, stay within the budget: the check an online scheduler can make one pod at
    a time. Nodes outside the budgeted domain are not limited by it.
    """
    from placement.carbon.emissions import budget_allowance, replica_kg

    fleet = problem.fleet
    ledger = Ledger(problem.tree, problem.idle_by_domain)
    counts = np.zeros((problem.services.size, fleet.size), dtype=np.int64)
    queue_demand = None
    if start is not None:
        counts += start
        leaf = np.zeros((problem.tree.size, problem.services.size))
        np.add.at(leaf, fleet.domain, start.T.astype(np.float64))
        ledger.load += problem.tree.membership.astype(np.float64) @ (leaf @ accounted)
        queue_demand = problem.services.demand - start.sum(axis=1)
    state = _PathState(problem, accounted, ledger, rise=cost == "peak-increase")
    hosts = state.hosts
    # Nodes of every host domain in index order (ties between nodes go to the first).
    host_nodes = [np.flatnonzero(state.host_of_node == h) for h in range(hosts.size)]
    free = fleet.gpus - problem.services.gpus @ counts
    most_free = np.array([free[n].max(initial=-1) for n in host_nodes], dtype=np.int64)
    budget = budget_allowance(problem)
    if budget is not None:
        budget_dom, left_kg = budget
        emits = replica_kg(problem, accounted)[:, hosts]  # (S × H)
        budgeted = problem.tree.membership[budget_dom, hosts]  # (H,)
        if start is not None:  # what the start placement emits is spent already
            on_host = np.zeros((hosts.size, problem.services.size))
            np.add.at(on_host, state.host_of_node, start.T.astype(np.float64))
            left_kg -= float((emits * on_host.T)[:, budgeted].sum())
    exhausted: set[int] = set()  # a service that failed once fails again until load drops
    for s in replica_queue(problem, demand=queue_demand):
        if s in exhausted:
            continue
        need = int(problem.services.gpus[s])
        fits, host_cost = state.fits_and_cost(s)
        host_ok = fits & (most_free >= need)
        if budget is not None:
            host_ok &= ~budgeted | (emits[s] <= left_kg)
        candidates = np.flatnonzero(host_ok)
        if candidates.size == 0:
            exhausted.add(s)
            continue
        best_cost = host_cost[candidates].min()
        # Ties go to the leaf domain with the lowest index (hosts are in that order),
        # then, among its nodes, by free GPUs.
        h = int(candidates[np.argmax(host_cost[candidates] <= best_cost + 1e-12)])
        nodes = host_nodes[h]
        nodes = nodes[free[nodes] >= need]
        node = int(nodes[np.argmin(free[nodes])] if pack else nodes[np.argmax(free[nodes])])
        counts[s, node] += 1
        free[node] -= need
        most_free[h] = free[host_nodes[h]].max()
        state.add(s, int(hosts[h]))
        if budget is not None and budgeted[h]:
            left_kg -= float(emits[s, h])
    return Assignment(counts)


class _PathState:
    """The ledger with, per service and domain, whether one more replica fits the
    domain itself in every slot and its peak utilisation if it joined; per domain the
    peak utilisation now. A service's figures are brought up to date when it is
    offered, for the domains whose load changed since its last offer only: services
    that are not being offered (exhausted, or in a later priority tier) cost nothing."""

    def __init__(
        self,
        problem: Problem,
        accounted: NDArray[np.float64],
        ledger: Ledger,
        *,
        rise: bool,
    ) -> None:
        tree, fleet = problem.tree, problem.fleet
        self.ledger = ledger
        self.accounted = np.asarray(accounted, dtype=np.float64)
        self.caps = problem.effective_caps
        self.rise = rise
        self.hosts, self.host_of_node = np.unique(fleet.domain, return_inverse=True)
        hosts = self.hosts
        # Every host's ancestors-or-self, root first, padded with a sentinel domain
        # (index D) that always fits and costs nothing.
        d = tree.size
        depth = int(tree.depth[hosts].max(initial=0)) + 1 if hosts.size else 1
        self.paths = np.full((hosts.size, depth), d, dtype=np.int64)
        for i, h in enumerate(hosts.tolist()):
            path = tree.ancestors(h)
            self.paths[i, : path.size] = path
        n_svc = self.accounted.shape[0]
        self.fits_here = np.ones((n_svc, d + 1), dtype=bool)
        self.after = np.zeros((n_svc, d + 1), dtype=np.float64)
        self.before = np.zeros(d + 1, dtype=np.float64)
        everything = np.arange(d)
        self.before[everything] = (ledger.load / self.caps).max(axis=1)
        step = max(1, _STEP_ELEMENTS // max(1, ledger.load.size))
        for lo in range(0, n_svc, step):
            self._refresh(slice(lo, lo + step), everything)
        self.changed: list[NDArray[np.int64]] = []  # the rows each add changed, in order
        self.seen = np.zeros(n_svc, dtype=np.int64)  # per service: adds it is up to date with

    def _refresh(self, services: slice, rows: NDArray[np.int64]) -> None:
        """Recompute the figures of ``services`` in domains ``rows``."""
        load = self.ledger.load[rows]
        caps = self.caps[rows]
        joined = load[None, :, :] + self.accounted[services, None, :]
        self.after[services, rows] = (joined / caps).max(axis=2)
        self.fits_here[services, rows] = np.all(joined <= caps + TOLERANCE_W, axis=-1)

    def fits_and_cost(self, s: int) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
        """Per host domain: does one more replica of ``s`` fit at every level above it,
        and its cost (summed over the path)."""
        done = int(self.seen[s])
        if done < len(self.changed):
            rows = np.unique(np.concatenate(self.changed[done:]))
            self._refresh(slice(s, s + 1), rows)
            self.seen[s] = len(self.changed)
        fits = self.fits_here[s][self.paths].all(axis=1)
        per_domain = self.after[s] - self.before if self.rise else self.after[s]
        return fits, per_domain[self.paths].sum(axis=1)

    def add(self, s: int, domain: int) -> None:
        """Record one replica of ``s`` under leaf ``domain``."""
        self.ledger.add(self.accounted[s], domain)
        path = self.ledger.tree.ancestors(domain)
        self.before[path] = (self.ledger.load[path] / self.caps[path]).max(axis=1)
        self.changed.append(path)
