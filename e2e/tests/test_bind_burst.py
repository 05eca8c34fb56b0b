"""500 pods at once through kube-scheduler and the extender's bind verb.

The scheduler and the extender are up before the Deployments appear, so the ReplicaSet
controller's pods arrive as a burst and the extender admits, records and binds them while
more keep coming. Afterwards the placement the API server reports must keep every cap in
every slot, and the extender's ledger (its per-domain predicted headroom) must equal the
headroom computed from that placement: nothing bound behind its back, nothing it
recorded left unbound.

The second test expires the extender's watches in the middle of the burst: the relist
that follows must keep the pods whose Bindings were in flight (assumed pods), or their
power is handed out twice.
"""

from __future__ import annotations

import re
import time
from typing import Any

import orjson
import pytest

from e2e.cluster import TEST_LOG_DIR, Cluster, Process, cluster
from e2e.deploy import (
    NAMESPACE,
    Observed,
    api_client,
    create_deployments,
    create_nodes,
    decided_by_extender,
    wait_for,
    wait_settled,
    write_config,
)
from e2e.extender_view import labelled, ledger_disagreements
from e2e.scenarios import racks_scenario
from e2e.scheduler import start_extender, start_scheduler
from placement.metrics import evaluate
from placement.problem import Problem
from placement.scenario.building import problem_from_spec
from placement.scenario.spec import spec_from_data

pytestmark = pytest.mark.e2e


# 8 racks × 8 nodes × 8 GPUs = 512 GPUs for 500 one-GPU replicas of five services peaking
# at different hours; the 30 kW rack caps (4 kW of it idle) hold about 400.
SCENARIO = racks_scenario(
    "e2e-bind-burst",
    racks=8,
    nodes_per_rack=8,
    rack_cap_w=30_000,
    services=[(f"svc-{i}", 100, f"{hour:02d}:00") for i, hour in enumerate((0, 5, 10, 15, 20))],
)


def bound_pods(client: Any) -> int:
    """How many pods of the namespace the API server holds bound."""
    from kubernetes import client as k8s

    core: Any = k8s.CoreV1Api(client)
    response = core.list_namespaced_pod(
        NAMESPACE, field_selector="spec.nodeName!=", _preload_content=False
    )
    return len(orjson.loads(response.data)["items"])


def expire_watches(c: Cluster, extender: Process, client: Any) -> tuple[int, int]:
    """Make the extender's watches expire: freeze it (its watches keep their
    resourceVersions), write once to etcd so those versions are older than its revision,
    restart kube-apiserver over etcd compacted to that revision, and thaw it. Its next
    watch is answered 410 Gone and its mirror relists while the scheduler keeps calling.
    Returns the revision compacted to and the pods bound when the extender thawed."""
    from kubernetes import client as k8s

    core: Any = k8s.CoreV1Api(client)
    extender.pause()
    try:
        marker = {"metadata": {"name": f"e2e-marker-{time.time_ns()}"}}
        core.create_namespaced_config_map(NAMESPACE, marker)
        c.stop_component("kube-apiserver")
        compacted = c.compact_etcd()
        c.start_components()
        # Only the extender binds: the Bindings it sent before it froze complete, no more.
        bound = bound_pods(client)
    finally:
        extender.resume()
    return compacted, bound


def assert_ledger_matches(problem: Problem, seen: Observed, port: int) -> None:
    """Wait until the extender's ledger equals the API server's placement (the mirror
    hears of binds through its watch and may be an event behind); fail naming each
    domain's two headrooms."""

    def agree() -> bool:
        return not ledger_disagreements(problem, seen.assignment, port)

    try:
        wait_for("the extender's ledger to match the API server", agree, timeout_s=30.0)
    except TimeoutError:
        off = ledger_disagreements(problem, seen.assignment, port)
        pytest.fail(f"ledger ≠ API server, domain → (extender, api) headroom W: {off}")


def test_500_pods_at_once_keep_caps_and_the_ledger_matches_the_api_server() -> None:
    problem = problem_from_spec(spec_from_data(SCENARIO))
    assert int(problem.services.demand.sum()) == 500

    with cluster(TEST_LOG_DIR) as c:
        client = api_client(c.kubeconfig)
        create_nodes(client, problem)
        extender, ports = start_extender(c, write_config(problem, c.run_dir / "powercap.json"))
        scheduler = start_scheduler(c, ports.verbs)
        create_deployments(client, problem)
        seen = wait_settled(client, problem, timeout_s=300.0)
        assert extender.alive(), f"the extender died:\n{extender.tail()}"
        assert scheduler.alive(), f"kube-scheduler died:\n{scheduler.tail()}"

        # The mirror hears of binds through its watch; give it a moment to catch up.
        assert_ledger_matches(problem, seen, ports.metrics)

    metrics = evaluate(problem, seen.assignment)
    assert metrics.violations == 0, f"over cap: {metrics.violating_domains}"
    assert metrics.hosted_total > 0
    assert seen.pending, "every pod fit: the scenario is not power-bound"
    not_ours = {pod: msg for pod, msg in seen.pending.items() if "powercap" not in msg}
    assert not not_ours, f"Pending pods whose FailedScheduling is not the extender's: {not_ours}"


def test_a_relist_in_the_middle_of_the_burst_keeps_caps_and_the_ledger() -> None:
    """The same burst; once a tenth of it is bound (racks fill up, binds go on), the
    extender's watches expire (see :func:`expire_watches`) and it relists while the
    scheduler's binds go on. Pods whose Bindings were in flight across the relist keep
    their power in the ledger until their watch events arrive, and Bindings whose answer
    the API server's restart lost are read back: no cap is exceeded and the ledger ends
    equal to the API server."""
    problem = problem_from_spec(spec_from_data(SCENARIO))
    total = int(problem.services.demand.sum())

    with cluster(TEST_LOG_DIR) as c:
        client = api_client(c.kubeconfig)
        create_nodes(client, problem)
        extender, ports = start_extender(c, write_config(problem, c.run_dir / "powercap.json"))
        scheduler = start_scheduler(c, ports.verbs)
        create_deployments(client, problem)
        wait_for(
            # Early: the Bindings already sent when the extender freezes (up to a few
            # hundred in a burst) still complete, and some must be left for after the relist.
            "a tenth of the burst bound",
            lambda: bound_pods(client) >= total // 10,
            timeout_s=120.0,
            every_s=0.1,
        )
        compacted, midway = expire_watches(c, extender, client)
        seen = wait_settled(
            client, problem, timeout_s=300.0, decided=decided_by_extender, context=extender.tail
        )
        assert extender.alive(), f"the extender died:\n{extender.tail()}"
        assert scheduler.alive(), f"kube-scheduler died:\n{scheduler.tail()}"
        relists = labelled(ports.metrics, "powercap_mirror_relists_total")
        log = extender.log.read_text(errors="replace")
        assert relists.get("pods", 0.0) >= 1 and re.search(
            r"pods: resourceVersion \d+ expired \(410\)", log
        ), f"no relist after 410 Gone (etcd compacted at {compacted}): {relists}"
        assert_ledger_matches(problem, seen, ports.metrics)

    metrics = evaluate(problem, seen.assignment)
    assert metrics.violations == 0, f"over cap: {metrics.violating_domains}"
    assert metrics.hosted_total > midway, (
        f"no pod was bound after the relist ({midway} before it): it was not mid-burst"
    )
    assert seen.pending, "every pod fit: the scenario is not power-bound"
