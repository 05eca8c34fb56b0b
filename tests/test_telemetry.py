"""The extender's own metrics: build info, and the deprecated aliases of renamed ones."""

from __future__ import annotations

import platform
from importlib import metadata

import pytest
from prometheus_client.parser import text_string_to_metric_families

from extender.telemetry import REVISION_ENV, Telemetry


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
