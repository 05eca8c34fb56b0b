"""The power simulator under GPU power limits: each GPU draws the least of its demand and its
enforced limit, the limits are exported as DCGM series beside the draw, and the throughput
lost to the limits follows the throughput curve."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from e2e.agents import SimulatedAgents
from e2e.powersim import (
    ENFORCED_LIMIT_METRIC,
    METRIC,
    MGMT_LIMIT_METRIC,
    BoundPod,
    DefaultLimits,
    GpuLimit,
    GridProfile,
    PowerSimulator,
    SimClock,
    SimNode,
    Snapshot,
    StaticPods,
    gpu_uuid,
    throughput_lost,
)
from e2e.replay import ThroughputMeter, with_cap_count
from placement.cluster_run import ReplayOutcome
from placement.grid import Grid
from placement.throughput import DEFAULT_CURVE, ThroughputCurve
from powercap.cli import app
from powercap.commands.whatif import _outcome_json
from tests.test_live_replay import SCENARIO

H100 = 700.0


class Limits:
    """Fixed enforced limits per node (management limit = enforced)."""

    def __init__(self, watts: Mapping[str, Sequence[float]]) -> None:
        self.watts = watts

    def limits_of(self, node: str) -> Sequence[GpuLimit] | None:
        got = self.watts.get(node)
        return None if got is None else [GpuLimit(w, w, H100) for w in got]


def simulator(limits: Limits | DefaultLimits | None) -> PowerSimulator:
    """n1: 4 GPUs, 100 W idle each; chat-0 on GPUs 0-1 and chat-1 on GPU 2 each demand
    1200 W (slot 6 of a 200 W-per-slot ramp); GPU 3 idle. n2: 2 idle GPUs."""
    grid = Grid()
    nodes = [SimNode("n1", 4, 600.0, ("rack-a",)), SimNode("n2", 2, 300.0, ("rack-a",))]
    profile = GridProfile(grid, np.arange(grid.slots, dtype=np.float64) * 200.0)
    pods = StaticPods(
        [
            BoundPod("default", "chat-0", "n1", "chat", gpus=2),
            BoundPod("default", "chat-1", "n1", "chat", gpus=1),
        ]
    )
    return PowerSimulator(
        nodes,
        {"chat": profile},
        pods,
        clock=SimClock(start_s=6 * 600.0, speed=0.0),
        gpu_idle_watts=100.0,
        limits=limits,
    )


def test_without_limits_the_gpus_draw_their_demand_and_no_limit_is_served() -> None:
    sim = simulator(None)
    snap = sim.snapshot()
    assert [s.watts for s in snap.gpus if s.node == "n1"] == [700.0, 700.0, 1300.0, 100.0]
    assert all(s.limit is None and s.demand_watts is None for s in snap.gpus)
    text = sim.render(snap).decode()
    assert ENFORCED_LIMIT_METRIC not in text and MGMT_LIMIT_METRIC not in text
    assert snap.throughput_lost() == 0.0


def test_each_gpu_draws_the_least_of_its_demand_and_its_enforced_limit() -> None:
    sim = simulator(Limits({"n1": [300.0, 650.0, 400.0, 50.0]}))
    snap = sim.snapshot()
    n1 = [s for s in snap.gpus if s.node == "n1"]
    assert [s.watts for s in n1] == [300.0, 650.0, 400.0, 50.0]
    assert [s.demand_watts for s in n1] == [700.0, 700.0, 1300.0, 100.0]
    assert snap.node_gpu_watts["n1"] == 1400.0
    assert snap.node_watts["n1"] == 1400.0 + 200.0  # the non-GPU 200 W is never limited
    # n2 has no limits known: its GPUs draw what they demand
    assert [s.watts for s in snap.gpus if s.node == "n2"] == [100.0, 100.0]
    assert snap.domain_watts(list(sim.nodes.values())) == {"rack-a": 1900.0}


def test_default_limits_hold_every_gpu_at_its_board_default() -> None:
    sim = simulator(DefaultLimits({"n1": 4, "n2": 2}))
    snap = sim.snapshot()
    assert [s.watts for s in snap.gpus if s.node == "n1"] == [700.0, 700.0, 700.0, 100.0]
    # held at its own default, chat-1 loses nothing to a cap
    assert snap.throughput_lost() == 0.0


def test_limits_are_served_in_dcgm_format_with_the_draws_labels() -> None:
    sim = simulator(Limits({"n1": [300.0, 650.0, 400.0, 50.0], "n2": [700.0, 700.0]}))
    lines = sim.render(sim.snapshot()).decode().splitlines()
    assert f"# TYPE {ENFORCED_LIMIT_METRIC} gauge" in lines
    assert f"# TYPE {MGMT_LIMIT_METRIC} gauge" in lines

    def series(metric: str) -> dict[str, float]:
        out = {}
        for line in lines:
            if line.startswith(metric + "{"):
                labels, value = line[len(metric) :].rsplit(" ", 1)
                out[labels] = float(value)
        return out

    draw, enforced = series(METRIC), series(ENFORCED_LIMIT_METRIC)
    assert set(enforced) == set(draw)  # one limit per GPU, with the draw's very labels
    assert set(series(MGMT_LIMIT_METRIC)) == set(draw)
    held = next(k for k in enforced if 'pod="chat-1"' in k)
    assert 'Hostname="n1"' in held and 'gpu="2"' in held and "UUID=" in held
    assert enforced[held] == 400.0 and draw[held] == 400.0


def test_limit_series_can_be_left_out_while_the_limits_still_hold() -> None:
    sim = simulator(Limits({"n1": [300.0, 650.0, 400.0, 50.0]}))
    sim.limit_series = False
    snap = sim.snapshot()
    assert [s.watts for s in snap.gpus if s.node == "n1"] == [300.0, 650.0, 400.0, 50.0]
    text = sim.render(snap).decode()
    assert ENFORCED_LIMIT_METRIC not in text and MGMT_LIMIT_METRIC not in text
    assert 'Hostname="n1"' in text


def test_throughput_lost_is_zero_unless_the_limit_binds() -> None:
    curve = DEFAULT_CURVE
    assert throughput_lost(curve, 450.0, GpuLimit(500.0, 500.0, H100)) == 0.0
    assert throughput_lost(curve, 500.0, GpuLimit(500.0, 500.0, H100)) == 0.0
    # demand at the default, held at 0.5 of it: the curve's 0.70
    assert throughput_lost(curve, H100, GpuLimit(350.0, 350.0, H100)) == pytest.approx(0.30)
    # demand of 0.8 (0.95 there) held at 0.7 (0.90): relative to what it delivered
    lost = throughput_lost(curve, 560.0, GpuLimit(490.0, 490.0, H100))
    assert lost == pytest.approx(1 - 0.90 / 0.95)
    # demand beyond the default counts as the default
    assert throughput_lost(curve, 1000.0, GpuLimit(H100, H100, H100)) == 0.0
    # below the curve's floor the floor's throughput holds (A100s go down to 0.25)
    assert throughput_lost(curve, 400.0, GpuLimit(100.0, 100.0, 400.0)) == pytest.approx(0.60)


def test_a_pod_loses_what_its_slowest_gpu_loses_weighted_by_gpus() -> None:
    sim = simulator(Limits({"n1": [350.0, 700.0, 700.0, 700.0]}))
    snap = sim.snapshot()
    lost = {p.name: v for p, v in snap.pod_lost.items()}
    # chat-0 demands 700 W on GPU 0, held at 350 W: 0.30; GPU 1 is free of its limit
    assert lost == {"chat-0": pytest.approx(0.30), "chat-1": 0.0}
    assert snap.throughput_lost() == pytest.approx(2 * 0.30 / 3)


def test_a_services_own_curve_is_used() -> None:
    sim = simulator(Limits({"n1": [350.0, 350.0, 700.0, 700.0]}))
    sim.curves["chat"] = ThroughputCurve(((0.5, 0.9), (1.0, 1.0)))
    lost = {p.name: v for p, v in sim.snapshot().pod_lost.items()}
    assert lost["chat-0"] == pytest.approx(0.10)


# --- the replay's figures ---------------------------------------------------------------------


def snap_at(sim_s: float, lost: Mapping[BoundPod, float]) -> Snapshot:
    return Snapshot(sim_s, (), {}, {}, (), lost)


def test_throughput_meter_weights_losses_by_gpus_and_time() -> None:
    big = BoundPod("default", "big", "n1", "chat", gpus=3)
    small = BoundPod("default", "small", "n1", "chat", gpus=1)
    meter = ThroughputMeter(start_s=100.0, end_s=400.0)
    meter.add(snap_at(50.0, {big: 0.0, small: 0.0}))  # before the window: counts from 100
    meter.add(snap_at(200.0, {big: 0.2, small: 0.6}))  # 3 × 0.2 + 0.6 = 1.2 of 4 GPUs
    meter.add(snap_at(300.0, {small: 0.0}))  # big gone, small no longer capped
    meter.close()
    # 100 s at 0 (4 GPUs), 100 s at 1.2/4 (4 GPUs), 100 s at 0 (1 GPU)
    assert meter.fraction == pytest.approx(1.2 * 100 / (4 * 100 + 4 * 100 + 1 * 100))
    assert ThroughputMeter(0.0, 1.0).fraction == 0.0


def test_cap_count_is_the_controllers_or_the_limit_writes_the_agents_saw() -> None:
    class Seen:
        spec_writes = 3

    agents: Any = Seen()
    assert with_cap_count({"evict": 1}, None, controller=True) == {"evict": 1}
    assert with_cap_count({"evict": 1}, agents, controller=True) == {"evict": 1, "cap": 3}
    assert with_cap_count({"cap": 5}, agents, controller=True) == {"cap": 5}
    assert with_cap_count({}, agents, controller=False) == {"cap": 0}


def test_the_json_outcome_carries_the_throughput_lost() -> None:
    outcome = ReplayOutcome(
        breach_domain_minutes=1.0,
        domain_breach_minutes={},
        daily_breach_minutes={},
        actions={"cap": 2},
        evicted_by_priority={},
        evictions_by_day={},
        window={"power_limits": True},
        throughput_lost_fraction=0.042,
    )
    got = _outcome_json(outcome)
    assert got["throughput_lost_fraction"] == 0.042 and got["actions"] == {"cap": 2}


def test_cli_power_limits_option_is_checked(tmp_path: Path) -> None:
    scenario = tmp_path / "s.json"
    scenario.write_bytes(orjson.dumps(SCENARIO))
    replay = tmp_path / "r.json"
    replay.write_bytes(orjson.dumps({"step_s": 600, "watts": {"a": [1.0] * 144}}))
    runner = CliRunner()
    for args, message in [
        (["--power-limits", "on"], "--power-limits goes with --replay"),
        (["--kwok", "--replay", str(replay), "--power-limits", "maybe"], "--power-limits"),
    ]:
        result = runner.invoke(app, ["whatif", str(scenario), *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)


# --- the simulated agents, without an API server ------------------------------------------------


class Written:
    """Records each status written, as the API server would accept it."""

    def __init__(self) -> None:
        self.statuses: list[dict[str, Any]] = []

    def write_status(self, obj: dict[str, Any], status: dict[str, Any]) -> bool:
        self.statuses.append(status)
        return True


def npl(node: str, generation: int, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "powercap.io/v1alpha1",
        "kind": "NodePowerLimit",
        "metadata": {"name": node, "generation": generation, "resourceVersion": str(generation)},
        "spec": spec,
    }


def agents_of(settable: bool = True) -> tuple[SimulatedAgents, dict[str, Written]]:
    written: dict[str, Written] = {"n1": Written(), "n2": Written()}
    agents = SimulatedAgents(
        {"n1": 4, "n2": 2}, reader=None, writer_for=written.__getitem__, settable=settable
    )
    agents.start_agents()
    return agents, written


def test_simulated_agents_apply_requests_that_the_simulator_then_honours() -> None:
    agents, written = agents_of()
    sim = simulator(None)
    sim.limits = agents
    assert [lim.enforced for lim in agents.limits_of("n1") or []] == [700.0] * 4
    assert [g.uuid for g in agents.nvml["n1"].gpus] == [gpu_uuid("n1", g) for g in range(4)]
    agents.replace([])
    agents.apply("ADDED", npl("n1", 1, {"wattsPerGpu": 500, "gpus": [{"index": 2, "watts": 100}]}))
    assert agents.run_pending() == 1
    # the agent's clamp: GPU 2 asked 100 W gets the H100's 200 W minimum
    assert [g.limit_mw for g in agents.nvml["n1"].gpus] == [500_000, 500_000, 200_000, 500_000]
    (status,) = written["n1"].statuses
    assert status["canSetLimits"] is True
    assert [g["enforcedWatts"] for g in status["gpus"]] == [500, 500, 200, 500]
    assert written["n2"].statuses == []  # no request for n2: no status to write
    snap = sim.snapshot()
    assert [s.watts for s in snap.gpus if s.node == "n1"] == [500.0, 500.0, 200.0, 100.0]
    assert snap.pod_lost and max(snap.pod_lost.values()) > 0
    assert agents.spec_writes == 1
    # our own status write comes back as an event: the same status, nothing written again
    echoed = npl("n1", 1, {"wattsPerGpu": 500, "gpus": [{"index": 2, "watts": 100}]})
    echoed["status"] = status
    agents.apply("MODIFIED", echoed)
    assert agents.run_pending() == 1
    assert len(written["n1"].statuses) == 1 and agents.spec_writes == 1
    # withdrawn: the defaults back, and the draw with them
    agents.apply("DELETED", npl("n1", 1, {}))
    agents.run_pending()
    assert [lim.enforced for lim in agents.limits_of("n1") or []] == [700.0] * 4
    assert [s.watts for s in sim.snapshot().gpus if s.node == "n1"] == [700.0, 700.0, 700.0, 100.0]
    agents.stop()


def test_agents_without_permission_leave_the_defaults_and_say_so() -> None:
    agents, written = agents_of(settable=False)
    agents.replace([npl("n2", 1, {"wattsPerGpu": 300})])
    agents.run_pending()
    (status,) = written["n2"].statuses
    assert status["canSetLimits"] is False
    assert status["conditions"][0]["reason"] == "NoPermission"
    assert [lim.enforced for lim in agents.limits_of("n2") or []] == [700.0, 700.0]
    assert agents.nvml["n2"].sets == []
    agents.stop()
