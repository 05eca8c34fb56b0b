"""The admission check and its explanation.

A replica drawing ``profile`` may join leaf domain ``d`` iff for every domain ``k``
on the path from ``d`` to the root and every slot ``t``:
``load[k, t] + profile[t] <= cap[k, t] * (1 - headroom)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from placement.grid import Grid
from placement.ledger import Ledger

# Watts are floats; a sum that lands a hair above the cap through rounding is not a breach.
TOLERANCE_W = 1e-6


@dataclass(frozen=True)
class Breach:
    """Why a replica does not fit: the tightest domain, slot and how many watts over."""

    domain: str
    slot: int
    time_of_day: str
    over_watts: float
    cap_watts: float

    def message(self) -> str:
        return (
            f"domain {self.domain} would exceed its cap at {self.time_of_day} "
            f"by {self.over_watts:.0f} W (cap {self.cap_watts:.0f} W)"
        )


def fitting_domains(
    ledger: Ledger,
    profile: NDArray[np.float64],
    caps: NDArray[np.float64],
    *,
    held: NDArray[np.float64] | None = None,
) -> NDArray[np.bool_]:
    """For every domain ``d``: would one more replica fit under ``d`` at every level?

    ``held`` (domains × T) is power counted on top of the ledger's load, e.g. what a
    plan keeps for replicas it has not placed yet. Vectorised over all domains (one
    pass over the (domains × T) matrix), so the extender can answer for every
    candidate node at once.
    """
    load = ledger.load if held is None else ledger.load + held
    # A domain fits iff it and every ancestor do.
    return ledger.tree.all_on_path(_within_caps(load + profile, caps))


def fits_on_path(
    *,
    ledger: Ledger,
    profile: NDArray[np.float64],
    caps: NDArray[np.float64],
    path: NDArray[np.int64],
    freed: NDArray[np.float64] | None = None,
) -> bool:
    """Would one more replica fit under every domain of ``path`` in every slot?

    ``path`` is a leaf's ancestors-or-self (:meth:`PowerTree.ancestors`); ``freed``
    (T,) watts leave the path first (replicas evicted to make room). The same check
    as :func:`fitting_domains` for one leaf, reading only its path's rows.
    """
    load = ledger.load[path]
    if freed is not None:
        load = load - freed
    return bool(_within_caps(load + profile, caps[path]).all())


def _within_caps(load: NDArray[np.float64], caps: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Per domain (row): ``load`` within ``caps`` in every slot, up to rounding."""
    within: NDArray[np.bool_] = np.all(load <= caps + TOLERANCE_W, axis=-1)
    return within


def first_breach(
    ledger: Ledger,
    profile: NDArray[np.float64],
    domain: int,
    *,
    caps: NDArray[np.float64],
    grid: Grid,
) -> Breach | None:
    """The worst breach on the path of ``domain``, or ``None`` if the replica fits."""
    path = ledger.tree.ancestors(domain)
    over = ledger.load[path] + profile - caps[path]
    k, t = np.unravel_index(int(np.argmax(over)), over.shape)
    if over[k, t] <= TOLERANCE_W:
        return None
    d = int(path[k])
    return Breach(
        domain=ledger.tree.names[d],
        slot=int(t),
        time_of_day=grid.slot_label(int(t)),
        over_watts=float(over[k, t]),
        cap_watts=float(caps[d, t]),
    )


def violations(load: NDArray[np.float64], caps: NDArray[np.float64]) -> NDArray[np.bool_]:
    """(domains × T) mask of domain-slots whose load exceeds the cap."""
    return load > caps + TOLERANCE_W
