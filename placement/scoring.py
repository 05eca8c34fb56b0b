"""Online scoring: how much a replica would raise the peak of every domain.

This is the rule the extender applies to one pod at a time and the ``greedy``
strategy applies to a queue of replicas. A replica whose peak falls in a
domain's trough raises that domain's peak little, so services whose peaks do not
coincide end up sharing domains.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from placement.ledger import Ledger


def peak_increase(
    ledger: Ledger, profile: NDArray[np.float64], caps: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Per domain: the rise of its peak utilisation (load/cap, max over slots) if the
    replica joined it, summed over the domain and its ancestors.

    Returns a vector over domains; only leaf entries are meaningful for nodes.
    """
    before = (ledger.load / caps).max(axis=1)
    after = ((ledger.load + profile) / caps).max(axis=1)
    return ledger.tree.sum_on_path(after - before)


def path_utilisation_after(
    ledger: Ledger, profile: NDArray[np.float64], caps: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Per domain: peak utilisation (load/cap, max over slots) if the replica joined it,
    summed over the domain and its ancestors.

    The spreading rule of a power-unaware operator: the least loaded rack in the least
    loaded row. A sum rather than a maximum, because the site is usually the most loaded
    level and a maximum would make every rack tie.
    """
    after = ((ledger.load + profile) / caps).max(axis=1)
    return after @ ledger.tree.membership


def scores_0_to_10(cost: NDArray[np.float64]) -> NDArray[np.int64]:
    """Map costs (lower is better) onto the extender's 0–10 integer scale.

    The cheapest candidate gets 10, the dearest 0, linearly in between; equal costs
    all score 10.
    """
    if cost.size == 0:
        return np.zeros(0, dtype=np.int64)
    lo, hi = float(cost.min()), float(cost.max())
    if hi - lo <= 1e-12:
        return np.full(cost.shape, 10, dtype=np.int64)
    return np.rint(10.0 * (hi - cost) / (hi - lo)).astype(np.int64)
