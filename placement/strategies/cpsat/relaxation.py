"""Slot generation on the LP relaxation (GLOP): the lazy rounds run first on the LP,
which is fast, and mark every (domain, slot) it needed. A fractional optimum meets the
slots near-optimal integer placements meet, so the CP-SAT rounds start close to the end."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from ortools.linear_solver import pywraplp

from placement.strategies.cpsat.lazy_slots import LazyRounds, Violations, mark_near_binding
from placement.strategies.cpsat.prep import BoolArray, IntArray, Prep
from placement.strategies.cpsat.structure import Structure, power_row

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class LpResult:
    """The last LP optimum: fractional counts, objective, rounds solved, whether it
    passed every slot and how long the phase took."""

    x: FloatArray  # (S × H) fractional counts
    objective: float
    rounds: int
    converged: bool
    wall_s: float


def relaxed_slots(
    prep: Prep,
    st: Structure,
    gen: BoolArray,
    *,
    spacing: int,
    deadline: float,
    minimise: tuple[IntArray, IntArray] | None = None,
    floor: int | None = None,
) -> LpResult | None:
    """Run the lazy slot generation on the LP relaxation and mark every (domain, slot)
    it needed in ``gen`` (and, once it passes every slot, those where it is within 2% of
    the cap). By default the LP maximises priority-weighted replicas; ``minimise``
    (variable ids and coefficients) replaces that objective, with the weighted
    replicas held at ``floor`` or more (stage 1b). Returns ``None`` if GLOP is
    unavailable or its first solve fails."""
    began = time.perf_counter()
    lp = pywraplp.Solver.CreateSolver("GLOP")
    if lp is None:
        return None
    rounds = _LpRounds(lp, prep, st, gen, spacing=spacing, minimise=minimise, floor=floor)
    rounds.run(deadline)
    if rounds.not_optimal:
        if rounds.rounds == 1:
            return None
        return LpResult(rounds.x, rounds.value, rounds.rounds, False, 0.0)
    return LpResult(
        rounds.x, rounds.value, rounds.rounds, rounds.converged, time.perf_counter() - began
    )


def _float_load(prep: Prep, x: FloatArray) -> FloatArray:
    """(D × T) load above idle of fractional per-host counts."""
    return (x @ prep.up_int).T @ prep.pk


class _LpRounds(LazyRounds[FloatArray]):
    """The lazy rounds on one GLOP model, which holds every pair marked in ``gen``."""

    def __init__(
        self,
        lp: Any,
        prep: Prep,
        st: Structure,
        gen: BoolArray,
        *,
        spacing: int,
        minimise: tuple[IntArray, IntArray] | None,
        floor: int | None,
    ) -> None:
        super().__init__(spacing)
        self.lp, self.prep, self.st, self.gen = lp, prep, st, gen
        self.inf = lp.infinity()
        self.v = [lp.NumVar(0.0, float(u), "") for u in st.ub.tolist()]
        for y, children in zip(st.y_var.tolist(), st.y_children, strict=True):
            row = lp.Constraint(0.0, 0.0)
            row.SetCoefficient(self.v[y], -1.0)
            for c in children:
                row.SetCoefficient(self.v[c], 1.0)
        for ids, coeffs, rhs in st.rows:
            self._add_row(ids, coeffs, float(rhs))
        for d, t in zip(*np.nonzero(gen), strict=True):
            self._add_row(*power_row(prep, st, int(d), t=int(t)), float(prep.rhs[d, t]))
        self.objective = self._objective(minimise, floor)
        self.x: FloatArray = np.zeros(prep.ub_host.shape)
        self.value = 0.0
        self.tol = 1e-6 * np.maximum(1.0, np.abs(prep.rhs))
        self.not_optimal = False  # a solve ended without an optimum

    def _add_row(self, ids: IntArray, coeffs: IntArray, rhs: float) -> None:
        row = self.lp.Constraint(-self.inf, rhs)
        for i, c in zip(ids.tolist(), coeffs.tolist(), strict=True):
            row.SetCoefficient(self.v[i], float(c))

    def _objective(self, minimise: tuple[IntArray, IntArray] | None, floor: int | None) -> Any:
        objective = self.lp.Objective()
        st = self.st
        if minimise is None:
            for i, w in zip(st.obj_var.tolist(), st.obj_w.tolist(), strict=True):
                objective.SetCoefficient(self.v[i], float(w))
            objective.SetMaximization()
        else:
            for i, c in zip(*(a.tolist() for a in minimise), strict=True):
                objective.SetCoefficient(self.v[i], float(c))
            objective.SetMinimization()
            self._add_row(st.obj_var, -st.obj_w, -float(floor or 0))
        return objective

    def solve_round(self, deadline: float) -> FloatArray | None:
        self.lp.SetTimeLimit(max(1, int(1000 * (deadline - time.perf_counter()))))
        if self.lp.Solve() != pywraplp.Solver.OPTIMAL:
            self.not_optimal = True
            return None
        st = self.st
        values = np.array([var.solution_value() for var in self.v[: st.x_s.size]])
        self.x = st.counts(self.prep, np.concatenate([values, np.zeros(st.size - values.size)]))
        self.value = float(self.objective.Value())
        return self.x

    def violations(self, x: FloatArray) -> Violations:
        prep = self.prep
        excess = np.where(self.gen, 0.0, _float_load(prep, x) - prep.rhs - self.tol)
        excess[prep.dead] = 0.0
        return Violations(excess)

    def emit_power(self, d: int, t: int) -> bool:
        self.gen[d, t] = True
        self._add_row(*power_row(self.prep, self.st, d, t=t), float(self.prep.rhs[d, t]))
        return True

    def passed(self, x: FloatArray) -> bool:
        # Integer placements near the LP optimum load domains where the LP is nearly
        # binding: give the first CP-SAT round those slots too.
        mark_near_binding(self.prep, _float_load(self.prep, x), self.gen, spacing=self.spacing)
        return True
