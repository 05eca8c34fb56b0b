"""Every powercap CRD: the pydantic models' schemas (:mod:`extender.crds.schema`) with
what a model cannot say — names, scope, printer columns, CEL rules — and the files under
``manifests/crds/``.

CEL rules repeat the model validators the API server can run, so a bad object is refused at
``kubectl apply`` with the field and the fix, not found later by the extender. Lengths are
checked against the default grid (24h period, 10m step: T = 144 slots,
:data:`~extender.config.resources.DEFAULT_SLOTS`); a cluster on another grid writes its own
CRDs with ``python -m extender.crds --slots N``, and the extender checks every length
against its own grid in any case (:mod:`extender.config.conditions`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel

from extender.agent import resource as npl
from extender.config import resources as res
from extender.crds.schema import model_schema

CRD_DIR = Path(__file__).resolve().parents[2] / "manifests" / "crds"
REGENERATE = "make crds"
CATEGORY = "powercap"

Rule = dict[str, str]


@dataclass(frozen=True)
class Column:
    name: str
    type: Literal["string", "number", "integer", "boolean", "date"]
    json_path: str
    priority: int = 0  # 1: only with `kubectl get -o wide`

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.priority:
            out["priority"] = self.priority
        return out


AGE = Column("Age", "date", ".metadata.creationTimestamp")


@dataclass(frozen=True)
class Definition:
    """One kind's CRD. ``rules`` and ``limits`` are keyed by the property path from the
    object's root (``("spec", "cap")``; ``()`` is the root itself)."""

    kind: str
    plural: str
    scope: Literal["Cluster", "Namespaced"]
    spec: type[BaseModel]
    status: type[BaseModel] | None
    description: str
    short_names: tuple[str, ...]
    columns: tuple[Column, ...]
    rules: dict[tuple[str, ...], list[Rule]] = field(default_factory=dict)
    limits: dict[tuple[str, ...], dict[str, int]] = field(default_factory=dict)
    spec_required: bool = True

    @property
    def name(self) -> str:
        return f"{self.plural}.{res.GROUP}"

    @property
    def file(self) -> Path:
        return CRD_DIR / f"{self.name}.yaml"


def _exactly_one(*fields: str) -> str:
    return "[" + ", ".join(f"has(self.{f})" for f in fields) + "].filter(x, x).size() == 1"


def definitions(slots: int = res.DEFAULT_SLOTS) -> tuple[Definition, ...]:
    """Every powercap CRD, lengths checked against a grid of ``slots`` slots."""
    grid = f"{slots} values, one per slot of the grid"
    return (
        Definition(
            kind="PowerDomain",
            plural="powerdomains",
            scope="Cluster",
            spec=res.PowerDomainSpec,
            status=res.PowerDomainStatus,
            description=(
                "A domain of the power tree (site, row, rack/PDU): its parent and its cap "
                "(spec); what the extender predicts and the controller measures (status)."
            ),
            short_names=("pdom",),
            columns=(
                Column("Parent", "string", ".spec.parent"),
                Column("Cap", "number", ".spec.cap.watts"),
                Column("Predicted Peak", "number", ".status.predictedPeakWatts"),
                Column("At", "string", ".status.predictedPeakAt"),
                Column("Measured", "number", ".status.measuredWatts"),
                Column("Headroom", "number", ".status.headroomWatts"),
                Column("Status", "string", ".status.state"),
                Column("Zone", "string", ".spec.carbonZone", priority=1),
                AGE,
            ),
            rules={
                (): [
                    {
                        "rule": "!has(self.spec.parent) || self.spec.parent != self.metadata.name",
                        "message": "spec.parent: a domain cannot be its own parent; name "
                        "the domain above it, or drop parent on the root",
                        "fieldPath": ".spec.parent",
                        "reason": "FieldValueInvalid",
                    }
                ],
                ("spec", "cap"): [
                    {
                        "rule": "has(self.watts) != has(self.schedule)",
                        "message": "give exactly one of cap.watts or cap.schedule",
                    },
                    {
                        "rule": f"!has(self.schedule) || size(self.schedule) == {slots}",
                        "message": f"cap.schedule: give {grid} (or one number as cap.watts)",
                        "fieldPath": ".schedule",
                        "reason": "FieldValueInvalid",
                    },
                    {
                        "rule": "!has(self.schedule) || self.schedule.all(w, w > 0.0)",
                        "message": "cap.schedule: every value must be positive watts",
                        "fieldPath": ".schedule",
                        "reason": "FieldValueInvalid",
                    },
                ],
            },
            limits={("spec", "cap", "schedule"): {"maxItems": slots}},
        ),
        Definition(
            kind="PowerProfile",
            plural="powerprofiles",
            scope="Namespaced",
            spec=res.PowerProfileSpec,
            status=res.PowerProfileStatus,
            description=(
                "Watts one replica draws above node idle per slot of the grid (a quantile of "
                "what it drew); written by hand or learned from measured power."
            ),
            short_names=("pprof",),
            columns=(
                Column("Source", "string", ".spec.source"),
                Column("Quantile", "number", ".spec.quantile"),
                Column("Learned", "date", ".status.learnedAt"),
                Column("Peak", "number", ".status.peakWatts"),
                AGE,
            ),
            rules={
                ("spec",): [
                    {
                        "rule": _exactly_one("watts", "diurnal", "constant"),
                        "message": "give exactly one of watts, diurnal or constant",
                    },
                    {
                        "rule": f"!has(self.watts) || size(self.watts) == {slots}",
                        "message": f"watts: give {grid} (or use diurnal or constant)",
                        "fieldPath": ".watts",
                        "reason": "FieldValueInvalid",
                    },
                    {
                        "rule": "!has(self.source) || self.source != 'learned' "
                        "|| has(self.learned)",
                        "message": "a learned profile says when and from what window: "
                        "set learned.at and learned.window",
                        "fieldPath": ".learned",
                        "reason": "FieldValueRequired",
                    },
                ],
                ("spec", "watts"): [
                    {"rule": "self.all(w, w >= 0.0)", "message": "watts: every value must be >= 0"}
                ],
            },
            limits={("spec", "watts"): {"maxItems": slots}},
        ),
        Definition(
            kind="PowerPolicy",
            plural="powerpolicies",
            scope="Namespaced",
            spec=res.PowerPolicySpec,
            status=None,
            description=(
                "How one service's replicas are placed and capped: its pods, its "
                "PowerProfile, priority, nameplate watts, GPUs per replica and power limits."
            ),
            short_names=("ppol",),
            columns=(
                Column("Service", "string", ".spec.service"),
                Column("Profile", "string", ".spec.profileRef"),
                Column("Priority", "integer", ".spec.priority"),
                Column("Nameplate", "number", ".spec.nameplateWatts"),
                Column("GPUs", "integer", ".spec.gpusPerReplica"),
                AGE,
            ),
            rules={
                ("spec",): [
                    {
                        "rule": "!(has(self.service) && has(self.selector))",
                        "message": "give the service label's value (service) or a selector, "
                        "not both",
                    }
                ],
                ("spec", "powerLimit"): [
                    {
                        "rule": "has(self.fraction) != has(self.wattsPerGpu)",
                        "message": "give exactly one of powerLimit.fraction or "
                        "powerLimit.wattsPerGpu",
                    }
                ],
            },
            limits={("spec", "throughputCurve"): {"maxItems": 64}},
        ),
        Definition(
            kind=npl.KIND,
            plural=npl.PLURAL,
            scope="Cluster",
            spec=npl.NodePowerLimitSpec,
            status=npl.NodePowerLimitStatus,
            description=npl.DESCRIPTION,
            short_names=("npl",),
            columns=(
                Column("Watts/GPU", "number", ".spec.wattsPerGpu"),
                Column("Can set", "boolean", ".status.canSetLimits"),
                AGE,
            ),
            rules={
                ("spec", "gpus", "[]"): [
                    {
                        "rule": "has(self.index) != has(self.uuid)",
                        "message": "name the GPU by exactly one of index or uuid",
                    }
                ]
            },
            # no spec (or an empty one) withdraws the request
            spec_required=False,
        ),
    )


def _at(schema: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    node = schema
    for part in path:
        node = node["items"] if part == "[]" else node["properties"][part]
    return node


def crd(definition: Definition) -> dict[str, Any]:
    """The CustomResourceDefinition of ``definition``."""
    properties: dict[str, Any] = {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": model_schema(definition.spec),
    }
    if definition.status is not None:
        properties["status"] = model_schema(definition.status)
    root: dict[str, Any] = {
        "description": definition.description,
        "type": "object",
        "properties": properties,
    }
    if definition.spec_required:
        root["required"] = ["spec"]
    for path, limits in definition.limits.items():
        _at(root, path).update(limits)
    for path, rules in definition.rules.items():
        _at(root, path)["x-kubernetes-validations"] = rules
    version: dict[str, Any] = {"name": res.VERSION, "served": True, "storage": True}
    if definition.status is not None:
        version["subresources"] = {"status": {}}
    version["additionalPrinterColumns"] = [c.as_dict() for c in definition.columns]
    version["schema"] = {"openAPIV3Schema": root}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": definition.name},
        "spec": {
            "group": res.GROUP,
            "scope": definition.scope,
            "names": {
                "kind": definition.kind,
                "listKind": f"{definition.kind}List",
                "plural": definition.plural,
                "singular": definition.kind.lower(),
                "shortNames": list(definition.short_names),
                "categories": [CATEGORY],
            },
            "versions": [version],
        },
    }


def render(definition: Definition) -> str:
    """The CRD file's text."""
    header = f"# Generated from the pydantic models by `{REGENERATE}`; do not edit.\n"
    return header + yaml.safe_dump(crd(definition), sort_keys=False, width=100)


def main(argv: Sequence[str] | None = None) -> int:
    """Write every CRD file (``--slots`` for a grid other than the default one)."""
    parser = argparse.ArgumentParser(prog="python -m extender.crds", description=__doc__)
    parser.add_argument("--slots", type=int, default=res.DEFAULT_SLOTS)
    parser.add_argument("--out", type=Path, default=CRD_DIR)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for definition in definitions(args.slots):
        path = args.out / definition.file.name
        path.write_text(render(definition))
        print(f"wrote {path}")
    return 0
