"""Eviction victims for a breached domain: cover the overage with the least disruption.

:func:`choose_victims` picks pods among the :class:`Candidates` of one domain (watts drawn
now, priority, disruption-budget group, protection; allowed disruptions per group) so that
their watts cover ``overage_w`` within ``max_victims``, and returns a
:class:`VictimChoice`: the pods, the watts freed, whether the overage is ``covered``, the
weighted disruption and how the answer was found. :func:`eligible` says which pods may be
chosen at all; :func:`greedy_victims` is the greedy cover the CP-SAT answer must beat,
so the answer is never worse than greedy's, even on a time-out.

The constraints, the lexicographic objective and the staged CP-SAT model:
docs/controller.md, the section on ``placement/control/victims.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from ortools.sat.python import cp_model

from placement.frozen import read_only
from placement.metrics import priority_weights

WATT_SCALE = 1000
"""Model units per watt (milliwatts), as in :mod:`placement.strategies.cpsat.prep`."""

_STAGE_SHARE = (0.4, 0.4, 0.2)

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True)
class Candidates:
    """The pods of one breached domain, as parallel arrays of length P.

    ``group[i]`` indexes ``allowance`` (the disruptions each budget group allows now,
    ``status.disruptionsAllowed`` of its PodDisruptionBudget) or is ``-1`` for a pod no
    budget selects. A pod selected by several budgets cannot be evicted through the
    eviction API; mark it ``protected``.
    """

    watts: FloatArray
    priority: IntArray
    group: IntArray
    protected: BoolArray
    allowance: IntArray

    def __post_init__(self) -> None:
        n = self.watts.shape
        for name in ("priority", "group", "protected"):
            if getattr(self, name).shape != n:
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected {n}")
        groups = self.allowance.shape[0]
        if self.group.size and (self.group.min() < -1 or self.group.max() >= groups):
            raise ValueError(f"group ids must be -1 or in [0, {groups})")

    @staticmethod
    def build(
        watts: Any,
        priority: Any,
        group: Any = None,
        *,
        protected: Any = None,
        allowance: Any = (),
    ) -> Candidates:
        """Arrays from sequences; ``group`` defaults to no budget, ``protected`` to none."""
        w = np.asarray(watts, dtype=np.float64)
        n = w.shape[0]
        return Candidates(
            watts=read_only(w.copy()),
            priority=read_only(np.asarray(priority, dtype=np.int64).copy()),
            group=read_only(
                np.full(n, -1, dtype=np.int64) if group is None else np.array(group, np.int64)
            ),
            protected=read_only(
                np.zeros(n, dtype=bool) if protected is None else np.array(protected, bool)
            ),
            allowance=read_only(np.array(allowance, dtype=np.int64).reshape(-1)),
        )

    @property
    def size(self) -> int:
        return int(self.watts.shape[0])


@dataclass(frozen=True)
class VictimChoice:
    """The pods to evict (indices into the candidates, ascending) and what they achieve.

    ``method`` is ``"trivial"``, ``"greedy"`` (the greedy cover was as good as the model's
    or the model found nothing), ``"cpsat"`` (every stage proved optimal) or
    ``"cpsat-timeout"`` (a stage hit its time limit; the answer is the best found).
    """

    victims: IntArray
    freed_w: float
    overage_w: float
    covered: bool
    disruption: float
    method: str


def eligible(candidates: Candidates, priority_threshold: int) -> BoolArray:
    """Pods that may be chosen at all (before budgets and the rate limit)."""
    w = candidates.watts
    with np.errstate(invalid="ignore"):
        useful = np.isfinite(w) & (w > 0)
    return useful & ~candidates.protected & (candidates.priority < priority_threshold)


# ---------------------------------------------------------------------- shared set-up


@dataclass(frozen=True)
class _Setup:
    pods: IntArray  # candidate index of every eligible pod
    mw: IntArray  # its draw, milliwatts rounded down
    weight: IntArray  # its priority rank weight
    group: IntArray
    allowance: IntArray  # per group, clipped at 0
    overage_mw: int
    max_victims: int
    overage_w: float

    def key(self, chosen: BoolArray) -> tuple[int, int, int, int]:
        """Lexicographic cost of a choice (smaller is better): uncovered milliwatts,
        weighted disruption, pods, excess milliwatts."""
        freed = int(self.mw[chosen].sum())
        return (
            max(0, self.overage_mw - freed),
            int(self.weight[chosen].sum()),
            int(chosen.sum()),
            max(0, freed - self.overage_mw),
        )

    def feasible(self, chosen: BoolArray) -> bool:
        if int(chosen.sum()) > self.max_victims:
            return False
        g = self.group[chosen]
        used = np.bincount(g[g >= 0], minlength=self.allowance.shape[0])
        return bool((used <= self.allowance).all())

    def result(self, candidates: Candidates, chosen: BoolArray, method: str) -> VictimChoice:
        idx = np.sort(self.pods[chosen])
        freed = float(candidates.watts[idx].sum()) if idx.size else 0.0
        return VictimChoice(
            victims=read_only(idx.astype(np.int64)),
            freed_w=freed,
            overage_w=self.overage_w,
            covered=int(self.mw[chosen].sum()) >= self.overage_mw,
            disruption=float(self.weight[chosen].sum()),
            method=method,
        )


def _setup(
    candidates: Candidates, overage_w: float, priority_threshold: int, max_victims: int
) -> _Setup:
    if math.isnan(overage_w):
        raise ValueError("overage_w is NaN: no data means no eviction")
    pods = np.flatnonzero(eligible(candidates, priority_threshold)).astype(np.int64)
    mw = np.floor(candidates.watts[pods] * WATT_SCALE).astype(np.int64)
    weight = (
        priority_weights(candidates.priority[pods]).astype(np.int64)
        if pods.size
        else np.zeros(0, dtype=np.int64)
    )
    return _Setup(
        pods=pods,
        mw=mw,
        weight=weight,
        group=candidates.group[pods],
        allowance=np.clip(candidates.allowance, 0, None),
        overage_mw=max(0, math.ceil(overage_w * WATT_SCALE)),
        max_victims=max(0, int(max_victims)),
        overage_w=float(overage_w),
    )


def _greedy(s: _Setup) -> BoolArray:
    """Lowest weight first, largest draw first within a weight, while budgets allow;
    then drop what the cover does not need, highest weight and smallest draw first."""
    n = s.pods.shape[0]
    chosen = np.zeros(n, dtype=bool)
    left = s.allowance.copy()
    freed = 0
    count = 0
    for i in np.lexsort((np.arange(n), -s.mw, s.weight)).tolist():
        if freed >= s.overage_mw or count >= s.max_victims:
            break
        g = int(s.group[i])
        if g >= 0 and left[g] <= 0:
            continue
        if g >= 0:
            left[g] -= 1
        chosen[i] = True
        freed += int(s.mw[i])
        count += 1
    if freed >= s.overage_mw:
        for i in np.lexsort((np.arange(n), s.mw, -s.weight)).tolist():
            if chosen[i] and freed - int(s.mw[i]) >= s.overage_mw:
                chosen[i] = False
                freed -= int(s.mw[i])
    return chosen


def _single(s: _Setup) -> BoolArray | None:
    """One lowest-weight pod that covers alone, the one with the least excess, if any.

    Optimal: every weight is ≥ 1 and the lowest is 1, so any other cover either weighs
    more or uses more pods."""
    if s.max_victims < 1 or s.overage_mw <= 0 or not s.pods.size:
        return None
    ok = (s.weight == s.weight.min()) & (s.mw >= s.overage_mw)
    padded = np.append(s.allowance, 1)  # group -1 reads the last entry: no budget
    ok &= padded[s.group] >= 1
    if not ok.any():
        return None
    i = int(np.flatnonzero(ok)[np.argmin(s.mw[ok])])
    chosen = np.zeros(s.pods.shape[0], dtype=bool)
    chosen[i] = True
    return chosen


def greedy_victims(
    candidates: Candidates, overage_w: float, *, priority_threshold: int, max_victims: int
) -> VictimChoice:
    """The greedy cover alone (the fallback of :func:`choose_victims`, and its yardstick)."""
    s = _setup(candidates, overage_w, priority_threshold, max_victims)
    return s.result(candidates, _greedy(s), "greedy")


def choose_victims(
    candidates: Candidates,
    overage_w: float,
    *,
    priority_threshold: int,
    max_victims: int,
    time_limit_s: float = 1.0,
    workers: int = 1,
) -> VictimChoice:
    """Pods to evict to cover ``overage_w`` watts; see the module docstring.

    Raises ``ValueError`` if ``overage_w`` is NaN (a domain without data is not acted on).
    """
    s = _setup(candidates, overage_w, priority_threshold, max_victims)
    empty = np.zeros(s.pods.shape[0], dtype=bool)
    if s.overage_mw <= 0 or not s.pods.size or s.max_victims == 0:
        return s.result(candidates, empty, "trivial")
    single = _single(s)
    if single is not None:
        return s.result(candidates, single, "trivial")
    greedy = _greedy(s)
    found, optimal = _solve(s, greedy, time_limit_s, workers)
    if found is None or s.key(greedy) <= s.key(found):
        return s.result(candidates, greedy, "greedy")
    return s.result(candidates, found, "cpsat" if optimal else "cpsat-timeout")


def _solve(
    s: _Setup, hint: BoolArray, time_limit_s: float, workers: int
) -> tuple[BoolArray | None, bool]:
    """The staged CP-SAT solves; returns the best choice found and whether every stage
    proved its optimum."""
    n = s.pods.shape[0]
    model = cp_model.CpModel()
    x = [model.new_bool_var(f"x{i}") for i in range(n)]
    model.add(sum(x) <= s.max_victims)
    for g in np.unique(s.group[s.group >= 0]).tolist():
        members = np.flatnonzero(s.group == g).tolist()
        if len(members) > int(s.allowance[g]):
            model.add(sum(x[i] for i in members) <= int(s.allowance[g]))
    mw = s.mw.tolist()
    freed = cp_model.LinearExpr.weighted_sum(x, mw)
    covered = model.new_int_var(0, s.overage_mw, "covered")
    model.add(covered <= freed)
    disruption = cp_model.LinearExpr.weighted_sum(x, (s.weight * (n + 1) + 1).tolist())
    stages: list[tuple[Any, bool]] = [(covered, True), (disruption, False), (freed, False)]

    best: BoolArray | None = None
    current = hint
    optimal = True
    for (objective, maximise), share in zip(stages, _STAGE_SHARE, strict=True):
        model.clear_hints()  # type: ignore[no-untyped-call]
        for var, value in zip(x, current.tolist(), strict=True):
            model.add_hint(var, bool(value))
        if maximise:
            model.maximize(objective)
        else:
            model.minimize(objective)
        solver = cp_model.CpSolver()
        solver.parameters.max_time_in_seconds = max(0.01, time_limit_s * share)
        solver.parameters.num_workers = max(1, workers)
        status = solver.solve(model)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            optimal = False
            break
        optimal &= status == cp_model.OPTIMAL
        current = np.array([solver.boolean_value(v) for v in x], dtype=bool)
        best = current
        # Hold what this stage reached while the next one refines.
        value = int(solver.value(objective))
        model.add(objective >= value if maximise else objective <= value)
    return best, optimal
