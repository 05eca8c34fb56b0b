"""The committed CRDs are the ones the pydantic models generate, and they are structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from extender.crds.definitions import CRD_DIR, REGENERATE, crd, definitions, main, render
from extender.crds.schema import SchemaError, structural


@pytest.mark.parametrize("definition", definitions(), ids=lambda d: d.name)
def test_committed_crd_is_current(definition: Any) -> None:
    assert definition.file.exists(), f"{definition.file} is missing: run `{REGENERATE}`"
    assert definition.file.read_text() == render(definition), (
        f"{definition.file.name} is stale against the pydantic models: run `{REGENERATE}`"
    )


def test_no_stray_crd_file() -> None:
    """Every CRD file under manifests/crds/ is generated (a removed kind leaves none)."""
    generated = {d.file.name for d in definitions()}
    on_disk = {p.name for p in CRD_DIR.glob("*.powercap.io.yaml")}
    assert on_disk == generated, f"not generated: {on_disk - generated}; run `{REGENERATE}`"
    kustomization = yaml.safe_load((CRD_DIR / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == generated


def _keys(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in _keys(v)}
    if isinstance(node, list):
        return {k for v in node for k in _keys(v)}
    return set()


@pytest.mark.parametrize("definition", definitions(), ids=lambda d: d.name)
def test_schema_is_structural(definition: Any) -> None:
    """No reference, union or title survives: the API server accepts only structural
    schemas (e2e/tests/test_crds.py installs them on kube-apiserver)."""
    generated = crd(definition)
    schema = generated["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert not _keys(schema) & {"$ref", "$defs", "anyOf", "oneOf", "title", "nullable"}
    assert generated["spec"]["names"]["categories"] == ["powercap"]
    assert yaml.safe_load(render(definition)) == generated


def _version(kind: str, slots: int = 144) -> dict[str, Any]:
    (d,) = [d for d in definitions(slots) if d.kind == kind]
    version: dict[str, Any] = crd(d)["spec"]["versions"][0]
    return version


def test_power_domain_columns_rules_and_status() -> None:
    version = _version("PowerDomain")
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:7] == [
        "Parent",
        "Cap",
        "Predicted Peak",
        "At",
        "Measured",
        "Headroom",
        "Status",
    ]
    assert version["subresources"] == {"status": {}}
    root = version["schema"]["openAPIV3Schema"]
    assert "self.spec.parent != self.metadata.name" in root["x-kubernetes-validations"][0]["rule"]
    cap = root["properties"]["spec"]["properties"]["cap"]
    rules = " ".join(r["rule"] for r in cap["x-kubernetes-validations"])
    assert "size(self.schedule) == 144" in rules
    assert cap["properties"]["watts"]["exclusiveMinimum"] is True
    status = root["properties"]["status"]["properties"]
    assert {"predictedPeakWatts", "predictedPeakAt", "measuredWatts", "measuredAt"} <= set(status)
    assert {"headroomWatts", "breached", "conditions", "observedGeneration"} <= set(status)


def test_lengths_follow_the_grid() -> None:
    cap = _version("PowerDomain", slots=48)["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = " ".join(r["rule"] for r in cap["properties"]["cap"]["x-kubernetes-validations"])
    assert "size(self.schedule) == 48" in rules
    assert cap["properties"]["cap"]["properties"]["schedule"]["maxItems"] == 48


def test_int_or_string_and_unions() -> None:
    width = {"anyOf": [{"type": "string"}, {"type": "integer"}], "description": "d"}
    assert structural(width, {}) == {"x-kubernetes-int-or-string": True, "description": "d"}
    width["default"] = "8h"
    assert structural(width, {})["default"] == "8h"
    # an optional field's null default is no default
    assert structural({"anyOf": [{"type": "number"}, {"type": "null"}], "default": None}, {}) == {
        "type": "number"
    }
    with pytest.raises(SchemaError, match="no structural form"):
        structural({"anyOf": [{"type": "number"}, {"type": "array"}]}, {})


def test_main_writes_every_file(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path)]) == 0
    for d in definitions():
        assert (tmp_path / d.file.name).read_text() == render(d)
