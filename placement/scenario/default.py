"""The embedded default scenario: a realistic, power-bound inference site.

Generated deterministically (seeded numpy, no files) so it ships as code:

* one site, 4 rows, 40 racks (PDUs) of 8 DGX-class 8×H100 servers — 320 nodes, 2,560 GPUs;
* node idle 2,000 W; per 8-GPU replica a nameplate of 8,200 W above idle (a 10.2 kW server);
* 30 LLM services — chat, code assistants, retrieval and embeddings for the EU, the
  Americas and Asia-Pacific, each peaking in its region's working day (times are UTC), plus
  night-time batch work (summarisation, evaluation, indexing, synthetic data);
* per-replica profiles above idle follow the measured H100 power curve: ~120 W per GPU
  loaded but idle, ~470–500 W per GPU at saturation, so an 8-GPU replica draws ~0.8–1.5 kW
  in its trough and ~3.5–4.6 kW at its peak;
* caps: 41 kW per rack, rows at 85% and the site at 90% of what is beneath them — the
  site is power-bound long before it runs out of GPUs.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from placement.grid import Grid
from placement.problem import Problem
from placement.scenario.building import problem_from_spec
from placement.scenario.spec import API_VERSION, ScenarioSpec, spec_from_data

ROWS = 4
RACKS_PER_ROW = 10
NODES_PER_RACK = 8
GPUS_PER_NODE = 8
IDLE_WATTS = 2000.0
NAMEPLATE_PER_GPU = 8200.0 / 8
RACK_CAP = 41_000.0
ROW_FRACTION = 0.85
SITE_FRACTION = 0.90

# name, peak hour (UTC), width of the busy period (h), GPUs per replica, replicas, priority
_SERVICES: tuple[tuple[str, float, float, int, int, int], ...] = (
    ("chat-eu", 12.5, 9, 8, 40, 100),
    ("chat-uk", 13.0, 8, 8, 14, 100),
    ("chat-us-east", 17.5, 9, 8, 36, 100),
    ("chat-us-west", 20.5, 9, 8, 26, 100),
    ("chat-latam", 19.0, 8, 8, 12, 90),
    ("chat-india", 8.0, 8, 8, 16, 90),
    ("chat-apac", 4.0, 9, 8, 22, 100),
    ("chat-japan", 3.0, 8, 8, 14, 90),
    ("code-assist-eu", 11.0, 8, 4, 24, 80),
    ("code-assist-us", 17.0, 8, 4, 30, 80),
    ("code-assist-apac", 3.5, 8, 4, 14, 80),
    ("agent-workflows-us", 16.0, 10, 8, 16, 70),
    ("agent-workflows-eu", 10.0, 10, 8, 12, 70),
    ("rag-search-eu", 10.5, 9, 2, 24, 60),
    ("rag-search-us", 16.5, 9, 2, 28, 60),
    ("rag-search-apac", 2.5, 9, 2, 16, 60),
    ("voice-agent-us", 18.0, 7, 4, 14, 70),
    ("voice-agent-eu", 11.5, 7, 4, 10, 70),
    ("translate-global", 12.0, 14, 2, 16, 50),
    ("embeddings-global", 14.0, 16, 1, 48, 50),
    ("moderation-global", 15.0, 16, 1, 24, 85),
    ("reranker-global", 14.5, 14, 1, 24, 50),
    ("vision-chat-us", 18.5, 8, 8, 10, 60),
    ("vision-chat-eu", 12.0, 8, 8, 8, 60),
    ("summarise-nightly", 1.0, 6, 8, 20, 10),
    ("eval-harness", 23.0, 5, 8, 14, 5),
    ("doc-index-rebuild", 2.0, 5, 8, 12, 10),
    ("synthetic-data", 5.0, 6, 8, 14, 5),
    ("batch-translate", 0.0, 7, 4, 16, 10),
    ("report-digest", 6.5, 4, 8, 10, 10),
)


def _profile(
    grid: Grid, peak_hour: float, width_h: float, gpus: int, rng: np.random.Generator
) -> np.ndarray:
    """Per-replica watts above node idle over one day.

    A wrapped Gaussian busy period (width = full width at half height) on top of the
    loaded-idle floor, with a smaller shoulder four hours after the peak (the
    afternoon/evening tail real chat traffic shows) and a little per-slot noise.
    """
    hours = (np.arange(grid.slots) + 0.5) * grid.step_s / 3600.0

    def bump(centre: float, width: float) -> np.ndarray:
        d = np.abs(hours - centre) % 24.0
        d = np.minimum(d, 24.0 - d)
        sigma = width / 2.3548
        return np.exp(-0.5 * (d / sigma) ** 2)

    shape = np.maximum(bump(peak_hour, width_h), 0.45 * bump(peak_hour + 4.0, width_h))
    shape = np.clip(shape + rng.normal(0.0, 0.015, grid.slots), 0.0, 1.0)
    per_gpu_trough = rng.uniform(90.0, 180.0)  # loaded, few requests: 115–250 W drawn
    per_gpu_peak = rng.uniform(430.0, 560.0)  # 470–500 W per GPU + host CPU/memory/NIC
    return gpus * (per_gpu_trough + (per_gpu_peak - per_gpu_trough) * shape)


def default_spec() -> ScenarioSpec:
    """The default scenario in its explicit form (every profile as 144 values)."""
    grid = Grid()
    rng = np.random.default_rng(20231116)
    domains: list[dict[str, object]] = []
    nodes: list[dict[str, object]] = []
    rack_nameplate = NODES_PER_RACK * (IDLE_WATTS + GPUS_PER_NODE * NAMEPLATE_PER_GPU)
    row_cap = ROW_FRACTION * RACKS_PER_ROW * RACK_CAP
    domains.append({"name": "site", "cap": round(SITE_FRACTION * ROWS * row_cap)})
    for r in range(1, ROWS + 1):
        domains.append({"name": f"row-{r}", "parent": "site", "cap": round(row_cap)})
        for k in range(1, RACKS_PER_ROW + 1):
            rack = f"rack-{r}-{k:02d}"
            domains.append({"name": rack, "parent": f"row-{r}", "cap": RACK_CAP})
            for _ in range(NODES_PER_RACK):
                nodes.append(
                    {
                        "name": f"gpu-{len(nodes) + 1:04d}",
                        "domain": rack,
                        "gpus": GPUS_PER_NODE,
                        "idleWatts": IDLE_WATTS,
                    }
                )
    assert rack_nameplate > RACK_CAP  # power-bound by construction
    services = [
        {
            "name": name,
            "replicas": replicas,
            "gpusPerReplica": gpus,
            "priority": priority,
            "nameplateWatts": gpus * NAMEPLATE_PER_GPU,
            "profile": _profile(grid, peak, width, gpus, rng).round(1).tolist(),
        }
        for name, peak, width, gpus, replicas, priority in _SERVICES
    ]
    return spec_from_data(
        {
            "apiVersion": API_VERSION,
            "kind": "Scenario",
            "metadata": {"name": "default"},
            "grid": {"period": "24h", "step": "10m"},
            "domains": domains,
            "nodes": nodes,
            "services": services,
        },
        "default scenario",
    )


@cache
def default_problem() -> Problem:
    """The default scenario as a :class:`Problem` (built once per process)."""
    return problem_from_spec(default_spec())
