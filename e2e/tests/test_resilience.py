"""Resilience on a real cluster: the extender, the API server and the mirror's watch fail.

Each test runs the smoke test's power-bound cluster (two racks of three 8-GPU fake nodes, two
anti-phased services whose replicas the rack caps, not the GPUs, limit) through the real
kube-scheduler and ``powercap serve``, breaks one thing mid-run, and checks afterwards that

* pods waiting for the break are scheduled once it is over,
* no domain exceeds its cap in any slot (``placement.metrics.evaluate``), counting the pods
  bound before the break, and
* the extender's ledger is the API server's truth: its
  ``powercap_domain_predicted_headroom_watts`` equals the headroom computed from the pods
  the API server reports.

The breaks: the extender killed (SIGKILL) while pods arrive — with ``ignorable: false`` they
must wait, unbound; kube-apiserver killed and restarted under a running extender and
scheduler; and the mirror's watch expiring (``410 Gone``) while pods it knew were deleted, so
only a relist can bring its ledger back to the truth.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from e2e.cluster import TEST_LOG_DIR, Cluster, Process, cluster
from e2e.deploy import (
    NAMESPACE,
    SERVICE_LABEL,
    Observed,
    api_client,
    create_nodes,
    decided_by_extender,
    deployment_object,
    observe,
    wait_for,
    wait_settled,
    write_config,
)
from e2e.extender_view import api_headroom, labelled, ledger_disagreements
from e2e.scenarios import racks_scenario
from e2e.scheduler import ExtenderPorts, start_extender, start_scheduler
from placement.metrics import evaluate
from placement.problem import Problem
from placement.scenario.building import problem_from_spec
from placement.scenario.spec import spec_from_data

pytestmark = pytest.mark.e2e


RACK_CAP_W = 5500.0  # 1,500 W of idle + 4,000 W: about six replicas at their peaks
DEMAND = 10  # replicas each service wants in the end; the racks hold about twelve in all
EARLY = 3  # replicas each service has before the break: they fit easily
# The scheduler retries a pod that met an unreachable extender with back-off of up to 10 s
# (podMaxBackoffSeconds); settling waits for real decisions, so this is a generous bound.
SETTLE_TIMEOUT_S = 120.0
QUIET_S = 6.0  # unchanged this long (and every Pending pod judged by powercap): settled
OUTAGE_S = 3.0  # how long kube-apiserver stays down
HOLD_S = 5.0  # how long pods are watched waiting for a dead extender


def power_bound_problem(name: str) -> Problem:
    spec = racks_scenario(
        name,
        racks=2,
        nodes_per_rack=3,
        rack_cap_w=RACK_CAP_W,
        services=[("chat-day", DEMAND, "15:00"), ("batch-night", DEMAND, "03:00")],
    )
    problem = problem_from_spec(spec_from_data(spec))
    # Every replica fits by GPUs: whatever stays Pending, power kept it there.
    assert problem.services.gpus @ problem.services.demand <= problem.fleet.gpus.sum()
    return problem


# --- the running system -------------------------------------------------------------------
@dataclass
class Run:
    """One test's cluster with the extender and the scheduler running beside it."""

    cluster: Cluster
    problem: Problem
    client: Any  # kubernetes.client.ApiClient
    config: Path
    extender: Process
    ports: ExtenderPorts
    scheduler: Process

    def logs(self) -> str:
        """Log tails of the extender and the scheduler, for failure messages."""
        return (
            f"\n--- powercap-extender log (tail) ---\n{self.extender.tail(30)}"
            f"\n--- kube-scheduler log (tail) ---\n{self.scheduler.tail(25)}"
        )


def start(c: Cluster, problem: Problem, replicas: int) -> Run:
    """Nodes, config, extender, scheduler, and each service's Deployment at ``replicas``."""
    client = api_client(c.kubeconfig)
    create_nodes(client, problem)
    config = write_config(problem, c.run_dir / "powercap.json")
    extender, ports = start_extender(c, config)
    scheduler = start_scheduler(c, ports.verbs)
    from kubernetes import client as k8s

    apps: Any = k8s.AppsV1Api(client)
    for s in range(problem.services.size):
        body = deployment_object(problem, s)
        body["spec"]["replicas"] = replicas
        apps.create_namespaced_deployment(NAMESPACE, body)
    return Run(c, problem, client, config, extender, ports, scheduler)


def scale(run: Run, service: str, replicas: int) -> None:
    from kubernetes import client as k8s

    apps: Any = k8s.AppsV1Api(run.client)
    apps.patch_namespaced_deployment_scale(service, NAMESPACE, {"spec": {"replicas": replicas}})


def scale_all(run: Run, replicas: int) -> None:
    for service in run.problem.services.names:
        scale(run, service, replicas)


def wait_placed(run: Run, wanted: int, timeout_s: float = SETTLE_TIMEOUT_S) -> Observed:
    """Wait until ``wanted`` pods exist, each bound or Pending by the extender's own decision
    (not a failed call to it), with nothing changing for ``QUIET_S``."""
    return wait_settled(
        run.client,
        run.problem,
        timeout_s,
        quiet_s=QUIET_S,
        wanted=wanted,
        decided=decided_by_extender,
        context=run.logs,
    )


# --- the extender's view against the API server's -------------------------------------------
def headroom_mismatch(run: Run) -> dict[str, tuple[float, float]]:
    """Domains where the extender's headroom differs from the API server's:
    name → (extender, API server)."""
    return ledger_disagreements(
        run.problem, observe(run.client, run.problem).assignment, run.ports.metrics
    )


def assert_ledger_matches_api(run: Run, timeout_s: float = 30.0) -> None:
    """Wait until the extender's headroom per domain is the API server's (the mirror may be
    an event behind); fail naming each domain's two values."""
    deadline = time.monotonic() + timeout_s
    while mismatch := headroom_mismatch(run):
        if time.monotonic() > deadline:
            table = ", ".join(
                f"{d}: extender {a:.1f} W, API {b:.1f} W" for d, (a, b) in mismatch.items()
            )
            raise AssertionError(
                f"the extender's ledger is not the API server's after {timeout_s:.0f}s: "
                f"{table}{run.logs()}"
            )
        time.sleep(0.5)


def assert_caps_kept(run: Run, seen: Observed, before: Observed) -> None:
    """No domain over its cap in any slot; pods bound before the break still where they were;
    more pods bound than before it; the ones left Pending were turned away by powercap."""
    metrics = evaluate(run.problem, seen.assignment)
    assert metrics.violations == 0, (
        f"over cap after the break: {metrics.violating_domains}, hosted {metrics.hosted}"
        f"{run.logs()}"
    )
    assert (seen.assignment.counts >= before.assignment.counts).all(), (
        "pods bound before the break moved or vanished:\n"
        f"before {before.assignment.as_mapping(run.problem)}\n"
        f"after  {seen.assignment.as_mapping(run.problem)}"
    )
    assert seen.assignment.hosted.sum() > before.assignment.hosted.sum(), (
        f"no pod was scheduled after the break: {metrics.hosted}{run.logs()}"
    )
    assert seen.pending, f"every pod fit ({metrics.hosted}): the test is not power-bound"


def bound(seen: Observed) -> int:
    return int(seen.assignment.hosted.sum())


def touch_nodes(run: Run) -> None:
    """Change an annotation no one reads on every node: a MODIFIED event per node."""
    from kubernetes import client as k8s

    core: Any = k8s.CoreV1Api(run.client)
    stamp = str(time.time_ns())
    for name in run.problem.fleet.names:
        core.patch_node(name, {"metadata": {"annotations": {"e2e.powercap.io/touched": stamp}}})


def write_marker(run: Run) -> None:
    """Create a ConfigMap: one write to etcd that no watch of the extender follows."""
    from kubernetes import client as k8s

    core: Any = k8s.CoreV1Api(run.client)
    name = f"e2e-marker-{time.time_ns()}"
    core.create_namespaced_config_map(NAMESPACE, {"metadata": {"name": name}})


def pods_version(run: Run) -> str:
    """The resourceVersion of a list of every pod, as a reflector would watch from."""
    from kubernetes import client as k8s

    core: Any = k8s.CoreV1Api(run.client)
    response = core.list_pod_for_all_namespaces(limit=1, _preload_content=False)
    return str(orjson.loads(response.data)["metadata"]["resourceVersion"])


def watch_refusal(run: Run, resource_version: str, timeout_s: float = 30.0) -> str:
    """How the API server answers a pods watch from ``resource_version``: ``"410 <message>"``
    when it has expired (as an HTTP status or as the watch's first ERROR event), else a
    description of what came instead. Retries while the API server's watch cache is still
    initialising (429, 5xx), as a reflector would."""
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    core: Any = k8s.CoreV1Api(run.client)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            response = core.list_pod_for_all_namespaces(
                watch=True,
                resource_version=resource_version,
                timeout_seconds=2,
                _preload_content=False,
            )
        except ApiException as exc:
            if exc.status == 410:
                return f"410 {exc.reason}"
            if exc.status in (429, 500, 503, 504) and time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            return f"HTTP {exc.status} {exc.reason}"
        try:
            first = response.readline()
        finally:
            response.release_conn()
        if not first:
            return "an empty watch: the version was still served"
        event = orjson.loads(first)
        status = event.get("object", {})
        if event.get("type") == "ERROR" and status.get("code") == 410:
            return f"410 {status.get('message', '')}"
        return f"a {event.get('type')} event: the version was still served"


def pods_of(run: Run, service: str) -> list[str]:
    """Names of every pod of ``service`` the API server holds, terminating ones included."""
    from kubernetes import client as k8s

    core: Any = k8s.CoreV1Api(run.client)
    response = core.list_namespaced_pod(
        NAMESPACE, label_selector=f"{SERVICE_LABEL}={service}", _preload_content=False
    )
    return [item["metadata"]["name"] for item in orjson.loads(response.data)["items"]]


# --- the tests ------------------------------------------------------------------------------
def test_pods_wait_for_a_killed_extender_and_caps_hold_after_its_restart() -> None:
    """SIGKILL the extender mid-run: new pods stay Pending and unbound (``ignorable: false``);
    restarted on the same port, it rebuilds its ledger from the API server — counting the
    pods bound before the kill — and schedules the waiting pods within the caps."""
    problem = power_bound_problem("e2e-extender-killed")
    services = problem.services.size
    with cluster(TEST_LOG_DIR) as c:
        run = start(c, problem, EARLY)
        before = wait_placed(run, EARLY * services)
        assert bound(before) == EARLY * services, (
            f"the early replicas should all fit: {before.pending}{run.logs()}"
        )

        run.extender.kill()
        scale_all(run, DEMAND)

        # Every new pod has been tried (a FailedScheduling exists) and none was bound.
        def all_tried() -> bool:
            seen = observe(run.client, problem)
            return seen.pods == DEMAND * services and all(seen.pending.values())

        try:
            wait_for("a failed scheduling attempt of every new pod", all_tried, 60.0)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}{run.logs()}") from exc
        # ...and they keep waiting: retried by the scheduler, never bound without the check.
        held_until = time.monotonic() + HOLD_S
        while True:
            down = observe(run.client, problem)
            assert np.array_equal(down.assignment.counts, before.assignment.counts), (
                "pods were bound while the extender was down: "
                f"{down.assignment.as_mapping(problem)}{run.logs()}"
            )
            if time.monotonic() > held_until:
                break
            time.sleep(0.5)
        assert len(down.pending) == (DEMAND - EARLY) * services
        unreachable = {p: m for p, m in down.pending.items() if f":{run.ports.verbs}/" not in m}
        assert not unreachable, (
            f"Pending pods whose FailedScheduling does not name the unreachable extender: "
            f"{unreachable}"
        )

        run.extender, _ = start_extender(c, run.config, ports=run.ports)
        after = wait_placed(run, DEMAND * services)
        assert_caps_kept(run, after, before)
        assert_ledger_matches_api(run)


def test_mirror_survives_an_apiserver_restart() -> None:
    """Kill kube-apiserver under a running extender and scheduler and start it again: the
    extender keeps serving, its mirror reconnects (its lag drops below the time since the
    restart), and pods created afterwards are scheduled within the caps, counting the pods
    bound before the restart."""
    problem = power_bound_problem("e2e-apiserver-restart")
    services = problem.services.size
    with cluster(TEST_LOG_DIR) as c:
        run = start(c, problem, EARLY)
        before = wait_placed(run, EARLY * services)

        c.stop_component("kube-apiserver")
        stopped = time.monotonic()
        time.sleep(OUTAGE_S)  # an outage long enough to see in the lag
        outage = time.monotonic() - stopped
        # The extender serves on without its API server, and its lag counts the outage; half
        # a second of slack for bytes the mirror had received but not yet read at the kill.
        lag = labelled(run.ports.metrics, "powercap_mirror_lag_seconds")
        assert set(lag) == {"nodes", "pods"} and all(v >= outage - 0.5 for v in lag.values()), (
            f"mirror lag {lag} after {outage:.1f}s without an API server{run.logs()}"
        )
        restarting = time.monotonic()
        c.start_components()

        # Both watches must carry news from the restarted server: pods from the scale-up,
        # nodes from an annotation (nodes may otherwise stay quiet for minutes).
        scale_all(run, DEMAND)
        touch_nodes(run)
        after = wait_placed(run, DEMAND * services)
        lag = labelled(run.ports.metrics, "powercap_mirror_lag_seconds")
        since = time.monotonic() - restarting
        stale = {r: v for r, v in lag.items() if v >= since}
        assert not stale, (
            f"the mirror has not heard from the restarted API server ({since:.1f}s ago): "
            f"lag {stale}{run.logs()}"
        )
        assert_caps_kept(run, after, before)
        assert_ledger_matches_api(run)


def test_mirror_relists_after_its_watch_expires() -> None:
    """Make the mirror's resourceVersion expire while pods it counted are deleted: freeze the
    extender, restart kube-apiserver over an etcd compacted to its current revision, scale a
    service down, thaw. The watch is answered 410 Gone, the mirror relists (the relist
    counter and its log say so), its ledger drops the deleted pods, and new pods still
    respect the caps."""
    problem = power_bound_problem("e2e-watch-expiry")
    services = problem.services.size
    keep = 1
    with cluster(TEST_LOG_DIR) as c:
        run = start(c, problem, DEMAND)
        before = wait_placed(run, DEMAND * services)
        # Which service won the racks varies from run to run: shrink the one holding most.
        top = int(np.argmax(before.assignment.hosted))
        victim, held = problem.services.names[top], int(before.assignment.hosted[top])
        assert held > keep, f"{victim} has {held} bound pods: too few to delete{run.logs()}"
        assert_ledger_matches_api(run)
        relists = labelled(run.ports.metrics, "powercap_mirror_relists_total")
        assert relists == {"nodes": 0.0, "pods": 0.0}, f"relists before any expiry: {relists}"

        # Nothing may bind while the views are compared: the scheduler goes, the extender
        # freezes, holding its watch connections and their resourceVersions.
        run.scheduler.stop()
        run.extender.pause()
        known = pods_version(run)  # the latest: no older than anything the mirror has read
        try:
            # One write the frozen mirror cannot see, so its resourceVersion is older than
            # etcd's revision at the compaction, whatever it last read.
            write_marker(run)
            c.stop_component("kube-apiserver")
            compacted = c.compact_etcd()
            c.start_components()
            scale(run, victim, keep)

            # Bound pods go too (the ReplicaSet deletes Pending ones first); wait until the
            # API server has forgotten them, so the gap holds real deletions.
            def scaled_down() -> bool:
                # Terminating pods too: they still hold power until kwok has removed them.
                return len(pods_of(run, victim)) == keep

            wait_for(f"{victim} scaled down to {keep}", scaled_down, 60.0)
            # The API server itself now refuses that version, so the mirror's, no newer, too.
            refusal = watch_refusal(run, known)
            assert refusal.startswith("410"), (
                f"a pods watch from resourceVersion {known} (before the compaction at "
                f"{compacted}) was not refused with 410 Gone: {refusal}"
            )
        finally:
            run.extender.resume()
        gap = observe(run.client, problem)
        assert not np.allclose(
            api_headroom(problem, gap.assignment), api_headroom(problem, before.assignment)
        ), "the scale-down changed no domain's headroom: the relist would prove nothing"

        try:
            wait_for(
                "the mirror's pods relist",
                lambda: labelled(run.ports.metrics, "powercap_mirror_relists_total")["pods"] >= 1,
                60.0,
            )
        except TimeoutError as exc:
            raise AssertionError(f"{exc}{run.logs()}") from exc
        log = run.extender.log.read_text(errors="replace")
        assert re.search(r"pods: resourceVersion \d+ expired \(410\)", log), (
            f"the relist was not caused by 410 Gone (etcd compacted at {compacted}){run.logs()}"
        )
        assert_ledger_matches_api(run)

        run.scheduler = start_scheduler(c, run.ports.verbs)
        scale(run, victim, DEMAND)
        after = wait_placed(run, DEMAND * services)
        assert_caps_kept(run, after, gap)
        assert_ledger_matches_api(run)
