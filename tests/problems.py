"""Small problems for tests: built from scenario dicts, and drawn by hypothesis."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from placement.problem import Problem
from placement.scenario.building import problem_from_spec
from placement.scenario.spec import spec_from_data

SMALL_GRID = {"period": "24h", "step": "2h"}  # T = 12 keeps property tests fast


def problem_from_dict(data: dict[str, Any]) -> Problem:
    base: dict[str, Any] = {"apiVersion": "powercap.io/v1alpha1", "kind": "Scenario"}
    return problem_from_spec(spec_from_data({**base, **data}))


@st.composite
def problems(
    draw: st.DrawFn,
    uniform_priority: bool = False,
    max_services: int = 4,
    uniform_size: bool = False,
) -> Problem:
    """A random site → rows → racks tree with 8-GPU nodes and diurnal-ish services.

    ``uniform_size`` gives every service the same GPUs per replica and the same peak
    watts, so services differ only in when they peak.
    """
    slots = 12
    rows = draw(st.integers(1, 3))
    domains: list[dict[str, Any]] = []
    nodes: list[dict[str, Any]] = []
    site_cap = draw(st.integers(20_000, 120_000))
    domains.append({"name": "site", "cap": site_cap})
    for r in range(rows):
        domains.append(
            {"name": f"row-{r}", "parent": "site", "cap": draw(st.integers(10_000, 80_000))}
        )
        for k in range(draw(st.integers(1, 3))):
            rack = f"rack-{r}-{k}"
            scheduled = draw(st.booleans())
            cap: Any = (
                [draw(st.integers(8_000, 40_000))] * slots
                if not scheduled
                else draw(st.lists(st.integers(8_000, 40_000), min_size=slots, max_size=slots))
            )
            domains.append({"name": rack, "parent": f"row-{r}", "cap": cap})
            for n in range(draw(st.integers(1, 3))):
                nodes.append(
                    {
                        "name": f"n-{r}-{k}-{n}",
                        "domain": rack,
                        "gpus": 8,
                        "idleWatts": draw(st.integers(0, 2500)),
                    }
                )
    services = []
    shared_high = draw(st.integers(500, 6000))
    shared_gpus = draw(st.sampled_from([1, 2, 4, 8]))
    for s in range(draw(st.integers(1, max_services))):
        peak_at = draw(st.integers(0, slots - 1))
        high = shared_high if uniform_size else draw(st.integers(500, 6000))
        low = draw(st.integers(0, high))
        shape = np.roll(np.hanning(slots + 2)[1:-1], peak_at - slots // 2)
        profile = (low + (high - low) * shape).round(1).tolist()
        gpus = shared_gpus if uniform_size else draw(st.sampled_from([1, 2, 4, 8]))
        services.append(
            {
                "name": f"svc-{s}",
                "replicas": draw(st.integers(0, 12)),
                "gpusPerReplica": gpus,
                "priority": 0 if uniform_priority else draw(st.integers(0, 3)) * 100,
                "nameplateWatts": float(max(profile)) + draw(st.integers(0, 3000)),
                "profile": profile,
            }
        )
    return problem_from_dict(
        {
            "metadata": {"name": "drawn"},
            "grid": SMALL_GRID,
            "headroom": draw(st.sampled_from([0.0, 0.05])),
            "domains": domains,
            "nodes": nodes,
            "services": services,
        }
    )
