"""The controller's first rung — GPU power limits — on a real cluster, with the power
simulator's GPUs held to what simulated agents enforce, scraped by a real Prometheus.

One rack of two 8-GPU fake nodes (800 W idle each, 100 W per idle GPU), capped at 4.5 kW
(cleared under 4.275 kW), with four 1-GPU ``batch`` replicas per node drawing 300 W each:
4 kW calm. ``powercap controller`` runs alone (no scheduler: the pods are bound by the
test) under its own ServiceAccount, with ``manifests/base``'s RBAC; every node has a
simulated ``powercap agent`` (:mod:`e2e.agents`: the agent's own code on an NVML fake, with
the agent's credentials), which applies what the controller writes in the nodes'
``NodePowerLimit`` objects. The controller creates those objects itself (empty) for the
agents to report on. Then:

* a surge of 400 W per node (4.8 kW) is absorbed by power limits — the rack goes back under
  its cap with no eviction, ``PowerCapCapped`` Events and the limit ratio exported;
* when the surge ends, the limits come back step by step and the requests are withdrawn;
* a surge of 1.2 kW per node is more than the floors (half of 700 W) can absorb: the
  limits go to the floors and the ladder goes on to evict;
* with agents that cannot set limits (NO_PERMISSION fakes, ``canSetLimits: false``) the
  controller evicts at once and says why on the nodes (``PowerCapLimitsUnavailable``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from e2e.agents import simulated_agents
from e2e.cluster import TEST_LOG_DIR, Process, cluster
from e2e.controlled import (
    bare_pod,
    evict_events,
    fast_controller,
    k8s_apis,
    pod_feed,
    pods,
    samples,
    wait_for_default_account,
)
from e2e.deploy import NAMESPACE, api_client, create_nodes, powercap_config, wait_for
from e2e.powersim import PowerSimulator, SimClock, StaticPods, grid_profiles, sim_nodes
from e2e.prometheus import ScrapeJob, prometheus
from e2e.rbac import NAMESPACE as LEASE_NAMESPACE
from e2e.scenarios import batch_scenario
from e2e.scheduler import start_controller
from extender.agent.resource import GROUP, PLURAL, VERSION
from placement.scenario.building import problem_from_spec
from placement.scenario.spec import spec_from_data

pytestmark = [pytest.mark.e2e, pytest.mark.controller]

NODES = ("gpu-a1", "gpu-a2")
PER_NODE = 4
IDLE_W = 800.0
REPLICA_W = 300.0
CAP_W = 4500.0
CALM_W = 2 * IDLE_W + 2 * PER_NODE * REPLICA_W  # 4 kW
ABSORBED_SURGE_W = 400.0  # per node: 4.8 kW
FLOORS_SURGE_W = 1200.0  # per node: 6.4 kW; 4.8 kW with every GPU at its floor
TIMEOUT_S = 60.0


@dataclass
class World:
    core: Any
    custom: Any
    sim: PowerSimulator
    port: int  # the controller's /metrics
    controller: Process

    def rack(self) -> tuple[float, float]:
        """Rack 1's (measured watts, in breach) as the controller exports them."""
        m = samples(self.port)
        labels = (("domain", "rack-1"),)
        return (
            m.get(("powercap_domain_measured_watts", labels), float("nan")),
            m.get(("powercap_domain_in_breach", labels), float("nan")),
        )

    def limit_ratio(self, node: str) -> float:
        key = ("powercap_controller_gpu_limit_ratio", (("node", node),))
        return samples(self.port).get(key, float("nan"))

    def specs(self) -> dict[str, dict[str, Any]]:
        found = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        return {o["metadata"]["name"]: o for o in found["items"]}

    def events(self, reason: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = orjson.loads(
            self.core.list_event_for_all_namespaces(
                field_selector=f"reason={reason}", _preload_content=False
            ).data
        )["items"]
        return items

    def logs(self) -> str:
        return f"\n--- powercap controller (tail) ---\n{self.controller.tail(40)}"

    def wait(self, what: str, check: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> None:
        try:
            wait_for(what, check, timeout_s, every_s=0.25)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; rack now {self.rack()}{self.logs()}") from exc


@contextmanager
def world(prefix: str, *, settable: bool) -> Iterator[World]:
    problem = problem_from_spec(
        spec_from_data(
            batch_scenario(
                "e2e-caps",
                racks={"rack-1": NODES},
                rack_cap_w=CAP_W,
                site_cap_w=2 * CAP_W,
                replicas=PER_NODE * len(NODES),
                replica_w=REPLICA_W,
                idle_w=IDLE_W,
            )
        )
    )
    with cluster(TEST_LOG_DIR, prefix=prefix) as c:
        client = api_client(c.kubeconfig)
        core, _, custom, _, _ = k8s_apis(client)
        create_nodes(client, problem)
        wait_for_default_account(core)
        for i in range(PER_NODE * len(NODES)):
            core.create_namespaced_pod(NAMESPACE, bare_pod(f"batch-{i}", NODES[i % len(NODES)]))
        agents = simulated_agents(c, dict.fromkeys(NODES, 8), settable=settable)
        sim_pods = StaticPods()
        sim = PowerSimulator(
            sim_nodes(problem),
            grid_profiles(problem),
            sim_pods,
            clock=SimClock(start_s=time.time(), speed=1.0),
            limits=agents,
        )
        address = sim.start()
        try:
            with (
                agents,
                pod_feed(core, sim_pods),
                prometheus([ScrapeJob("powersim", [address])], TEST_LOG_DIR) as prom,
            ):
                prom.wait_for_targets()
                config = powercap_config(problem)
                config["planner"]["enabled"] = False
                lease = {
                    "namespace": LEASE_NAMESPACE,
                    "duration": "4s",
                    "renewDeadline": "3s",
                    "retryPeriod": "1s",
                }
                config |= fast_controller(prom.url, sim.non_gpu_watts(NODES[0]), 5, lease=lease)
                config["controller"]["powerLimits"] = {
                    "settle": {"cap": "2s", "restore": "2s", "hold": "2s"},
                    "restoreStep": 0.25,
                }
                path = c.run_dir / "powercap.json"
                path.write_bytes(orjson.dumps(config))
                controller, port = start_controller(c, path)
                w = World(core, custom, sim, port, controller)

                def reads_calm() -> bool:
                    watts, breach = w.rack()
                    return watts == pytest.approx(CALM_W, abs=1.0) and breach == 0.0

                w.wait(f"the controller to read {CALM_W:.0f} W", reads_calm)

                def agents_report() -> bool:
                    specs = w.specs()
                    return all(
                        "canSetLimits" in (specs.get(n, {}).get("status") or {}) for n in NODES
                    )

                w.wait("the agents to report on the NodePowerLimits it created", agents_report)
                yield w
        finally:
            sim.stop()


def test_a_surge_is_absorbed_by_power_limits_and_they_come_back() -> None:
    with world("powercap-caps", settable=True) as w:
        assert all(w.specs()[n]["spec"] == {} for n in NODES)  # empty: nothing asked yet
        w.sim.surge(extra_watts=ABSORBED_SURGE_W, domains=["rack-1"])
        seen_breach = False

        def shed() -> bool:
            nonlocal seen_breach
            watts, breach = w.rack()
            seen_breach = seen_breach or breach == 1.0
            return seen_breach and breach == 0.0 and watts < CAP_W

        w.wait("rack 1 in breach and back under its cap", shed)
        assert evict_events(w.core) == [], w.logs()
        assert len(pods(w.core)) == PER_NODE * len(NODES)
        capped = w.events("PowerCapCapped")
        assert capped and {e["involvedObject"]["kind"] for e in capped} == {"NodePowerLimit"}
        specs = w.specs()
        asked = {n: specs[n]["spec"].get("wattsPerGpu") for n in NODES}
        assert any(v is not None and 350.0 <= v < 700.0 for v in asked.values()), asked
        for n, v in asked.items():
            if v is not None:
                assert specs[n]["metadata"]["annotations"]["powercap.io/capped-by"] == "rack-1"
        assert min(w.limit_ratio(n) for n in NODES) < 1.0

        # The surge ends: the limits come back, step by step, and are withdrawn.
        w.sim.clear_surges()

        def withdrawn() -> bool:
            return all("wattsPerGpu" not in w.specs()[n]["spec"] for n in NODES)

        w.wait("every power limit request withdrawn", withdrawn)
        uncapped = w.events("PowerCapUncapped")
        assert uncapped, w.logs()
        assert any("withdrawn" in e["message"] for e in uncapped)
        w.wait(
            "the limits back at the default", lambda: all(w.limit_ratio(n) == 1.0 for n in NODES)
        )
        assert evict_events(w.core) == [], w.logs()


def test_a_surge_past_the_floors_ends_in_eviction() -> None:
    with world("powercap-caps-floor", settable=True) as w:
        w.sim.surge(extra_watts=FLOORS_SURGE_W, domains=["rack-1"])
        w.wait("an eviction", lambda: bool(evict_events(w.core)))
        # Capping came first, down to the floors (half of 700 W).
        assert w.events("PowerCapCapped"), w.logs()
        specs = w.specs()
        assert all(specs[n]["spec"].get("wattsPerGpu") == 350.0 for n in NODES), specs
        first_cap = min(e["firstTimestamp"] for e in w.events("PowerCapCapped"))
        first_evict = min(e["firstTimestamp"] for e in evict_events(w.core))
        assert first_cap <= first_evict


def test_agents_that_cannot_set_limits_make_the_controller_evict_and_say_why() -> None:
    with world("powercap-caps-noperm", settable=False) as w:
        assert all(w.specs()[n]["status"]["canSetLimits"] is False for n in NODES)
        w.sim.surge(extra_watts=ABSORBED_SURGE_W, domains=["rack-1"])
        w.wait("an eviction", lambda: bool(evict_events(w.core)))
        why = w.events("PowerCapLimitsUnavailable")
        assert {e["involvedObject"]["name"] for e in why} == set(NODES), w.logs()
        assert all("cannot set limits" in e["message"] for e in why)
        assert w.events("PowerCapCapped") == []
        assert all("wattsPerGpu" not in w.specs()[n]["spec"] for n in NODES)
