"""The committed NodePowerLimit CRD is the one the pydantic models generate."""

from __future__ import annotations

from typing import Any

import yaml

from extender.agent.resource import CRD_FILE, REGENERATE, crd, render_crd


def test_committed_crd_is_current() -> None:
    assert CRD_FILE.exists(), f"{CRD_FILE} is missing: run `{REGENERATE}`"
    assert CRD_FILE.read_text() == render_crd(), (
        f"{CRD_FILE.name} is stale against extender/agent/resource.py: run `{REGENERATE}`"
    )


def _keys(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in _keys(v)}
    if isinstance(node, list):
        return {k for v in node for k in _keys(v)}
    return set()


def test_schema_is_structural() -> None:
    """No reference, union or title survives: the API server accepts only structural
    schemas (the e2e dry-run checks the same against kube-apiserver)."""
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert not _keys(schema) & {"$ref", "$defs", "anyOf", "title", "nullable"}
    status = schema["properties"]["status"]["properties"]
    assert {"observedGeneration", "canSetLimits", "gpus", "conditions"} <= set(status)
    gpu = status["gpus"]["items"]["properties"]
    assert {"enforcedWatts", "minWatts", "maxWatts", "defaultWatts", "reason"} <= set(gpu)
    assert yaml.safe_load(render_crd()) == crd()
