"""Packing: per-host counts onto nodes, and a last check of the packed placement in
floats."""

from __future__ import annotations

import numpy as np

from placement.admission import violations
from placement.assignment import Assignment
from placement.metrics import priority_weights
from placement.problem import Problem
from placement.strategies.cpsat.prep import INT, BoolArray, IntArray, Prep


def pack(
    problem: Problem, prep: Prep, x: IntArray, *, current: IntArray | None
) -> tuple[Assignment, int]:
    """Put per-host counts on nodes. Replicas that run on a node now stay there; the
    rest go best-fit decreasing by GPUs (heaviest weight first among equal sizes).
    Returns the assignment and how many replicas did not fit on any node."""
    fleet = problem.fleet
    n_svc = x.shape[0]
    counts = np.zeros((n_svc, fleet.size), dtype=INT)
    free = fleet.gpus.astype(INT).copy()
    dropped = 0
    order = sorted(range(n_svc), key=lambda s: (-int(prep.gpus[s]), -int(prep.weights[s]), s))
    for h in range(prep.hosts.size):
        nodes = np.flatnonzero(prep.host_of_node == h)
        want = x[:, h].copy()
        if current is not None:
            for s in order:
                g = int(prep.gpus[s])
                for n in nodes:
                    if want[s] == 0:
                        break
                    keep = min(int(current[s, n]), int(want[s]))
                    if g:
                        keep = min(keep, int(free[n]) // g)
                    if keep > 0:
                        counts[s, n] += keep
                        free[n] -= keep * g
                        want[s] -= keep
        for s in order:
            g = int(prep.gpus[s])
            for _ in range(int(want[s])):
                fits = nodes[free[nodes] >= g]
                if fits.size == 0:
                    dropped += 1
                    continue
                best = int(fits[np.argmin(free[fits])])
                counts[s, best] += 1
                free[best] -= g
    return Assignment(counts), dropped


def fix_float_violations(problem: Problem, assignment: Assignment, dead: BoolArray) -> Assignment:
    """Safety net against float rounding: drop replicas while the float check fails.

    The integer model is conservative, so this should never remove anything."""
    caps = problem.effective_caps
    load = assignment.load(problem)
    over = violations(load, caps) & ~dead[:, None]
    if not over.any():
        return assignment
    counts = assignment.counts.copy()
    weights = priority_weights(problem.services.priority)
    profiles = problem.services.profiles
    membership = problem.tree.membership
    node_dom = problem.fleet.domain
    while over.any():
        excess = np.where(over, load - caps, -np.inf)
        d, t = np.unravel_index(int(np.argmax(excess)), excess.shape)
        nodes_under = np.flatnonzero(membership[d, node_dom])
        sub = counts[:, nodes_under]
        s_ok = np.flatnonzero((sub.sum(axis=1) > 0) & (profiles[:, t] > 0))
        s = int(s_ok[np.argmin(weights[s_ok] / profiles[s_ok, t])])
        n = int(nodes_under[np.argmax(sub[s])])
        counts[s, n] -= 1
        load[membership[:, node_dom[n]]] -= profiles[s]
        over = violations(load, caps) & ~dead[:, None]
    return Assignment(counts)
