"""What the controller's e2e tests share: API clients, pods bound by hand, the feed of bound
pods into the power simulator, KEDA's ScaledObject CRD and ScaledObjects, the controller's
Eviction events and flat metric samples."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import yaml
from prometheus_client.parser import text_string_to_metric_families

from e2e import crds, toolchain
from e2e.deploy import (
    NAMESPACE,
    SCHEDULER_NAME,
    SERVICE_LABEL,
    pod_watch,
    wait_established,
    wait_for,
)
from e2e.powersim import StaticPods, bound_pod
from e2e.scenarios import BATCH


def k8s_apis(client: Any) -> tuple[Any, Any, Any, Any, Any]:
    from kubernetes import client as k8s

    return (
        k8s.CoreV1Api(client),
        k8s.AppsV1Api(client),
        k8s.CustomObjectsApi(client),
        k8s.PolicyV1Api(client),
        k8s.ApiextensionsV1Api(client),
    )


def pods(core: Any) -> list[dict[str, Any]]:
    response = core.list_namespaced_pod(
        NAMESPACE, label_selector=SERVICE_LABEL, _preload_content=False
    )
    items: list[dict[str, Any]] = orjson.loads(response.data)["items"]
    return items


@contextmanager
def pod_feed(core: Any, into: StaticPods) -> Iterator[None]:
    """Keep the simulator's pods the API server's bound pods, from a list+watch."""

    def replace(items: list[dict[str, Any]]) -> None:
        into.replace(p for p in map(bound_pod, items) if p is not None)

    with pod_watch(core, "pod-feed", replace, on_event=into.apply):
        yield


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The extender's /metrics on its metrics ``port``, as ``{(sample name, sorted
    labels): value}``."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): float(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def bare_pod(name: str, node: str) -> dict[str, Any]:
    """A :data:`~e2e.scenarios.BATCH` replica bound to ``node`` by the test (no scheduler
    runs here)."""
    gpus = {"nvidia.com/gpu": "1"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {SERVICE_LABEL: BATCH}},
        "spec": {
            "schedulerName": SCHEDULER_NAME,
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "server",
                    "image": "registry.invalid/powercap/fake-inference:0",
                    "resources": {"requests": gpus, "limits": gpus},
                }
            ],
        },
    }


def wait_for_default_account(core: Any) -> None:
    """Wait until the namespace's ``default`` ServiceAccount exists: admission refuses pods
    before kube-controller-manager has created it, which a fresh cluster may not have done
    yet."""
    from kubernetes.client.exceptions import ApiException

    def has_account() -> bool:
        try:
            core.read_namespaced_service_account("default", NAMESPACE)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    wait_for("the default ServiceAccount", has_account, 30.0, every_s=0.2)


def create_bare_pods(core: Any, nodes: list[str]) -> None:
    """``batch-<i>`` bound to ``nodes[i]``, once the namespace's ``default``
    ServiceAccount exists (:func:`wait_for_default_account`)."""
    wait_for_default_account(core)
    for i, node in enumerate(nodes):
        core.create_namespaced_pod(NAMESPACE, bare_pod(f"batch-{i}", node))


def evict_events(core: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = orjson.loads(
        core.list_namespaced_event(
            NAMESPACE, field_selector="reason=PowerCapEvict", _preload_content=False
        ).data
    )["items"]
    return items


def fast_controller(
    prometheus_url: str, non_gpu_watts: float, eviction_window_s: int, *, lease: dict[str, Any]
) -> dict[str, Any]:
    """The ``power:`` and ``controller:`` config sections of a test: one-second periods,
    grace and settle times, straight to evictions (no KEDA operator runs here, so a
    reshape would change nothing), at most one eviction per ``eviction_window_s`` per
    domain and cluster-wide, and the given ``lease`` settings."""
    window = f"{eviction_window_s}s"
    return {
        "power": {
            "url": prometheus_url,
            "nonGpuWatts": {"default": non_gpu_watts},
            "staleness": "5s",
            "timeout": "1s",
        },
        "controller": {
            "enabled": True,
            "period": "1s",
            "grace": "1s",
            "settle": {"reshape": "1s", "evict": "1s", "restore": "1s"},
            "reshapeRounds": 0,
            "evictions": {
                "perDomain": {"limit": 1, "window": window},
                "cluster": {"limit": 1, "window": window},
            },
            "lease": lease,
        },
    }


def install_scaled_object_crd(extensions: Any) -> None:
    """KEDA's own ScaledObject CRD (pinned, from ``make tools``), Established."""
    (path,) = [p for p in crds.installed(toolchain.cache_root()) if "scaledobjects" in p.name]
    crd = yaml.safe_load(path.read_text())
    extensions.create_custom_resource_definition(crd)
    wait_established(extensions.api_client, [crd["metadata"]["name"]])


def scaled_object(name: str, max_replicas: int) -> dict[str, Any]:
    """A ScaledObject of the Deployment ``name``, labelled as the service ``name``."""
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {SERVICE_LABEL: name}},
        "spec": {
            "scaleTargetRef": {"name": name},
            "minReplicaCount": 1,
            "maxReplicaCount": max_replicas,
            "triggers": [{"type": "cpu", "metricType": "Utilization", "metadata": {"value": "60"}}],
        },
    }
