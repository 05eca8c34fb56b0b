"""Acceptance: ``powercap serve --scenario`` driven the way kube-scheduler drives it.

For every replica, in the deterministic order the offline strategies use: filter over
all nodes with enough free GPUs (what the scheduler's own NodeResourcesFit leaves) →
prioritize the survivors → bind the best. Ties on the extender's score go to the node
with the fewest free GPUs (the shipped scheduler profile scores GPUs MostAllocated),
then to the first in order. The result must break no cap in any slot and host at least
what ``greedy`` hosts offline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from extender.health import Heartbeat
from extender.runtime import from_scenario_file
from placement.assignment import Assignment
from placement.metrics import evaluate
from placement.problem import Problem
from placement.scenario.servegen import scenario_from_servegen
from placement.strategies import run_strategy
from placement.strategies.sequential import replica_queue
from tests.scheduler_payloads import bind_body, filter_body, pod

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
JSON = {"Content-Type": "application/json"}


SERVEGEN = ("language/m-large", "language/m-mid")


def servegen_problem(tmp_path: Path) -> Path:
    """The default ServeGen scenario (320 nodes, 40 services from production traces),
    written where ``serve --scenario`` reads it."""
    dirs = [DATA / "servegen" / f for f in SERVEGEN]
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        pytest.fail(
            f"the ServeGen traces are missing: expected {', '.join(missing)} "
            "(shared data beside the repository, see shared/data/README.md); this test "
            "needs them"
        )
    path = tmp_path / "servegen.yaml"
    path.write_text(scenario_from_servegen(dirs).to_yaml())
    return path


def drive(client: TestClient, problem: Problem) -> Assignment:
    """Schedule every replica through the HTTP verbs; returns what got bound."""
    fleet, svc = problem.fleet, problem.services
    free = fleet.gpus.copy()
    counts = np.zeros((svc.size, fleet.size), dtype=np.int64)
    seen = np.zeros(svc.size, dtype=np.int64)
    for s in replica_queue(problem):
        name = f"{svc.names[s]}-{seen[s]}"
        seen[s] += 1
        need = int(svc.gpus[s])
        p = pod(name, svc.names[s], need, namespace="serve")
        candidates = [fleet.names[n] for n in np.flatnonzero(free >= need)]
        if not candidates:
            continue
        r = client.post("/filter", content=filter_body(p, candidates), headers=JSON)
        assert r.status_code == 200, r.text
        result = r.json()
        assert result["Error"] == ""
        feasible = result["NodeNames"]
        reasons = set(result["FailedNodes"]) | set(result["FailedAndUnresolvableNodes"])
        if not feasible:
            # No node left: every candidate says why (kube-scheduler's event, preemption).
            assert reasons == set(candidates)
            continue
        # Some node left: kube-scheduler reads no reasons, and none are sent.
        assert set(feasible) <= set(candidates) and not reasons
        if len(feasible) == 1:
            best = feasible[0]  # the scheduler skips prioritize for a single node
        else:
            r = client.post("/prioritize", content=filter_body(p, feasible), headers=JSON)
            assert r.status_code == 200, r.text
            # Hosts the extender leaves out score 0, as kube-scheduler reads the list.
            scores = dict.fromkeys(feasible, 0) | {h["Host"]: h["Score"] for h in r.json()}
            top = max(scores.values())
            best = min(
                (host for host, score in scores.items() if score == top),
                key=lambda host: (int(free[fleet.index[host]]), feasible.index(host)),
            )
        r = client.post("/bind", content=bind_body(p, best), headers=JSON)
        assert r.status_code == 200 and r.json() == {"Error": ""}, r.text
        n = fleet.index[best]
        free[n] -= need
        counts[s, n] += 1
    return Assignment(counts)


@pytest.mark.parametrize("reserve_plan", [False, True], ids=["steer", "reserve"])
def test_serve_scenario_matches_or_beats_greedy(tmp_path: Path, reserve_plan: bool) -> None:
    """Steering alone (the default) hosts at least greedy; with ``reservePlan`` the
    extender also keeps the plan's power for its replicas and gets close to the plan."""
    path = servegen_problem(tmp_path)
    ext = from_scenario_file(path, reserve_plan=reserve_plan)
    problem = ext.config.problem
    assert problem is not None
    heartbeat = Heartbeat()
    # The verbs' lifespan computes the first plan; the probes follow the verbs' app.
    with (
        TestClient(ext.app(heartbeat=heartbeat)) as client,
        TestClient(ext.metrics_app(heartbeat)) as probes,
    ):
        assert probes.get("/readyz").status_code == 200
        assert ext.planner is not None and ext.planner.latest is not None
        plan = ext.planner.latest
        placed = drive(client, problem)
        metrics_text = probes.get("/metrics").text
    result = evaluate(problem, placed)
    greedy = evaluate(problem, run_strategy("greedy", problem).assignment)
    assert result.violations == 0, result.violating_domains
    assert result.hosted_total >= greedy.hosted_total, (
        f"serve hosted {result.hosted_total}, greedy offline {greedy.hosted_total}"
    )
    if reserve_plan:
        # Node-level GPU packing may cost a replica or two against the domain-level plan.
        assert result.hosted_total >= 0.95 * plan.hosted, (
            f"serve hosted {result.hosted_total}, the plan {plan.hosted}"
        )
    # what the extender recorded is exactly what was bound
    recorded = Assignment(np.zeros_like(placed.counts))
    for record in ext.state.pods.values():
        assert record.service is not None
        recorded.counts[
            problem.services.index[record.service], problem.fleet.index[record.node]
        ] += 1
    np.testing.assert_array_equal(recorded.counts, placed.counts)
    np.testing.assert_allclose(ext.state.ledger.load, placed.load(problem), rtol=1e-9, atol=1e-6)
    assert 'verb="bind"' in metrics_text


def test_scenario_mode_records_binds_only(tmp_path: Path) -> None:
    """No cluster: bind records in the ledger and the static binder, nothing else."""
    path = servegen_problem(tmp_path)
    ext = from_scenario_file(path, planner=False)
    problem = ext.config.problem
    assert problem is not None
    s = 0
    p = pod("only-0", problem.services.names[s], int(problem.services.gpus[s]))
    with TestClient(ext.app()) as client:
        names = list(problem.fleet.names)
        passed = client.post("/filter", content=filter_body(p, names), headers=JSON).json()
        target = passed["NodeNames"][0]
        assert client.post("/bind", content=bind_body(p, target), headers=JSON).json() == {
            "Error": ""
        }
    bound = ext.binder.bound  # type: ignore[attr-defined]
    assert [(ref.name, node) for ref, node in bound.items()] == [("only-0", target)]
    assert orjson.loads(orjson.dumps(len(ext.state.pods))) == 1
