"""The powercap agent of every fake node, for the power simulator.

KWOK nodes have no GPUs and run no pods, so no ``powercap agent`` DaemonSet pod runs on them.
:class:`SimulatedAgents` plays that role for all of them in this process: one
:class:`~extender.agent.fake.FakeNvml` per node (its GPUs carry the UUIDs the simulator
labels its DCGM series with, :func:`e2e.powersim.gpu_uuid`) and the agent's own code on it —
:class:`~extender.agent.loop.Agent` and :meth:`~extender.agent.loop.AgentLoop.round`, so the
request is parsed, clamped, applied, read back and its status written exactly as on a GPU
node. Instead of one watch per node (a thread and a connection each, hundreds in a replay),
one list+watch of every ``NodePowerLimit`` (:class:`~extender.cluster.mirror.Reflector`)
feeds a cache, and one thread runs the rounds of the nodes whose object changed (several at
once, as separate agents would) and, one after the other, of every node with an object each
``resync_s``. The simulator reads each fake's limits back through
:meth:`SimulatedAgents.limits_of` (a :class:`e2e.powersim.GpuLimits`), so the GPUs draw at
most what the agents enforced.

Credentials, as on a real cluster (:func:`agent_credentials`): the agent's Namespace,
ServiceAccount, RBAC and admission policy from ``manifests/agent``, and per node a token of
the agent's ServiceAccount bound to that Node (the TokenRequest API, as the projected token of
a DaemonSet pod on that node is), minted when the node's status is first written; the list+watch
uses one unbound token of the same account (it may read every NodePowerLimit). The admission
policy then refuses any status write that is not the node's own.

``settable=False`` gives fakes without root (NVML answers NO_PERMISSION to every set): the
agents report ``canSetLimits: false`` and the limits stay at the default, so the controller's
fallback to the next rung can be tested. Running no :class:`SimulatedAgents` at all leaves
nobody to apply a request (the nodes have no agent); :class:`e2e.powersim.DefaultLimits`
then keeps every GPU on its default limit.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import orjson
import yaml

from e2e.cluster import Cluster
from e2e.deploy import api_client, wait_established, wait_for
from e2e.powersim import DEFAULT_BOARD, GpuLimit, gpu_uuid
from e2e.rbac import kubectl
from extender.agent.fake import BOARDS, FakeGpu, FakeNvml
from extender.agent.kube import KubernetesRequests
from extender.agent.loop import Agent, AgentLoop
from extender.agent.metrics import AgentMetrics
from extender.agent.resource import CRD_NAME, GROUP, PLURAL, VERSION
from extender.cluster.client import DEFAULT_TIMEOUTS, call_timeout, watch_timeout
from extender.cluster.mirror import Gone, Reflector, split_events

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
AGENT_MANIFESTS = REPO / "manifests" / "agent"
CRD_MANIFESTS = REPO / "manifests" / "crds"
AGENT_NAMESPACE = "powercap-agent"
AGENT_ACCOUNT = "powercap-agent"
# What the agents need of manifests/agent: no DaemonSet (no pod runs on a KWOK node), no
# NetworkPolicy (no metrics port to guard).
AGENT_KINDS = frozenset(
    {
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
)
TOKEN_SECONDS = 12 * 3600
# Agents' rounds run at once: each node's agent is its own process on a cluster.
ROUNDS_AT_ONCE = 8
_APPLIED_MARK = "agent-rbac-applied"


class NodePowerLimitSource:
    """Every ``NodePowerLimit``, raw, as a :class:`~extender.cluster.mirror.Source`."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self.api: Any = client.CustomObjectsApi(api_client)

    def _call(self, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.list_cluster_custom_object(
                GROUP, VERSION, PLURAL, _preload_content=False, **kwargs
            )
        except ApiException as exc:
            if exc.status == 410:
                raise Gone(str(exc.reason)) from exc
            raise

    def list(self) -> tuple[list[dict[str, Any]], str]:
        response = self._call(_request_timeout=call_timeout(DEFAULT_TIMEOUTS))
        data = orjson.loads(response.data)
        response.release_conn()
        rv = str((data.get("metadata") or {}).get("resourceVersion") or "")
        return list(data.get("items") or []), rv

    def watch(self, resource_version: str, timeout_s: int) -> Iterator[dict[str, Any]]:
        response = self._call(
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout_s,
            _request_timeout=watch_timeout(DEFAULT_TIMEOUTS, timeout_s),
        )
        try:
            yield from split_events(response.stream(65536, decode_content=True))
        finally:
            response.release_conn()


class StatusWriter(Protocol):
    """Writes one node's ``NodePowerLimit`` status (as
    :meth:`extender.agent.kube.KubernetesRequests.write_status`)."""

    def write_status(self, obj: dict[str, Any], status: dict[str, Any]) -> bool: ...


class _CachedRequest:
    """The agent loop's :class:`~extender.agent.kube.RequestSource` for one node: its
    object from the shared cache, its status written with the node's own writer."""

    def __init__(self, agents: SimulatedAgents, node: str) -> None:
        self.agents = agents
        self.node = node
        self._writer: StatusWriter | None = None

    def fetch(self) -> tuple[dict[str, Any] | None, str]:
        return self.agents.cached(self.node), ""

    def wait(self, resource_version: str, timeout_s: int) -> None:
        return  # the shared watch wakes the rounds, never a loop of one node

    def write_status(self, obj: dict[str, Any], status: dict[str, Any]) -> bool:
        if self._writer is None:
            self._writer = self.agents.writer_for(self.node)
        written = self._writer.write_status(obj, status)
        if written:
            self.agents.note_status_write()
        return written


class SimulatedAgents:
    """One agent per fake node (see the module doc). ``nodes`` maps node → GPU count;
    ``board`` is a key of :data:`extender.agent.fake.BOARDS`; ``writer_for(node)`` gives what
    a node's status is written with, ``reader`` the API client of the list+watch.

    Use it as a context manager, or :meth:`start` and :meth:`stop`. Without the API server:
    :meth:`start_agents`, then :meth:`replace` / :meth:`apply` the objects and
    :meth:`run_pending` the rounds."""

    def __init__(
        self,
        nodes: Mapping[str, int],
        *,
        reader: Any,
        writer_for: Callable[[str], StatusWriter],
        board: str = DEFAULT_BOARD,
        settable: bool = True,
        resync_s: float = 5.0,
    ) -> None:
        b = BOARDS[board]
        self.board = b
        self.reader = reader
        self.writer_for = writer_for
        self.resync_s = resync_s
        self.nvml: dict[str, FakeNvml] = {
            node: FakeNvml(
                [
                    FakeGpu(gpu_uuid(node, g), b, power_mw=b.default_mw // 3, settable=settable)
                    for g in range(count)
                ]
            )
            for node, count in nodes.items()
            if count > 0
        }
        self.loops: dict[str, AgentLoop] = {}
        self.status_writes = 0
        self.spec_writes = 0  # NodePowerLimit specs seen asking for a limit (cap writes)
        self._objects: dict[str, dict[str, Any]] = {}
        self._generations: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._reflector: Reflector | None = None
        self._rounds = ThreadPoolExecutor(ROUNDS_AT_ONCE, thread_name_prefix="agents-round")

    # --- what the simulator reads --------------------------------------------------------
    def limits_of(self, node: str) -> Sequence[GpuLimit] | None:
        nvml = self.nvml.get(node)
        if nvml is None:
            return None
        return tuple(
            GpuLimit(g.limit_mw / 1000, g.limit_mw / 1000, g.board.default_mw / 1000)
            for g in nvml.gpus
        )

    # --- the cache -------------------------------------------------------------------------
    def cached(self, node: str) -> dict[str, Any] | None:
        with self._lock:
            obj = self._objects.get(node)
            return copy.deepcopy(obj) if obj is not None else None

    def note_status_write(self) -> None:
        with self._lock:
            self.status_writes += 1

    def _count_spec(self, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        name, generation = str(meta.get("name", "")), int(meta.get("generation") or 0)
        spec = obj.get("spec") or {}
        if generation > self._generations.get(name, 0):
            self._generations[name] = generation
            if spec.get("wattsPerGpu") is not None or spec.get("gpus"):
                self.spec_writes += 1

    def replace(self, items: list[dict[str, Any]]) -> None:
        with self._lock:
            before = set(self._objects)
            self._objects = {str(o["metadata"]["name"]): o for o in items}
            for obj in items:
                self._count_spec(obj)
            self._dirty |= before | set(self._objects)
        self._wake.set()

    def apply(self, kind: str, obj: dict[str, Any]) -> None:
        name = str((obj.get("metadata") or {}).get("name", ""))
        with self._lock:
            if kind == "DELETED":
                self._objects.pop(name, None)
            elif kind in ("ADDED", "MODIFIED"):
                self._objects[name] = obj
                self._count_spec(obj)
            else:
                return
            self._dirty.add(name)
        self._wake.set()

    # --- the rounds ------------------------------------------------------------------------
    def run_pending(self, *, resync: bool = False) -> int:
        """One round of every node whose object changed, :data:`ROUNDS_AT_ONCE` at a time
        — each node's agent is its own process on a cluster, and a cap step that changes
        several nodes must not reach the last one only after the others' status writes;
        with ``resync``, of every node with an object, one after the other (nothing asked
        them anything new: the rounds of every node at once would only crowd the
        simulator's exporter off the interpreter). Returns the rounds run."""
        with self._lock:
            todo = self._dirty | set(self._objects) if resync else self._dirty
            self._dirty = set()
        items = [(n, loop) for n in sorted(todo) if (loop := self.loops.get(n)) is not None]
        ran = map(self._round, items) if resync else self._rounds.map(self._round, items)
        return sum(ran)

    def _round(self, item: tuple[str, AgentLoop]) -> bool:
        node, loop = item
        if self._stop.is_set():
            return False
        try:
            loop.round()
        except Exception:
            log.exception("simulated agent of %s: round failed; retried", node)
            with self._lock:
                self._dirty.add(node)
            return False
        return True

    def run_rounds(self) -> None:
        """Rounds of the changed nodes, and of every node with an object each
        ``resync_s``, until :meth:`stop`."""
        while not self._stop.is_set():
            woken = self._wake.wait(self.resync_s)
            self._wake.clear()
            self.run_pending(resync=not woken)

    def start_agents(self) -> None:
        """Initialise each node's NVML fake and agent (the agent's start: it learns whether
        it may set limits)."""
        for node, nvml in self.nvml.items():
            agent = Agent(nvml, metrics=AgentMetrics())
            agent.start()
            self.loops[node] = AgentLoop(
                agent, _CachedRequest(self, node), resync_s=self.resync_s, restore_on_exit=True
            )

    def start(self) -> None:
        """:meth:`start_agents`, then the list+watch and the rounds in two threads; returns
        once the first list is in."""
        self.start_agents()
        self._reflector = Reflector(
            "simulated-agents",
            NodePowerLimitSource(self.reader),
            on_replace=self.replace,
            on_event=self.apply,
            watch_timeout_s=5,
        )
        self._threads = [
            threading.Thread(
                target=self._reflector.run, args=(self._stop,), name="agents-watch", daemon=True
            ),
            threading.Thread(target=self.run_rounds, name="agents-rounds", daemon=True),
        ]
        for t in self._threads:
            t.start()
        if not self._reflector.synced.wait(60.0):
            self.stop()
            raise TimeoutError("the simulated agents could not list NodePowerLimits in 60 s")

    def stop(self) -> None:
        """Stop the rounds; every fake back on its default limit (the agent's exit)."""
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(15.0)
        self._threads = []
        self._rounds.shutdown(wait=True)
        for loop in self.loops.values():
            loop.stop()

    def __enter__(self) -> SimulatedAgents:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- credentials -------------------------------------------------------------------------------
def apply_agent_manifests(c: Cluster) -> None:
    """The NodePowerLimit CRD (``manifests/crds``, Established) and the agent's objects of
    ``manifests/agent`` (:data:`AGENT_KINDS`), as the cluster's admin, once per cluster."""
    mark = c.run_dir / _APPLIED_MARK
    if mark.exists():
        return
    kubectl(c, "apply", "--server-side", "-k", str(CRD_MANIFESTS))
    wait_established(api_client(c.kubeconfig), [CRD_NAME])
    built = kubectl(c, "kustomize", str(AGENT_MANIFESTS))
    objects = [d for d in yaml.safe_load_all(built) if d and d.get("kind") in AGENT_KINDS]
    missing = AGENT_KINDS - {o["kind"] for o in objects}
    if missing:  # a renamed file must not pass as "no rights"
        raise RuntimeError(f"manifests/agent builds no {', '.join(sorted(missing))}")
    kubectl(c, "apply", "-f", "-", stdin=yaml.safe_dump_all(objects))
    mark.write_text("\n".join(sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objects)))


def _token(core: Any, node: tuple[str, str] | None) -> str:
    spec: dict[str, Any] = {"audiences": [], "expirationSeconds": TOKEN_SECONDS}
    if node is not None:
        spec["boundObjectRef"] = {
            "apiVersion": "v1",
            "kind": "Node",
            "name": node[0],
            "uid": node[1],
        }
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
    got = core.create_namespaced_service_account_token(AGENT_ACCOUNT, AGENT_NAMESPACE, body)
    return str(got.status.token)


def _kubeconfig(c: Cluster, name: str, token: str) -> Path:
    admin: dict[str, Any] = yaml.safe_load(c.kubeconfig.read_text())
    context = next(x for x in admin["contexts"] if x["name"] == admin["current-context"])
    cluster = next(x for x in admin["clusters"] if x["name"] == context["context"]["cluster"])
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kwok", "cluster": cluster["cluster"]}],
        "users": [{"name": AGENT_ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": "agent", "context": {"cluster": "kwok", "user": AGENT_ACCOUNT}}],
        "current-context": "agent",
    }
    path = c.run_dir / "agents" / f"{name}.kubeconfig"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)  # a credential
    return path


def agent_credentials(c: Cluster) -> tuple[Any, Callable[[str], Any]]:
    """The agent's objects applied (:func:`apply_agent_manifests`), then the API client of
    the list+watch (an unbound token of the agent's account) and a function giving each
    node's client (a token bound to that Node, minted on first use, kept)."""
    from kubernetes import client as k8s

    apply_agent_manifests(c)
    core: Any = k8s.CoreV1Api(api_client(c.kubeconfig))

    def account_ready() -> bool:
        return any(
            sa.metadata.name == AGENT_ACCOUNT
            for sa in core.list_namespaced_service_account(AGENT_NAMESPACE).items
        )

    wait_for("the agent's ServiceAccount", account_ready, 30.0, every_s=0.2)
    reader = api_client(_kubeconfig(c, "reader", _token(core, None)))
    clients: dict[str, Any] = {}
    lock = threading.Lock()

    def client_for(node: str) -> Any:
        with lock:
            got = clients.get(node)
            if got is None:
                uid = str(core.read_node(node).metadata.uid)
                got = api_client(_kubeconfig(c, node, _token(core, (node, uid))))
                clients[node] = got
            return got

    return reader, client_for


def simulated_agents(
    c: Cluster, nodes: Mapping[str, int], *, board: str = DEFAULT_BOARD, settable: bool = True
) -> SimulatedAgents:
    """:class:`SimulatedAgents` for ``nodes`` with the agent's own credentials on ``c``
    (not started)."""
    reader, client_for = agent_credentials(c)

    def writer_for(node: str) -> StatusWriter:
        return KubernetesRequests(client_for(node), node)

    return SimulatedAgents(
        nodes, reader=reader, writer_for=writer_for, board=board, settable=settable
    )
