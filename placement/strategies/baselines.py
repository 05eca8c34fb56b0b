"""The baselines every gain is measured against.

``nameplate`` admits a replica while idle + Σ nameplate stays under the cap;
``peak-sum`` while idle + Σ per-replica peaks does. Both spread replicas over the
least-loaded domains, the way a power-unaware operator would.
"""

from __future__ import annotations

import time

import numpy as np

from placement.problem import Problem
from placement.strategies import Plan, SolverStats
from placement.strategies.sequential import place_sequentially


def _flat(problem: Problem, per_replica: np.ndarray) -> np.ndarray:
    return np.repeat(per_replica[:, None], problem.grid.slots, axis=1)


def plan_nameplate(problem: Problem) -> Plan:
    start = time.perf_counter()
    accounted = _flat(problem, problem.services.nameplate)
    assignment = place_sequentially(problem, accounted, "utilisation-after", pack=False)
    return Plan("nameplate", assignment, SolverStats(wall_s=time.perf_counter() - start))


def plan_peak_sum(problem: Problem) -> Plan:
    start = time.perf_counter()
    accounted = _flat(problem, problem.services.peaks)
    assignment = place_sequentially(problem, accounted, "utilisation-after", pack=False)
    return Plan("peak-sum", assignment, SolverStats(wall_s=time.perf_counter() - start))
