"""Two controllers, one Lease: only the holder acts; SIGKILL it and the other takes over.

One rack of two 8-GPU fake nodes (cap 6 kW) carrying twelve ``batch`` pods bound by the
test (no scheduler: evicted pods are not replaced, so every eviction shows), the power
simulator fed from the API server's pods, a real Prometheus scraping it, a KEDA
ScaledObject for ``batch`` (its CRD installed; KEDA's operator does not run), and two
``powercap controller --config`` processes, ``a`` and ``b``, on different ports with the
same config and the ServiceAccount ``powercap-controller``'s token: a 3 s Lease (the
shipped ``powercap-system/powercap-controller``, renew deadline 2 s, retry every 1 s), the
memory in the shipped ConfigMap beside it, one reshape round, then two evictions per 20 s
window, cluster-wide. Then:

1. exactly one of them leads (``powercap_controller_leader`` 1 there, 0 in the other) and
   holds the Lease;
2. rack 1 surges far over its cap, more than evicting every pod could shed, so the breach
   goes on: the leader lowers the ScaledObject's ``maxReplicaCount`` and then evicts (its
   ``powercap_controller_actions_total`` moves, one ``PowerCapEvict`` Event per eviction)
   and the other process takes no step, though it tracks the same breach;
3. the leader is SIGKILLed mid-episode (no release of the Lease, as in a crash): the other
   takes the Lease within ``leaseDuration`` + two retry periods + a margin and evicts on
   the breach that continues — carrying on the episode from the memory the leader kept in
   its ConfigMap: the breach keeps its start, the reshape is not taken again, and the
   evictions of both, across the failover, stay within two per 20 s window.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from e2e.cluster import TEST_LOG_DIR, cluster
from e2e.controlled import (
    create_bare_pods,
    evict_events,
    fast_controller,
    install_scaled_object_crd,
    k8s_apis,
    pod_feed,
    samples,
    scaled_object,
)
from e2e.deploy import NAMESPACE, api_client, create_nodes, powercap_config, wait_for
from e2e.powersim import PowerSimulator, SimClock, StaticPods, grid_profiles, sim_nodes
from e2e.prometheus import ScrapeJob, prometheus
from e2e.rbac import NAMESPACE as LEASE_NAMESPACE
from e2e.scenarios import BATCH, batch_scenario
from e2e.scheduler import start_controller
from placement.scenario.building import problem_from_spec
from placement.scenario.spec import spec_from_data

pytestmark = [pytest.mark.e2e, pytest.mark.controller]


LEASE = "powercap-controller"
LEASE_S = 3
RETRY_S = 1
TAKEOVER_MARGIN_S = 4.0  # a loaded 2-core machine: process scheduling, a slow API call
RACK_CAP_W = 6000.0
IDLE_W = 500.0
REPLICA_W = 400.0
NODES = ("gpu-a1", "gpu-a2")
PODS = 12
SURGE_W = 5000.0  # per node: 15 kW measured; all twelve pods shed 4.8 kW
# Longer than a takeover (lease + retries + a reshape's settle) takes, so a successor that
# forgot the leader's evictions would evict again inside the window.
WINDOW_S = 20
LIMIT = 2
STAMP_S = 2.0  # Event stamps are whole seconds, posted just after the eviction
STATE = "powercap-controller-state"

SCENARIO = batch_scenario(
    "e2e-failover",
    racks={"rack-1": NODES},
    rack_cap_w=RACK_CAP_W,
    site_cap_w=2 * RACK_CAP_W,
    replicas=PODS,
    replica_w=REPLICA_W,
    idle_w=IDLE_W,
)


def leader(port: int) -> float:
    return samples(port).get(("powercap_controller_leader", ()), float("nan"))


def evictions(port: int) -> float:
    """Evictions ``powercap controller`` on ``port`` has taken."""
    return sum(
        v
        for (name, labels), v in samples(port).items()
        if name == "powercap_controller_actions_total" and ("kind", "evict") in labels
    )


def memory(core: Any) -> dict[str, Any]:
    """The controller's memory, as the leader last wrote it into its ConfigMap."""
    cm = orjson.loads(
        core.read_namespaced_config_map(STATE, LEASE_NAMESPACE, _preload_content=False).data
    )
    loaded: dict[str, Any] = orjson.loads(cm["data"]["memory.json"])
    return loaded


def lowered_to(custom: Any) -> int:
    so = custom.get_namespaced_custom_object(
        "keda.sh", "v1alpha1", NAMESPACE, "scaledobjects", BATCH
    )
    return int(so["spec"]["maxReplicaCount"])


def reshape_events(core: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = orjson.loads(
        core.list_namespaced_event(
            NAMESPACE, field_selector="reason=PowerCapReshape", _preload_content=False
        ).data
    )["items"]
    return items


def stamp(event: dict[str, Any]) -> float:
    return (
        datetime.strptime(event["firstTimestamp"], "%Y-%m-%dT%H:%M:%SZ")
        .replace(tzinfo=UTC)
        .timestamp()
    )


def holder(coordination: Any) -> str:
    lease = orjson.loads(
        coordination.read_namespaced_lease(LEASE, LEASE_NAMESPACE, _preload_content=False).data
    )
    return str(lease["spec"].get("holderIdentity") or "")


def test_only_the_lease_holder_acts_and_the_other_takes_over_when_it_dies() -> None:
    from kubernetes import client as k8s

    problem = problem_from_spec(spec_from_data(SCENARIO))
    with cluster(TEST_LOG_DIR, prefix="powercap-failover") as c:
        client = api_client(c.kubeconfig)
        core, _, custom, _, extensions = k8s_apis(client)
        coordination = k8s.CoordinationV1Api(client)
        install_scaled_object_crd(extensions)
        custom.create_namespaced_custom_object(
            "keda.sh", "v1alpha1", NAMESPACE, "scaledobjects", scaled_object(BATCH, PODS)
        )
        create_nodes(client, problem)
        create_bare_pods(core, [NODES[i % 2] for i in range(PODS)])
        sim_pods = StaticPods()
        sim = PowerSimulator(
            sim_nodes(problem),
            grid_profiles(problem),
            sim_pods,
            clock=SimClock(start_s=time.time()),
        )
        address = sim.start()
        try:
            with (
                pod_feed(core, sim_pods),
                prometheus([ScrapeJob("powersim", [address])], TEST_LOG_DIR) as prom,
            ):
                prom.wait_for_targets()
                config = powercap_config(problem)
                config["planner"]["enabled"] = False
                lease = {
                    "name": LEASE,
                    "namespace": LEASE_NAMESPACE,
                    "duration": f"{LEASE_S}s",
                    "renewDeadline": f"{LEASE_S - 1}s",
                    "retryPeriod": f"{RETRY_S}s",
                }
                config |= fast_controller(
                    prom.url, sim.non_gpu_watts(NODES[0]), WINDOW_S, lease=lease
                )
                # A reshape first, so a successor starting the ladder again would show.
                config["controller"]["reshapeRounds"] = 1
                for scope in ("perDomain", "cluster"):
                    config["controller"]["evictions"][scope]["limit"] = LIMIT
                path = c.run_dir / "powercap.json"
                path.write_bytes(orjson.dumps(config))
                procs = dict(
                    zip(
                        "ab",
                        (start_controller(c, path, name=f"powercap-{n}") for n in "ab"),
                        strict=True,
                    )
                )

                def logs() -> str:
                    return "".join(
                        f"\n--- powercap controller {n} (tail) ---\n{p.tail(25)}"
                        for n, (p, _) in procs.items()
                    )

                def one_leader() -> bool:
                    return sorted(leader(port) for _, port in procs.values()) == [0.0, 1.0]

                wait_for("exactly one leader", one_leader, 20.0, every_s=0.25)
                first = next(n for n, (_, port) in procs.items() if leader(port) == 1.0)
                other = "b" if first == "a" else "a"
                first_proc, first_port = procs[first]
                _, other_port = procs[other]
                first_identity = holder(coordination)
                assert first_identity, "the leader holds no Lease"

                sim.surge(extra_watts=SURGE_W, domains=["rack-1"])
                try:
                    wait_for(
                        f"two evictions by the leader ({first})",
                        lambda: evictions(first_port) >= 2.0,
                        30.0,
                        every_s=0.25,
                    )
                except TimeoutError as exc:
                    raise AssertionError(f"{exc}{logs()}") from exc
                # The other tracks the same breach but takes no step.
                rack = (("domain", "rack-1"),)
                assert samples(other_port)[("powercap_domain_in_breach", rack)] == 1.0
                assert evictions(other_port) == 0.0, logs()
                assert leader(other_port) == 0.0
                before_kill = len(evict_events(core))
                assert before_kill == evictions(first_port)
                # The leader reshaped first, and its memory holds the episode.
                assert len(reshape_events(core)) == 1, logs()
                lowered = lowered_to(custom)
                assert lowered < PODS
                episode = memory(core)
                since = episode["breachSince"]["rack-1"]
                assert episode["steps"]["rack-1"][0][0] == "reshape"
                assert len(episode["clusterEvictions"]) == before_kill

                first_proc.kill()
                killed_at = time.monotonic()
                bound = LEASE_S + 2 * RETRY_S + TAKEOVER_MARGIN_S
                try:
                    wait_for(
                        f"{other} to take the Lease",
                        lambda: leader(other_port) == 1.0,
                        bound,
                        every_s=0.1,
                    )
                except TimeoutError as exc:
                    raise AssertionError(f"{exc}{logs()}") from exc
                took_s = time.monotonic() - killed_at
                print(f"[e2e] {other} took the Lease {took_s:.1f}s after the kill", flush=True)
                assert holder(coordination) not in ("", first_identity)

                try:
                    wait_for(
                        f"an eviction by {other}",
                        lambda: evictions(other_port) >= 1.0,
                        WINDOW_S + 15.0,
                        every_s=0.25,
                    )
                except TimeoutError as exc:
                    raise AssertionError(f"{exc}{logs()}") from exc
                assert len(evict_events(core)) > before_kill
                # The episode went on: it began no later than the leader's (the other's own
                # tracker may have entered a tick earlier; a new episode would begin after the
                # takeover), no second reshape, the same maximum.
                assert memory(core)["breachSince"]["rack-1"] <= since
                assert len(reshape_events(core)) == 1, logs()
                assert lowered_to(custom) == lowered
                # Across both leaders, no window of WINDOW_S held more than LIMIT evictions.
                times = sorted(stamp(e) for e in evict_events(core))
                gaps = [b - a for a, b in zip(times, times[LIMIT:], strict=False)]
                assert gaps and min(gaps) >= WINDOW_S - STAMP_S, (times, logs())
        finally:
            sim.stop()
