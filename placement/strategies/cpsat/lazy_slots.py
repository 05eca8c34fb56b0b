"""Lazy slot constraints: which (domain, slot) power constraints the first model sees,
which a violating solution adds, and :class:`LazyRounds`, the solve → check → add loop
that the LP slot generation and every CP-SAT objective stage run."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
from numpy.typing import NDArray

from placement.problem import Problem
from placement.strategies.cpsat.prep import BoolArray, Prep

# Slots added per violated domain in one round, and how far apart (in hours) they must be:
# neighbouring slots of a smooth profile are fixed together by the worst one.
SLOTS_PER_ROUND = 8
SLOT_SPACING_H = 0.5
MAX_SERVICE_PEAK_SLOTS = 4
# After the LP converges, slots where its load is within this fraction of the cap are
# emitted too.
NEAR_BINDING = 0.02

X = TypeVar("X", NDArray[np.int64], NDArray[np.float64])
"""Per-host counts as a round's solver returns them: integers (CP-SAT) or floats (LP)."""


def slot_spacing(step_s: float) -> int:
    """How many slots apart the slots added for one domain in one round must be, on a
    grid of ``step_s``-second slots."""
    return max(1, round(SLOT_SPACING_H * 3600 / step_s))


def worst_slots(excess: NDArray[Any], spacing: int) -> Iterator[tuple[int, int]]:
    """The (domain, slot) pairs to add for a (D × T) ``excess`` (> 0: violated): per
    domain with a violation, its worst slots, at most :data:`SLOTS_PER_ROUND`, at least
    ``spacing`` slots apart."""
    for d in np.flatnonzero((excess > 0).any(axis=1)):
        for t in _pick_slots(excess[d], spacing, SLOTS_PER_ROUND):
            yield int(d), t


def _pick_slots(excess: NDArray[Any], spacing: int, limit: int) -> list[int]:
    """The worst violated slots of one domain, at least ``spacing`` slots apart (cyclic)."""
    slots = excess.shape[0]
    picked: list[int] = []
    for t in np.argsort(-excess, kind="stable"):
        if excess[t] <= 0 or len(picked) >= limit:
            break
        if all(min(abs(int(t) - p), slots - abs(int(t) - p)) >= spacing for p in picked):
            picked.append(int(t))
    return picked


def mark_near_binding(prep: Prep, dom_load: NDArray[Any], gen: BoolArray, *, spacing: int) -> None:
    """Mark in ``gen`` the slots of live domains, not marked yet, where ``dom_load``
    (D × T, above idle) is within :data:`NEAR_BINDING` of the allowance (the worst few
    per domain, as for violations). Placements near that load reach the cap there first."""
    near = np.where(gen | ~prep.live, -1.0, dom_load - (1.0 - NEAR_BINDING) * prep.rhs)
    near[prep.dead] = -1.0
    for d, t in worst_slots(near, spacing):
        gen[d, t] = True


def initial_slots(prep: Prep, problem: Problem) -> list[tuple[int, int]]:
    """The (domain, slot) pairs the first solve sees."""
    pk = prep.pk.astype(np.float64)
    allow = np.maximum(prep.rhs, 1).astype(np.float64)
    glob: list[int] = []
    # Aggregate full-demand load against the tightest root allowance.
    roots = np.flatnonzero(problem.tree.parents < 0)
    full = np.minimum(prep.demand, prep.ub_dom[:, roots].sum(axis=1)) @ pk
    glob.append(int(np.argmax(full / allow[roots].min(axis=0))))
    # Peaks of the services that carry the most watts.
    heavy = np.argsort(-(prep.demand * prep.pk.max(axis=1, initial=0)), kind="stable")
    for s in heavy:
        if len(glob) > MAX_SERVICE_PEAK_SLOTS or prep.demand[s] == 0:
            break
        t = int(np.argmax(prep.pk[s]))
        if t not in glob:
            glob.append(t)
    # The tightest cap, if caps follow a schedule.
    tight = prep.rhs[prep.live.any(axis=1)]
    if tight.size and (tight != tight[:, :1]).any():
        t = int(np.argmin(tight.sum(axis=0)))
        if t not in glob:
            glob.append(t)
    pairs: list[tuple[int, int]] = []
    ratio = prep.potential / allow
    for d in np.flatnonzero(prep.live.any(axis=1)):
        own = int(np.argmax(np.where(prep.live[d], ratio[d], -np.inf)))
        pairs += [(int(d), t) for t in dict.fromkeys([own, *glob]) if prep.live[d, t]]
    return pairs


@dataclass(frozen=True)
class Violations:
    """How far one solution exceeds the full check, (D × T) each, > 0 where violated:
    the power allowances, and the utilisation target in stages that have one."""

    power: NDArray[Any]
    util: NDArray[Any] | None = None

    def any(self) -> bool:
        """Whether anything is violated."""
        if (self.power > 0).any():
            return True
        return self.util is not None and bool((self.util > 0).any())


class LazyRounds(ABC, Generic[X]):
    """Lazy slot generation for one objective: solve a model that holds only the
    (domain, slot) constraints emitted so far, check every domain and slot, add the
    worst violated pairs (:func:`worst_slots`) and solve again.

    :meth:`run` stops when a solution passes the full check and :meth:`passed` says
    so, when :meth:`failed` says so, when a round adds nothing new, when a solve
    returns nothing, or when :meth:`wants_round` says no (by default: at the deadline).
    Subclasses keep the best solution; ``rounds`` counts the solves, ``converged`` says
    whether a solution passed the full check."""

    def __init__(self, spacing: int) -> None:
        self.spacing = spacing
        self.rounds = 0
        self.converged = False

    def run(self, deadline: float) -> None:
        """Run rounds until a stopping rule holds (``deadline``: a ``perf_counter`` time)."""
        while self.wants_round(deadline):
            x = self.solve_round(deadline)
            self.rounds += 1
            if x is None:
                break
            found = self.violations(x)
            if not found.any():
                self.converged = True
                if self.passed(x):
                    break
                continue
            added = sum(self.emit_power(d, t) for d, t in worst_slots(found.power, self.spacing))
            if found.util is not None:
                added += sum(self.emit_util(d, t) for d, t in worst_slots(found.util, self.spacing))
            if self.failed(x, found, added) or added == 0:
                break

    def wants_round(self, deadline: float) -> bool:
        """Whether to start another round: by default, while time is left."""
        return time.perf_counter() < deadline

    @abstractmethod
    def solve_round(self, deadline: float) -> X | None:
        """Solve the model as it stands: the per-host counts found, or ``None``."""

    @abstractmethod
    def violations(self, x: X) -> Violations:
        """How far ``x`` exceeds the constraints of every domain and slot."""

    @abstractmethod
    def emit_power(self, d: int, t: int) -> bool:
        """Add domain ``d``'s power constraint in slot ``t``; False if it was there."""

    def emit_util(self, d: int, t: int) -> bool:
        """Tie the utilisation target to domain ``d`` in slot ``t``; False if it was
        there. Only stages whose :meth:`violations` report utilisation need it."""
        raise NotImplementedError

    @abstractmethod
    def passed(self, x: X) -> bool:
        """Take a solution that passed the full check; True to stop."""

    def failed(self, x: X, found: Violations, added: int) -> bool:
        """Take what a violating solution offers, once ``added`` new constraints went
        in for it; True to stop. By default nothing, and go on."""
        return False
