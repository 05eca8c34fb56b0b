"""The companion controller on a real cluster, with measured power through a real Prometheus.

Two racks of two 8-GPU fake nodes, capped at 6 kW and 5 kW; three 1-GPU services drawing a
constant 800 W per replica: ``chat`` (priority 5, the lowest, but a PodDisruptionBudget
allows it no disruption), ``batch`` (priority 10, scaled by a KEDA ScaledObject) and
``vip`` (priority 2000, above ``protectPriority``). Rack 2 starts cordoned, so all five
replicas land in rack 1 (5 kW predicted); then it is opened and the power simulator —
fed from the pods the API server reports, scraped by Prometheus — surges rack 1 by 1 kW
per node (7 kW measured). Laid out as the manifests ship it — ``powercap controller`` under
the ServiceAccount ``powercap-controller``, beside ``powercap serve --controller=track`` and
kube-scheduler under ``powercap-scheduler`` — the controller must:

* reshape first: lower the ScaledObject's ``maxReplicaCount`` keeping the original in the
  annotation. KEDA's operator does not run here, so nothing scales down and the breach
  holds — which is what sends the ladder on to evictions;
* evict ``batch`` pods only — never the budget-protected ``chat`` pod, though its priority
  is the lowest, and never ``vip`` — through policy/v1 Evictions, with Events;
* while rack 1 is in breach, the measured overage in the extender's ledger (fed by its own
  tracking of the same power data) sends the replacements (recreated by the Deployment) to
  rack 2 — which, with its smaller cap and
  the planner off, the extender's scoring would otherwise rank below rack 1, where one
  more replica is predicted to fit;
* bring rack 1's measured power under its cap (and out of breach) within a bounded number
  of control periods;
* once the surge ends, restore ``maxReplicaCount`` and remove the annotations.

A second test trusts neither tenants nor stray exporters: three ``batch`` pods on one node,
two of PriorityClass ``powercap-e2e-high`` (500) and one of ``powercap-e2e-low`` (100)
whose creator labelled it ``powercap.io/priority: "999"``; a rogue simulator, scraped under
another job, reports the node drawing 50 kW more. With ``power.selector`` on the real
simulator's job the controller (``powercap controller`` alone: no scheduler runs) reads the
calm rack and does nothing; after a surge any one pod would clear the breach, and the one
evicted is the low-class pod, label or not.
"""

from __future__ import annotations

import math
import time
from typing import Any

import orjson
import pytest

from e2e.cluster import TEST_LOG_DIR, cluster
from e2e.controlled import (
    bare_pod,
    evict_events,
    fast_controller,
    install_scaled_object_crd,
    k8s_apis,
    pod_feed,
    pods,
    samples,
    scaled_object,
    wait_for_default_account,
)
from e2e.deploy import (
    NAMESPACE,
    SERVICE_LABEL,
    api_client,
    create_nodes,
    deployment_object,
    powercap_config,
    wait_for,
)
from e2e.powersim import PowerSimulator, SimClock, StaticPods, grid_profiles, sim_nodes
from e2e.prometheus import ScrapeJob, prometheus
from e2e.rbac import NAMESPACE as LEASE_NAMESPACE
from e2e.scenarios import batch_scenario
from e2e.scheduler import start_controller, start_extender, start_scheduler
from placement.problem import Problem
from placement.scenario.building import problem_from_spec
from placement.scenario.spec import spec_from_data

pytestmark = [pytest.mark.e2e, pytest.mark.controller]


RACK_CAP_W = 6000.0
# Smaller: one more replica raises its peak utilisation more than rack 1's, so only the
# controller's feedback makes rack 2 the extender's choice for the replacements.
RACK_2_CAP_W = 5000.0
REPLICA_W = 800.0
IDLE_W = 500.0
SURGE_W = 1000.0  # per rack-1 node
PERIOD_S = 1
# Grace 2 s, reshape settle 3 s, then evictions 3 s apart, each seen one scrape and one
# period later: about 15 periods; the bound leaves room for a slow machine.
MAX_PERIODS = 45
SERVICES = {"chat": (5, 1), "batch": (10, 3), "vip": (2000, 1)}  # priority, replicas
RACK_1 = ("gpu-a1", "gpu-a2")
RACK_2 = ("gpu-b1", "gpu-b2")

SCENARIO: dict[str, Any] = {
    "apiVersion": "powercap.io/v1alpha1",
    "kind": "Scenario",
    "metadata": {"name": "e2e-controller"},
    "grid": {"period": "24h", "step": "1h"},
    "domains": [
        {"name": "site", "cap": RACK_CAP_W + RACK_2_CAP_W},
        {"name": "rack-1", "parent": "site", "cap": RACK_CAP_W},
        {"name": "rack-2", "parent": "site", "cap": RACK_2_CAP_W},
    ],
    "nodes": [
        {"name": name, "domain": rack, "gpus": 8, "idleWatts": IDLE_W}
        for rack, names in (("rack-1", RACK_1), ("rack-2", RACK_2))
        for name in names
    ],
    "services": [
        {
            "name": name,
            "replicas": replicas,
            "gpusPerReplica": 1,
            "priority": priority,
            "nameplateWatts": REPLICA_W,
            "profile": [REPLICA_W] * 24,
        }
        for name, (priority, replicas) in SERVICES.items()
    ],
}


def no_disruption_budget(service: str) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": service, "namespace": NAMESPACE},
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {SERVICE_LABEL: service}}},
    }


def rack_1(port: int) -> tuple[float, float]:
    """Rack 1's (measured watts, in breach) as the controller exports them."""
    m = samples(port)
    labels = (("domain", "rack-1"),)
    return (
        m.get(("powercap_domain_measured_watts", labels), float("nan")),
        m.get(("powercap_domain_in_breach", labels), float("nan")),
    )


def test_a_surge_is_shed_by_reshape_then_eviction_and_replacements_land_elsewhere() -> None:
    problem: Problem = problem_from_spec(spec_from_data(SCENARIO))
    with cluster(TEST_LOG_DIR, prefix="powercap-ctl") as c:
        client = api_client(c.kubeconfig)
        core, apps, custom, policy, extensions = k8s_apis(client)
        install_scaled_object_crd(extensions)
        create_nodes(client, problem)
        for name in RACK_2:
            core.patch_node(name, {"spec": {"unschedulable": True}})

        sim_pods = StaticPods()
        sim = PowerSimulator(
            sim_nodes(problem),
            grid_profiles(problem),
            sim_pods,
            clock=SimClock(start_s=time.time(), speed=1.0),
        )
        address = sim.start()
        try:
            with (
                pod_feed(core, sim_pods),
                prometheus([ScrapeJob("powersim", [address])], TEST_LOG_DIR) as prom,
            ):
                prom.wait_for_targets()
                config = powercap_config(problem)
                # Scoring alone decides where replacements go (no plan to steer them).
                config["planner"]["enabled"] = False
                config["power"] = {
                    "url": prom.url,
                    "nonGpuWatts": {"default": sim.non_gpu_watts(RACK_1[0])},
                    "staleness": "5s",
                    "timeout": "2s",
                }
                config["controller"] = {
                    "enabled": True,
                    "period": f"{PERIOD_S}s",
                    "grace": "2s",
                    "settle": {"reshape": "3s", "evict": "3s", "restore": "3s"},
                    "restoreMargin": 0.05,
                    "protectPriority": 1000,
                    "lease": {
                        "namespace": LEASE_NAMESPACE,
                        "duration": "4s",
                        "renewDeadline": "3s",
                        "retryPeriod": "1s",
                    },
                }
                path = c.run_dir / "powercap.json"
                path.write_bytes(orjson.dumps(config))
                extender, ports = start_extender(c, path)
                scheduler = start_scheduler(c, ports.verbs)
                controller, metrics = start_controller(c, path)  # the controller's /metrics

                def logs() -> str:
                    return (
                        f"\n--- powercap controller (tail) ---\n{controller.tail(40)}"
                        f"\n--- powercap serve (tail) ---\n{extender.tail(15)}"
                        f"\n--- kube-scheduler (tail) ---\n{scheduler.tail(15)}"
                    )

                custom.create_namespaced_custom_object(
                    "keda.sh", "v1alpha1", NAMESPACE, "scaledobjects", scaled_object("batch", 3)
                )
                policy.create_namespaced_pod_disruption_budget(
                    NAMESPACE, no_disruption_budget("chat")
                )
                for s in range(problem.services.size):
                    apps.create_namespaced_deployment(NAMESPACE, deployment_object(problem, s))

                wanted = sum(r for _, r in SERVICES.values())

                def all_bound() -> bool:
                    return sum(1 for p in pods(core) if p["spec"].get("nodeName")) == wanted

                wait_for("every replica bound in rack 1", all_bound, 90.0)
                before = {p["metadata"]["name"]: p for p in pods(core)}
                assert {p["spec"]["nodeName"] for p in before.values()} <= set(RACK_1)
                for name in RACK_2:
                    core.patch_node(name, {"spec": {"unschedulable": False}})

                # Calm: the controller reads 5 kW in rack 1 (idle + five replicas).
                calm = IDLE_W * 2 + REPLICA_W * wanted

                def reads_calm() -> bool:
                    watts, breach = rack_1(metrics)
                    return watts == pytest.approx(calm, abs=1.0) and breach == 0.0

                wait_for(f"the controller to read {calm:.0f} W in rack 1", reads_calm, 60.0)
                scrape_now = samples(metrics)
                assert scrape_now[("powercap_controller_leader", ())] == 1.0, logs()
                assert scrape_now[("powercap_power_data_stale", ())] == 0.0

                sim.surge(extra_watts=SURGE_W, domains=["rack-1"])
                surged_at = time.monotonic()
                seen_breach = False

                def shed() -> bool:
                    nonlocal seen_breach
                    watts, breach = rack_1(metrics)
                    seen_breach = seen_breach or breach == 1.0
                    return seen_breach and breach == 0.0 and watts < RACK_CAP_W

                try:
                    wait_for(
                        "rack 1 in breach and then back under its cap",
                        shed,
                        MAX_PERIODS * PERIOD_S,
                        every_s=0.25,
                    )
                except TimeoutError as exc:
                    raise AssertionError(f"{exc}; rack 1 now {rack_1(metrics)}{logs()}") from exc
                periods = (time.monotonic() - surged_at) / PERIOD_S
                print(f"[e2e] rack 1 back under its cap after {periods:.0f} periods", flush=True)

                # Reshape came first: lowered, original kept (KEDA does not run here).
                so = custom.get_namespaced_custom_object(
                    "keda.sh", "v1alpha1", NAMESPACE, "scaledobjects", "batch"
                )
                annotations = so["metadata"].get("annotations") or {}
                assert so["spec"]["maxReplicaCount"] < 3, so
                assert annotations["powercap.io/original-max-replicas"] == "3"
                assert annotations["powercap.io/reshaped-by"] == "rack-1"

                # Evictions: batch only; chat (budget) and vip (priority) untouched.
                after = {p["metadata"]["name"]: p for p in pods(core)}
                gone = set(before) - set(after)
                assert gone, f"nothing was evicted{logs()}"
                assert all(before[n]["metadata"]["labels"][SERVICE_LABEL] == "batch" for n in gone)
                for name, p in before.items():
                    if p["metadata"]["labels"][SERVICE_LABEL] != "batch":
                        assert name in after and not after[name]["metadata"].get(
                            "deletionTimestamp"
                        ), f"{name} was evicted{logs()}"
                events = orjson.loads(
                    core.list_namespaced_event(
                        NAMESPACE, field_selector="reason=PowerCapEvict", _preload_content=False
                    ).data
                )["items"]
                assert {e["involvedObject"]["name"] for e in events} == gone
                assert all(e["source"]["component"] == "powercap-controller" for e in events)

                # The replacements were placed by the extender in rack 2.
                def replaced() -> bool:
                    now = pods(core)
                    fresh = [p for p in now if p["metadata"]["name"] not in before]
                    return len(fresh) == len(gone) and all(p["spec"].get("nodeName") for p in fresh)

                wait_for("the replacements bound", replaced, 30.0)
                fresh = [p for p in pods(core) if p["metadata"]["name"] not in before]
                assert {p["spec"]["nodeName"] for p in fresh} <= set(RACK_2), fresh
                assert all(p["spec"]["schedulerName"] == "powercap-scheduler" for p in fresh)

                # The surge ends: headroom returns and the maximum is restored.
                sim.clear_surges()

                def restored() -> bool:
                    got = custom.get_namespaced_custom_object(
                        "keda.sh", "v1alpha1", NAMESPACE, "scaledobjects", "batch"
                    )
                    return got["spec"]["maxReplicaCount"] == 3 and not (
                        got["metadata"].get("annotations") or {}
                    ).get("powercap.io/original-max-replicas")

                try:
                    wait_for("maxReplicaCount restored", restored, 30.0, every_s=0.25)
                except TimeoutError as exc:
                    raise AssertionError(f"{exc}{logs()}") from exc
        finally:
            sim.stop()


TRUST_NODES = ("gpu-a1", "gpu-a2")
TRUST_REPLICA_W = 400.0
# Calm: 2 × 500 W idle + 3 × 400 W = 2.2 kW. A 1 kW surge on gpu-a1 makes 3.2 kW, 350 W
# above where the breach clears (95% of 3 kW): any one pod (~730 W now) covers it, so
# priority alone decides which.
TRUST_CAP_W = 3000.0
TRUST_SURGE_W = 1000.0
ROGUE_W = 50_000.0
PRIORITY_CLASSES = {"powercap-e2e-low": 100, "powercap-e2e-high": 500}
# (name, PriorityClass, the creator's powercap.io/priority label)
TRUST_PODS = (
    ("claims-999", "powercap-e2e-low", "999"),
    ("batch-1", "powercap-e2e-high", None),
    ("batch-2", "powercap-e2e-high", None),
)


def test_the_lowest_priority_class_goes_first_and_a_rogue_exporter_moves_nothing() -> None:
    from kubernetes import client as k8s

    problem = problem_from_spec(
        spec_from_data(
            batch_scenario(
                "e2e-trust",
                racks={"rack-1": TRUST_NODES},
                rack_cap_w=TRUST_CAP_W,
                site_cap_w=2 * TRUST_CAP_W,
                replicas=len(TRUST_PODS),
                replica_w=TRUST_REPLICA_W,
                idle_w=IDLE_W,
            )
        )
    )
    with cluster(TEST_LOG_DIR, prefix="powercap-trust") as c:
        client = api_client(c.kubeconfig)
        core = k8s_apis(client)[0]
        scheduling: Any = k8s.SchedulingV1Api(client)
        create_nodes(client, problem)
        for name, value in PRIORITY_CLASSES.items():
            scheduling.create_priority_class(
                {
                    "apiVersion": "scheduling.k8s.io/v1",
                    "kind": "PriorityClass",
                    "metadata": {"name": name},
                    "value": value,
                }
            )
        wait_for_default_account(core)
        for name, priority_class, label in TRUST_PODS:
            body = bare_pod(name, TRUST_NODES[0])
            body["spec"]["priorityClassName"] = priority_class
            if label is not None:
                body["metadata"]["labels"]["powercap.io/priority"] = label
            core.create_namespaced_pod(NAMESPACE, body)
        # The API server's Priority admission wrote each class's value into the pod.
        assert {p["metadata"]["name"]: p["spec"]["priority"] for p in pods(core)} == {
            name: PRIORITY_CLASSES[priority_class] for name, priority_class, _ in TRUST_PODS
        }

        sim_pods = StaticPods()
        clock = SimClock(start_s=time.time())
        sim = PowerSimulator(sim_nodes(problem), grid_profiles(problem), sim_pods, clock=clock)
        rogue = PowerSimulator(sim_nodes(problem), grid_profiles(problem), sim_pods, clock=clock)
        rogue.surge(extra_watts=ROGUE_W, start_s=-math.inf)
        address, rogue_address = sim.start(), rogue.start()
        try:
            with (
                pod_feed(core, sim_pods),
                prometheus(
                    [ScrapeJob("powersim", [address]), ScrapeJob("rogue", [rogue_address])],
                    TEST_LOG_DIR,
                ) as prom,
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
                # One eviction per minute: the test sees exactly the first choice.
                config |= fast_controller(
                    prom.url, sim.non_gpu_watts(TRUST_NODES[0]), 60, lease=lease
                )
                config["power"]["selector"] = {"job": "powersim"}
                path = c.run_dir / "powercap.json"
                path.write_bytes(orjson.dumps(config))
                controller, port = start_controller(c, path)  # its /metrics

                def logs() -> str:
                    return f"\n--- powercap controller (tail) ---\n{controller.tail(40)}"

                # The rogue is in Prometheus, reporting gpu-a1 far over the cap ...
                rogue_w = prom.query('sum by (Hostname) (DCGM_FI_DEV_POWER_USAGE{job="rogue"})')
                assert rogue_w and all(float(r["value"][1]) > ROGUE_W for r in rogue_w)
                # ... but the controller reads the real simulator only: calm, no action.
                calm = IDLE_W * 2 + TRUST_REPLICA_W * len(TRUST_PODS)

                def reads_calm() -> bool:
                    watts, breach = rack_1(port)
                    return watts == pytest.approx(calm, abs=1.0) and breach == 0.0

                try:
                    wait_for(f"the controller to read {calm:.0f} W", reads_calm, 60.0)
                except TimeoutError as exc:
                    raise AssertionError(f"{exc}; rack 1 now {rack_1(port)}{logs()}") from exc
                assert samples(port)[("powercap_controller_leader", ())] == 1.0, logs()
                assert evict_events(core) == []

                sim.surge(extra_watts=TRUST_SURGE_W, nodes=[TRUST_NODES[0]])

                def evicted() -> bool:
                    return bool(evict_events(core))

                try:
                    wait_for("an eviction", evicted, 30.0, every_s=0.25)
                except TimeoutError as exc:
                    raise AssertionError(f"{exc}; rack 1 now {rack_1(port)}{logs()}") from exc
                (event,) = evict_events(core)
                assert event["involvedObject"]["name"] == "claims-999", f"{event}{logs()}"
                left = {p["metadata"]["name"] for p in pods(core)}
                assert {"batch-1", "batch-2"} <= left
        finally:
            sim.stop()
            rogue.stop()
