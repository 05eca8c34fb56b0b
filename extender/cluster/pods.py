"""What a pod is to powercap: managed or not, its service, its GPUs and its profile.

* Managed: the pod requests the GPU resource (``nvidia.com/gpu``) or carries a
  ``powercap.io/`` label or annotation. Everything else passes the extender untouched.
* Service: the ``powercap.io/service`` label; else KServe's
  ``serving.kserve.io/inferenceservice`` label; else the controlling owner (a
  ReplicaSet's name minus its pod-template-hash suffix, i.e. the Deployment).
* Profile: the named profile of the ``powercap.io/profile`` annotation; else the
  service's profile in the config. When neither gives one, the policy decides:
  ``reject`` (the pod fits nowhere, with a message) or ``nameplate`` (admitted at the
  service's nameplate watts, else the default nameplate, in every slot).

The raw pod is the dict the scheduler or the API server sent; struct fields are read
case-insensitively as Go reads them, label and annotation keys exactly.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from extender.cluster.raw import ProtocolError, detached, get_field, shared
from extender.config.model import Config

PREFIX = "powercap.io/"
SERVICE_LABEL = "powercap.io/service"
PROFILE_ANNOTATION = "powercap.io/profile"
KSERVE_LABEL = "serving.kserve.io/inferenceservice"
TEMPLATE_HASH_LABEL = "pod-template-hash"
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True, slots=True)
class PodRef:
    """Who a pod is, for messages, events and the binding."""

    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Demand:
    """A pod's claim on power and GPUs.

    ``profile`` is the (T,) watts it is admitted at, ``None`` for unmanaged pods and
    for managed pods rejected by policy (``problem`` says why). ``profile_key``
    identifies the profile for caching (equal keys, equal profiles).
    """

    pod: PodRef
    managed: bool
    gpus: int
    service: str | None = None
    profile: NDArray[np.float64] | None = None
    profile_key: str = ""
    problem: str | None = None  # what is wrong with the pod's profile, if anything
    rejected: bool = False  # the problem fails the pod everywhere (policy reject)

    @property
    def fallback(self) -> bool:
        """Admitted at nameplate watts because its profile is missing or invalid."""
        return self.problem is not None and not self.rejected


def _mapping(obj: Any, field: str) -> Mapping[str, Any]:
    value = get_field(obj, field) if isinstance(obj, Mapping) else None
    return value if isinstance(value, Mapping) else {}


def _object(obj: Mapping[str, Any], field: str, where: str) -> Mapping[str, Any]:
    """``obj[field]`` when it is an object (empty when missing or null); raises
    :class:`ProtocolError` naming ``where.field`` for anything else."""
    value = get_field(obj, field)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ProtocolError(f"{where}.{field}: expected an object, got {type(value).__name__}")
    return value


def _objects(obj: Mapping[str, Any], field: str, where: str) -> list[Mapping[str, Any]]:
    """``obj[field]`` when it is a list of objects (``[]`` when missing or null); raises
    :class:`ProtocolError` naming ``where.field`` for anything else. Lists the extender
    iterates are checked, not skipped: a pod whose containers cannot be read has unknown
    GPUs."""
    value = get_field(obj, field)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ProtocolError(f"{where}.{field}: expected a list, got {type(value).__name__}")
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise ProtocolError(
                f"{where}.{field}[{i}]: expected an object, got {type(item).__name__}"
            )
    return value


def _text(meta: Mapping[str, Any], field: str) -> str:
    value = get_field(meta, field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ProtocolError(f"Pod.metadata.{field}: expected a string, got {type(value).__name__}")
    return value


def pod_ref(pod: Mapping[str, Any]) -> PodRef:
    """Namespace (``default`` when empty), name and UID; raises :class:`ProtocolError` when
    one of them is not a string."""
    meta = _object(pod, "metadata", "Pod")
    # Copies: records and waiting pods keep these (raw.detached says why).
    return PodRef(
        namespace=shared(_text(meta, "namespace") or "default"),
        name=detached(_text(meta, "name")),
        uid=detached(_text(meta, "uid")),
    )


def _quantity(value: Any, where: str) -> int:
    """An extended-resource quantity: a whole number (``8``, ``"8"``)."""
    if isinstance(value, bool):
        raise ProtocolError(f"{where}: expected a whole number of devices, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        # Kubernetes may canonicalise small integers with a suffix ("1k"); accept the
        # decimal SI ones, never fractions: devices are whole.
        for suffix, factor in (("k", 10**3), ("M", 10**6)):
            if text.endswith(suffix) and text[:-1].isdigit():
                return int(text[:-1]) * factor
    raise ProtocolError(f"{where}: expected a whole number of devices, got {value!r}")


def _container_gpus(container: Mapping[str, Any], resource: str, where: str) -> int:
    resources = _object(container, "resources", where)
    requests = _object(resources, "requests", f"{where}.resources")
    limits = _object(resources, "limits", f"{where}.resources")
    # Extended resources cannot be overcommitted: a limit alone implies the request.
    if resource in requests:
        return _quantity(requests[resource], f"{where}.resources.requests.{resource}")
    if resource in limits:
        return _quantity(limits[resource], f"{where}.resources.limits.{resource}")
    return 0


def pod_gpus(pod: Mapping[str, Any], resource: str = "nvidia.com/gpu") -> int:
    """Devices of ``resource`` the pod holds while running, as the scheduler counts:
    the larger of the containers' sum and any one init container; raises
    :class:`ProtocolError` naming the field when the containers cannot be read."""
    spec = _object(pod, "spec", "Pod")
    total = 0
    for i, c in enumerate(_objects(spec, "containers", "Pod.spec")):
        total += _container_gpus(c, resource, f"Pod.spec.containers[{i}]")
    init = 0
    for i, c in enumerate(_objects(spec, "initContainers", "Pod.spec")):
        init = max(init, _container_gpus(c, resource, f"Pod.spec.initContainers[{i}]"))
    return max(total, init)


def _strip_template_hash(replicaset: str, labels: Mapping[str, Any]) -> str:
    template_hash = labels.get(TEMPLATE_HASH_LABEL)
    if isinstance(template_hash, str) and replicaset.endswith("-" + template_hash):
        return replicaset[: -len(template_hash) - 1]
    head, sep, _ = replicaset.rpartition("-")
    return head if sep and head else replicaset


def pod_service(pod: Mapping[str, Any]) -> str | None:
    """The service a pod belongs to (see the module doc), or ``None``; raises
    :class:`ProtocolError` naming the field when the labels or owners cannot be read."""
    meta = _object(pod, "metadata", "Pod")
    labels = _object(meta, "labels", "Pod.metadata")
    for label in (SERVICE_LABEL, KSERVE_LABEL):
        value = labels.get(label)
        if value is not None and not isinstance(value, str):
            raise ProtocolError(
                f"Pod.metadata.labels.{label}: expected a string, got {type(value).__name__}"
            )
        if value:
            return value
    owners = _objects(meta, "ownerReferences", "Pod.metadata")
    chosen: Mapping[str, Any] | None = None
    for owner in owners:
        if get_field(owner, "controller"):
            chosen = owner
            break
    if chosen is None and owners:
        chosen = owners[0]
    if chosen is None:
        return None
    name = get_field(chosen, "name")
    if not isinstance(name, str) or not name:
        return None
    if get_field(chosen, "kind") == "ReplicaSet":
        return _strip_template_hash(name, labels)
    return name


def is_terminal(pod: Mapping[str, Any]) -> bool:
    return get_field(_mapping(pod, "status"), "phase") in TERMINAL_PHASES


def scheduler_name_of(pod: Mapping[str, Any]) -> str:
    """The pod's ``spec.schedulerName``; the API server's default when it has none."""
    name = get_field(_mapping(pod, "spec"), "schedulerName")
    return name if isinstance(name, str) and name else "default-scheduler"


def node_name_of(pod: Mapping[str, Any]) -> str | None:
    name = get_field(_mapping(pod, "spec"), "nodeName")
    return name if isinstance(name, str) and name else None


def _carries_powercap_keys(meta: Mapping[str, Any]) -> bool:
    for field in ("labels", "annotations"):
        keys = _object(meta, field, "Pod.metadata")
        if any(isinstance(k, str) and k.startswith(PREFIX) for k in keys):
            return True
    return False


class DemandResolver:
    """Turns raw pods into :class:`Demand` under one config.

    Constant nameplate profiles are built once per wattage and shared, so equal
    fallbacks compare (and cache) as one profile.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._flat: dict[float, NDArray[np.float64]] = {}

    def flat_profile(self, watts: float) -> NDArray[np.float64]:
        profile = self._flat.get(watts)
        if profile is None:
            profile = np.full(self.config.grid.slots, watts, dtype=np.float64)
            profile.setflags(write=False)
            self._flat[watts] = profile
        return profile

    def resolve(self, pod: Mapping[str, Any]) -> Demand:
        """The pod's demand; raises :class:`ProtocolError`, naming the field, for a pod it
        cannot read: a GPU request that is not a whole number, a list that is not a list of
        objects (containers, owner references), a name or UID that is not a string."""
        ref = pod_ref(pod)
        gpus = pod_gpus(pod, self.config.nodes.gpu_resource)
        meta = _object(pod, "metadata", "Pod")
        if gpus <= 0 and not _carries_powercap_keys(meta):
            return Demand(pod=ref, managed=False, gpus=gpus)
        service = pod_service(pod)
        if service is not None:
            service = shared(service)
        entry = self.config.services.get(service) if service is not None else None
        annotations = _object(meta, "annotations", "Pod.metadata")
        named = annotations.get(PROFILE_ANNOTATION)
        problem: str | None = None
        if named is not None:
            profile = self.config.profiles.get(named) if isinstance(named, str) else None
            if profile is not None:
                return Demand(ref, True, gpus, service, profile, sys.intern(f"profile:{named}"))
            known = ", ".join(sorted(self.config.profiles)[:8]) or "none"
            problem = (
                f"annotation {PROFILE_ANNOTATION}={named!r} names no profile in the powercap "
                f"config (known: {known})"
            )
        elif entry is not None and entry.profile is not None:
            key = sys.intern(f"service:{service}")
            return Demand(ref, True, gpus, service, entry.profile, key)
        elif service is None:
            problem = (
                f"cannot tell the pod's service: set the {SERVICE_LABEL} label "
                f"or the {PROFILE_ANNOTATION} annotation"
            )
        elif entry is None:
            problem = (
                f"service {service!r} has no entry in the powercap config and the pod has no "
                f"{PROFILE_ANNOTATION} annotation"
            )
        else:
            problem = f"service {service!r} has no profile in the powercap config"
        if self.config.policy.missing_profile == "reject":
            return Demand(ref, True, gpus, service, None, "", problem, rejected=True)
        watts = self.config.nameplate_of(service)
        return Demand(
            ref, True, gpus, service, self.flat_profile(watts), f"nameplate:{watts:g}", problem
        )
