"""kube-apiserver frozen (SIGSTOP) during a burst of binds: the extender still answers in time.

A frozen API server keeps its sockets: connections are accepted and requests sent, and no
answer comes. Without timeouts on its Kubernetes calls the extender's bind would wait for the
whole freeze and kube-scheduler would give up on it after its ``httpTimeout``. The test:

1. a power-bound cluster (four racks of four 8-GPU nodes; three anti-phased services) with
   the extender and kube-scheduler, a first wave of pods placed;
2. kube-scheduler paused, the Deployments scaled up (the pods exist, Pending), kube-apiserver
   frozen, kube-scheduler resumed: it schedules the burst while the API server is frozen, so
   every bind the extender makes meets a server that never answers;
3. after a freeze several times the scheduler's ``httpTimeout``, kube-apiserver resumed.

Then: every verb of the extender answered within kube-scheduler's ``httpTimeout`` (its
latency histogram, and no timed-out extender call in kube-scheduler's log), binds made during
the freeze failed back to the scheduler; after it binding resumed, no pod was bound twice,
the pods bound before stayed, no domain exceeds its cap in any slot, and the extender's ledger
equals the API server's placement.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from typing import Any

import orjson
import pytest
import yaml

from e2e.cluster import TEST_LOG_DIR, cluster
from e2e.deploy import (
    NAMESPACE,
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
from e2e.extender_view import ledger_disagreements, scrape
from e2e.scenarios import racks_scenario
from e2e.scheduler import SCHEDULER_CONFIG, start_extender, start_scheduler
from placement.grid import parse_seconds
from placement.metrics import evaluate
from placement.problem import Problem
from placement.scenario.building import problem_from_spec
from placement.scenario.spec import spec_from_data

pytestmark = pytest.mark.e2e

FIRST_WAVE = 2  # replicas per service before the freeze
DEMAND = 16  # replicas per service in the burst; the racks hold about 32 of the 48
FREEZE_S = 15.0  # three times the scheduler's httpTimeout
SETTLE_TIMEOUT_S = 150.0
QUIET_S = 6.0
LATENCY = "powercap_extender_request_seconds"
DECISIONS = "powercap_extender_decisions_total"


def scenario() -> Problem:
    spec = racks_scenario(
        "e2e-apiserver-pause",
        racks=4,
        nodes_per_rack=4,
        rack_cap_w=6_500,  # 2 kW of it idle
        services=[(f"svc-{h:02d}", DEMAND, f"{h:02d}:00") for h in (0, 8, 16)],
    )
    problem = problem_from_spec(spec_from_data(spec))
    # Every replica fits by GPUs: whatever stays Pending, power kept it there.
    assert problem.services.gpus @ problem.services.demand <= problem.fleet.gpus.sum()
    return problem


def http_timeout_s() -> float:
    """kube-scheduler's ``httpTimeout`` for the extender, from the shipped configuration."""
    (extender,) = yaml.safe_load(SCHEDULER_CONFIG.read_text())["extenders"]
    return parse_seconds(extender["httpTimeout"])


# A bind whose Binding call failed: not created ("api_error"), or unknown whether it was,
# so the pod keeps its power until it can be read ("api_unknown", "binding_unknown").
FAILED_BACK = ("api_error", "api_unknown", "binding_unknown")


def failed_binds(port: int) -> int:
    """Binds answered with an API failure so far, whatever the failure's kind."""
    counts = decisions(port, "bind")
    return sum(counts[outcome] for outcome in FAILED_BACK)


def decisions(port: int, verb: str) -> Counter[str]:
    """The extender's decisions of ``verb`` by outcome."""
    out: Counter[str] = Counter()
    for labels, value in scrape(port).get(DECISIONS, {}).items():
        named = dict(labels)
        if named.get("verb") == verb:
            out[named["outcome"]] += int(value)
    return out


def slow_answers(port: int, bound_s: float) -> dict[str, int]:
    """Per verb, how many requests took longer than ``bound_s`` (a histogram bucket)."""
    samples = scrape(port)
    totals = {dict(k)["verb"]: v for k, v in samples.get(f"{LATENCY}_count", {}).items()}
    within = {
        dict(k)["verb"]: v
        for k, v in samples.get(f"{LATENCY}_bucket", {}).items()
        if float(dict(k)["le"]) == bound_s
    }
    assert set(within) == set(totals), f"no {bound_s:g}s bucket in {LATENCY}"
    return {verb: int(totals[verb] - within[verb]) for verb in totals}


def create_deployments(client: Any, problem: Problem, *, replicas: int) -> None:
    from kubernetes import client as k8s

    apps: Any = k8s.AppsV1Api(client)
    for s in range(problem.services.size):
        body = deployment_object(problem, s)
        body["spec"]["replicas"] = replicas
        apps.create_namespaced_deployment(NAMESPACE, body)


def scale(client: Any, problem: Problem, replicas: int) -> None:
    from kubernetes import client as k8s

    apps: Any = k8s.AppsV1Api(client)
    for service in problem.services.names:
        apps.patch_namespaced_deployment_scale(service, NAMESPACE, {"spec": {"replicas": replicas}})


def scheduled_per_pod(client: Any) -> Counter[str]:
    """How many times kube-scheduler reported each pod bound (its ``Scheduled`` events)."""
    from kubernetes import client as k8s

    core: Any = k8s.CoreV1Api(client)
    events = orjson.loads(
        core.list_namespaced_event(
            NAMESPACE, field_selector="reason=Scheduled", _preload_content=False
        ).data
    )["items"]
    out: Counter[str] = Counter()
    for event in events:
        uid = event.get("involvedObject", {}).get("uid", "")
        out[uid] += max(1, int(event.get("count") or 1))
    return out


def test_a_frozen_api_server_never_holds_a_verb_past_the_schedulers_timeout() -> None:
    problem = scenario()
    timeout_s = http_timeout_s()
    assert timeout_s == 5.0  # the histogram has a bucket there
    wanted = DEMAND * problem.services.size

    with cluster(TEST_LOG_DIR) as c:
        client = api_client(c.kubeconfig)
        create_nodes(client, problem)
        extender, ports = start_extender(c, write_config(problem, c.run_dir / "powercap.json"))
        scheduler = start_scheduler(c, ports.verbs)
        port = ports.metrics  # what /metrics shows

        def logs() -> str:
            return (
                f"\n--- powercap serve (tail) ---\n{extender.tail(30)}"
                f"\n--- kube-scheduler (tail) ---\n{scheduler.tail(25)}"
            )

        # 1. The first wave, placed while everything runs.
        create_deployments(client, problem, replicas=FIRST_WAVE)
        before = wait_settled(
            client,
            problem,
            SETTLE_TIMEOUT_S,
            quiet_s=QUIET_S,
            wanted=FIRST_WAVE * problem.services.size,
            context=logs,
        )
        assert not before.pending, f"the first wave should fit: {before.pending}{logs()}"

        # 2. The burst: its pods exist before the API server freezes, and the scheduler
        # (paused meanwhile) schedules them while it is frozen.
        scheduler.pause()
        scale(client, problem, DEMAND)
        wait_for(
            "the burst's pods to exist",
            lambda: observe(client, problem).pods == wanted,
            timeout_s=60.0,
        )
        time.sleep(2.0)  # the watches carry the new pods to the paused scheduler
        failed_before = failed_binds(port)
        frozen_at = time.monotonic()
        c.signal_component("kube-apiserver", signal.SIGSTOP)
        try:
            scheduler.resume()

            def binds_failed_back() -> bool:
                return failed_binds(port) > failed_before

            # A bind during the freeze fails back to the scheduler (which retries the pod)
            # rather than waiting for the API server.
            wait_for("a bind to fail during the freeze", binds_failed_back, FREEZE_S)
            time.sleep(max(0.0, FREEZE_S - (time.monotonic() - frozen_at)))
        finally:
            c.signal_component("kube-apiserver", signal.SIGCONT)

        # 3. After the freeze: binding resumes and the placement settles.
        seen = wait_settled(
            client,
            problem,
            SETTLE_TIMEOUT_S,
            quiet_s=QUIET_S,
            wanted=wanted,
            decided=decided_by_extender,
            context=logs,
        )
        assert extender.alive() and scheduler.alive(), logs()

        # Every verb answered within the scheduler's httpTimeout: by the extender's clock...
        slow = slow_answers(port, timeout_s)
        assert not any(slow.values()), f"answers slower than {timeout_s:g}s: {slow}{logs()}"
        # ... and by the scheduler's: it never gave up waiting for the extender.
        address = f"127.0.0.1:{ports.verbs}/"
        gave_up = [
            line
            for line in scheduler.log.read_text(errors="replace").splitlines()
            if address in line and ("Timeout exceeded" in line or "deadline exceeded" in line)
        ]
        assert not gave_up, "kube-scheduler timed out on the extender:\n" + "\n".join(gave_up[:5])

        check_after_the_freeze(problem, before, seen, client=client, port=port)

        def agree() -> bool:
            return not ledger_disagreements(problem, seen.assignment, port)

        try:
            wait_for("the extender's ledger to match the API server", agree, timeout_s=30.0)
        except TimeoutError:
            off = ledger_disagreements(problem, seen.assignment, port)
            pytest.fail(f"ledger ≠ API server, domain → (extender, api) headroom W: {off}")


def check_after_the_freeze(
    problem: Problem, before: Observed, seen: Observed, *, client: Any, port: int
) -> None:
    """Binding resumed, nothing bound twice or moved, every cap kept."""
    bound_before = int(before.assignment.hosted.sum())
    bound_after = int(seen.assignment.hosted.sum())
    assert bound_after > bound_before, f"nothing bound after the freeze: {bound_after}"
    assert (seen.assignment.counts >= before.assignment.counts).all(), (
        "pods bound before the freeze moved or vanished:\n"
        f"before {before.assignment.as_mapping(problem)}\n"
        f"after  {seen.assignment.as_mapping(problem)}"
    )
    twice = {uid: n for uid, n in scheduled_per_pod(client).items() if n > 1}
    assert not twice, f"pods reported bound more than once: {twice}"
    # Each Binding the extender created bound a distinct pod of the API server's.
    bound = decisions(port, "bind")["bound"]
    assert bound <= bound_after, f"{bound} Bindings created for {bound_after} bound pods"
    metrics = evaluate(problem, seen.assignment)
    assert metrics.violations == 0, f"over cap: {metrics.violating_domains}"
    assert seen.pending, f"every pod fit ({metrics.hosted}): the test is not power-bound"
