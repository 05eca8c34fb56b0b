"""Small power-bound scenarios for the e2e tests, built in code.

Racks of identical fake 8-GPU nodes under one site, and 1-GPU services whose diurnal
profiles peak at different hours (:func:`racks_scenario`), or one constant ``batch``
service on a few named nodes (:func:`batch_scenario`). GPUs are plentiful by
construction: power is what binds, so whatever stays Pending does so because of a cap.
:func:`round_robin` places every replica of a problem without a power check, for tests
of what is measured rather than what is decided.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from placement.assignment import Assignment
from placement.problem import Problem

NODE_IDLE_W = 500.0
REPLICA_LOW_W = 200.0
REPLICA_HIGH_W = 1000.0
# The service of batch_scenario; the controller tests' hand-bound pods carry its label.
BATCH = "batch"


def racks_scenario(
    name: str,
    racks: int,
    nodes_per_rack: int,
    *,
    rack_cap_w: float,
    services: Sequence[tuple[str, int, str]],
) -> dict[str, Any]:
    """A scenario document: ``racks`` racks of ``nodes_per_rack`` nodes, each rack capped
    at ``rack_cap_w``, the site at the sum of the racks; ``services`` are
    ``(name, replicas, peak HH:MM)``."""
    rack_names = [f"rack-{r + 1}" for r in range(racks)]
    return {
        "apiVersion": "powercap.io/v1alpha1",
        "kind": "Scenario",
        "metadata": {"name": name},
        "grid": {"period": "24h", "step": "1h"},
        "domains": [
            {"name": "site", "cap": rack_cap_w * racks},
            *({"name": r, "parent": "site", "cap": rack_cap_w} for r in rack_names),
        ],
        "nodeGroups": [
            {
                "namePrefix": "gpu",
                "domains": rack_names,
                "countPerDomain": nodes_per_rack,
                "gpus": 8,
                "idleWatts": NODE_IDLE_W,
            }
        ],
        "services": [
            {
                "name": service,
                "replicas": replicas,
                "gpusPerReplica": 1,
                "nameplateWatts": REPLICA_HIGH_W,
                "profile": {
                    "diurnal": {
                        "low": REPLICA_LOW_W,
                        "high": REPLICA_HIGH_W,
                        "peakAt": peak,
                        "width": "8h",
                    }
                },
            }
            for service, replicas, peak in services
        ],
    }


def batch_scenario(
    name: str,
    *,
    racks: Mapping[str, Sequence[str]],
    rack_cap_w: float,
    site_cap_w: float,
    replicas: int,
    replica_w: float,
    idle_w: float = NODE_IDLE_W,
) -> dict[str, Any]:
    """A scenario document of named nodes: ``racks`` maps each rack (capped at
    ``rack_cap_w``, under a site capped at ``site_cap_w``) to its 8-GPU nodes idling at
    ``idle_w``; one :data:`BATCH` service (priority 10) of ``replicas`` 1-GPU replicas
    draws a constant ``replica_w``, its nameplate, all day."""
    return {
        "apiVersion": "powercap.io/v1alpha1",
        "kind": "Scenario",
        "metadata": {"name": name},
        "grid": {"period": "24h", "step": "1h"},
        "domains": [
            {"name": "site", "cap": site_cap_w},
            *({"name": rack, "parent": "site", "cap": rack_cap_w} for rack in racks),
        ],
        "nodes": [
            {"name": node, "domain": rack, "gpus": 8, "idleWatts": idle_w}
            for rack, nodes in racks.items()
            for node in nodes
        ],
        "services": [
            {
                "name": BATCH,
                "replicas": replicas,
                "gpusPerReplica": 1,
                "priority": 10,
                "nameplateWatts": replica_w,
                "profile": [replica_w] * 24,
            }
        ],
    }


def round_robin(problem: Problem) -> Assignment:
    """Every replica of ``problem`` placed, round-robin over its nodes (no power check):
    a known placement for tests of what is measured, not of what is decided."""
    counts = np.zeros((problem.services.size, problem.fleet.size), dtype=np.int64)
    k = 0
    for s in range(problem.services.size):
        for _ in range(int(problem.services.demand[s])):
            counts[s, k % problem.fleet.size] += 1
            k += 1
    return Assignment(counts)
