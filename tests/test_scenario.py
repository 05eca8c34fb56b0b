"""Scenario loading: the explicit form, shorthands, and errors that name the path and the fix."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from placement.scenario.building import problem_from_spec, spec_from_problem
from placement.scenario.files import load_problem
from placement.scenario.spec import ScenarioError, spec_from_data
from tests.problems import problem_from_dict

T = 144


def base(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "apiVersion": "powercap.io/v1alpha1",
        "kind": "Scenario",
        "metadata": {"name": "t"},
        "grid": {"period": "24h", "step": "10m"},
        "domains": [
            {"name": "site", "cap": 400000},
            {"name": "row-1", "parent": "site", "cap": 130000},
            {"name": "rack-1-01", "parent": "row-1", "cap": 41000},
        ],
        "nodes": [{"name": "gpu-0001", "domain": "rack-1-01", "gpus": 8, "idleWatts": 2000}],
        "services": [
            {
                "name": "chat-eu",
                "replicas": 2,
                "gpusPerReplica": 8,
                "priority": 100,
                "nameplateWatts": 8200,
                "profile": [4000.0] * T,
            }
        ],
    }
    data.update(overrides)
    return data


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        problem_from_spec(spec_from_data(data))
    return info.value.problems


def test_explicit_form_builds_the_problem() -> None:
    p = problem_from_spec(spec_from_data(base()))
    assert p.grid.slots == T
    assert p.tree.names == ("site", "row-1", "rack-1-01")
    assert p.fleet.names == ("gpu-0001",)
    assert p.services.profiles.shape == (1, T)
    np.testing.assert_array_equal(p.tree.caps[2], np.full(T, 41000.0))


def test_domains_listed_child_first_are_reordered() -> None:
    data = base()
    data["domains"] = list(reversed(data["domains"]))
    p = problem_from_spec(spec_from_data(data))
    assert p.tree.names[0] == "site"
    assert p.tree.parents.tolist() == [-1, 0, 1]


def test_wrong_profile_length_names_service_and_slots() -> None:
    data = base()
    data["services"][0]["profile"] = [1.0] * 143
    assert problems_of(data) == ["services[0].profile: 143 values, the grid has 144 slots"]


def test_unknown_parent() -> None:
    data = base()
    data["domains"][2]["parent"] = "row-9"
    (msg,) = problems_of(data)
    assert msg.startswith("domains[2].parent: unknown domain 'row-9'")


def test_missing_parent_gives_two_roots() -> None:
    data = base()
    del data["domains"][1]["parent"]
    (msg,) = problems_of(data)
    assert msg.startswith("domains: 2 roots (site, row-1)")


def test_cycle_is_reported() -> None:
    data = base()
    data["domains"] += [
        {"name": "a", "parent": "b", "cap": 1000},
        {"name": "b", "parent": "a", "cap": 1000},
    ]
    msgs = problems_of(data)
    assert any("cycle" in m and "a" in m and "b" in m for m in msgs), msgs


def test_cycle_without_any_root() -> None:
    data = base()
    data["domains"] = [
        {"name": "a", "parent": "b", "cap": 1000},
        {"name": "b", "parent": "a", "cap": 1000},
    ]
    data["nodes"] = []
    msgs = problems_of(data)
    assert any("cycle" in m for m in msgs), msgs


def test_self_parent() -> None:
    data = base()
    data["domains"][2]["parent"] = "rack-1-01"
    assert "domains[2].parent: a domain cannot be its own parent" in problems_of(data)


def test_unknown_domain_on_a_node() -> None:
    data = base()
    data["nodes"][0]["domain"] = "rack-7-77"
    assert problems_of(data) == ["nodes[0].domain: unknown domain 'rack-7-77'"]


def test_node_on_inner_domain() -> None:
    data = base()
    data["nodes"][0]["domain"] = "row-1"
    (msg,) = problems_of(data)
    assert msg.startswith("nodes[0].domain: 'row-1' has child domains")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (-5.0, "services[0].profile: value 7 is negative (-5 W); watts must be >= 0"),
        (math.nan, "services[0].profile: value 7 is not a finite number of watts"),
        (math.inf, "services[0].profile: value 7 is not a finite number of watts"),
    ],
)
def test_negative_or_non_finite_watts(value: float, expected: str) -> None:
    data = base()
    data["services"][0]["profile"][7] = value
    assert problems_of(data) == [expected]


def test_negative_nameplate_and_idle() -> None:
    data = base()
    data["services"][0]["nameplateWatts"] = -1
    data["nodes"][0]["idleWatts"] = -3
    msgs = problems_of(data)
    assert any(m.startswith("services[0].nameplateWatts:") for m in msgs), msgs
    assert any(m.startswith("nodes[0].idleWatts:") for m in msgs), msgs


def test_non_finite_or_zero_cap() -> None:
    data = base()
    data["domains"][1]["cap"] = math.inf
    data["domains"][2]["cap"] = 0
    msgs = problems_of(data)
    assert "domains[1].cap: caps must be finite and positive watts" in msgs
    assert "domains[2].cap: caps must be finite and positive watts" in msgs


def test_cap_schedule_length() -> None:
    data = base()
    data["domains"][2]["cap"] = [41000.0] * 24
    (msg,) = problems_of(data)
    assert msg.startswith("domains[2].cap: 24 values, the grid has 144 slots")


@pytest.mark.parametrize(
    ("section", "entry"),
    [
        ("domains", {"name": "row-1", "parent": "site", "cap": 1}),
        ("nodes", {"name": "gpu-0001", "domain": "rack-1-01", "gpus": 8}),
        ("services", None),
    ],
)
def test_duplicate_names(section: str, entry: dict[str, Any] | None) -> None:
    data = base()
    data[section].append(entry if entry is not None else dict(data["services"][0]))
    msgs = problems_of(data)
    assert any("duplicate" in m for m in msgs), msgs


def test_every_problem_is_reported_at_once() -> None:
    data = base()
    data["services"][0]["profile"] = [1.0]
    data["nodes"][0]["domain"] = "nowhere"
    assert len(problems_of(data)) == 2


def test_unknown_field_and_wrong_kind() -> None:
    data = base(kind="Deployment")
    data["services"][0]["gpus"] = 8
    msgs = problems_of(data)
    assert any(m.startswith("kind:") for m in msgs), msgs
    assert any(m.startswith("services[0].gpus: unknown field") for m in msgs), msgs


def test_bad_grid() -> None:
    msgs = problems_of(base(grid={"period": "24h", "step": "7m"}))
    assert msgs == ["grid: grid step 7m does not divide period 24h"]
    msgs = problems_of(base(grid={"period": "a day", "step": "10m"}))
    assert msgs[0].startswith("grid: expected a duration")


def test_node_groups_expand() -> None:
    data = base(nodes=[])
    data["domains"].append({"name": "rack-1-02", "parent": "row-1", "cap": 41000})
    data["nodeGroups"] = [
        {
            "namePrefix": "h100",
            "domains": ["rack-1-01", "rack-1-02"],
            "countPerDomain": 3,
            "gpus": 8,
            "idleWatts": 2000,
        }
    ]
    p = problem_from_spec(spec_from_data(data))
    assert p.fleet.size == 6
    assert p.fleet.names[0] == "h100-0001"
    assert p.idle_by_domain[p.tree.index["site"]] == 12000


def test_node_group_needs_a_target() -> None:
    data = base(nodes=[])
    data["nodeGroups"] = [{"namePrefix": "x", "gpus": 8, "count": 2}]
    (msg,) = problems_of(data)
    assert msg.startswith("nodeGroups[0]: give either domain and count")


def test_diurnal_profile_peaks_where_asked() -> None:
    data = base()
    data["services"][0]["profile"] = {
        "diurnal": {"low": 1000, "high": 4000, "peakAt": "17:00", "width": "4h"}
    }
    p = problem_from_spec(spec_from_data(data))
    prof = p.services.profiles[0]
    assert p.grid.slot_label(int(np.argmax(prof))) in {"16:50", "17:00"}
    assert 1000 <= prof.min() < 1010
    assert 3990 < prof.max() <= 4000


def test_csv_profile_values_and_time_series(tmp_path: Path) -> None:
    (tmp_path / "flat.csv").write_text("watts\n" + "\n".join(str(100 + i) for i in range(T)))
    rows = ["ts,w"] + [f"{i * 300},{(i % 2) * 10 + 5}" for i in range(288 * 2)]
    (tmp_path / "series.csv").write_text("\n".join(rows))
    data = base()
    data["services"][0]["profile"] = {"csv": {"path": "flat.csv", "column": "watts"}}
    data["services"].append(
        dict(
            data["services"][0],
            name="s2",
            profile={
                "csv": {
                    "path": "series.csv",
                    "column": "w",
                    "timeColumn": "ts",
                    "quantile": 1.0,
                    "scale": 2,
                }
            },
        )
    )
    p = problem_from_spec(spec_from_data(data), tmp_path)
    np.testing.assert_array_equal(p.services.profiles[0], np.arange(100, 100 + T))
    np.testing.assert_array_equal(p.services.profiles[1], np.full(T, 30.0))


def test_csv_profile_errors_name_the_column(tmp_path: Path) -> None:
    (tmp_path / "flat.csv").write_text("watts\n1\n2\n")
    data = base()
    data["services"][0]["profile"] = {"csv": {"path": "flat.csv", "column": "power"}}
    with pytest.raises(ScenarioError) as info:
        problem_from_spec(spec_from_data(data), tmp_path)
    assert "no column 'power'" in info.value.problems[0]
    data["services"][0]["profile"] = {"csv": {"path": "missing.csv", "column": "watts"}}
    with pytest.raises(ScenarioError) as info:
        problem_from_spec(spec_from_data(data), tmp_path)
    assert info.value.problems[0].startswith("services[0].profile: cannot read")


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    p = problem_from_dict(base())
    path = tmp_path / "s.yaml"
    path.write_text(spec_from_problem(p).to_yaml())
    q = load_problem(path)
    assert q.tree.names == p.tree.names
    np.testing.assert_allclose(q.services.profiles, p.services.profiles)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read file"):
        load_problem(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("domains: [unclosed")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_problem(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ScenarioError, match="expected a mapping"):
        load_problem(bad)


def test_current_placement_references_are_checked() -> None:
    data = base(current={"chat-eu": {"gpu-0001": 1, "gpu-9999": 1}, "ghost": {}})
    msgs = problems_of(data)
    assert "current.chat-eu.gpu-9999: unknown node" in msgs
    assert "current.ghost: unknown service" in msgs
