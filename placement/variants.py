"""What-if transformations of a problem: scale caps, add nodes, scale demand.

Each function is pure: it takes a :class:`~placement.problem.Problem` and returns a new
one, leaving the input untouched, so a caller can plan before and after and compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from placement.fleet import Fleet
from placement.problem import Problem
from placement.services import Services


def scale_caps(problem: Problem, factor: float) -> Problem:
    """Every cap of every domain, in every slot, multiplied by ``factor`` (> 0).

    Cap schedules keep their shape. Raises ``ValueError`` for a factor that is not a
    positive finite number.
    """
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"cap scale must be a positive number, got {factor!r}")
    return problem.with_caps(problem.tree.caps * factor)


def scale_demand(problem: Problem, factor: float) -> Problem:
    """Every service's demand multiplied by ``factor`` (≥ 0), rounded half up.

    Half up rather than numpy's half-to-even, so 1.5× of 5 replicas is 8 as a person
    would expect. The current placement is kept as it is.
    """
    if not (math.isfinite(factor) and factor >= 0):
        raise ValueError(f"demand scale must be a non-negative number, got {factor!r}")
    svc = problem.services
    demand = np.floor(svc.demand * factor + 0.5).astype(np.int64)
    services = Services(
        names=svc.names,
        demand=demand,
        gpus=svc.gpus,
        priority=svc.priority,
        nameplate=svc.nameplate,
        profiles=svc.profiles,
    )
    return replace(problem, services=services)


def resolve_node_count(spec: str | int, fleet_size: int) -> int:
    """How many nodes ``spec`` asks for: ``"N"`` (absolute) or ``"P%"`` of ``fleet_size``.

    Percentages round half up (10% of 25 nodes is 3). Raises ``ValueError`` naming both
    accepted forms when ``spec`` is neither, or is negative.
    """
    text = str(spec).strip()
    try:
        if text.endswith("%"):
            percent = float(text[:-1])
            if not math.isfinite(percent):
                raise ValueError(text)
            count = math.floor(percent / 100.0 * fleet_size + 0.5)
        else:
            count = int(text)
    except ValueError:
        raise ValueError(
            f"expected a node count such as 40 or a share of the fleet such as 10%, got {spec!r}"
        ) from None
    if count < 0:
        raise ValueError(f"cannot add a negative number of nodes ({spec!r})")
    return count


def _unique_name(base: str, taken: set[str]) -> str:
    k = 1
    while f"{base}-clone-{k}" in taken:
        k += 1
    name = f"{base}-clone-{k}"
    taken.add(name)
    return name


def add_nodes(problem: Problem, count: int) -> Problem:
    """``count`` more nodes, dealt round-robin over the leaf domains that have nodes.

    A new node is a copy (GPUs, idle watts) of a node already in its domain, taking
    that domain's nodes in turn, so a domain of mixed node types grows in proportion.
    It is named ``<original>-clone-<k>`` with the smallest ``k`` that is not taken.
    Domains are visited in tree order, so the result is deterministic. Domains without
    nodes get none: there is no node type to copy. The current placement (if any)
    leaves the new nodes empty. Raises ``ValueError`` when ``count`` is negative, or
    positive on a fleet without nodes.
    """
    if count < 0:
        raise ValueError(f"cannot add a negative number of nodes ({count})")
    if count == 0:
        return problem
    fleet = problem.fleet
    hosts = [int(d) for d in range(problem.tree.size) if (fleet.domain == d).any()]
    if not hosts:
        raise ValueError("cannot add nodes to a fleet without nodes: no node to copy")
    members = {d: np.flatnonzero(fleet.domain == d) for d in hosts}
    taken = set(fleet.names)
    names = list(fleet.names)
    domain, gpus, idle = list(fleet.domain), list(fleet.gpus), list(fleet.idle_watts)
    for i in range(count):
        d = hosts[i % len(hosts)]
        nodes = members[d]
        template = int(nodes[(i // len(hosts)) % len(nodes)])
        names.append(_unique_name(fleet.names[template], taken))
        domain.append(fleet.domain[template])
        gpus.append(fleet.gpus[template])
        idle.append(fleet.idle_watts[template])
    grown = Fleet(
        names=tuple(names),
        domain=np.array(domain, dtype=np.int64),
        gpus=np.array(gpus, dtype=np.int64),
        idle_watts=np.array(idle, dtype=np.float64),
    )
    current = problem.current
    if current is not None:
        current = np.hstack([current, np.zeros((current.shape[0], count), dtype=np.int64)])
    return replace(problem, fleet=grown, current=current)


@dataclass(frozen=True)
class WhatIf:
    """A set of changes to try at once. The defaults change nothing."""

    scale_caps: float = 1.0
    add_nodes: int = 0
    scale_demand: float = 1.0

    def describe(self) -> str:
        """One line a person reads, e.g. ``caps ×0.9, +40 nodes, demand ×1.2``."""
        parts = []
        if self.scale_caps != 1.0:
            parts.append(f"caps ×{self.scale_caps:g}")
        if self.add_nodes:
            parts.append(f"+{self.add_nodes} nodes")
        if self.scale_demand != 1.0:
            parts.append(f"demand ×{self.scale_demand:g}")
        return ", ".join(parts) or "no change"

    def apply(self, problem: Problem) -> Problem:
        """The problem with every change applied (nodes, then caps, then demand)."""
        changed = add_nodes(problem, self.add_nodes)
        if self.scale_caps != 1.0:
            changed = scale_caps(changed, self.scale_caps)
        if self.scale_demand != 1.0:
            changed = scale_demand(changed, self.scale_demand)
        if changed is problem:
            return problem
        return replace(changed, name=f"{problem.name} ({self.describe()})")
