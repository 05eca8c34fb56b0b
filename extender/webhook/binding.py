"""How a decided pod gets onto its node.

The Kubernetes binder creates the v1 Binding (``POST pods/{name}/binding``) as the
default scheduler would; the static binder of ``serve --scenario`` only records.
"""

from __future__ import annotations

from typing import Any, Protocol

from extender.cluster.client import DEFAULT_TIMEOUTS, bind_timeout
from extender.cluster.pods import PodRef
from extender.config.kubernetes import KubernetesSettings


class BindError(RuntimeError):
    """The binding was not created; the message is what the scheduler is told."""


class Binder(Protocol):
    def bind(self, pod: PodRef, node: str) -> None:
        """Bind ``pod`` to ``node``; raises :class:`BindError`."""


class StaticBinder:
    """Records bindings in :attr:`bound` (pod → node); no cluster involved."""

    def __init__(self) -> None:
        self.bound: dict[PodRef, str] = {}

    def bind(self, pod: PodRef, node: str) -> None:
        self.bound[pod] = node


def binding_body(pod: PodRef, node: str) -> dict[str, Any]:
    """The v1 Binding the API server expects."""
    metadata: dict[str, Any] = {"name": pod.name, "namespace": pod.namespace}
    if pod.uid:
        metadata["uid"] = pod.uid
    return {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": metadata,
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    }


class KubernetesBinder:
    """Creates Bindings through ``core`` (a ``kubernetes.client.CoreV1Api``). Each call
    is bounded by ``timeouts.bind_timeout_s``, connect and read together, so the bind verb
    answers before kube-scheduler's ``httpTimeout`` even when the API server does not."""

    def __init__(self, core: Any, *, timeouts: KubernetesSettings = DEFAULT_TIMEOUTS) -> None:
        self.core = core
        self.timeouts = timeouts

    def bind(self, pod: PodRef, node: str) -> None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            # Raw response: the client's model of a Binding reply fails to deserialise.
            response = self.core.create_namespaced_pod_binding(
                pod.name,
                pod.namespace,
                binding_body(pod, node),
                _preload_content=False,
                _request_timeout=bind_timeout(self.timeouts),
            )
            # Read and release, or the connection never returns to the pool and the
            # next bind pays a new TLS handshake.
            response.read()
            response.release_conn()
        except ApiException as exc:
            raise BindError(
                f"binding {pod} to {node} failed: {exc.status} {exc.reason}: "
                f"{(exc.body or b'')[:300]!r}"
            ) from exc
        except (OSError, HTTPError) as exc:  # connection refused, reset, timed out
            raise BindError(f"binding {pod} to {node} failed: {exc}") from exc
