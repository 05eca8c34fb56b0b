"""The replay side of ``whatif --kwok``: settings, the compressed controller grid, the
breach meter and the CLI's option checks (no cluster)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from e2e.replay import BreachMeter, compress, controller_section, lookback, scrape_interval
from extender.config.controller import ControllerSpec, resolve_controller
from placement.cluster_run import LiveSettings, ReplaySettings, speed_problem
from placement.grid import Grid
from placement.replay_file import read_replay
from placement.scenario.building import problem_from_spec
from placement.scenario.spec import spec_from_data
from powercap.cli import app

SCENARIO = {
    "apiVersion": "powercap.io/v1alpha1",
    "kind": "Scenario",
    "metadata": {"name": "t"},
    "grid": {"period": "24h", "step": "10m"},
    "domains": [
        {"name": "site", "cap": 3000},
        {"name": "rack-1", "parent": "site", "cap": 2000},
    ],
    "nodes": [{"name": "n1", "domain": "rack-1", "gpus": 8, "idleWatts": 500}],
    "services": [
        {
            "name": "a",
            "replicas": 1,
            "gpusPerReplica": 1,
            "nameplateWatts": 900,
            "profile": [600] * 144,
        }
    ],
}


def test_replay_days_and_bounds() -> None:
    r = ReplaySettings(watts={"a": [1.0] * 288}, day=1)
    assert r.days == 2 and r.sim_start_s == 86400
    with pytest.raises(ValueError, match=r"day must be in 0\.\.1"):
        ReplaySettings(watts={"a": [1.0] * 288}, day=2)
    with pytest.raises(ValueError, match="speed"):
        ReplaySettings(watts={"a": [1.0]}, speed=0)


def test_read_replay_names_the_fault(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_bytes(orjson.dumps({"step_s": 600, "watts": {"a": [1, -2]}}))
    with pytest.raises(ValueError, match=r"watts\.a"):
        read_replay(path)
    path.write_bytes(orjson.dumps({"step_s": 600, "watts": {"a": [1, 2]}}))
    assert read_replay(path) == (600, {"a": [1.0, 2.0]})


def test_speed_must_divide_the_step() -> None:
    grid = Grid()
    assert speed_problem(grid, 600) is None and speed_problem(grid, 60) is None
    assert "divide" in (speed_problem(grid, 700) or "")
    assert "divide" in (speed_problem(grid, 1.5) or "")


@pytest.mark.parametrize("start", [0.0, 86400 * 3 + 7 * 3600 + 10 * 60, 86400 + 45 * 60])
@pytest.mark.parametrize("speed", [60, 120, 600])
def test_compressed_grid_slots_follow_simulated_time(start: float, speed: int) -> None:
    grid = Grid(offset_s=0)
    c = compress(grid, speed, start, not_before=1_700_000_000.3)
    assert c.t0 >= 1_700_000_000.3
    for k in range(0, 3000, 7):
        wall = c.t0 + k * 0.37
        sim = start + (wall - c.t0) * speed
        assert c.grid.slot_of(wall) == grid.slot_of(sim), (wall, sim)


def test_breach_meter_integrates_over_cap_time_per_day() -> None:
    problem = problem_from_spec(spec_from_data(SCENARIO))
    meter = BreachMeter(problem, start_s=86400 - 600, end_s=86400 + 600)
    meter.add(86400 - 600, {"site": 2500, "rack-1": 2500})  # rack over
    meter.add(86400 - 300, {"site": 3500, "rack-1": 2500})  # both over
    meter.add(86400 + 300, {"site": 100, "rack-1": 100})  # calm to the end
    meter.close()
    assert meter.seconds.tolist() == [600.0, 900.0]
    assert meter.daily == {0: pytest.approx(15.0), 1: pytest.approx(10.0)}


def test_cli_replay_options_are_checked(tmp_path: Path) -> None:
    runner = CliRunner()
    scenario = tmp_path / "s.json"
    scenario.write_bytes(orjson.dumps(SCENARIO))
    replay = tmp_path / "r.json"
    replay.write_bytes(orjson.dumps({"step_s": 600, "watts": {"a": [1.0] * 144}}))
    cases = [
        (["--controller", "on"], "--controller goes with --replay"),
        (["--replay", str(replay)], "--replay goes with --kwok"),
        (["--kwok", "--replay", str(replay), "--replay-day", "1"], "--replay-day must be in 0..0"),
        (["--kwok", "--replay", str(replay), "--start", "25:00"], "--start must be HH:MM"),
        (["--kwok", "--replay", str(replay), "--speed", "700"], "--speed must divide"),
        (["--kwok", "--replay", str(replay), "--duration", "x"], "--duration"),
        (
            ["--kwok", "--replay", str(replay), "--controller", "both", "--scheduler", "default"],
            "--controller both needs --scheduler powercap",
        ),
        (["--kwok", "--replay", str(replay), "--controller", "twice"], "--controller"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["whatif", str(scenario), *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)


def test_replay_controller_timings_are_the_simulated_ones_divided_by_the_speed() -> None:
    replay = ReplaySettings(watts={"a": [1.0] * 144}, speed=600)
    settings, problems = resolve_controller(
        ControllerSpec.model_validate(controller_section(replay))
    )
    assert not problems and settings is not None
    # Simulated timings over the speed, to the millisecond, none below 0.1 s.
    assert settings.period_s == pytest.approx(0.1)  # 30 s / 600 = 0.05, raised
    assert settings.breach.grace_s == pytest.approx(0.1)
    assert settings.ladder.evict_settle_s == pytest.approx(0.1)
    assert settings.ladder.reshape_settle_s == pytest.approx(0.5)
    assert settings.per_domain.window_s == pytest.approx(0.5)
    # The feedback hold is a simulated day.
    assert settings.hold_s == pytest.approx(144.0)
    # Power limits: off unless simulated; a cap step waits for five scrapes (0.2 s each
    # at 600, far above 30 s / 600); restoring waits the shipped 2 simulated minutes.
    assert settings.capping is None
    assert settings.ladder.cap_settle_s == pytest.approx(1.0)
    assert settings.ladder.uncap_settle_s == pytest.approx(0.2)
    assert settings.ladder.limit_hold_s == pytest.approx(144.0)  # a day held after a cap
    assert settings.capping is None and settings.breach.grace_s == pytest.approx(0.1)
    capped, _ = resolve_controller(
        ControllerSpec.model_validate(controller_section(replace(replay, power_limits=True)))
    )
    assert capped is not None and capped.capping is not None
    # Capping on: limits after 15 simulated seconds (0.025 s, to the millisecond), the
    # rest of the 60 s grace before reshape or eviction.
    assert capped.breach.grace_s == pytest.approx(0.025)
    assert capped.ladder.escalate_after_s == pytest.approx(0.075)
    # Prometheus scrapes every 30 simulated seconds, never faster than every 0.2 s.
    assert scrape_interval(100) == pytest.approx(0.3)
    assert scrape_interval(60) == pytest.approx(0.5)
    assert scrape_interval(300) == pytest.approx(0.2)
    # Prometheus looks back 5 simulated minutes, ten scrapes at least.
    assert lookback(1) == pytest.approx(300.0)
    assert lookback(30) == pytest.approx(10.0)
    assert lookback(300) == pytest.approx(2.0)


def test_a_baseline_precedes_a_controlled_replay_only() -> None:
    replay = ReplaySettings(watts={"a": [1.0] * 144})
    assert LiveSettings(replay=replay, baseline=True, baseline_speed=600).baseline
    with pytest.raises(ValueError, match="baseline"):
        LiveSettings(replay=replace(replay, controller=False), baseline=True)
    with pytest.raises(ValueError, match="baseline"):
        LiveSettings(baseline=True)
