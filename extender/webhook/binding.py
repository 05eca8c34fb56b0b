"""How a decided pod gets onto its node.

The Kubernetes binder creates the v1 Binding (``POST pods/{name}/binding``) as the
default scheduler would; the static binder of ``serve --scenario`` only records.
:class:`PooledBinder` (what ``powercap serve`` runs on a real client, see
:func:`binder_for`) sends the same Binding as a plain POST of orjson bytes through the
client's own connection pool and credentials: the client's generated method validates
its arguments and the body with pydantic on every call, which at hundreds of binds a
second is most of a bind's CPU, all of it under the GIL the verbs need.

A Binding call can end without an answer (the connection drops, the API server times
out or restarts): the Binding may then exist or not. :class:`BindError` says so
(``maybe_bound``), and :meth:`Binder.bound_node` reads where the pod really is, so the
caller neither frees power a bound pod draws nor holds it for a pod still pending.
"""

from __future__ import annotations

import time
from typing import Any, Protocol
from urllib.parse import quote

import orjson

from extender.cluster.client import DEFAULT_TIMEOUTS, bind_timeout
from extender.cluster.pods import PodRef, node_name_of
from extender.cluster.raw import get_field, metadata_of
from extender.config.kubernetes import KubernetesSettings


class BindError(RuntimeError):
    """The binding was not created — or, with ``maybe_bound``, it may have been: the API
    server gave no answer that says. The message is what the scheduler is told."""

    def __init__(self, message: str, *, maybe_bound: bool = False) -> None:
        super().__init__(message)
        self.maybe_bound = maybe_bound


class Binder(Protocol):
    """Both calls take the bind verb's ``deadline`` (``time.monotonic()`` seconds): one
    bind may make two API calls (a read-back after a lost answer, or before a retried
    Binding), and together they must end before kube-scheduler stops waiting."""

    def bind(self, pod: PodRef, node: str, *, deadline: float | None = None) -> None:
        """Bind ``pod`` to ``node``; raises :class:`BindError`."""

    def bound_node(self, pod: PodRef, *, deadline: float | None = None) -> str | None:
        """The node ``pod`` is bound to now: ``""`` when it is unbound or gone (another
        pod of its name is not it), ``None`` when that cannot be read now."""


class StaticBinder:
    """Records bindings in :attr:`bound` (pod → node); no cluster involved."""

    def __init__(self) -> None:
        self.bound: dict[PodRef, str] = {}

    def bind(self, pod: PodRef, node: str, *, deadline: float | None = None) -> None:
        self.bound[pod] = node

    def bound_node(self, pod: PodRef, *, deadline: float | None = None) -> str | None:
        return self.bound.get(pod, "")


# A call with less time than this left in its bind is not started: it could not finish.
MIN_CALL_S = 0.1


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


def _never_sent(exc: Exception) -> bool:
    """Whether a transport error came before the request left: no connection was made."""
    from urllib3.exceptions import ConnectTimeoutError, MaxRetryError

    # urllib3 retries failed connects for any method and then raises MaxRetryError with
    # the connect error (NewConnectionError is a ConnectTimeoutError) as its reason.
    reason = exc.reason if isinstance(exc, MaxRetryError) else exc
    return isinstance(reason, ConnectTimeoutError | ConnectionRefusedError)


class KubernetesBinder:
    """Creates Bindings through ``core`` (a ``kubernetes.client.CoreV1Api``). Each call
    is bounded by ``timeouts.bind_timeout_s``, connect and read together, so the bind verb
    answers before kube-scheduler's ``httpTimeout`` even when the API server does not."""

    def __init__(self, core: Any, *, timeouts: KubernetesSettings = DEFAULT_TIMEOUTS) -> None:
        self.core = core
        self.timeouts = timeouts

    def _timeout(self, deadline: float | None) -> float:
        """The bind timeout, or what is left of ``deadline`` when that is less."""
        limit = bind_timeout(self.timeouts)
        return limit if deadline is None else min(limit, deadline - time.monotonic())

    def bind(self, pod: PodRef, node: str, *, deadline: float | None = None) -> None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        timeout = self._timeout(deadline)
        if timeout < MIN_CALL_S:
            raise BindError(f"binding {pod} to {node}: no time left in this bind; retry")
        try:
            # Raw response: the client's model of a Binding reply fails to deserialise.
            response = self.core.create_namespaced_pod_binding(
                pod.name,
                pod.namespace,
                binding_body(pod, node),
                _preload_content=False,
                _request_timeout=timeout,
            )
            # Read and release, or the connection never returns to the pool and the
            # next bind pays a new TLS handshake.
            response.read()
            response.release_conn()
        except ApiException as exc:
            # A 4xx is a refusal; a 5xx (a timeout, etcd unavailable) may come from a
            # request that still commits.
            raise BindError(
                f"binding {pod} to {node} failed: {exc.status} {exc.reason}: "
                f"{(exc.body or b'')[:300]!r}",
                maybe_bound=not 400 <= (exc.status or 0) < 500,
            ) from exc
        except (OSError, HTTPError) as exc:  # connection refused, reset, timed out
            raise BindError(
                f"binding {pod} to {node} failed: {exc}", maybe_bound=not _never_sent(exc)
            ) from exc

    def bound_node(self, pod: PodRef, *, deadline: float | None = None) -> str | None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        timeout = self._timeout(deadline)
        if timeout < MIN_CALL_S:
            return None  # no time left to read it in this bind: unknown for now
        try:
            # Read within a bind: bounded as the Binding is.
            response = self.core.read_namespaced_pod(
                pod.name,
                pod.namespace,
                _preload_content=False,
                _request_timeout=timeout,
            )
            data = orjson.loads(response.data)
            response.release_conn()
        except ApiException as exc:
            return "" if exc.status == 404 else None
        except (OSError, HTTPError, orjson.JSONDecodeError):
            return None
        if pod.uid and get_field(metadata_of(data), "uid") != pod.uid:
            return ""  # deleted and created again: the pod that was bound is gone
        return node_name_of(data) or ""


class PooledBinder(KubernetesBinder):
    """A :class:`KubernetesBinder` whose Binding is a plain ``POST`` of orjson bytes
    through ``core``'s connection pool (its TLS settings and client certificate) with its
    bearer token, read at each call as the client reads it (a token file is re-read when
    it rotates). Same timeouts and the same :class:`BindError` semantics; the pod read of
    :meth:`bound_node`, rare, stays the client's."""

    def __init__(self, core: Any, *, timeouts: KubernetesSettings = DEFAULT_TIMEOUTS) -> None:
        super().__init__(core, timeouts=timeouts)
        self._api = core.api_client
        self._host = str(self._api.configuration.host).rstrip("/")

    def _headers(self) -> dict[str, str]:
        headers = {str(k): str(v) for k, v in self._api.default_headers.items()}
        headers["Content-Type"] = "application/json"
        headers["Accept"] = "application/json"
        # The client's own auth step: the bearer token (refreshed by its hook, if any).
        self._api.update_params_for_auth(headers, [], ["BearerToken"], "", "POST", None)
        return headers

    def bind(self, pod: PodRef, node: str, *, deadline: float | None = None) -> None:
        from urllib3 import Timeout
        from urllib3.exceptions import HTTPError

        timeout = self._timeout(deadline)
        if timeout < MIN_CALL_S:
            raise BindError(f"binding {pod} to {node}: no time left in this bind; retry")
        url = (
            f"{self._host}/api/v1/namespaces/{quote(pod.namespace, safe='')}"
            f"/pods/{quote(pod.name, safe='')}/binding"
        )
        try:
            response = self._api.rest_client.pool_manager.request(
                "POST",
                url,
                body=orjson.dumps(binding_body(pod, node)),
                headers=self._headers(),
                timeout=Timeout(total=timeout),
                retries=False,
                preload_content=True,  # read whole, so the connection goes back to the pool
            )
        except (OSError, HTTPError) as exc:  # connection refused, reset, timed out
            raise BindError(
                f"binding {pod} to {node} failed: {exc}", maybe_bound=not _never_sent(exc)
            ) from exc
        status = int(response.status)
        if not 200 <= status < 300:
            # A 4xx is a refusal; a 5xx (a timeout, etcd unavailable) may come from a
            # request that still commits.
            raise BindError(
                f"binding {pod} to {node} failed: {status} {response.reason}: "
                f"{(response.data or b'')[:300]!r}",
                maybe_bound=not 400 <= status < 500,
            )


def binder_for(core: Any, *, timeouts: KubernetesSettings = DEFAULT_TIMEOUTS) -> KubernetesBinder:
    """The binder for ``core``: a :class:`PooledBinder` on a real
    ``kubernetes.client.CoreV1Api``, else (a stand-in with the client's methods) a
    :class:`KubernetesBinder`."""
    from kubernetes.client import CoreV1Api

    if isinstance(core, CoreV1Api):
        return PooledBinder(core, timeouts=timeouts)
    return KubernetesBinder(core, timeouts=timeouts)
