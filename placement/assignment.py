"""A placement: replicas of each service on each node."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from placement.ledger import Ledger
from placement.problem import Problem


@dataclass(frozen=True)
class Assignment:
    """``counts[s, n]`` replicas of service ``s`` on node ``n``."""

    counts: NDArray[np.int64]

    @staticmethod
    def empty(problem: Problem) -> Assignment:
        return Assignment(np.zeros((problem.services.size, problem.fleet.size), dtype=np.int64))

    @property
    def hosted(self) -> NDArray[np.int64]:
        """Replicas placed per service."""
        return self.counts.sum(axis=1)

    def by_domain(self, problem: Problem) -> NDArray[np.int64]:
        """(services × domains) replicas under every domain, every level."""
        leaf = np.zeros((problem.tree.size, problem.services.size), dtype=np.int64)
        np.add.at(leaf, problem.fleet.domain, self.counts.T)
        return (problem.tree.membership.astype(np.int64) @ leaf).T

    def load(self, problem: Problem) -> NDArray[np.float64]:
        """(domains × T) predicted watts: idle of every node plus every placed replica."""
        per_domain = self.by_domain(problem).astype(np.float64)
        return problem.idle_by_domain[:, None] + per_domain.T @ problem.services.profiles

    def ledger(self, problem: Problem) -> Ledger:
        ledger = Ledger(problem.tree, problem.idle_by_domain)
        ledger.load = self.load(problem)
        return ledger

    def gpus_used(self, problem: Problem) -> NDArray[np.int64]:
        """GPUs in use per node."""
        return problem.services.gpus @ self.counts

    def as_mapping(self, problem: Problem) -> dict[str, dict[str, int]]:
        """``{service: {node: replicas}}`` with zero entries left out."""
        out: dict[str, dict[str, int]] = {}
        for s, name in enumerate(problem.services.names):
            nodes = np.flatnonzero(self.counts[s])
            out[name] = {problem.fleet.names[n]: int(self.counts[s, n]) for n in nodes}
        return out
