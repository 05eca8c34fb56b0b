"""Small power-bound scenarios for the e2e tests, built in code.

Racks of identical fake 8-GPU nodes under one site, and 1-GPU services whose diurnal
profiles peak at different hours. GPUs are plentiful by construction: power is what
binds, so whatever stays Pending does so because of a cap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

NODE_IDLE_W = 500.0
REPLICA_LOW_W = 200.0
REPLICA_HIGH_W = 1000.0


def racks_scenario(
    name: str,
    racks: int,
    nodes_per_rack: int,
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
