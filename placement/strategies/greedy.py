"""``greedy``: the extender's online rule, applied to a deterministic queue.

Admit at the real profile at every level of the tree; rank by the least rise of
peak utilisation along the path, so a replica goes where its peak meets a trough.
"""

from __future__ import annotations

import time

from placement.problem import Problem
from placement.strategies import Plan, SolverStats
from placement.strategies.sequential import place_sequentially


def plan_greedy(problem: Problem) -> Plan:
    start = time.perf_counter()
    assignment = place_sequentially(problem, problem.services.profiles, "peak-increase", pack=True)
    return Plan("greedy", assignment, SolverStats(wall_s=time.perf_counter() - start))
