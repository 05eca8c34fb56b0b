"""The powercap.io resources and the workloads, live, on a real API server with KWOK and the
real kube-scheduler calling the extender (``resources.enabled``).

The tree, caps, profiles and policies are ``powercap config migrate`` of a small config,
applied with kubectl; the extender starts from them. Then, without a restart (the same
extender process throughout):

* a rack's cap is patched below that rack's current load: the extender's headroom for it
  turns negative within seconds (what the controller reports as a breach) and filter
  refuses the rack for every pod that comes next;
* ``rack-2``'s parent is patched to a domain that does not exist: the set is invalid, a
  Warning Event names the field and the fix, and the extender keeps scheduling on the last
  good tree;
* the Deployment is scaled from 4 to 12 replicas: the planner's demand follows (its plan
  log line reads ``…/12 replicas``), and the new replicas all land on the other rack;
* a KEDA ScaledObject with ``maxReplicaCount: 16`` is put on the Deployment: the demand is
  its ceiling, 16, not the Deployment's 12 (a ceiling below the replicas running would not
  show: the planner never plans for fewer replicas than run).

Beside it ``powercap controller`` (dry run; its Prometheus is unreachable, so it measures
nothing) leads and writes PowerDomain status: the lowered rack's status shows the new, negative
headroom and the new generation.

A second test measures: the power simulator draws for three replicas in a rack, a real
Prometheus scrapes it, and ``powercap controller`` (dry run, on the powercap.io objects made
for the scenario) reads the rack calm. ``kubectl patch`` lowers the rack's cap below what it
draws, and the controller reports the breach without a restart: the PowerDomain's status
``Breached`` with the ``Breached`` condition, ``powercap_domain_in_breach`` 1, and its dry-run
decision as an Event.

A missing tool fails the test naming ``make tools``; nothing is skipped.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from e2e import crds, toolchain
from e2e.cluster import TEST_LOG_DIR, Cluster, Process, binary, cluster
from e2e.controlled import create_bare_pods, fast_controller, k8s_apis, pod_feed, samples
from e2e.deploy import (
    NAMESPACE,
    api_client,
    create_nodes,
    deployment_object,
    powercap_config,
    use_resources,
    wait_established,
    wait_for,
)
from e2e.extender_view import extender_headroom
from e2e.powersim import PowerSimulator, SimClock, StaticPods, grid_profiles, sim_nodes
from e2e.prometheus import ScrapeJob, prometheus
from e2e.rbac import NAMESPACE as LEASE_NAMESPACE
from e2e.scenarios import NODE_IDLE_W, REPLICA_HIGH_W, batch_scenario, racks_scenario
from e2e.scheduler import powercap_command, start_controller, start_extender, start_scheduler
from extender.crds.definitions import definitions
from placement.problem import Problem
from placement.scenario.building import problem_from_spec
from placement.scenario.spec import spec_from_data

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "manifests" / "crds"
# Room for all twelve replicas on either rack, at their peaks.
RACK_CAP_W = 2 * NODE_IDLE_W + 12 * REPLICA_HIGH_W
SERVICE = "chat"
SCENARIO = racks_scenario(
    "e2e-resources",
    racks=2,
    nodes_per_rack=2,
    rack_cap_w=RACK_CAP_W,
    services=[(SERVICE, 4, "10:00")],
)
# The CRDs hold profiles and schedules to the default grid's 144 slots (CEL).
SCENARIO["grid"] = {"period": "24h", "step": "10m"}
LOWERED_RACK = "rack-1"


def kubectl(c: Cluster, *args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(
        [
            str(binary("kubectl")),
            f"--kubeconfig={c.kubeconfig}",
            f"--cache-dir={c.run_dir / 'kubectl-cache'}",
            *args,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, f"`kubectl {' '.join(args)}` failed:\n{proc.stderr}"
    return proc.stdout


def migrated(config_path: Path) -> str:
    proc = subprocess.run(
        [*powercap_command(), "config", "migrate", str(config_path), "--namespace", NAMESPACE],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, f"powercap config migrate failed:\n{proc.stderr[-3000:]}"
    assert "kind: PowerDomain" in proc.stdout, proc.stdout[:500]
    return proc.stdout


def pods_per_rack(client: Any, problem: Problem) -> tuple[dict[str, int], int]:
    """Bound replicas per rack, and the replicas still pending."""
    from kubernetes import client as k8s

    rack_of = {
        problem.fleet.names[n]: problem.tree.names[int(problem.fleet.domain[n])]
        for n in range(problem.fleet.size)
    }
    core: Any = k8s.CoreV1Api(client)
    pods = core.list_namespaced_pod(NAMESPACE, label_selector=f"powercap.io/service={SERVICE}")
    per_rack: dict[str, int] = {}
    pending = 0
    for pod in pods.items:
        if pod.metadata.deletion_timestamp is not None:
            continue
        node = pod.spec.node_name
        if node is None:
            pending += 1
        else:
            per_rack[rack_of[node]] = per_rack.get(rack_of[node], 0) + 1
    return per_rack, pending


def planned_demands(extender: Process) -> list[int]:
    """The demand of every plan the extender logged (``plan greedy (…): 4/4 replicas``)."""
    text = extender.log.read_text(errors="replace")
    return [int(m) for m in re.findall(r"plan \S+ \([^)]*\): \d+/(\d+) replicas", text)]


def test_caps_and_demand_follow_the_resources_without_a_restart() -> None:
    problem = problem_from_spec(spec_from_data(SCENARIO))
    with cluster(TEST_LOG_DIR, prefix="powercap-resources") as c:
        client = api_client(c.kubeconfig)
        kubectl(c, "apply", "-k", str(CRDS))
        installed = crds.installed(toolchain.cache_root())
        keda = [p for p in installed if "scaledobjects" in p.name]
        assert keda, f"the KEDA ScaledObject CRD is missing; run `make tools` ({installed})"
        kubectl(c, "apply", "--server-side", "-f", str(keda[0]))
        wait_established(
            api_client(c.kubeconfig), [d.name for d in definitions()] + ["scaledobjects.keda.sh"]
        )
        data = powercap_config(problem)
        data["resources"] = {"enabled": True}
        config = c.run_dir / "powercap.json"
        config.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        kubectl(c, "apply", "-f", "-", stdin=migrated(config))
        create_nodes(client, problem)
        extender, ports = start_extender(c, config)
        pid = extender.popen.pid
        controlling = c.run_dir / "controller.json"
        controlling.write_bytes(
            orjson.dumps(
                {
                    **data,
                    "power": {"url": "http://127.0.0.1:9", "timeout": "1s"},
                    "controller": {"enabled": True, "dryRun": True, "period": "1s"},
                }
            )
        )
        start_controller(c, controlling)
        start_scheduler(c, ports.verbs)

        from kubernetes import client as k8s

        apps: Any = k8s.AppsV1Api(client)
        apps.create_namespaced_deployment(NAMESPACE, deployment_object(problem, 0))
        wait_for(
            "4 replicas bound", lambda: sum(pods_per_rack(client, problem)[0].values()) == 4, 60
        )
        wait_for("a plan for 4 replicas", lambda: 4 in planned_demands(extender), 30)
        before, _ = pods_per_rack(client, problem)

        # A cap below the rack's current load: its idle power alone, less a little.
        headroom = extender_headroom(ports.metrics)[LOWERED_RACK]
        load = RACK_CAP_W - headroom
        lowered = max(1.0, min(load, 2 * NODE_IDLE_W) - 100.0)
        custom: Any = k8s.CustomObjectsApi(client)
        custom.patch_cluster_custom_object(
            "powercap.io",
            "v1alpha1",
            "powerdomains",
            LOWERED_RACK,
            {"spec": {"cap": {"watts": lowered}}},
        )
        started = time.monotonic()
        wait_for(
            f"{LOWERED_RACK}'s headroom below zero",
            lambda: extender_headroom(ports.metrics)[LOWERED_RACK] < 0,
            10,
            every_s=0.2,
        )
        applied_s = time.monotonic() - started
        assert extender_headroom(ports.metrics)[LOWERED_RACK] == pytest.approx(
            lowered - load, abs=1.0
        )

        def status() -> dict[str, Any]:
            obj = custom.get_cluster_custom_object(
                "powercap.io", "v1alpha1", "powerdomains", LOWERED_RACK
            )
            found: dict[str, Any] = obj.get("status") or {}
            generation = obj["metadata"]["generation"]
            return found if found.get("observedGeneration") == generation else {}

        wait_for(f"{LOWERED_RACK}'s status with its new cap", lambda: bool(status()), 20)
        written = status()
        print(kubectl(c, "get", "powerdomains"))

        custom.patch_cluster_custom_object(
            "powercap.io", "v1alpha1", "powerdomains", "rack-2", {"spec": {"parent": "row-9"}}
        )
        core: Any = k8s.CoreV1Api(client)

        def unknown_parent() -> list[str]:
            events = core.list_namespaced_event("default", field_selector="reason=UnknownParent")
            return [e.message for e in events.items if e.involved_object.name == "rack-2"]

        wait_for("an UnknownParent Event on rack-2", lambda: bool(unknown_parent()), 20)
        messages = unknown_parent()

        apps.patch_namespaced_deployment(SERVICE, NAMESPACE, {"spec": {"replicas": 12}})
        wait_for("a plan for 12 replicas", lambda: 12 in planned_demands(extender), 60)
        wait_for(
            "12 replicas bound", lambda: sum(pods_per_rack(client, problem)[0].values()) == 12, 90
        )
        after, pending = pods_per_rack(client, problem)

        scaled_object = {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": {"name": SERVICE, "namespace": NAMESPACE},
            "spec": {
                "scaleTargetRef": {"name": SERVICE},
                "maxReplicaCount": 16,
                "triggers": [{"type": "cpu", "metadata": {"value": "80"}}],
            },
        }
        kubectl(c, "apply", "-f", "-", stdin=orjson.dumps(scaled_object).decode())
        wait_for("a plan for KEDA's ceiling, 16", lambda: planned_demands(extender)[-1] == 16, 30)

        assert extender.alive() and extender.popen.pid == pid, "the extender restarted"
        assert "the running extender keeps its tree" not in extender.log.read_text()

    assert applied_s < 10
    assert written["headroomWatts"] == pytest.approx(lowered - load, abs=1.0), written
    assert written["state"] == "Ok" and written["breached"] is False, written
    ready = [x for x in written["conditions"] if x["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True", written
    assert after.get(LOWERED_RACK, 0) == before.get(LOWERED_RACK, 0), (
        f"the lowered rack took new replicas: {before} -> {after}"
    )
    assert pending == 0 and sum(after.values()) == 12
    assert messages[0].startswith("PowerDomain/rack-2 spec.parent: unknown domain 'row-9'"), (
        messages
    )
    assert "create the PowerDomain 'row-9' or fix the parent" in messages[0], messages


# --- the controller reports a breach of a cap lowered live, from measured power ------------
BREACH_RACKS = {"rack-1": ("gpu-a1", "gpu-a2"), "rack-2": ("gpu-b1", "gpu-b2")}
BREACH_IDLE_W = 500.0
BREACH_REPLICA_W = 800.0
BREACH_PODS = ("gpu-a1", "gpu-a1", "gpu-a2")  # three replicas in rack 1
BREACH_SCENARIO = batch_scenario(
    "e2e-resources-breach",
    racks=BREACH_RACKS,
    rack_cap_w=6000.0,
    site_cap_w=12000.0,
    replicas=len(BREACH_PODS),
    replica_w=BREACH_REPLICA_W,
    idle_w=BREACH_IDLE_W,
)


def measured(port: int, domain: str) -> tuple[float, float]:
    """``domain``'s (measured watts, in breach) as the controller exports them."""
    m = samples(port)
    labels = (("domain", domain),)
    return (
        m.get(("powercap_domain_measured_watts", labels), float("nan")),
        m.get(("powercap_domain_in_breach", labels), float("nan")),
    )


def test_the_controller_reports_the_breach_of_a_cap_lowered_below_the_measured_load() -> None:
    """The power simulator draws for three replicas in rack 1, Prometheus scrapes it, and
    ``powercap controller`` (dry run, on the powercap.io objects) reads rack 1 calm under its
    6 kW cap. ``kubectl patch`` lowers the cap below what rack 1 draws: without a restart the
    controller reports the breach — the PowerDomain's status turns ``Breached`` with the
    ``Breached`` condition, ``powercap_domain_in_breach`` is 1, and its (dry-run) decision
    is an Event."""
    problem = problem_from_spec(spec_from_data(BREACH_SCENARIO))
    calm = 2 * BREACH_IDLE_W + BREACH_REPLICA_W * len(BREACH_PODS)
    lowered = calm - 400.0
    with cluster(TEST_LOG_DIR, prefix="powercap-resources-breach") as c:
        client = api_client(c.kubeconfig)
        core, _apps, custom, _policy, _extensions = k8s_apis(client)
        use_resources(client, problem)
        create_nodes(client, problem)
        create_bare_pods(core, list(BREACH_PODS))

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
                config = powercap_config(problem, resources=True)
                config |= fast_controller(
                    prom.url,
                    sim.non_gpu_watts(BREACH_PODS[0]),
                    60,
                    lease={
                        "namespace": LEASE_NAMESPACE,
                        "duration": "4s",
                        "renewDeadline": "3s",
                        "retryPeriod": "1s",
                    },
                )
                config["controller"]["dryRun"] = True
                path = c.run_dir / "powercap.json"
                path.write_bytes(orjson.dumps(config))
                controller, port = start_controller(c, path)

                def logs() -> str:
                    return f"\n--- powercap controller (tail) ---\n{controller.tail(40)}"

                def reads_calm() -> bool:
                    watts, breach = measured(port, LOWERED_RACK)
                    return watts == pytest.approx(calm, abs=1.0) and breach == 0.0

                try:
                    wait_for(f"the controller to read {calm:.0f} W in rack 1", reads_calm, 60.0)
                except TimeoutError as exc:
                    raise AssertionError(f"{exc}; {measured(port, LOWERED_RACK)}{logs()}") from exc

                kubectl(
                    c,
                    "patch",
                    "powerdomain",
                    LOWERED_RACK,
                    "--type=merge",
                    "-p",
                    orjson.dumps({"spec": {"cap": {"watts": lowered}}}).decode(),
                )

                def status() -> dict[str, Any]:
                    obj = custom.get_cluster_custom_object(
                        "powercap.io", "v1alpha1", "powerdomains", LOWERED_RACK
                    )
                    found: dict[str, Any] = obj.get("status") or {}
                    return found

                try:
                    wait_for(
                        "rack 1's status Breached",
                        lambda: status().get("state") == "Breached",
                        30.0,
                        every_s=0.5,
                    )
                except TimeoutError as exc:
                    raise AssertionError(f"{exc}; status {status()}{logs()}") from exc
                written = status()
                in_breach = measured(port, LOWERED_RACK)[1]
                got = kubectl(c, "get", "powerdomains")
                print(f"\n$ kubectl get powerdomains\n{got}", flush=True)

                def decisions() -> list[str]:
                    events = core.list_namespaced_event(
                        NAMESPACE, field_selector="reason=PowerCapEvict"
                    )
                    return [e.message for e in events.items]

                wait_for(
                    "the controller's (dry-run) decision as an Event",
                    lambda: bool(decisions()),
                    30.0,
                )
                decided = decisions()
                alive = controller.alive()
        finally:
            sim.stop()

    assert alive, "the controller exited"
    assert written["breached"] is True and written.get("breachedSince"), written
    assert written["measuredWatts"] == pytest.approx(calm, abs=1.0), written
    breached = [x for x in written["conditions"] if x["type"] == "Breached"]
    assert breached and breached[0]["status"] == "True", written
    assert breached[0]["reason"] == "OverCap", written
    assert in_breach == 1.0
    (line,) = [x for x in got.splitlines() if x.startswith(f"{LOWERED_RACK} ")]
    assert f"{lowered:g}" in line.split() and "Breached" in line.split(), got
    assert f"domain {LOWERED_RACK} is over its cap" in decided[0], decided
