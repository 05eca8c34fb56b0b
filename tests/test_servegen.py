"""Scenarios from the real ServeGen traces (shared data beside the repository)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from placement.powermodel import H100_LLAMA70B_TP4
from placement.replay_file import write_replay
from placement.scenario.building import problem_from_spec
from placement.scenario.files import load_problem, write_spec
from placement.scenario.servegen import (
    ServeGenScenario,
    Topology,
    build_servegen,
    read_rates,
    replay_watts,
    scenario_from_servegen,
    size_clients,
    trace_files,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "servegen"
FOLDERS = ("language/m-large", "language/m-mid")


@pytest.fixture(scope="module")
def dirs() -> list[Path]:
    found = [DATA / f for f in FOLDERS]
    missing = [str(d) for d in found if not d.is_dir()]
    if missing:
        pytest.fail(
            f"the ServeGen traces are missing: expected {', '.join(missing)}, i.e. the "
            "data at ../shared/data beside the repository (see shared/data/README.md); "
            "these tests need them"
        )
    return found


@pytest.fixture(scope="module")
def built(dirs: list[Path]) -> ServeGenScenario:
    return build_servegen(dirs)


def test_shape_and_values(built: ServeGenScenario) -> None:
    spec = built.spec
    assert len(spec.services) == 40
    assert len({s.name for s in spec.services}) == 40
    for s in spec.services:
        assert isinstance(s.profile, list)
        profile = np.asarray(s.profile)
        assert profile.shape == (144,)
        assert np.isfinite(profile).all() and (profile >= 0).all()
        assert profile.max() <= H100_LLAMA70B_TP4.max_watts + 0.1
        assert s.replicas >= 1
        assert s.gpus_per_replica == 8
        assert s.nameplate_watts == 8200
    assert {s.priority for s in spec.services} == {0, 100, 200}
    names = [s.name for s in spec.services]
    assert any(n.startswith("m-large-") for n in names)
    assert any(n.startswith("m-mid-") for n in names)


def test_deterministic(dirs: list[Path], built: ServeGenScenario) -> None:
    assert scenario_from_servegen(list(reversed(dirs))) == built.spec
    other = scenario_from_servegen(dirs, seed=1)
    assert other == scenario_from_servegen(dirs, seed=1)
    assert {s.name for s in other.services} != {s.name for s in built.spec.services}


def test_selection_is_by_mean_rate(built: ServeGenScenario) -> None:
    clients = built.sizing.clients
    means = [c.mean_rate for c in clients]
    assert means == sorted(means, reverse=True)
    assert clients[0].replicas == 64  # the largest client asks for max_replicas
    # Sized so a replica serves exactly its capacity at the client's peak rate.
    for c in clients:
        assert c.replica_rate(np.array([c.peak_rate]))[0] == pytest.approx(4.0)


def test_linear_sizing_with_rate_scale(dirs: list[Path]) -> None:
    capacity = H100_LLAMA70B_TP4.capacity_rps
    sizing, _ = size_clients(dirs, rate_scale=0.1, max_replicas=32)
    clamped = 0
    for c in sizing.clients:
        wanted = max(1, int(np.ceil(c.peak_rate * 0.1 / capacity)))
        assert c.replicas == min(wanted, 32)
        at_peak = c.replica_rate(np.array([c.peak_rate]))[0]
        if wanted > 32:
            # Clamped: the replicas keep the traffic they serve at capacity.
            clamped += 1
            assert at_peak == pytest.approx(capacity)
        else:
            assert c.rate_scale == 0.1
            assert at_peak <= capacity + 1e-9
    assert clamped >= 1  # the busiest client is far beyond 32 replicas at this scale
    spec = scenario_from_servegen(dirs, rate_scale=0.1, max_replicas=32)
    assert [s.replicas for s in spec.services] == [c.replicas for c in sizing.clients]
    assert spec == scenario_from_servegen(dirs, rate_scale=0.1, max_replicas=32)
    with pytest.raises(ValueError, match="rate_scale must be > 0"):
        scenario_from_servegen(dirs, rate_scale=0.0)
    with pytest.raises(ValueError, match="not both"):
        scenario_from_servegen(dirs, rate_scale=0.1, demand_scale=2.0)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_write_spec_round_trips(built: ServeGenScenario, tmp_path: Path, suffix: str) -> None:
    path = write_spec(built.spec, tmp_path / "out" / f"servegen{suffix}")
    loaded = load_problem(path)
    expected = problem_from_spec(built.spec)
    assert loaded.services.names == expected.services.names
    np.testing.assert_array_equal(loaded.services.demand, expected.services.demand)
    np.testing.assert_allclose(loaded.services.profiles, expected.services.profiles)
    np.testing.assert_allclose(loaded.tree.caps, expected.tree.caps)
    assert loaded.fleet.names == expected.fleet.names


def test_spec_builds_a_power_bound_problem(built: ServeGenScenario) -> None:
    problem = problem_from_spec(built.spec)
    assert problem.fleet.size == 320
    assert len(problem.tree.leaves) == 40
    svc = problem.services
    site = problem.tree.index["site"]
    above_idle = problem.tree.caps[site, 0] - problem.idle_by_domain[site]
    # Neither nameplate nor measured peaks of the demand fit: power decides.
    assert svc.demand @ svc.peaks > 1.5 * above_idle
    assert int(svc.demand @ svc.gpus) > int(problem.fleet.gpus.sum())


def test_services_peak_at_different_hours(built: ServeGenScenario) -> None:
    problem = problem_from_spec(built.spec)
    peak_hours = {int(h) // 6 for h in np.argmax(problem.services.profiles, axis=1)}
    assert len(peak_hours) >= 8


def test_root_folder_finds_every_client(dirs: list[Path]) -> None:
    assert trace_files(DATA) == trace_files(dirs)
    assert len(trace_files(dirs)) > 200


def test_topology_caps() -> None:
    topo = Topology()
    assert topo.nodes == 320
    assert topo.rack_cap_watts() == pytest.approx(0.5 * 8 * 10_200)
    assert topo.row_cap_watts() == pytest.approx(0.9 * 10 * topo.rack_cap_watts())
    assert topo.site_cap_watts() == pytest.approx(0.9 * 4 * topo.row_cap_watts())
    fixed = Topology(rack_cap=30_000, row_cap=250_000, site_cap=900_000)
    assert (fixed.rack_cap_watts(), fixed.row_cap_watts(), fixed.site_cap_watts()) == (
        30_000,
        250_000,
        900_000,
    )
    with pytest.raises(ValueError, match="rack_cap_fraction"):
        Topology(rack_cap_fraction=0)


def test_replay(dirs: list[Path], built: ServeGenScenario, tmp_path: Path) -> None:
    names = [c.name for c in built.sizing.clients[:3]]
    watts = replay_watts(dirs, names, 2, curve=H100_LLAMA70B_TP4, sizing=built.sizing)
    assert list(watts) == names
    for series in watts.values():
        assert len(series) == 2 * 144
        assert min(series) >= 0 and max(series) <= H100_LLAMA70B_TP4.max_watts + 0.1
    # Day 8 of the first client, replayed from its own trace.
    first = built.sizing.clients[0]
    day8 = read_rates(first.path, 8)[7]
    expected = H100_LLAMA70B_TP4.replica_watts(first.replica_rate(day8))
    np.testing.assert_allclose(watts[first.name][:144], expected, atol=0.05)
    out = tmp_path / "replay.json"
    write_replay(out, watts)
    assert json.loads(out.read_text()) == {"step_s": 600, "watts": watts}
    with pytest.raises(ValueError, match="whole days"):
        replay_watts(dirs, names, 8, curve=H100_LLAMA70B_TP4, sizing=built.sizing)
    with pytest.raises(ValueError, match="no sized client"):
        replay_watts(dirs, ["m-large-99999"], 1, curve=H100_LLAMA70B_TP4, sizing=built.sizing)


# ----------------------------------------------------------------------------- errors


def _trace(path: Path, days: int = 2, rate: float = 1.0) -> None:
    rows = [f"{600 * i},{rate},1.0,Gamma,0.5,0.5" for i in range(days * 144)]
    path.write_text("\n".join(rows) + "\n")


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nope is not a directory.*chunk-N-trace\.csv"):
        scenario_from_servegen([tmp_path / "nope"])


def test_directory_without_traces(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"holds no chunk-N-trace\.csv files"):
        scenario_from_servegen(tmp_path)


def test_too_few_eligible_clients(tmp_path: Path) -> None:
    folder = tmp_path / "m-tiny"
    folder.mkdir()
    _trace(folder / "chunk-0-trace.csv")
    _trace(folder / "chunk-1-trace.csv", rate=0.0)
    with pytest.raises(ValueError, match=r"asked for 2 services but only 1 .*m-tiny"):
        scenario_from_servegen(folder, services=2, train_days=1)
    spec = scenario_from_servegen(folder, services=1, train_days=1)
    assert [s.name for s in spec.services] == ["m-tiny-0"]


def test_train_days_beyond_the_trace(tmp_path: Path) -> None:
    _trace(tmp_path / "chunk-0-trace.csv", days=2)
    with pytest.raises(ValueError, match=r"chunk-0-trace\.csv holds 2 whole days but 3"):
        scenario_from_servegen(tmp_path, services=1, train_days=3)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("600,abc,1,Gamma,0,0", "malformed row"),
        ("600", "malformed row"),
        ("600,-1,1,Gamma,0,0", "row 2 has rate -1;"),
        ("1200,1,1,Gamma,0,0", "row 2 has timestamp 1200"),
    ],
)
def test_malformed_rows(tmp_path: Path, row: str, message: str) -> None:
    rows = ["0,1,1,Gamma,0,0", row] + [f"{600 * i},1,1,Gamma,0,0" for i in range(2, 144)]
    (tmp_path / "chunk-3-trace.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=rf"chunk-3-trace\.csv.*{message}"):
        scenario_from_servegen(tmp_path, services=1, train_days=1)
