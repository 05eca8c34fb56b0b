"""500 pods at once through kube-scheduler and the extender's bind verb.

The scheduler and the extender are up before the Deployments appear, so the ReplicaSet
controller's pods arrive as a burst and the extender admits, records and binds them while
more keep coming. Afterwards the placement the API server reports must keep every cap in
every slot, and the extender's ledger (its per-domain predicted headroom) must equal the
headroom computed from that placement: nothing bound behind its back, nothing it
recorded left unbound.
"""

from __future__ import annotations

import pytest

from e2e.cluster import TEST_LOG_DIR, cluster
from e2e.deploy import (
    api_client,
    create_deployments,
    create_nodes,
    wait_for,
    wait_settled,
    write_config,
)
from e2e.extender_view import ledger_disagreements
from e2e.scenarios import racks_scenario
from e2e.scheduler import start_extender, start_scheduler
from placement.metrics import evaluate
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


def test_500_pods_at_once_keep_caps_and_the_ledger_matches_the_api_server() -> None:
    problem = problem_from_spec(spec_from_data(SCENARIO))
    assert int(problem.services.demand.sum()) == 500

    with cluster(TEST_LOG_DIR) as c:
        client = api_client(c.kubeconfig)
        create_nodes(client, problem)
        extender, port = start_extender(c, write_config(problem, c.run_dir / "powercap.json"))
        scheduler = start_scheduler(c, port)
        create_deployments(client, problem)
        seen = wait_settled(client, problem, timeout_s=300.0)
        assert extender.alive(), f"the extender died:\n{extender.tail()}"
        assert scheduler.alive(), f"kube-scheduler died:\n{scheduler.tail()}"

        # The mirror hears of binds through its watch; give it a moment to catch up.
        def agree() -> bool:
            return not ledger_disagreements(problem, seen.assignment, port)

        try:
            wait_for("the extender's ledger to match the API server", agree, timeout_s=30.0)
        except TimeoutError:
            off = ledger_disagreements(problem, seen.assignment, port)
            pytest.fail(f"ledger ≠ API server, domain → (extender, api) headroom W: {off}")

    metrics = evaluate(problem, seen.assignment)
    assert metrics.violations == 0, f"over cap: {metrics.violating_domains}"
    assert metrics.hosted_total > 0
    assert seen.pending, "every pod fit: the scenario is not power-bound"
    not_ours = {pod: msg for pod, msg in seen.pending.items() if "powercap" not in msg}
    assert not not_ours, f"Pending pods whose FailedScheduling is not the extender's: {not_ours}"
