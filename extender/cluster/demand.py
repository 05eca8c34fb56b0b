"""A service's demand, read from what the cluster already says (pure; no API calls).

The planner needs, per service, how many replicas to find room for. The workloads state it:

- a Deployment or StatefulSet whose pods carry the service label (``spec.template``'s
  labels, else the object's own) asks for ``spec.replicas`` (1 when unset, as the API server
  defaults it);
- a KEDA ScaledObject scaling one of them sets the ceiling instead: ``maxReplicaCount``
  (KEDA's default, 100, when unset) — the most replicas the autoscaler can ask for, so the
  planner provisions for it and never beyond;
- a KServe InferenceService carrying the service label asks for its predictor's
  ``maxReplicas``; without one (KServe leaves scaling to Knative) it counts ``minReplicas``
  (default 1) and says so in a note.

:func:`demand_from_workloads` sums these per service and keeps, per service, where each
number came from (for ``powercap explain`` and Events). ``services[].replicas`` in the config
stays for offline scenarios only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SERVICE_LABEL = "powercap.io/service"
KEDA_DEFAULT_MAX = 100
KSERVE_DEFAULT_MIN = 1
_SCALABLE = ("Deployment", "StatefulSet")


@dataclass(frozen=True)
class Contribution:
    """One workload's share of a service's demand, and where the number was read."""

    kind: str
    namespace: str
    name: str
    replicas: int
    field: str


@dataclass(frozen=True)
class ServiceDemand:
    service: str
    replicas: int
    contributions: tuple[Contribution, ...]


@dataclass(frozen=True)
class Demand:
    """Per service, its demand; ``notes`` are ``Kind/namespace/name field: message`` lines
    about objects read with a default or left out."""

    services: dict[str, ServiceDemand] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def replicas(self, service: str) -> int:
        entry = self.services.get(service)
        return entry.replicas if entry is not None else 0


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _count(value: Any) -> int | None:
    """A non-negative replica count, or ``None`` for anything else (bools included)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _where(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = _dict(obj.get("metadata"))
    return str(obj.get("kind", "")), str(meta.get("namespace") or "default"), str(meta.get("name"))


def _service_of(obj: Mapping[str, Any], label: str) -> str | None:
    spec = _dict(obj.get("spec"))
    pod_labels = _dict(_dict(_dict(spec.get("template")).get("metadata")).get("labels"))
    own = _dict(_dict(obj.get("metadata")).get("labels"))
    value = pod_labels.get(label) or own.get(label)
    return value if isinstance(value, str) and value else None


def _read(value: Any, default: int, where: str, notes: list[str]) -> int:
    count = _count(value)
    if value is not None and count is None:
        notes.append(f"{where}: {value!r} is not a replica count; counted as {default}")
    return default if count is None else count


def demand_from_workloads(
    objects: Iterable[Mapping[str, Any]], service_label: str = SERVICE_LABEL
) -> Demand:
    """The demand of every service that ``objects`` (Deployments, StatefulSets, KEDA
    ScaledObjects, KServe InferenceServices, as the API server lists them; other kinds are
    ignored) state, by ``service_label``."""
    objs = list(objects)
    notes: list[str] = []
    # KEDA: the ceiling of each scaled workload, by (namespace, kind, name)
    ceilings: dict[tuple[str, str, str], tuple[int, str]] = {}
    for obj in objs:
        kind, namespace, name = _where(obj)
        if kind != "ScaledObject":
            continue
        spec = _dict(obj.get("spec"))
        target = _dict(spec.get("scaleTargetRef"))
        where = f"ScaledObject/{namespace}/{name}"
        if not target.get("name"):
            notes.append(f"{where} spec.scaleTargetRef.name: missing; the ScaledObject is ignored")
            continue
        ceiling = _read(
            spec.get("maxReplicaCount"), KEDA_DEFAULT_MAX, where + " spec.maxReplicaCount", notes
        )
        key = (namespace, str(target.get("kind") or "Deployment"), str(target["name"]))
        ceilings[key] = (ceiling, f"ScaledObject/{name} spec.maxReplicaCount")
    found: dict[str, list[Contribution]] = {}
    for obj in objs:
        kind, namespace, name = _where(obj)
        if kind not in (*_SCALABLE, "InferenceService"):
            continue
        service = _service_of(obj, service_label)
        if service is None:
            continue
        spec = _dict(obj.get("spec"))
        where = f"{kind}/{namespace}/{name}"
        if kind == "InferenceService":
            predictor = _dict(spec.get("predictor"))
            most = _count(predictor.get("maxReplicas"))
            if most:
                replicas, read = most, "spec.predictor.maxReplicas"
            else:
                replicas = _read(
                    predictor.get("minReplicas"),
                    KSERVE_DEFAULT_MIN,
                    where + " spec.predictor.minReplicas",
                    notes,
                )
                read = "spec.predictor.minReplicas"
                notes.append(
                    f"{where} spec.predictor.maxReplicas: not set, so the demand is "
                    f"minReplicas ({replicas}); set maxReplicas for the planner to provision "
                    "for the ceiling"
                )
        elif (namespace, kind, name) in ceilings:
            replicas, read = ceilings[(namespace, kind, name)]
        else:
            replicas = _read(spec.get("replicas"), 1, where + " spec.replicas", notes)
            read = "spec.replicas"
        found.setdefault(service, []).append(Contribution(kind, namespace, name, replicas, read))
    services = {
        s: ServiceDemand(s, sum(c.replicas for c in cs), tuple(cs))
        for s, cs in sorted(found.items())
    }
    return Demand(services, tuple(notes))
