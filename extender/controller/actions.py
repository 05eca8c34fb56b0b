"""What the controller does to the cluster: patch KEDA ScaledObjects, list pods and PDBs, evict,
list, create and patch NodePowerLimits."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any, Protocol

import orjson

from extender.cluster.client import DEFAULT_TIMEOUTS, call_timeout
from extender.cluster.raw import RawObject
from extender.config.kubernetes import KubernetesSettings

log = logging.getLogger(__name__)


KEDA_GROUP = "keda.sh"


KEDA_VERSION = "v1alpha1"


SCALED_OBJECTS = "scaledobjects"


POWERCAP_GROUP = "powercap.io"


POWERCAP_VERSION = "v1alpha1"


NODE_POWER_LIMITS = "nodepowerlimits"


# --- the Kubernetes side -----------------------------------------------------------------
class EvictOutcome(StrEnum):
    EVICTED = "evicted"
    BLOCKED = "blocked"  # 429: a disruption budget allows none now
    GONE = "gone"  # 404: the pod is already gone


class ApiRefused(RuntimeError):
    """A write the API server refused; ``reason`` is ``conflict`` or ``error``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ClusterApi(Protocol):
    """What the controller reads and writes in the cluster."""

    def scaled_objects(self) -> list[RawObject]:
        """KEDA ScaledObjects (raw); none when the CRD is not installed."""

    def patch_scaled_object(self, namespace: str, name: str, patch: Mapping[str, Any]) -> RawObject:
        """JSON merge patch; returns the object as patched; raises :class:`ApiRefused`."""

    def pods_on(self, node: str) -> list[RawObject]:
        """Pods bound to ``node`` (raw)."""

    def disruption_budgets(self) -> list[RawObject]:
        """policy/v1 PodDisruptionBudgets of every namespace (raw)."""

    def evict(self, namespace: str, name: str) -> EvictOutcome:
        """Post a policy/v1 Eviction; raises :class:`ApiRefused` on anything but 429/404."""

    def node_power_limits(self) -> list[RawObject] | None:
        """NodePowerLimits (raw); ``None`` when the CRD is not installed."""

    def create_node_power_limit(self, body: Mapping[str, Any]) -> RawObject:
        """Create a NodePowerLimit; raises :class:`ApiRefused` (``conflict``: it exists)."""

    def patch_node_power_limit(self, name: str, patch: Mapping[str, Any]) -> RawObject:
        """JSON merge patch of a NodePowerLimit; raises :class:`ApiRefused`."""


def _raw(response: Any) -> Any:
    data = orjson.loads(response.data)
    response.release_conn()  # back to the pool (see extender/webhook/binding.py)
    return data


class KubernetesClusterApi:
    """:class:`ClusterApi` over the Kubernetes client: ``core`` (CoreV1Api), ``custom``
    (CustomObjectsApi) and ``policy`` (PolicyV1Api). Reads are raw JSON, as the mirror's.
    Every call has the connect and read timeouts of ``timeouts``; one that times out
    raises, and the controller's tick acts again next period."""

    def __init__(
        self,
        core: Any,
        custom: Any,
        policy: Any,
        *,
        namespaces: Sequence[str] = (),
        timeouts: KubernetesSettings = DEFAULT_TIMEOUTS,
    ) -> None:
        self.core = core
        self.custom = custom
        self.policy = policy
        self.namespaces = tuple(namespaces)
        self.timeouts = timeouts
        self._warned_no_crd = False
        self._warned_no_limits = False

    @property
    def _timeout(self) -> tuple[float, float]:
        return call_timeout(self.timeouts)

    def scaled_objects(self) -> list[RawObject]:
        from kubernetes.client.exceptions import ApiException

        args = (KEDA_GROUP, KEDA_VERSION)
        try:
            if not self.namespaces:
                found = self.custom.list_cluster_custom_object(
                    *args, SCALED_OBJECTS, _request_timeout=self._timeout
                )
                return list(found.get("items") or [])
            items: list[RawObject] = []
            for ns in self.namespaces:
                found = self.custom.list_namespaced_custom_object(
                    *args, ns, SCALED_OBJECTS, _request_timeout=self._timeout
                )
                items.extend(found.get("items") or [])
            return items
        except ApiException as exc:
            if exc.status != 404:
                raise
            if not self._warned_no_crd:
                log.warning("no KEDA ScaledObjects API (CRD not installed?): no reshaping")
                self._warned_no_crd = True
            return []

    def patch_scaled_object(self, namespace: str, name: str, patch: Mapping[str, Any]) -> RawObject:
        from kubernetes.client.exceptions import ApiException

        try:
            patched: RawObject = self.custom.patch_namespaced_custom_object(
                KEDA_GROUP,
                KEDA_VERSION,
                namespace,
                SCALED_OBJECTS,
                name,
                dict(patch),
                _request_timeout=self._timeout,
            )
            return patched
        except ApiException as exc:
            reason = "conflict" if exc.status == 409 else "error"
            raise ApiRefused(reason, f"{exc.status} {exc.reason}") from exc

    def pods_on(self, node: str) -> list[RawObject]:
        data = _raw(
            self.core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={node}",
                _preload_content=False,
                _request_timeout=self._timeout,
            )
        )
        return list(data.get("items") or [])

    def disruption_budgets(self) -> list[RawObject]:
        api = self.policy
        data = _raw(
            api.list_pod_disruption_budget_for_all_namespaces(
                _preload_content=False, _request_timeout=self._timeout
            )
        )
        return list(data.get("items") or [])

    def evict(self, namespace: str, name: str) -> EvictOutcome:
        from kubernetes.client.exceptions import ApiException

        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
        }
        try:
            response = self.core.create_namespaced_pod_eviction(
                name, namespace, body, _preload_content=False, _request_timeout=self._timeout
            )
            response.read()
            response.release_conn()
        except ApiException as exc:
            if exc.status == 429:
                return EvictOutcome.BLOCKED
            if exc.status == 404:
                return EvictOutcome.GONE
            raise ApiRefused("error", f"{exc.status} {exc.reason}") from exc
        return EvictOutcome.EVICTED

    def node_power_limits(self) -> list[RawObject] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            found = self.custom.list_cluster_custom_object(
                POWERCAP_GROUP, POWERCAP_VERSION, NODE_POWER_LIMITS, _request_timeout=self._timeout
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            if not self._warned_no_limits:
                log.warning("no NodePowerLimit API (CRD not installed?): no power limits")
                self._warned_no_limits = True
            return None
        return list(found.get("items") or [])

    def create_node_power_limit(self, body: Mapping[str, Any]) -> RawObject:
        from kubernetes.client.exceptions import ApiException

        try:
            created: RawObject = self.custom.create_cluster_custom_object(
                POWERCAP_GROUP,
                POWERCAP_VERSION,
                NODE_POWER_LIMITS,
                dict(body),
                _request_timeout=self._timeout,
            )
            return created
        except ApiException as exc:
            reason = "conflict" if exc.status == 409 else "error"
            raise ApiRefused(reason, f"{exc.status} {exc.reason}") from exc

    def patch_node_power_limit(self, name: str, patch: Mapping[str, Any]) -> RawObject:
        from kubernetes.client.exceptions import ApiException

        try:
            patched: RawObject = self.custom.patch_cluster_custom_object(
                POWERCAP_GROUP,
                POWERCAP_VERSION,
                NODE_POWER_LIMITS,
                name,
                dict(patch),
                _request_timeout=self._timeout,
            )
            return patched
        except ApiException as exc:
            reason = "conflict" if exc.status in (404, 409) else "error"
            raise ApiRefused(reason, f"{exc.status} {exc.reason}") from exc
