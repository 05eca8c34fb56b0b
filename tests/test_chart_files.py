"""The Helm chart's generated and copied files agree with their sources, without a cluster.

Helm reads nothing outside the chart, so ``charts/powercap/files/`` holds copies of the files
the chart shares with ``config/`` and ``manifests/`` (the example config and profiles, the
KubeSchedulerConfigurations, the admission policies, the RBAC rules, the monitoring objects,
every CustomResourceDefinition of ``manifests/crds/``); they must stay byte-for-byte equal to
their originals, which are the ones edited. ``values.schema.json`` is written from the config
model. ``e2e/tests/test_chart.py`` lints, renders and dry-runs the chart.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from extender.config import schema

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "powercap"
FILES = CHART / "files"
# copy in charts/powercap/files/ → original (what `make chart-sync` copies)
ORIGINALS: dict[str, Path] = {
    "powercap.yaml": REPO / "config" / "powercap.yaml",
    "resources.yaml": REPO / "config" / "resources.yaml",
    "kube-scheduler.yaml": REPO / "config" / "kube-scheduler.yaml",
    "kube-scheduler-mtls.yaml": REPO / "config" / "kube-scheduler-mtls.yaml",
    "admission.yaml": REPO / "manifests" / "base" / "admission.yaml",
    "rbac.yaml": REPO / "manifests" / "base" / "rbac.yaml",
    "prometheusrule.yaml": REPO / "manifests" / "monitoring" / "prometheusrule.yaml",
    "servicemonitor.yaml": REPO / "manifests" / "monitoring" / "servicemonitor.yaml",
    "grafana-dashboard.json": REPO / "manifests" / "monitoring" / "grafana-dashboard.json",
    "kube-scheduler-metrics.yaml": (
        REPO / "manifests" / "monitoring" / "kube-scheduler" / "kube-scheduler-metrics.yaml"
    ),
    **{f"profiles/{p.name}": p for p in sorted((REPO / "config" / "profiles").glob("*.yaml"))},
    # Every CRD of manifests/crds/ (its kustomization.yaml aside), whatever its name.
    **{
        f"crds/{p.name}": p
        for p in sorted((REPO / "manifests" / "crds").glob("*.yaml"))
        if p.name != "kustomization.yaml"
    },
}


def test_the_committed_values_schema_is_the_generated_one() -> None:
    committed = (CHART / "values.schema.json").read_text()
    assert committed == schema.render(), (
        "charts/powercap/values.schema.json differs from what the config model gives: "
        "run `make chart-schema` and commit the file"
    )


@pytest.mark.parametrize("copy", sorted(ORIGINALS))
def test_the_chart_copy_equals_its_original(copy: str) -> None:
    original = ORIGINALS[copy]
    path = FILES / copy
    assert path.is_file(), f"charts/powercap/files/{copy} is missing: run `make chart-sync`"
    assert path.read_bytes() == original.read_bytes(), (
        f"charts/powercap/files/{copy} differs from {original.relative_to(REPO)}: edit the "
        "original, then run `make chart-sync` to copy it into the chart"
    )


def test_the_chart_holds_no_copy_without_an_original() -> None:
    copies = {p.relative_to(FILES).as_posix() for p in FILES.rglob("*") if p.is_file()}
    stale = sorted(copies - set(ORIGINALS))
    assert not stale, (
        f"charts/powercap/files/ holds {stale}, which no original has: "
        "run `make chart-sync` (it removes copies of deleted profiles) or add the original to "
        "tests/test_chart_files.py and the Makefile's chart-sync"
    )


def test_the_schema_covers_every_values_key() -> None:
    """Every key values.yaml sets has a schema (the top level forbids the rest)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    properties = schema.values_schema()["properties"]
    missing = sorted(set(values) - set(properties))
    assert not missing, f"values.yaml keys without a schema in extender/config/schema.py: {missing}"
    # the committed file is JSON a validator can load
    json.loads((CHART / "values.schema.json").read_text())
