"""Every Kubernetes API call ends when the API server stops answering.

The client is built as ``powercap serve`` builds it (from a kubeconfig, by
:func:`extender.cluster.client.kubernetes_core`) and pointed at a local TCP server that
accepts connections and never answers — a stopped or wedged API server. Each call the
extender and the controller make must then raise within its timeout; without one it would
wait for ever. The bound a call is held to is generous (seconds against timeouts of a
fraction of one); for the bind it is the product's own: kube-scheduler's extender
``httpTimeout``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from urllib3.exceptions import HTTPError, TimeoutError
from urllib3.util.retry import Retry

from extender.cluster.client import (
    CONNECTION_POOL,
    bind_timeout,
    call_timeout,
    core_api,
    kubernetes_core,
    watch_timeout,
)
from extender.cluster.events import Event, KubernetesEventSink
from extender.cluster.lease import KubernetesLeaseApi
from extender.cluster.mirror import KubernetesSource
from extender.cluster.pods import PodRef
from extender.config.kubernetes import KubernetesSettings
from extender.config.loading import config_from_data
from extender.controller.actions import KubernetesClusterApi
from extender.webhook.binding import BindError, KubernetesBinder

# Short timeouts, so each case takes a fraction of a second.
TIMEOUTS = KubernetesSettings(
    connect_timeout_s=0.3, read_timeout_s=0.3, bind_timeout_s=0.5, scheduler_http_timeout_s=5.0
)
# How long a call may take here before the test calls it hung: far above the timeouts, and
# for the bind kube-scheduler's httpTimeout.
GENEROUS_S = 10.0


class SilentServer:
    """Accepts every connection on a loopback port and never sends a byte."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed
                return
            self.accepted.append(conn)

    def close(self) -> None:
        # Closing the connections also frees a call that did hang (it then fails on EOF).
        # shutdown() first: close() alone leaves a socket blocked in accept() listening.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def server() -> Iterator[SilentServer]:
    silent = SilentServer()
    yield silent
    silent.close()


@pytest.fixture
def core(server: SilentServer, tmp_path: Path) -> Any:
    """A CoreV1Api built by ``kubernetes_core`` from a kubeconfig naming the silent server."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.port}"}}
                ],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return kubernetes_core(kubeconfig)


def ends_within(call: Callable[[], object], bound_s: float) -> BaseException | None:
    """Run ``call`` in a thread; fail the test if it is still running after ``bound_s``.
    Returns what it raised (``None`` if it returned)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # what the caller sees is the point of the test
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(bound_s)
    assert not thread.is_alive(), f"the call still waits for the API server after {bound_s}s"
    return outcome[0]


def timed_out(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what it was raised from) is the client's timeout."""
    while exc is not None:
        if isinstance(exc, TimeoutError):
            return True
        exc = exc.__cause__
    return False


# --- the calls, each as powercap makes it ----------------------------------------------------
def cluster_api(core: Any) -> KubernetesClusterApi:
    from kubernetes import client

    api_client = core.api_client
    return KubernetesClusterApi(
        core,
        client.CustomObjectsApi(api_client),
        client.PolicyV1Api(api_client),
        timeouts=TIMEOUTS,
    )


def lease_api(core: Any) -> KubernetesLeaseApi:
    from kubernetes import client

    return KubernetesLeaseApi(client.CoordinationV1Api(core.api_client), timeouts=TIMEOUTS)


POD = PodRef("llm", "eu-0", "u-1")
LEASE = {"metadata": {"name": "l", "namespace": "ns"}, "spec": {}}
CALLS: dict[str, Callable[[Any], object]] = {
    "events: post": lambda core: KubernetesEventSink(core, timeouts=TIMEOUTS).post(
        Event(POD, "PowercapTest", "a message")
    ),
    "mirror: list pods": lambda core: KubernetesSource(core, "pods", timeouts=TIMEOUTS).list(),
    "mirror: list nodes": lambda core: KubernetesSource(core, "nodes", timeouts=TIMEOUTS).list(),
    "lease: read": lambda core: lease_api(core).read("ns", "l"),
    "lease: create": lambda core: lease_api(core).create("ns", LEASE),
    "lease: replace": lambda core: lease_api(core).replace("ns", "l", LEASE),
    "controller: ScaledObjects": lambda core: cluster_api(core).scaled_objects(),
    "controller: patch a ScaledObject": lambda core: cluster_api(core).patch_scaled_object(
        "ns", "so", {"spec": {"maxReplicaCount": 1}}
    ),
    "controller: pods on a node": lambda core: cluster_api(core).pods_on("gpu-1a"),
    "controller: disruption budgets": lambda core: cluster_api(core).disruption_budgets(),
    "controller: evict": lambda core: cluster_api(core).evict("ns", "eu-0"),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_call_to_a_silent_api_server_times_out(name: str, core: Any) -> None:
    raised = ends_within(lambda: CALLS[name](core), GENEROUS_S)
    assert timed_out(raised), f"{name}: expected the client's timeout, got {raised!r}"


def test_a_bind_answers_within_the_schedulers_http_timeout(core: Any) -> None:
    binder = KubernetesBinder(core, timeouts=TIMEOUTS)
    raised = ends_within(lambda: binder.bind(POD, "gpu-1a"), TIMEOUTS.scheduler_http_timeout_s)
    assert isinstance(raised, BindError) and timed_out(raised), repr(raised)


def test_the_pod_read_a_bind_may_need_is_bounded_as_the_bind(core: Any) -> None:
    # After a Binding whose answer was lost, bind reads the pod back: within the bind's
    # own bound, and "cannot tell" (None) rather than an exception when it times out.
    config = config_from_data(
        {
            "apiVersion": "powercap.io/v1alpha1",
            "kind": "PowercapConfig",
            "domains": [{"name": "site", "cap": 1000}],
            "planner": {"enabled": False},
            "kubernetes": {"connectTimeout": "300ms", "readTimeout": "300ms", "bindTimeout": 1},
        }
    )
    binder = KubernetesBinder(core, timeouts=config.kubernetes)
    answer: list[str | None] = []
    raised = ends_within(
        lambda: answer.append(binder.bound_node(POD)), config.kubernetes.scheduler_http_timeout_s
    )
    assert raised is None and answer == [None], (raised, answer)


def test_a_watch_reads_past_its_server_timeout_then_gives_up(core: Any) -> None:
    source = KubernetesSource(core, "pods", timeouts=TIMEOUTS)
    raised = ends_within(lambda: list(source.watch("1", 1)), GENEROUS_S)
    assert timed_out(raised), repr(raised)


def test_the_timeout_each_kind_of_call_passes() -> None:
    settings = KubernetesSettings(
        connect_timeout_s=2.0, read_timeout_s=8.0, bind_timeout_s=3.0, scheduler_http_timeout_s=5
    )
    assert call_timeout(settings) == (2.0, 8.0)
    assert bind_timeout(settings) == 3.0  # connect and read together
    assert watch_timeout(settings, 300) == (2.0, 308.0)


def test_the_client_keeps_connections_alive_and_retries_nothing(core: Any) -> None:
    pool: dict[str, Any] = core.api_client.rest_client.pool_manager.connection_pool_kw
    options = pool["socket_options"]
    assert (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1) in options
    assert (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1) in options  # urllib3's own default
    if hasattr(socket, "TCP_KEEPIDLE"):
        assert any(
            level == socket.IPPROTO_TCP and opt == socket.TCP_KEEPIDLE for level, opt, _ in options
        )
    # A hidden retry would multiply every timeout.
    assert Retry.from_int(pool["retries"]).total is False
    assert pool["maxsize"] == CONNECTION_POOL


def test_an_unreachable_api_server_is_an_http_error_the_binder_names(server: SilentServer) -> None:
    """A refused connection fails at once, as a BindError naming the pod and node."""
    from kubernetes import client

    settings = client.Configuration()
    server.close()
    settings.host = f"http://127.0.0.1:{server.port}"
    binder = KubernetesBinder(core_api(settings), timeouts=TIMEOUTS)
    with pytest.raises(BindError, match=r"binding llm/eu-0.*gpu-1a") as err:
        binder.bind(POD, "gpu-1a")
    assert isinstance(err.value.__cause__, HTTPError)
