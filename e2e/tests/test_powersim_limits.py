"""GPU power limits in the power simulator, on a real kube-apiserver with a real Prometheus.

Two fake nodes of two H100s each (KWOK: no GPU, no agent pod). :class:`e2e.agents.SimulatedAgents`
runs the agent's own reconcile for both, each against an NVML fake, with tokens of the agent's
ServiceAccount bound to each node (``manifests/agent``'s RBAC and admission policy applied); the
simulator's GPUs draw at most what those fakes enforce, and a real Prometheus scrapes it. The
cluster's admin plays the controller and writes ``NodePowerLimit`` objects:

* under a surge every GPU demands 650 W; a request of 400 W per GPU for ``gpu-1`` is applied
  (status written with the enforced limits), ``gpu-1``'s scraped ``DCGM_FI_DEV_POWER_USAGE``
  drops to 400 W while ``gpu-2``'s stays at 650 W, ``DCGM_FI_DEV_ENFORCED_POWER_LIMIT`` shows
  400 W and 700 W, and the throughput lost to the cap is the curve's; deleting the request
  restores 700 W and the draw;
* with agents that may not set limits (NO_PERMISSION fakes) the status says
  ``canSetLimits: false`` and the draw is not capped.

A missing tool fails naming ``make tools`` (or ``make prometheus``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml

from e2e.agents import SimulatedAgents, simulated_agents
from e2e.cluster import TEST_LOG_DIR, Cluster, cluster
from e2e.deploy import KWOK_FAKE, api_client
from e2e.powersim import (
    ENFORCED_LIMIT_METRIC,
    METRIC,
    BoundPod,
    GridProfile,
    PowerSimulator,
    SimClock,
    SimNode,
    StaticPods,
)
from e2e.prometheus import Prometheus, ScrapeJob, prometheus
from e2e.scheduler import powercap_json
from extender.agent.resource import GROUP, PLURAL, VERSION
from placement.grid import Grid
from placement.throughput import DEFAULT_CURVE

pytestmark = pytest.mark.e2e

NODES = ("gpu-1", "gpu-2")
GPUS = 2
GPU_IDLE_W = 50.0
REPLICA_W = 300.0  # one 1-GPU replica per GPU; ×2 under the surge: 650 W per GPU
TIMEOUT_S = 30.0


@dataclass
class World:
    cluster: Cluster
    custom: Any


def wait_until(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not check():
        assert time.monotonic() < deadline, f"not within {TIMEOUT_S:g} s: {what}"
        time.sleep(0.25)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    from kubernetes import client as k8s

    with cluster(TEST_LOG_DIR, prefix="powercap-simlimits") as c:
        admin = api_client(c.kubeconfig)
        core: Any = k8s.CoreV1Api(admin)
        for node in NODES:
            core.create_node(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": node, "labels": dict(KWOK_FAKE), "annotations": KWOK_FAKE},
                }
            )
        yield World(c, k8s.CustomObjectsApi(admin))


def simulator(agents: SimulatedAgents) -> PowerSimulator:
    grid = Grid()
    profile = GridProfile(grid, np.full(grid.slots, REPLICA_W))
    pods = StaticPods(
        BoundPod("default", f"chat-{node}-{g}", node, "chat", gpus=1)
        for node in NODES
        for g in range(GPUS)
    )
    nodes = [SimNode(n, GPUS, GPUS * GPU_IDLE_W + 100.0, ("rack",)) for n in NODES]
    clock = SimClock(start_s=time.time(), speed=1.0)
    return PowerSimulator(
        nodes, {"chat": profile}, pods, clock=clock, gpu_idle_watts=GPU_IDLE_W, limits=agents
    )


def per_gpu(prom: Prometheus, metric: str, node: str) -> list[float]:
    series = prom.query(f'{metric}{{Hostname="{node}"}}')
    return [float(s["value"][1]) for s in sorted(series, key=lambda s: s["metric"]["gpu"])]


def request(world: World, node: str, watts: float) -> None:
    world.custom.create_cluster_custom_object(
        GROUP,
        VERSION,
        PLURAL,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "NodePowerLimit",
            "metadata": {"name": node},
            "spec": {"wattsPerGpu": watts},
        },
    )


def get(world: World, node: str) -> dict[str, Any]:
    obj: dict[str, Any] = world.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, node)
    return obj


def test_a_limit_is_applied_by_the_simulated_agent_and_caps_the_scraped_draw(
    world: World,
) -> None:
    with (
        simulated_agents(world.cluster, dict.fromkeys(NODES, GPUS)) as agents,
        simulator(agents) as sim,
    ):
        address = sim.start()
        with prometheus([ScrapeJob("powersim", [address])], TEST_LOG_DIR) as prom:
            prom.wait_for_targets()
            sim.surge(factor=2.0)
            wait_until(
                "the surge in the scraped draw",
                lambda: per_gpu(prom, METRIC, NODES[0]) == [650.0, 650.0],
            )
            assert per_gpu(prom, ENFORCED_LIMIT_METRIC, NODES[0]) == [700.0, 700.0]

            request(world, NODES[0], 400)

            def applied() -> bool:
                obj = get(world, NODES[0])
                status = obj.get("status") or {}
                return status.get("observedGeneration") == obj["metadata"]["generation"] and [
                    g.get("enforcedWatts") for g in status.get("gpus", [])
                ] == [400, 400]

            wait_until("the agent's status with the enforced limits", applied)
            status = get(world, NODES[0])["status"]
            print("status:", status["canSetLimits"], status["conditions"][0]["reason"])
            assert status["canSetLimits"] is True
            assert status["conditions"][0]["reason"] == "Applied"
            assert [g["uuid"] for g in status["gpus"]] == [
                g.uuid for g in agents.nvml[NODES[0]].gpus
            ]
            wait_until(
                "gpu-1's scraped draw at its limit",
                lambda: per_gpu(prom, METRIC, NODES[0]) == [400.0, 400.0],
            )
            assert per_gpu(prom, ENFORCED_LIMIT_METRIC, NODES[0]) == [400.0, 400.0]
            assert per_gpu(prom, METRIC, NODES[1]) == [650.0, 650.0]
            assert per_gpu(prom, ENFORCED_LIMIT_METRIC, NODES[1]) == [700.0, 700.0]
            snap = sim.snapshot()
            lost = DEFAULT_CURVE.at(400 / 700) / DEFAULT_CURVE.at(650 / 700)
            print("throughput lost:", snap.throughput_lost())
            assert snap.throughput_lost() == pytest.approx((1 - lost) / 2)  # half the pods
            assert agents.spec_writes == 1 and agents.status_writes >= 1

            world.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, NODES[0])
            wait_until(
                "the default limit and the draw restored",
                lambda: (
                    per_gpu(prom, METRIC, NODES[0]) == [650.0, 650.0]
                    and per_gpu(prom, ENFORCED_LIMIT_METRIC, NODES[0]) == [700.0, 700.0]
                ),
            )
            assert sim.snapshot().throughput_lost() == 0.0


def test_agents_without_permission_report_it_and_the_draw_is_not_capped(world: World) -> None:
    with (
        simulated_agents(world.cluster, dict.fromkeys(NODES, GPUS), settable=False) as agents,
        simulator(agents) as sim,
    ):
        sim.surge(factor=2.0)
        request(world, NODES[1], 300)

        def refused() -> bool:
            return (get(world, NODES[1]).get("status") or {}).get("canSetLimits") is False

        wait_until("the status to say the agent cannot set limits", refused)
        status = get(world, NODES[1])["status"]
        assert status["conditions"][0]["reason"] == "NoPermission"
        assert [g["enforcedWatts"] for g in status["gpus"]] == [700, 700]
        snap = sim.snapshot()
        assert [s.watts for s in snap.gpus if s.node == NODES[1]] == [650.0, 650.0]
        assert snap.throughput_lost() == 0.0
        world.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, NODES[1])


def test_whatif_replay_with_power_limits_holds_gpus_to_their_default(tmp_path: Path) -> None:
    """``whatif --kwok --replay --power-limits on`` (the controller off): the replayed surge of
    1,500 W on a one-GPU replica is held at the H100's 700 W default limit by the GPU. Without
    limits the site breaches whatever the placement (2 kW idle + 4 × 1.5 kW + 0.6 kW = 8.6 kW
    over 8 kW, test_whatif_replay); held at 700 W a GPU the four surging replicas add at most
    4 × 637.5 W, so the site stays under its cap (a rack may still breach, as the placement
    falls). Nothing caps, so ``cap`` is 0 and no throughput is lost to a cap."""
    from e2e.tests.test_whatif_replay import REPLAY, SCENARIO

    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(SCENARIO))
    replay = tmp_path / "replay.json"
    replay.write_bytes(orjson.dumps(REPLAY))
    args = [
        "whatif", str(scenario), "--kwok", "--planner", "greedy", "--time-limit", "5",
        "--replay", str(replay), "--replay-day", "0", "--start", "00:00",
        "--duration", "1h", "--speed", "600", "--controller", "off",
        "--power-limits", "on", "--format", "json",
    ]  # fmt: skip
    run = powercap_json(*args, timeout_s=180)
    print("replay:", {k: run[k] for k in ("breach_domain_minutes", "actions")}, run["replay"])
    assert run["replay"]["window"]["power_limits"] is True
    assert run["actions"] == {"cap": 0}
    assert run["throughput_lost_fraction"] == 0.0
    assert "site" not in run["replay"]["domain_breach_minutes"], run["replay"]
