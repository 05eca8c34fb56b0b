"""What a placement measures in model units, with numpy: load, power excess,
utilisation, priority-weighted value, moves and emissions of per-host counts ``x``
(services × hosts)."""

from __future__ import annotations

import numpy as np

from placement.strategies.cpsat.prep import BIG, INT, PERMILLE, IntArray, Prep


def load(prep: Prep, x: IntArray) -> IntArray:
    """(D × T) model-unit load above idle of per-host counts ``x`` (S × H)."""
    y = x @ prep.up_int  # (S × D)
    return y.T @ prep.pk


def power_excess(prep: Prep, x: IntArray) -> IntArray:
    """(D × T) load minus allowance; > 0 is a violation. Dead domains never count."""
    excess = load(prep, x) - prep.rhs
    excess[prep.dead] = np.minimum(excess[prep.dead], 0)
    return excess


def util_permille(prep: Prep, dom_load: IntArray) -> IntArray:
    """(D × T) utilisation of capEff in per-mille, rounded up; 0 outside util domains."""
    num = PERMILLE * (prep.idle_u[:, None] + dom_load)
    util = -(-num // prep.cap_u)
    util[~prep.util_domains] = 0
    return util


def peak_util(prep: Prep, x: IntArray) -> int:
    """The peak utilisation (per-mille) of ``x`` over util domains and slots."""
    util = util_permille(prep, load(prep, x))
    return int(util.max()) if util.size else 0


def moves(x: IntArray, current: IntArray | None) -> int:
    """Replicas ``x`` takes away from the host they run in under ``current``."""
    if current is None:
        return 0
    return int(np.clip(current - x, 0, None).sum())


def value(prep: Prep, x: IntArray) -> int:
    """Priority-weighted replicas ``x`` hosts."""
    return int(prep.weights @ x.sum(axis=1)) if x.size else 0


def emitted(prep: Prep, x: IntArray) -> int:
    """Model-unit emissions of per-host counts ``x``, every host."""
    return int((prep.em * x).sum())


def budget_left(prep: Prep, x: IntArray) -> int:
    """Model units of budget still free under ``x`` (negative: over); huge without one."""
    if prep.em_budget is None:
        return int(BIG)
    return prep.em_budget - int((prep.em[:, prep.em_in] * x[:, prep.em_in]).sum())


def host_counts(prep: Prep, counts: IntArray) -> IntArray:
    """(S × H) per-host replica counts of a node-level (S × N) count matrix."""
    out = np.zeros((counts.shape[0], prep.hosts.size), dtype=INT)
    if counts.size:
        np.add.at(out.T, prep.host_of_node, counts.T)
    return out
