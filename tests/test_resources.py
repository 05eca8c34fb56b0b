"""The custom resources: parsing, config <-> resources, and the conditions of a bad tree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from extender.config.conditions import (
    check_domains,
    check_profiles,
    domain_conditions,
    event_of,
    invalid_below,
    merge_conditions,
)
from extender.config.loading import config_from_spec, load_config
from extender.config.migrate import migrate_config_file, render_resources, resource_object
from extender.config.model import ConfigSpec
from extender.config.resources import (
    PowerDomain,
    PowerProfile,
    ResourceError,
    config_from_resources,
    parse_resources,
    resources_from_config,
)
from placement.grid import Grid

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config" / "powercap.yaml"
GRID = Grid(86400, 600, 0)


def test_example_config_round_trips() -> None:
    """config -> resources -> YAML -> resources -> config: the same tree, caps, profiles
    and services (replicas aside: demand comes from the workloads)."""
    original = load_config(EXAMPLE)
    resources = migrate_config_file(EXAMPLE, "powercap-system")
    text = render_resources(resources)
    parsed = parse_resources(list(yaml.safe_load_all(text)))
    settings = ConfigSpec.model_validate(yaml.safe_load(EXAMPLE.read_text()))
    back = config_from_spec(config_from_resources(parsed, settings), EXAMPLE.parent)
    assert back.tree.names == original.tree.names
    assert list(back.tree.parents) == list(original.tree.parents)
    np.testing.assert_array_equal(back.tree.caps, original.tree.caps)
    assert set(back.profiles) == set(original.profiles)
    for name, values in original.profiles.items():
        np.testing.assert_allclose(back.profiles[name], values)
    assert set(back.services) == set(original.services)
    for name, svc in original.services.items():
        got = back.services[name]
        assert (got.profile_name, got.priority, got.gpus_per_replica, got.nameplate_watts) == (
            svc.profile_name,
            svc.priority,
            svc.gpus_per_replica,
            svc.nameplate_watts,
        )
        assert got.replicas == 0  # from the workloads now
    assert back.power == original.power and back.headroom == original.headroom


def _config(**extra: Any) -> ConfigSpec:
    data: dict[str, Any] = {
        "apiVersion": "powercap.io/v1alpha1",
        "kind": "PowercapConfig",
        "domains": [
            {"name": "site", "cap": 1000},
            {"name": "rack", "parent": "site", "cap": [500.0] * 144},
        ],
        "services": {"chat": {"profile": [10.0] * 144, "priority": 5}},
        "controller": {"enabled": False},
    }
    data.update(extra)
    return ConfigSpec.model_validate(data)


def test_schedules_inline_profiles_and_budgets_round_trip() -> None:
    intensity = {
        "kind": "ukci",
        "fallbackCapFraction": 0.5,
        "domains": ["rack"],
        "budgets": [{"domain": "rack", "kg": 40, "window": "day"}],
    }
    spec = _config(intensity=intensity)
    resources = resources_from_config(spec, "ns", {})
    (rack,) = [r for r in resources if isinstance(r, PowerDomain) and r.metadata.name == "rack"]
    assert rack.spec.cap.schedule == [500.0] * 144
    assert rack.spec.carbon_zone == "ukci"
    assert rack.spec.emission_budget is not None and rack.spec.emission_budget.kg == 40
    (profile,) = [r for r in resources if isinstance(r, PowerProfile)]
    assert profile.metadata.name == "chat" and profile.metadata.namespace == "ns"
    back = config_from_resources(resources, spec)
    assert back.domains == spec.domains
    assert back.services["chat"].profile == "chat"
    assert back.profiles["chat"] == [10.0] * 144
    # a budget without an intensity source for its zone is refused, naming the fix
    with pytest.raises(ResourceError, match=r"PowerDomain/rack.spec.carbonZone: .*ukci"):
        config_from_resources(resources, _config())
    assert isinstance(back.intensity, dict)
    assert back.intensity["budgets"] == [{"domain": "rack", "kg": 40.0, "window": "day"}]


def _domain(name: str, parent: str | None, cap: Any = 1000.0) -> dict[str, Any]:
    c = {"watts": cap} if not isinstance(cap, list) else {"schedule": cap}
    spec: dict[str, Any] = {"cap": c} | ({"parent": parent} if parent else {})
    return {"apiVersion": "powercap.io/v1alpha1", "kind": "PowerDomain",
            "metadata": {"name": name}, "spec": spec}  # fmt: skip


def test_parse_names_the_object_and_field() -> None:
    bad = _domain("rack", "site", cap=0)
    profile = {
        "apiVersion": "powercap.io/v1alpha1",
        "kind": "PowerProfile",
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"watts": [1.0], "constant": 3},
    }
    with pytest.raises(ResourceError) as err:
        parse_resources([bad, profile, {"kind": "Pod", "metadata": {"name": "x"}}])
    text = "\n".join(err.value.problems)
    assert "PowerDomain/rack.spec.cap.watts: Input should be greater than 0" in text
    assert "PowerProfile/p.spec: Value error, give exactly one of watts, diurnal or constant" in (
        text
    )
    assert "[2].kind: 'Pod' is not a powercap resource" in text


def _domains(*objs: dict[str, Any]) -> list[PowerDomain]:
    return [PowerDomain.model_validate(o) for o in objs]


def test_unknown_parent_and_everything_below_it() -> None:
    domains = _domains(
        _domain("site", None), _domain("row", "rwo"), _domain("rack", "row"), _domain("r2", "site")
    )
    findings = check_domains(domains, GRID)
    assert [f.text for f in findings] == [
        "PowerDomain/row spec.parent: unknown domain 'rwo' (known: r2, rack, row, site); "
        "create the PowerDomain 'rwo' or fix the parent"
    ]
    assert findings[0].condition_type == "InvalidParent"
    assert findings[0].condition_status == "True"
    assert invalid_below(domains, findings) == {"row", "rack"}


def test_cycle_named_once_per_member() -> None:
    domains = _domains(_domain("site", None), _domain("a", "b"), _domain("b", "a"))
    findings = check_domains(domains, GRID)
    assert {f.name for f in findings} == {"a", "b"}
    assert all(f.reason == "ParentCycle" for f in findings)
    assert "the parents form a cycle (a -> b -> a); point one of them" in findings[0].message


def test_second_root_and_cap_below_idle_and_schedule_length() -> None:
    domains = _domains(
        _domain("site", None),
        _domain("other", None),
        _domain("rack", "site", cap=[300.0] * 143),
        _domain("rack2", "site", cap=800.0),
    )
    findings = check_domains(domains, GRID, {"rack2": 2000.0, "site": 10.0})
    by = {(f.name, f.reason): f for f in findings}
    assert "2 roots (other, site); give every domain but one a parent" in (
        by[("site", "ExtraRoot")].message
    )
    assert by[("rack", "ScheduleLength")].text == (
        "PowerDomain/rack spec.cap.schedule: 143 values, the grid has 144 slots "
        "(or give one number as cap.watts)"
    )
    below = by[("rack2", "CapBelowIdle")]
    assert below.condition_type == "Ready" and below.condition_status == "False"
    assert "(800 W) is below the idle power of the nodes under it (2000 W)" in below.message
    assert ("site", "CapBelowIdle") not in by


def test_profile_of_the_wrong_length() -> None:
    ok = PowerProfile.model_validate(
        {"metadata": {"name": "ok", "namespace": "n"}, "spec": {"watts": [1.0] * 144}}
    )
    short = PowerProfile.model_validate(
        {"metadata": {"name": "short", "namespace": "n"}, "spec": {"watts": [1.0] * 24}}
    )
    (finding,) = check_profiles([ok, short], GRID)
    assert finding.text == (
        "PowerProfile/short spec.watts: 24 values, the grid has 144 slots; give one value per "
        "slot (or use diurnal or constant)"
    )
    assert check_profiles([short], Grid(86400, 3600, 0)) == []


def test_resource_object_leaves_out_unset_fields() -> None:
    (d,) = _domains(_domain("site", None))
    assert resource_object(d) == {
        "apiVersion": "powercap.io/v1alpha1",
        "kind": "PowerDomain",
        "metadata": {"name": "site"},
        "spec": {"cap": {"watts": 1000.0}},
    }


NOW = "2026-12-06T10:00:00Z"


def test_domain_conditions_mark_the_bad_domain_and_those_below_it() -> None:
    domains = _domains(
        _domain("site", None), _domain("row", "rwo"), _domain("rack", "row"), _domain("r2", "site")
    )
    conditions = domain_conditions(domains, check_domains(domains, GRID), NOW)
    ready = {name: c[0] for name, c in conditions.items()}
    invalid = {name: c[1] for name, c in conditions.items()}
    assert (ready["site"].status, ready["r2"].status) == ("True", "True")
    assert (ready["row"].status, ready["row"].reason) == ("False", "UnknownParent")
    assert (invalid["row"].status, invalid["row"].type) == ("True", "InvalidParent")
    assert invalid["row"].message.startswith("PowerDomain/row spec.parent: unknown domain 'rwo'")
    assert (ready["rack"].status, ready["rack"].reason) == ("False", "InvalidAncestor")
    assert "domain 'row' above it is not usable" in ready["rack"].message
    assert invalid["rack"].status == "False"
    assert all(c.last_transition_time == NOW for cs in conditions.values() for c in cs)


def test_merge_keeps_the_transition_time_of_an_unchanged_condition() -> None:
    domains = _domains(_domain("site", None), _domain("rack", "site"))
    old = domain_conditions(domains, [], "2026-12-01T00:00:00Z")["rack"]
    broken = _domains(_domain("site", None), _domain("rack", "gone"))
    new = domain_conditions(broken, check_domains(broken, GRID), NOW)["rack"]
    merged = merge_conditions(old, new)
    assert [(c.type, c.status, c.last_transition_time) for c in merged] == [
        ("Ready", "False", NOW),
        ("InvalidParent", "True", NOW),
    ]
    again = merge_conditions(old, domain_conditions(domains, [], NOW)["rack"])
    assert {c.last_transition_time for c in again} == {"2026-12-01T00:00:00Z"}


def test_event_of_a_finding() -> None:
    short = PowerProfile.model_validate(
        {"metadata": {"name": "short", "namespace": "n"}, "spec": {"watts": [1.0] * 24}}
    )
    (finding,) = check_profiles([short], GRID)
    event = event_of(finding)
    assert event["type"] == "Warning" and event["reason"] == "ProfileLength"
    assert event["regarding"] == {
        "apiVersion": "powercap.io/v1alpha1",
        "kind": "PowerProfile",
        "name": "short",
        "fieldPath": "spec.watts",
        "namespace": "n",
    }
    assert event["note"].startswith("PowerProfile/short spec.watts: 24 values")
