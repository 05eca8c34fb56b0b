"""How a big tree is cut into parts, and what each part may draw.

The cut is the level just above the domains nodes hang off (the rows of a site → hall
→ row → rack tree). An LP over the parts (:func:`split_capacity`) — replicas per
(service, part), the caps of every domain at the cut and above in every slot, each
part's GPUs, demand — is a relaxation of the whole problem: racks are aggregated into
their part and their caps dropped, so its optimum bounds the optimum of the whole
problem from above, whatever slots it has seen. Its solution says how much of each
service every part gets and how much power: the part's LP load plus a share of the
slack of every domain above it. The shares of the parts under a domain never sum past
that domain's allowance in any slot, so placements that keep every part within its
share keep the site and the halls within theirs, exactly.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from ortools.linear_solver import pywraplp

from placement.metrics import priority_weights
from placement.problem import Problem
from placement.strategies.cpsat.lazy_slots import worst_slots

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

# Slots every domain's power rows start with, spread over the period; the rest are
# added where the LP's load exceeds an allowance (at most 8 per domain and round).
_INITIAL_SLOTS = 12
_SPACING = 3
# Objective bonus per replica a split leaves where the placement to keep has it: far
# below one replica's priority weight (at least 1), so it only breaks ties.
_KEEP_BONUS = 1e-4
# Watts kept back from every domain's slack when it is shared, against float rounding.
_MARGIN_W = 1.0


@dataclass(frozen=True)
class Cut:
    """The parts a tree is cut into: ``parts`` (domain indices, at one depth), the
    part of every node, and ``above``, the domains above the parts."""

    parts: IntArray
    part_of_node: IntArray
    above: IntArray


@dataclass(frozen=True)
class Split:
    """The LP over the parts and what it hands each part.

    ``bound`` is the LP optimum (priority-weighted replicas; rounded down), ``None``
    if the LP stopped before an optimum. ``demand`` (services × parts) is what each
    part is asked to host, summing to at most every service's demand; ``allowance``
    (parts × T) the watts above idle each part may draw, within its own cap, such that
    the parts under any domain above them stay within that domain's allowance.
    """

    bound: float | None
    lp_objective: float
    demand: IntArray
    allowance: FloatArray
    rounds: int
    converged: bool
    slot_constraints: int
    wall_s: float


def find_cut(problem: Problem) -> Cut | None:
    """The parts: the domains one level above the shallowest domain nodes hang off,
    if that level is below the root and every node is under one of them."""
    tree, fleet = problem.tree, problem.fleet
    if fleet.size == 0:
        return None
    level = int(tree.depth[fleet.domain].min()) - 1
    if level < 1:
        return None
    parts = np.flatnonzero(tree.depth == level)
    under = tree.membership[np.ix_(parts, fleet.domain)]  # (parts × nodes)
    if not (under.sum(axis=0) == 1).all():
        return None
    above = np.flatnonzero(tree.depth < level)
    return Cut(parts.astype(np.int64), np.argmax(under, axis=0).astype(np.int64), above)


def split_capacity(
    problem: Problem, cut: Cut, *, deadline: float, keep: IntArray | None = None
) -> Split | None:
    """Solve the LP over the parts (lazy slot rows, as the planner does for the whole
    model) and hand out demand and power; ``None`` if GLOP is unavailable or fails.

    ``keep`` (services × nodes) is a placement to stay close to (the current one, on a
    re-plan): among equally good splits the LP prefers one that leaves each part at
    least the replicas it has there. The preference is worth :data:`_KEEP_BONUS` per
    replica, so the bound grows by at most that times the replicas kept, and stays a
    bound."""
    began = time.perf_counter()
    kept = None
    if keep is not None:
        kept = np.zeros((problem.services.size, cut.parts.size))
        np.add.at(kept.T, cut.part_of_node, keep.T.astype(np.float64))
    lp = _PartsLp(problem, cut, kept)
    if lp.solver is None:
        return None
    lp.run(deadline)
    if lp.x is None:
        return None
    x = lp.x
    return Split(
        bound=math.floor(lp.objective + 1e-6) if lp.optimal else None,
        lp_objective=lp.objective,
        demand=_round_demand(x, problem.services.demand),
        allowance=_allowances(problem, cut, x.T @ problem.services.profiles),
        rounds=lp.rounds,
        converged=lp.converged,
        slot_constraints=int(lp.gen.sum()),
        wall_s=time.perf_counter() - began,
    )


class _PartsLp:
    """GLOP over y[s, p] (replicas of service s in part p), with power rows emitted
    lazily for the domains at the cut and above."""

    def __init__(self, problem: Problem, cut: Cut, kept: FloatArray | None) -> None:
        self.problem, self.cut = problem, cut
        svc, tree = problem.services, problem.tree
        self.solver = pywraplp.Solver.CreateSolver("GLOP")
        n_svc, n_parts = svc.size, cut.parts.size
        # Rows: the domains above, then the parts; ``inside[r, p]``: part p is under row r.
        self.rows = np.concatenate([cut.above, cut.parts])
        self.inside = tree.membership[np.ix_(self.rows, cut.parts)]
        self.allow = problem.effective_caps[self.rows] - problem.idle_by_domain[self.rows, None]
        self.profiles = np.clip(svc.profiles, 0.0, None)
        self.gen = np.zeros(self.allow.shape, dtype=bool)
        self.x: FloatArray | None = None
        self.objective = 0.0
        self.optimal = False
        self.converged = False
        self.rounds = 0
        if self.solver is None:
            return
        s = self.solver
        demand = np.clip(svc.demand, 0, None)
        gpu_bound = _gpu_bounds(problem, cut)  # (S × P)
        ub = np.minimum(demand[:, None], gpu_bound)
        self.var = [
            [s.NumVar(0.0, float(ub[i, p]), "") for p in range(n_parts)] for i in range(n_svc)
        ]
        self.active = [(i, p) for i in range(n_svc) for p in range(n_parts) if ub[i, p] > 0]
        for i in range(n_svc):
            row = s.Constraint(0.0, float(demand[i]))
            for p in range(n_parts):
                row.SetCoefficient(self.var[i][p], 1.0)
        self._gpu_rows(problem, cut)
        objective = s.Objective()
        weights = priority_weights(svc.priority)
        for i in range(n_svc):
            for p in range(n_parts):
                objective.SetCoefficient(self.var[i][p], float(weights[i]))
        if kept is not None:  # k[s, p] ≤ min(kept, y[s, p]), worth a small bonus each
            for i, p in zip(*np.nonzero(kept), strict=True):
                k = s.NumVar(0.0, float(kept[i, p]), "")
                row = s.Constraint(-s.infinity(), 0.0)
                row.SetCoefficient(k, 1.0)
                row.SetCoefficient(self.var[int(i)][int(p)], -1.0)
                objective.SetCoefficient(k, _KEEP_BONUS)
        objective.SetMaximization()
        # Initial slots: evenly spread, the first at the heaviest slot of full demand.
        heavy = int(np.argmax(demand @ self.profiles)) if n_svc else 0
        slots = self.allow.shape[1]
        for k in range(min(_INITIAL_SLOTS, slots)):
            t = (heavy + k * slots // _INITIAL_SLOTS) % slots
            for r in range(self.rows.size):
                self._emit(r, t)

    def _gpu_rows(self, problem: Problem, cut: Cut) -> None:
        """Per part and replica size k: replicas of k GPUs or more fit the nodes' count
        and their GPUs (as the whole model's GPU rows, summed over the part)."""
        s = self.solver
        svc, fleet = problem.services, problem.fleet
        for k in sorted({int(g) for g in svc.gpus if g >= 1}):
            members = np.flatnonzero(svc.gpus >= k)
            count = np.zeros(cut.parts.size)
            np.add.at(count, cut.part_of_node, fleet.gpus // k)
            gpus = np.zeros(cut.parts.size)
            np.add.at(gpus, cut.part_of_node, np.where(fleet.gpus >= k, fleet.gpus, 0))
            for p in range(cut.parts.size):
                by_count = s.Constraint(-s.infinity(), float(count[p]))
                by_gpus = s.Constraint(-s.infinity(), float(gpus[p]))
                for i in members.tolist():
                    by_count.SetCoefficient(self.var[i][p], 1.0)
                    by_gpus.SetCoefficient(self.var[i][p], float(svc.gpus[i]))

    def _emit(self, r: int, t: int) -> bool:
        if self.gen[r, t]:
            return False
        self.gen[r, t] = True
        row = self.solver.Constraint(-self.solver.infinity(), float(self.allow[r, t]))
        watts = self.profiles[:, t]
        for p in np.flatnonzero(self.inside[r]).tolist():
            for i in np.flatnonzero(watts > 0).tolist():
                row.SetCoefficient(self.var[i][p], float(watts[i]))
        return True

    def run(self, deadline: float) -> None:
        """Solve, check every slot, add the worst violated ones, until none is left or
        the deadline passes. The first solve runs to its end whatever the deadline: the
        split and the bound need one optimum, and without it the caller would fall back
        to the one model this split exists to avoid."""
        s = self.solver
        n_svc, n_parts = len(self.var), self.cut.parts.size
        while True:
            if self.rounds:
                s.SetTimeLimit(max(1, int(1000 * (deadline - time.perf_counter()))))
            status = s.Solve()
            self.rounds += 1
            if status != pywraplp.Solver.OPTIMAL:
                # An earlier optimum, with fewer rows, still bounds the problem.
                return
            self.optimal = True
            x = np.zeros((n_svc, n_parts))
            for i, p in self.active:
                x[i, p] = self.var[i][p].solution_value()
            self.x = x
            self.objective = float(s.Objective().Value())
            load = self.inside.astype(np.float64) @ (x.T @ self.profiles)  # (rows × T)
            tol = 1e-6 * np.maximum(1.0, np.abs(self.allow))
            excess = np.where(self.gen, 0.0, load - self.allow - tol)
            if not (excess > 0).any():
                self.converged = True
                return
            added = sum(self._emit(r, t) for r, t in worst_slots(excess, _SPACING))
            if added == 0 or time.perf_counter() >= deadline:
                return


def _gpu_bounds(problem: Problem, cut: Cut) -> IntArray:
    """(S × P) replicas of each service the GPUs of each part admit."""
    svc, fleet = problem.services, problem.fleet
    out = np.zeros((svc.size, cut.parts.size), dtype=np.int64)
    for i in range(svc.size):
        g = int(svc.gpus[i])
        per_node = fleet.gpus // g if g >= 1 else np.full(fleet.size, 10**9)
        np.add.at(out[i], cut.part_of_node, per_node)
    return out


def _round_demand(x: FloatArray, demand: IntArray) -> IntArray:
    """Integer demand per (service, part) from the LP's fractional counts: every part
    gets its whole replicas, and each service's fractional remainder (rounded down)
    goes to the parts with the largest fractions, so no service is asked for more than
    it wants."""
    base = np.floor(x + 1e-6).astype(np.int64)
    frac = x - base
    extra = np.floor(x.sum(axis=1) + 1e-6).astype(np.int64) - base.sum(axis=1)
    extra = np.clip(np.minimum(extra, demand - base.sum(axis=1)), 0, None)
    order = np.argsort(-frac, axis=1, kind="stable")
    for i in np.flatnonzero(extra > 0):
        base[i, order[i, : int(extra[i])]] += 1
    return base


def _allowances(problem: Problem, cut: Cut, lp_load: FloatArray) -> FloatArray:
    """(P × T) watts above idle each part may draw: its LP load plus, for every domain
    above it (and its own cap), a share of that domain's slack in proportion to the
    parts' own allowances; the least of these. Where the LP load exceeds a domain's
    allowance (slots the LP never saw) the share is negative, so the parts under that
    domain still sum to its allowance at most."""
    tree = problem.tree
    allow = problem.effective_caps - problem.idle_by_domain[:, None]  # (D × T)
    own = allow[cut.parts]  # (P × T)
    weight = np.clip(own, 1.0, None)
    out = own.copy()
    for a in cut.above.tolist():
        inside = tree.membership[a, cut.parts]
        slack = allow[a] - lp_load[inside].sum(axis=0) - _MARGIN_W  # (T,)
        share = weight[inside] / weight[inside].sum(axis=0)
        out[inside] = np.minimum(out[inside], lp_load[inside] + share * slack)
    return out
