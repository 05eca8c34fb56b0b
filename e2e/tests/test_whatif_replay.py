"""``powercap whatif --kwok --replay``: replayed power, with and without the controller.

Two racks of two 8-GPU nodes, capped at 4 kW each (the site at 8 kW); ``steady``
(priority 10, four replicas) and ``vip`` (priority 2000, above ``protectPriority``, one
replica), both profiled at a constant 600 W, so every placement the extender makes keeps
the caps by its profiles. The replay file then surges ``steady`` to 1,500 W per replica
30 simulated minutes into a 3-hour window: idle 2 kW + 4 × 1.5 kW + 0.6 kW = 8.6 kW puts
the site over its cap whatever the placement, and at least one rack with it.

Through the CLI (``--format json``) with ``--controller both``: one placement, the window
replayed without the controller (``"baseline"``), then with it:

* without: breach domain-minutes > 0 (the ground truth is the power simulator's, not the
  controller's) and no actions;
* with: fewer breach domain-minutes, some actions, and only ``steady`` pods (priority
  10) evicted — never ``vip``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from e2e.scheduler import powercap_json

pytestmark = [pytest.mark.e2e, pytest.mark.controller]

IDLE_W = 500.0
REPLICA_W = 600.0
SURGE_W = 1500.0
RACK_CAP_W = 4000.0
SLOTS = 144

SCENARIO: dict[str, Any] = {
    "apiVersion": "powercap.io/v1alpha1",
    "kind": "Scenario",
    "metadata": {"name": "e2e-replay"},
    "grid": {"period": "24h", "step": "10m"},
    "domains": [
        {"name": "site", "cap": 2 * RACK_CAP_W},
        {"name": "rack-1", "parent": "site", "cap": RACK_CAP_W},
        {"name": "rack-2", "parent": "site", "cap": RACK_CAP_W},
    ],
    "nodes": [
        {"name": f"gpu-{rack}{i}", "domain": f"rack-{rack}", "gpus": 8, "idleWatts": IDLE_W}
        for rack in (1, 2)
        for i in (1, 2)
    ],
    "services": [
        {
            "name": name,
            "replicas": replicas,
            "gpusPerReplica": 1,
            "priority": priority,
            "nameplateWatts": SURGE_W,
            "profile": [REPLICA_W] * SLOTS,
        }
        for name, priority, replicas in (("steady", 10, 4), ("vip", 2000, 1))
    ],
}

# Day 0 from midnight: three calm slots, then the surge; vip stays at its profile.
REPLAY = {
    "step_s": 600,
    "watts": {"steady": [REPLICA_W] * 3 + [SURGE_W] * (SLOTS - 3), "vip": [REPLICA_W] * SLOTS},
}


def _whatif(scenario: Path, replay: Path, controller: str) -> dict[str, Any]:
    args = [
        "whatif", str(scenario), "--kwok", "--planner", "greedy", "--time-limit", "5",
        "--replay", str(replay), "--replay-day", "0", "--start", "00:00",
        "--duration", "3h", "--speed", "600", "--controller", controller, "--format", "json",
    ]  # fmt: skip
    return powercap_json(*args, timeout_s=180)


def test_the_controller_cuts_breach_minutes_of_a_replayed_surge(tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(SCENARIO))
    replay = tmp_path / "replay.json"
    replay.write_bytes(orjson.dumps(REPLAY))

    run = _whatif(scenario, replay, "both")
    assert run["metrics"]["violations"] == 0, "the placement breaks a cap by its profiles"
    off, on = run["baseline"], run
    assert off["replay"]["window"]["controller"] is False
    assert on["replay"]["window"]["controller"] is True
    assert off["breach_domain_minutes"] > 0, f"the surge breached nothing: {off['replay']}"
    assert off["actions"] == {} and off["evicted_by_priority"] == {}
    # The site is over for the whole surge: 2.5 h of the 3-hour window, at least.
    assert off["replay"]["domain_breach_minutes"]["site"] >= 140, off["replay"]

    print(f"[e2e] breach domain-minutes: off {off['replay']}, on {on['replay']}", flush=True)
    assert on["breach_domain_minutes"] < off["breach_domain_minutes"], on["replay"]
    assert on["actions"].get("evict", 0) > 0, on["actions"]
    assert set(on["evicted_by_priority"]) == {"10"}, on["evicted_by_priority"]
