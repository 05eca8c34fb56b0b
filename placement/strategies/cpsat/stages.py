"""The lexicographic objective stages, each a run of lazy CP-SAT rounds on the shared
model: hosted replicas (1), emissions (1b), peak utilisation (2) and moves (3). A stage
holds what the earlier ones reached, starts from a feasible placement and keeps, in
``best``, the best placement known to pass every slot."""

from __future__ import annotations

import math
import time
from abc import abstractmethod
from typing import Any

import numpy as np

from placement.strategies.cpsat.lazy_slots import LazyRounds, Violations
from placement.strategies.cpsat.measures import (
    emitted,
    load,
    moves,
    peak_util,
    power_excess,
    util_permille,
    value,
)
from placement.strategies.cpsat.model import Model, Solve, SolveSettings
from placement.strategies.cpsat.prep import IntArray
from placement.strategies.cpsat.repair import make_feasible


def finite(number: float) -> float | None:
    """``number``, or ``None`` for NaN/infinity (stats end up in JSON)."""
    return number if math.isfinite(number) else None


class _CpSatStage(LazyRounds[IntArray]):
    """A stage solved by CP-SAT on the shared model; ``status`` is the last solve's."""

    def __init__(
        self, model: Model, *, settings: SolveSettings, spacing: int, start: IntArray
    ) -> None:
        super().__init__(spacing)
        self.model = model
        self.prep = model.prep
        self.settings = settings
        self.best = start
        self.status = "UNKNOWN"

    @abstractmethod
    def hold(self) -> None:
        """Before a round: hold in the model what the best placement reached, and hint it."""

    def round_deadline(self, deadline: float) -> float:
        """When this round's solve must stop: by default the stage's deadline."""
        return deadline

    def solved(self, res: Solve, solve_s: float) -> None:
        """Note what a solve returned before its solution is checked."""

    def solve_round(self, deadline: float) -> IntArray | None:
        self.hold()
        began = time.perf_counter()
        res = self.model.solve(self.round_deadline(deadline), self.settings)
        self.status = res.status
        self.solved(res, time.perf_counter() - began)
        return res.x

    def violations(self, x: IntArray) -> Violations:
        # The generated constraints hold by construction; the others are what the next
        # round must add.
        return Violations(power_excess(self.prep, x))

    def emit_power(self, d: int, t: int) -> bool:
        return self.model.emit_power(d, t)


class HostedStage(_CpSatStage):
    """Stage 1: maximise priority-weighted replicas (``best_val``), never accepting
    less than a known feasible placement. ``bound`` is the best valid bound, ``trace``
    has one entry per round. The first round runs even past the deadline."""

    def __init__(
        self, model: Model, *, settings: SolveSettings, spacing: int, start: IntArray
    ) -> None:
        super().__init__(model, settings=settings, spacing=spacing, start=start)
        model.model.maximize(model.hosted_expr)
        self.best_val = value(self.prep, start)
        self.floor = -1
        self.bound = math.inf
        self.trace: list[dict[str, Any]] = []

    def wants_round(self, deadline: float) -> bool:
        return self.rounds == 0 or super().wants_round(deadline)

    def hold(self) -> None:
        m = self.model
        if self.best_val > self.floor:  # never accept less than a known feasible placement
            m.model.add(m.hosted_expr >= self.best_val)
            self.floor = self.best_val
        m.hint(self.best)

    def solved(self, res: Solve, solve_s: float) -> None:
        if res.x is not None and math.isfinite(res.bound):
            # Without a solution CP-SAT's bound may be a placeholder (0).
            self.bound = min(self.bound, max(res.bound, float(self.best_val)))
        self.trace.append(
            {
                "status": res.status,
                "solve_s": round(solve_s, 3),
                "objective": finite(res.objective),
                "bound": finite(res.bound),
            }
        )

    def passed(self, x: IntArray) -> bool:
        if value(self.prep, x) >= self.best_val:
            self.best, self.best_val = x, value(self.prep, x)
        return True

    def failed(self, x: IntArray, found: Violations, added: int) -> bool:
        step = self.trace[-1]
        step["violated_domain_slots"] = int((found.power > 0).sum())
        step["added"] = added
        repaired = make_feasible(self.prep, x)
        step["repaired"] = value(self.prep, repaired)
        if value(self.prep, repaired) > self.best_val:
            self.best, self.best_val = repaired, value(self.prep, repaired)
        if self.best_val >= (1.0 - self.settings.gap) * self.bound:
            # The repaired placement is feasible on every slot and within the gap
            # of a valid bound: as good as another round would be asked to be.
            self.converged = True
            self.status = "OPTIMAL" if self.best_val >= self.bound else "FEASIBLE"
            return True
        return False


class EmissionsStage(_CpSatStage):
    """Stage 1b: hold stage 1, minimise emissions (every host, at its intensity), never
    accepting more than a known feasible placement emits (``best_e``). After
    :meth:`run` the model holds the emissions reached, for the later stages."""

    def __init__(
        self, model: Model, *, settings: SolveSettings, spacing: int, start: IntArray
    ) -> None:
        super().__init__(model, settings=settings, spacing=spacing, start=start)
        self.hosted = value(self.prep, start)
        model.model.add(model.hosted_expr >= self.hosted)
        model.model.minimize(model.em_expr)
        self.best_e = emitted(self.prep, start)

    def run(self, deadline: float) -> None:
        super().run(deadline)
        self.model.model.add(self.model.em_expr <= self.best_e)

    def hold(self) -> None:
        m = self.model
        m.model.add(m.em_expr <= self.best_e)  # never accept more than a known placement
        m.hint(self.best)

    def round_deadline(self, deadline: float) -> float:
        # A round need not prove its optimum: its solution mostly shows which slots
        # the next round needs. Shorter rounds leave time for more of them.
        now = time.perf_counter()
        return min(deadline, now + max(0.5, (deadline - now) / 3))

    def passed(self, x: IntArray) -> bool:
        if emitted(self.prep, x) <= self.best_e:
            self.best, self.best_e = x, emitted(self.prep, x)
        return self.status == "OPTIMAL"  # stopped short: keep improving

    def failed(self, x: IntArray, found: Violations, added: int) -> bool:
        # A repaired solution is kept only if it hosts as much and emits less.
        repaired = make_feasible(self.prep, x)
        if value(self.prep, repaired) >= self.hosted and emitted(self.prep, repaired) < self.best_e:
            self.best, self.best_e = repaired, emitted(self.prep, repaired)
        return False


class _UtilStage(_CpSatStage):
    """A stage with the peak-utilisation variable: solutions are also checked against
    the utilisation ``target``, and the variable is tied lazily to the (domain, slot)
    pairs where it is exceeded."""

    target = 0

    def violations(self, x: IntArray) -> Violations:
        util = util_permille(self.prep, load(self.prep, x))
        excess = util - self.target
        excess[self.model.gen_util] = 0
        return Violations(power_excess(self.prep, x), excess)

    def emit_util(self, d: int, t: int) -> bool:
        return self.model.emit_util(d, t)

    def util_at_peaks(self, x: IntArray) -> None:
        """Tie the utilisation variable to every util domain's peak slot under ``x``."""
        util = util_permille(self.prep, load(self.prep, x))
        for d in np.flatnonzero(self.prep.util_domains):
            self.model.emit_util(int(d), int(np.argmax(util[d])))


class SpreadStage(_UtilStage):
    """Stage 2: hold stage 1, minimise the peak utilisation below the root (``best_u``,
    per-mille). Each solution is checked against the peak its solve claims."""

    def __init__(
        self, model: Model, *, settings: SolveSettings, spacing: int, start: IntArray
    ) -> None:
        super().__init__(model, settings=settings, spacing=spacing, start=start)
        prep = self.prep
        model.model.add(model.hosted_expr >= value(prep, start))
        model.add_utilisation()
        for d, t in zip(*np.nonzero(model.gen_power & prep.util_domains[:, None]), strict=True):
            model.emit_util(int(d), int(t))
        self.util_at_peaks(start)
        model.model.minimize(model.u_var)
        self.best_u = peak_util(prep, start)
        self.target = self.best_u

    def hold(self) -> None:
        self.model.model.add(self.model.u_var <= self.best_u)
        self.model.hint(self.best, self.best_u)

    def solved(self, res: Solve, solve_s: float) -> None:
        self.target = res.u

    def passed(self, x: IntArray) -> bool:
        self._offer(x)
        return True

    def failed(self, x: IntArray, found: Violations, added: int) -> bool:
        if not (found.power > 0).any():  # within power: its true peak may still be lower
            self._offer(x)
        return False

    def _offer(self, x: IntArray) -> None:
        u = peak_util(self.prep, x)
        if u < self.best_u:
            self.best, self.best_u = x, u


class MovesStage(_UtilStage):
    """Stage 3: hold stages 1 and 2 (peak utilisation at most ``u_cap``), minimise
    replicas moved from ``current`` (``best_moves``). With nothing to move it has
    converged without a round."""

    def __init__(
        self,
        model: Model,
        *,
        settings: SolveSettings,
        spacing: int,
        start: IntArray,
        u_cap: int,
        current: IntArray,
    ) -> None:
        super().__init__(model, settings=settings, spacing=spacing, start=start)
        if model.u_var is None:  # stage 2 did not run: at least do not spread worse
            model.add_utilisation()
            self.util_at_peaks(start)
        model.model.add(model.u_var <= u_cap)
        model.add_moves(current)
        model.model.minimize(model.move_expr)
        self.current = current
        self.target = u_cap
        self.best_moves = moves(start, current)

    def run(self, deadline: float) -> None:
        super().run(deadline)
        self.converged = self.converged or self.best_moves == 0

    def wants_round(self, deadline: float) -> bool:
        return super().wants_round(deadline) and self.best_moves > 0

    def hold(self) -> None:
        self.model.hint(self.best, peak_util(self.prep, self.best))

    def passed(self, x: IntArray) -> bool:
        if moves(x, self.current) < self.best_moves:
            self.best, self.best_moves = x, moves(x, self.current)
        return True
