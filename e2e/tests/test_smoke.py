"""Smoke test on a real cluster: kube-scheduler with the powercap extender keeps every cap.

Two racks of three 8-GPU fake nodes, two anti-phased services that together want more
replicas than the rack caps allow (GPUs are plentiful: power is what binds). Through the
real scheduler and the extender, no domain may exceed its cap in any slot, and the pods that
do not fit must stay Pending with a FailedScheduling event written from the extender's answer.
Once on the powercap.io objects, once on the config file's tree (the deprecated form).
"""

from __future__ import annotations

import pytest

from e2e.cluster import TEST_LOG_DIR, cluster
from e2e.deploy import (
    api_client,
    create_deployments,
    create_nodes,
    use_resources,
    wait_settled,
    write_config,
)
from e2e.scenarios import racks_scenario
from e2e.scheduler import start_extender, start_scheduler
from placement.metrics import evaluate
from placement.scenario.building import problem_from_spec
from placement.scenario.spec import spec_from_data

pytestmark = pytest.mark.e2e


RACK_CAP_W = 5500.0  # 1,500 W of idle + 4,000 W: about six replicas at their peaks

SCENARIO = racks_scenario(
    "e2e-smoke",
    racks=2,
    nodes_per_rack=3,
    rack_cap_w=RACK_CAP_W,
    services=[("chat-day", 10, "15:00"), ("batch-night", 10, "03:00")],
)


# The powercap.io objects (the tree, profiles and policies; the demand from the Deployments),
# and the deprecated ConfigMap form, which still works for this release.
@pytest.mark.parametrize("form", ["resources", "configmap"])
def test_extender_keeps_caps_and_explains_pending(form: str) -> None:
    spec = spec_from_data(SCENARIO)
    problem = problem_from_spec(spec)
    # The scenario must be power-bound, or the test proves nothing: every replica fits by GPUs.
    assert problem.services.gpus @ problem.services.demand <= problem.fleet.gpus.sum()

    with cluster(TEST_LOG_DIR) as c:
        client = api_client(c.kubeconfig)
        create_nodes(client, problem)
        resources = form == "resources"
        if resources:
            use_resources(client, problem)
        config = write_config(problem, c.run_dir / "powercap.json", resources=resources)
        extender, ports = start_extender(c, config)
        start_scheduler(c, ports.verbs)
        create_deployments(client, problem)
        seen = wait_settled(client, problem)
        log = extender.log.read_text(errors="replace")

    # The form in use, as the extender says it at start.
    if resources:
        assert "the tree, caps and profiles follow the powercap.io resources" in log, log[-3000:]
        assert "deprecated: the power tree" not in log
    else:
        assert "deprecated: the power tree, profiles and services in the config file" in log

    metrics = evaluate(problem, seen.assignment)
    assert metrics.violations == 0, f"over cap: {metrics.violating_domains}"
    assert metrics.hosted_total > 0, "nothing was scheduled"
    assert seen.pending, f"every pod fit ({metrics.hosted}); the scenario is not power-bound"
    not_ours = {pod: msg for pod, msg in seen.pending.items() if "powercap" not in msg}
    assert not not_ours, f"Pending pods whose FailedScheduling is not the extender's: {not_ours}"
