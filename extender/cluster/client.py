"""The Kubernetes API client ``powercap serve`` runs on, and how long each call may take.

:func:`kubernetes_core` builds the ``kubernetes.client.CoreV1Api`` (in-cluster when it runs
in a pod, else from a kubeconfig) through :func:`core_api`, which gives any client
configuration what the extender needs of it:

* a pool of :data:`CONNECTION_POOL` connections (the bind threads and the mirror's watches);
* TCP keepalive on every connection (:func:`keepalive_socket_options`), so a connection to
  an API server that went away without closing it is found dead in about a minute rather
  than at the next write;
* no retries inside the client: each caller has its own (kube-scheduler retries a failed
  bind, the mirror backs off and resumes, the lease tries again every ``retryPeriod``), and
  a hidden retry would multiply the timeouts below.

The client has no default timeout; every call passes ``_request_timeout``, from the
config's ``kubernetes:`` section (:class:`~extender.config.kubernetes.KubernetesSettings`):
:func:`call_timeout` for an ordinary call, :func:`bind_timeout` for the Binding (one bound
for connect and read together, shorter than kube-scheduler's ``httpTimeout``), and
:func:`watch_timeout` for a watch (its server-side timeout plus the read timeout). A call
that times out raises ``urllib3.exceptions.TimeoutError`` (an ``HTTPError``).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from extender.config.kubernetes import KubernetesSettings

# Connections to the API server: the verbs' worker threads that bind (powercap serve
# --max-binds, 256 by default) and the mirror's and the resources' watches. A bind beyond
# the pool opens a connection of its own and throws it away: a TLS handshake per bind.
CONNECTION_POOL = 320
# A connection idle this long is probed; after KEEPALIVE_PROBES unanswered probes
# KEEPALIVE_INTERVAL_S apart it is dropped (an idle watch included).
KEEPALIVE_IDLE_S = 30
KEEPALIVE_INTERVAL_S = 10
KEEPALIVE_PROBES = 3

# The section's defaults, for callers built without a config (tests, tools).
DEFAULT_TIMEOUTS = KubernetesSettings()


class ClientConfigError(RuntimeError):
    """The client cannot be configured; the message says how to fix it."""


def call_timeout(settings: KubernetesSettings) -> tuple[float, float]:
    """``_request_timeout`` of an ordinary call: (connect, read)."""
    return (settings.connect_timeout_s, settings.read_timeout_s)


def bind_timeout(settings: KubernetesSettings) -> float:
    """``_request_timeout`` of the Binding (and of the pod read a bind may need): one bound
    for connect and read together, so the bind verb answers within kube-scheduler's
    ``httpTimeout``."""
    return settings.bind_timeout_s


def watch_timeout(settings: KubernetesSettings, server_timeout_s: float) -> tuple[float, float]:
    """``_request_timeout`` of a watch the server ends after ``server_timeout_s``: a silence
    longer than that plus the read timeout means the server is gone."""
    return (settings.connect_timeout_s, server_timeout_s + settings.read_timeout_s)


def keepalive_socket_options() -> list[tuple[int, int, int]]:
    """urllib3 socket options: its default (no Nagle delay) plus TCP keepalive, with the
    idle time, interval and probe count where the platform lets them be set."""
    options = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    options.append((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1))
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            options.append((socket.IPPROTO_TCP, option, value))
    return options


def core_api(configuration: Any) -> Any:
    """A ``CoreV1Api`` on ``configuration`` (a ``kubernetes.client.Configuration``, changed
    in place) with the pool, keepalive and retries of the module doc."""
    from kubernetes import client

    # The client's default pool holds cpu_count × 5 connections. kube-scheduler binds many
    # pods at once (one thread each here) while the mirror's two watches hold a connection
    # each; a pool smaller than that throws connections away and every bind beyond it pays
    # a fresh TLS handshake — measured at a third of the extender's bind time.
    configuration.connection_pool_maxsize = CONNECTION_POOL
    configuration.socket_options = keepalive_socket_options()
    configuration.retries = False
    return client.CoreV1Api(client.ApiClient(configuration))


def kubernetes_core(kubeconfig: Path | None) -> Any:
    """The ``CoreV1Api`` of :func:`core_api`: in-cluster when possible, else from
    ``kubeconfig`` (``None``: ``$KUBECONFIG`` or ``~/.kube/config``). Raises
    :class:`ClientConfigError` when neither works."""
    from kubernetes import client
    from kubernetes import config as loaded

    kube_config: Any = loaded  # the client ships no type information
    try:
        if kubeconfig is None:
            try:
                kube_config.load_incluster_config()
            except kube_config.ConfigException:
                kube_config.load_kube_config()
        else:
            kube_config.load_kube_config(config_file=str(kubeconfig))
    except (kube_config.ConfigException, OSError) as exc:
        raise ClientConfigError(
            f"cannot configure the Kubernetes client: {exc}; run in a pod with a "
            "ServiceAccount, or pass --kubeconfig"
        ) from exc
    return core_api(client.Configuration.get_default_copy())
