"""Placement strategies behind one interface.

Every strategy takes a :class:`~placement.problem.Problem` and returns a
:class:`Plan`; all plans go through the same metrics (:mod:`placement.metrics`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from placement.assignment import Assignment
from placement.problem import Problem


@dataclass(frozen=True)
class SolverStats:
    """What the optimiser reports; heuristics leave the bound unset."""

    status: str = "HEURISTIC"
    objective: float | None = None
    bound: float | None = None
    gap: float | None = None  # relative, (bound - objective) / max(1, |bound|)
    wall_s: float = 0.0
    iterations: int = 0  # lazy slot-generation rounds
    slot_constraints: int = 0  # (domain, slot) power constraints emitted
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "objective": self.objective,
            "bound": self.bound,
            "gap": self.gap,
            "wall_s": round(self.wall_s, 4),
            "iterations": self.iterations,
            "slot_constraints": self.slot_constraints,
            **self.extra,
        }


@dataclass(frozen=True)
class Plan:
    strategy: str
    assignment: Assignment
    stats: SolverStats


Strategy = Callable[..., Plan]

STRATEGY_NAMES = ("nameplate", "peak-sum", "greedy", "cpsat")


def run_strategy(name: str, problem: Problem, **options: Any) -> Plan:
    """Run the named strategy. ``options`` go to the strategy (e.g. ``time_limit_s``)."""
    if name == "nameplate":
        from placement.strategies.baselines import plan_nameplate

        return plan_nameplate(problem)
    if name == "peak-sum":
        from placement.strategies.baselines import plan_peak_sum

        return plan_peak_sum(problem)
    if name == "greedy":
        from placement.strategies.greedy import plan_greedy

        return plan_greedy(problem)
    if name == "cpsat":
        from placement.strategies.cpsat import plan_cpsat

        return plan_cpsat(problem, **options)
    raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGY_NAMES)}")
