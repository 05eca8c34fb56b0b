"""The CP-SAT model: variables and static rows from the :class:`Structure`, the
(domain, slot) power and utilisation constraints emitted so far, the expressions of
every objective tier, hints and one solve."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from ortools.sat.python import cp_model

from placement.strategies.cpsat.prep import INT, PERMILLE, IntArray, Prep
from placement.strategies.cpsat.structure import Structure, power_row


@dataclass(frozen=True)
class SolveSettings:
    """How every CP-SAT solve runs: threads, random seed and relative gap limit."""

    workers: int
    seed: int
    gap: float


@dataclass
class Solve:
    """One CP-SAT solve: its status, the per-host counts found (``None`` without a
    solution), objective and bound, and the utilisation variable's value."""

    status: str
    x: IntArray | None
    objective: float
    bound: float
    u: int  # value of the utilisation variable (0 if absent)


class Model:
    """The CP-SAT model and the bookkeeping of emitted (domain, slot) constraints."""

    def __init__(self, prep: Prep, st: Structure, n_dom: int, *, current: IntArray | None) -> None:
        self.prep = prep
        self.st = st
        self.model = cp_model.CpModel()
        m = self.model
        self.gen_power = np.zeros((n_dom, prep.slots), dtype=bool)
        self.gen_util = np.zeros((n_dom, prep.slots), dtype=bool)
        self.vars = [m.new_int_var(0, int(u), f"v{i}") for i, u in enumerate(st.ub.tolist())]
        for v, children in zip(st.y_var.tolist(), st.y_children, strict=True):
            m.add(cp_model.LinearExpr.sum([self.vars[c] for c in children]) == self.vars[v])
        for ids, coeffs, rhs in st.rows:
            m.add(self._expr(ids, coeffs) <= rhs)
        self.hosted_expr = self._expr(st.obj_var, st.obj_w)
        em = prep.em[st.x_s, st.x_h]
        on = np.flatnonzero(em > 0).astype(INT)
        self.em_terms = (on, em[on])
        self.em_expr = self._expr(on, em[on])
        self.u_var: Any = None
        self.current = current
        self.move_expr: Any = None
        self.move_vars: list[tuple[int, int, Any]] = []

    def _expr(self, ids: IntArray, coeffs: IntArray) -> Any:
        return cp_model.LinearExpr.weighted_sum([self.vars[i] for i in ids], coeffs.tolist())

    # -- constraint emission

    def emit_power(self, d: int, t: int) -> bool:
        """Add the power constraint of domain ``d`` in slot ``t``; False if already there."""
        if self.gen_power[d, t]:
            return False
        self.gen_power[d, t] = True
        ids, coeffs = power_row(self.prep, self.st, d, t=t)
        if ids.size:
            self.model.add(self._expr(ids, coeffs) <= int(self.prep.rhs[d, t]))
        return True

    def emit_util(self, d: int, t: int) -> bool:
        """Tie the utilisation variable to domain ``d`` in slot ``t``:
        1000·(idle + load) ≤ U·capEff."""
        if self.gen_util[d, t] or self.u_var is None:
            return False
        self.gen_util[d, t] = True
        prep = self.prep
        ids, coeffs = power_row(prep, self.st, d, t=t)
        expr = self._expr(ids, PERMILLE * coeffs) - int(prep.cap_u[d, t]) * self.u_var
        self.model.add(expr <= -PERMILLE * int(prep.idle_u[d]))
        return True

    def add_utilisation(self) -> None:
        self.u_var = self.model.new_int_var(0, 4 * PERMILLE, "peak_util")

    def add_moves(self, current: IntArray) -> None:
        """m[s, h] ≥ current − x: replicas leaving the domain they run in now."""
        terms: list[Any] = []
        constant = 0
        st = self.st
        index = {
            (s, h): i for i, (s, h) in enumerate(zip(st.x_s.tolist(), st.x_h.tolist(), strict=True))
        }
        for s, h in zip(*np.nonzero(current), strict=True):
            c = int(current[s, h])
            i = index.get((int(s), int(h)))
            if i is None:
                constant += c
                continue
            mv = self.model.new_int_var(0, c, f"m_{s}_{h}")
            self.model.add(mv + self.vars[i] >= c)
            self.move_vars.append((int(s), int(h), mv))
            terms.append(mv)
        self.move_expr = cp_model.LinearExpr.sum(terms) + constant

    # -- hints and solving

    def hint(self, x: IntArray, u: int | None = None) -> None:
        m = self.model
        m.clear_hints()  # type: ignore[no-untyped-call]
        for v, value in zip(self.vars, self.st.values(self.prep, x).tolist(), strict=True):
            m.add_hint(v, value)
        if self.u_var is not None and u is not None:
            m.add_hint(self.u_var, int(u))
        if self.current is not None:
            for s, h, mv in self.move_vars:
                m.add_hint(mv, max(0, int(self.current[s, h] - x[s, h])))

    def solve(self, deadline: float, settings: SolveSettings) -> Solve:
        """Solve the model as it stands until ``deadline`` (a ``perf_counter`` time)."""
        solver = cp_model.CpSolver()
        p = solver.parameters
        p.max_time_in_seconds = max(0.05, deadline - time.perf_counter())
        p.num_workers = max(1, settings.workers)
        p.random_seed = settings.seed
        p.relative_gap_limit = settings.gap
        status = solver.solve(self.model)
        name = solver.status_name(status)
        x: IntArray | None = None
        u = 0
        objective = math.nan
        if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            values = np.asarray(solver.response_proto.solution, dtype=INT)
            x = self.st.counts(self.prep, values[: self.st.size])
            if self.u_var is not None:
                u = int(values[self.u_var.index])
            objective = float(solver.objective_value)
        bound = float(solver.best_objective_bound)
        return Solve(name, x, objective, bound, u)
