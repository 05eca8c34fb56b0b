"""``powercap whatif --kwok`` end to end, and the proof that the e2e scenarios are power-bound.

One scenario, two runs on fresh clusters: through the CLI with the extender (its JSON
must be ``plan --format json``'s object plus the live fields, and no domain may exceed
its cap in any slot), and through kube-scheduler's upstream default profile, which places
every pod GPUs allow and so must exceed some cap — otherwise the scenario would not test
the power check at all.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from e2e.backend import run_on_kwok
from e2e.scenarios import racks_scenario
from e2e.scheduler import powercap_json
from placement.cluster_run import LiveSettings
from placement.metrics import evaluate
from placement.scenario.building import problem_from_spec
from placement.scenario.spec import spec_from_data

pytestmark = pytest.mark.e2e

# Three racks of four 8-GPU nodes (96 GPUs) and 72 one-GPU replicas peaking eight hours
# apart: GPUs fit them all, the 12 kW rack caps do not.
SCENARIO = racks_scenario(
    "e2e-whatif",
    racks=3,
    nodes_per_rack=4,
    rack_cap_w=12_000,
    services=[("chat-eu", 24, "10:00"), ("chat-us", 24, "18:00"), ("batch", 24, "02:00")],
)


def test_whatif_kwok_json_is_the_plan_object_and_keeps_caps(tmp_path: Path) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(SCENARIO))
    offline = powercap_json("plan", str(path), "--strategy", "greedy", "--format", "json")
    live = powercap_json(
        "whatif", str(path), "--kwok", "--planner", "greedy", "--time-limit", "5",
        "--format", "json",
    )  # fmt: skip

    missing = set(offline) - set(live)
    assert not missing, f"whatif --kwok JSON lacks plan's keys {missing}"
    assert live["strategy"] == "kwok-powercap"
    assert live["throughput_pods_per_s"] > 0
    metrics = live["metrics"]
    assert metrics["violations"] == 0, f"over cap: {metrics['violating_domains']}"
    placed = sum(sum(by_node.values()) for by_node in live["placement"].values())
    assert placed == metrics["hosted_total"] > 0
    assert live["pending"]["count"] == metrics["unplaced_total"] > 0, "nothing left Pending"
    reasons = [r["message"] for r in live["pending"]["reasons"]]
    assert all("powercap" in m for m in reasons), f"Pending for other reasons: {reasons}"


def test_default_scheduler_exceeds_a_cap_on_the_same_scenario() -> None:
    problem = problem_from_spec(spec_from_data(SCENARIO))
    run = run_on_kwok(problem, LiveSettings(scheduler="default"), step=lambda _: None)
    metrics = evaluate(problem, run.assignment)
    assert metrics.hosted_total == metrics.demand_total, (
        f"the default scheduler left {len(run.pending)} pods Pending: GPUs should fit them all"
    )
    assert metrics.violations > 0, "no cap exceeded without the extender: not power-bound"
