"""The extender's own metrics: build info, and the deprecated aliases of renamed ones."""

from __future__ import annotations

import platform
from importlib import metadata

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from extender.telemetry import RENAMED, REVISION_ENV, CarbonMetrics, Telemetry


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def test_build_info_names_version_python_and_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REVISION_ENV, "0123abc")
    text = Telemetry().render().decode()
    ((labels, value),) = _samples(text, "powercap_build_info")
    assert value == 1.0
    assert labels == {
        "version": metadata.version("powercap-scheduler"),
        "revision": "0123abc",
        "python_version": platform.python_version(),
    }


def test_build_info_without_a_recorded_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REVISION_ENV, raising=False)
    ((labels, _),) = _samples(Telemetry().render().decode(), "powercap_build_info")
    assert labels["revision"] == "unknown"


def test_the_plan_gap_is_a_ratio_and_keeps_its_old_name_until_0_3() -> None:
    telemetry = Telemetry()
    telemetry.plan_info = lambda: (0.0, 0.25, 12)
    text = telemetry.render().decode()
    assert _samples(text, "powercap_plan_gap_ratio") == [({}, 0.25)]
    assert _samples(text, "powercap_plan_gap") == [({}, 0.25)]
    assert (
        "# HELP powercap_plan_gap Deprecated: use powercap_plan_gap_ratio; removed in 0.3." in text
    )


def test_every_renamed_metric_is_exported_under_both_names_with_a_deprecation_help() -> None:
    registry = CollectorRegistry()
    metrics = CarbonMetrics(registry)
    metrics.zero("ukci", ["site"], priced=True)
    metrics.emissions.labels("site").inc(1500.0)
    metrics.cap_ratio.labels("site").set(0.5)
    metrics.budget_remaining.labels("site", "day").set(2500.0)
    metrics.budget_projected.labels("site", "day").set(-500.0)
    metrics.budget_ratio.labels("site", "day").set(0.75)
    telemetry = Telemetry()
    telemetry.plan_info = lambda: (0.0, 0.1, 3)
    text = generate_latest(registry).decode() + telemetry.render().decode()
    helps = {
        line.split(" ", 3)[2]: line.split(" ", 3)[3]
        for line in text.splitlines()
        if line.startswith("# HELP ")
    }
    for old, new in RENAMED.items():
        assert helps[old].startswith(f"Deprecated: use {new}; removed in 0.3."), old
        new_samples = _samples(text, new)
        assert new_samples, new
        scale = 1000.0 if new.endswith(("_grams", "_grams_total")) else 1.0
        assert _samples(text, old) == [(labels, value / scale) for labels, value in new_samples]
    assert _samples(text, "powercap_emissions_kg_total") == [({"domain": "site"}, 1.5)]
    # and no new name is marked deprecated
    assert not any(helps[new].startswith("Deprecated") for new in RENAMED.values())
