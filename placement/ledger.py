"""Predicted watts per domain per slot, for every level of the tree at once."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from placement.tree import PowerTree


class Ledger:
    """One (domains × T) matrix of predicted watts.

    It starts at the idle draw of every node (nodes draw it whether or not a pod
    runs) and every replica added to a node adds its profile to the node's leaf
    domain and all its ancestors. This is the one mutable object of the core:
    the extender keeps one per cluster and updates it on bind and on watch events.
    """

    __slots__ = ("load", "tree")

    def __init__(self, tree: PowerTree, idle_by_domain: NDArray[np.float64]) -> None:
        self.tree = tree
        slots = tree.caps.shape[1]
        self.load: NDArray[np.float64] = np.repeat(
            np.asarray(idle_by_domain, dtype=np.float64)[:, None], slots, axis=1
        )

    def copy(self) -> Ledger:
        clone = Ledger.__new__(Ledger)
        clone.tree = self.tree
        clone.load = self.load.copy()
        return clone

    def add(self, profile: NDArray[np.float64], domain: int, replicas: int = 1) -> None:
        """Record ``replicas`` replicas drawing ``profile`` under leaf ``domain``."""
        self.load[self.tree.paths[domain]] += replicas * profile

    def remove(self, profile: NDArray[np.float64], domain: int, replicas: int = 1) -> None:
        """Undo :meth:`add`."""
        self.load[self.tree.paths[domain]] -= replicas * profile

    def add_watts(self, watts: NDArray[np.float64], domain: int) -> None:
        """Add an arbitrary (T,) watts vector under ``domain`` (e.g. a measured overage)."""
        self.load[self.tree.paths[domain]] += watts
