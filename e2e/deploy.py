"""Scenario → cluster: fake GPU nodes, one Deployment per service, the powercap config.

The Kubernetes objects are plain dicts sent through the ``kubernetes`` client (its model
classes add nothing here), and the placement is read back as an :class:`Assignment` so that
``placement.metrics.evaluate`` judges the real scheduler exactly as it judges the planners.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from extender.cluster.mirror import KubernetesSource, Reflector
from extender.config.loading import config_from_data
from extender.config.migrate import resource_object
from extender.config.model import ConfigSpec
from extender.config.resources import GROUP, VERSION, resources_from_config
from extender.crds.definitions import crd, definitions
from placement.assignment import Assignment
from placement.problem import Problem
from placement.scenario.building import spec_from_problem

SCHEDULER_NAME = "powercap-scheduler"
DOMAIN_LABEL = "powercap.io/domain"
IDLE_ANNOTATION = "powercap.io/idle-watts"
SERVICE_LABEL = "powercap.io/service"
GPU = "nvidia.com/gpu"
KWOK_FAKE = {"kwok.x-k8s.io/node": "fake"}
NAMESPACE = "default"


# Nodes created at once by create_nodes.
CREATE_WORKERS = 8


def api_client(kubeconfig: Path) -> Any:
    """A ``kubernetes.client.ApiClient`` for ``kubeconfig`` (not the process-wide default,
    so two clusters in one process do not share credentials)."""
    from kubernetes import config as kube_config

    loader: Any = kube_config  # the client ships no type information
    return loader.new_client_from_config(config_file=str(kubeconfig))


def node_object(problem: Problem, n: int) -> dict[str, Any]:
    """The fake node for fleet entry ``n``. kwok only manages nodes it is told are fake;
    kwokctl runs it with ``--manage-all-nodes``, the label and annotation keep the objects
    right under a kwok that selects."""
    fleet, tree = problem.fleet, problem.tree
    gpus = str(int(fleet.gpus[n]))
    # CPU, memory and pods are generous so that only GPUs and power decide placement.
    resources = {"cpu": "128", "memory": "1Ti", "pods": "110", GPU: gpus}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": fleet.names[n],
            "labels": {
                **KWOK_FAKE,
                "kubernetes.io/hostname": fleet.names[n],
                DOMAIN_LABEL: tree.names[int(fleet.domain[n])],
            },
            "annotations": {
                **KWOK_FAKE,
                IDLE_ANNOTATION: f"{float(fleet.idle_watts[n]):g}",
            },
        },
        "status": {"capacity": resources, "allocatable": resources},
    }


def deployment_object(problem: Problem, s: int) -> dict[str, Any]:
    svc = problem.services
    name = svc.names[s]
    gpus = {GPU: str(int(svc.gpus[s]))}
    labels = {SERVICE_LABEL: name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "replicas": int(svc.demand[s]),
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "schedulerName": SCHEDULER_NAME,
                    "containers": [
                        {
                            "name": "server",
                            "image": "registry.invalid/powercap/fake-inference:0",
                            # Extended resources need requests == limits.
                            "resources": {"requests": gpus, "limits": gpus},
                        }
                    ],
                },
            },
        },
    }


@dataclass(frozen=True)
class PlannerChoice:
    """The extender's background planner for a run: ``strategy`` is ``greedy`` or
    ``cpsat``; ``reserve_plan`` makes the plan binding (``scoring.reservePlan``);
    ``filter_to_plan`` offers only the plan's domains while it wants more there
    (``scoring.filterToPlan``)."""

    strategy: str = "greedy"
    reserve_plan: bool = False
    filter_to_plan: bool = True
    time_limit_s: float = 10.0
    debounce_s: float = 1.0


def powercap_config(
    problem: Problem, planner: PlannerChoice | None = None, *, resources: bool = False
) -> dict[str, Any]:
    """The PowercapConfig of a problem: its tree and caps, and every service's profile as a
    named profile of T values (so CSV or diurnal sources need not be shipped next to the
    config). Validated with the extender's own loader before use. The default planner is
    greedy with a short debounce: test clusters are small and should settle fast. With
    ``resources`` the extender runs on the powercap.io objects of :func:`create_resources`
    and reads the demand from the Deployments (``resources.enabled``); the tree here is
    then only the fallback."""
    planner = planner or PlannerChoice()
    spec = spec_from_problem(problem)
    svc = problem.services
    config: dict[str, Any] = {
        "apiVersion": "powercap.io/v1alpha1",
        "kind": "PowercapConfig",
        "metadata": {"name": problem.name},
        "grid": spec.grid.model_dump(by_alias=True),
        "headroom": spec.headroom,
        "domains": [d.model_dump(by_alias=True, exclude_none=True) for d in spec.domains],
        "nodes": {
            "domainLabel": DOMAIN_LABEL,
            "idleWattsAnnotation": IDLE_ANNOTATION,
            "defaultIdleWatts": 0,
            "gpuResource": GPU,
        },
        "profiles": {name: [float(w) for w in svc.profiles[s]] for s, name in enumerate(svc.names)},
        "services": {
            name: {
                "profile": name,
                "priority": int(svc.priority[s]),
                "gpusPerReplica": int(svc.gpus[s]),
                "nameplateWatts": float(svc.nameplate[s]),
                "replicas": int(svc.demand[s]),
            }
            for s, name in enumerate(svc.names)
        },
        "policy": {"missingProfile": "reject"},
        "planner": {
            "enabled": True,
            "strategy": planner.strategy,
            "debounce": f"{planner.debounce_s:g}s",
            "timeLimit": f"{planner.time_limit_s:g}s",
        },
        "scoring": {
            "reservePlan": planner.reserve_plan,
            "filterToPlan": planner.filter_to_plan,
        },
    }
    if resources:
        config["resources"] = {"enabled": True}
    config_from_data(config, source="generated config")  # raises ConfigError on a bad one
    return config


def write_config(
    problem: Problem,
    path: Path,
    planner: PlannerChoice | None = None,
    *,
    resources: bool = False,
) -> Path:
    """:func:`powercap_config` written to ``path`` (JSON); returns ``path``."""
    config = powercap_config(problem, planner, resources=resources)
    path.write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))
    return path


def powercap_resources(problem: Problem, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """The PowerDomains, PowerProfiles and PowerPolicies of ``problem``: what ``powercap
    config migrate`` makes of its :func:`powercap_config` (namespaced ones in
    ``namespace``), as objects to create."""
    spec = ConfigSpec.model_validate(powercap_config(problem))
    made = resources_from_config(spec, namespace, dict(spec.profiles))
    return [resource_object(r) for r in made]


def install_powercap_crds(client: Any, slots: int, timeout_s: float = 60.0) -> None:
    """Create powercap's CRDs (those of ``make crds``, their lengths checked against a grid
    of ``slots`` slots, as ``python -m extender.crds --slots`` writes them) and wait until
    the API server serves each."""
    from kubernetes import client as k8s

    api: Any = k8s.ApiextensionsV1Api(client)
    names: list[str] = []
    for definition in definitions(slots):
        body = crd(definition)
        # _preload_content=False: the response is not parsed into the client's models.
        api.create_custom_resource_definition(body, _preload_content=False)
        names.append(body["metadata"]["name"])

    wait_established(client, names, timeout_s=timeout_s)


def wait_established(client: Any, names: Iterable[str], *, timeout_s: float = 60.0) -> None:
    """Wait until the API server serves each CRD of ``names`` (its ``Established``
    condition True). Polled rather than ``kubectl wait --for=condition=Established``, which
    fails at once on a CRD that has no conditions yet, as a loaded machine shows right
    after the create."""
    from kubernetes import client as k8s

    api: Any = k8s.ApiextensionsV1Api(client)

    def established(name: str) -> bool:
        found = orjson.loads(api.read_custom_resource_definition(name, _preload_content=False).data)
        return any(
            c.get("type") == "Established" and c.get("status") == "True"
            # A CRD just created may carry ``status.conditions: null`` for a moment.
            for c in (found.get("status") or {}).get("conditions") or []
        )

    for name in names:
        wait_for(f"CRD {name} to be Established", partial(established, name), timeout_s)


def create_resources(client: Any, objects: list[dict[str, Any]]) -> None:
    """Create powercap.io objects (:func:`powercap_resources`); the CRDs must exist."""
    from kubernetes import client as k8s

    custom: Any = k8s.CustomObjectsApi(client)
    plurals = {d.kind: d.plural for d in definitions()}
    for obj in objects:
        plural = plurals[obj["kind"]]
        namespace = obj["metadata"].get("namespace")
        if namespace is None:
            custom.create_cluster_custom_object(GROUP, VERSION, plural, obj, _preload_content=False)
        else:
            custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, obj, _preload_content=False
            )


def use_resources(client: Any, problem: Problem) -> None:
    """Install powercap's CRDs for ``problem``'s grid and create its PowerDomains,
    PowerProfiles and PowerPolicies, so that an extender started after this (with
    ``resources`` in its config) starts from them."""
    install_powercap_crds(client, problem.grid.slots)
    create_resources(client, powercap_resources(problem))


@contextmanager
def pod_watch(
    core: Any,
    name: str,
    on_replace: Callable[[list[dict[str, Any]]], None],
    *,
    on_event: Callable[[str, dict[str, Any]], None],
    sync_timeout_s: float = 60.0,
) -> Iterator[None]:
    """Every pod of the cluster, list+watched in a thread named ``name`` for the body of
    the ``with``, by the extender's own :class:`extender.cluster.mirror.Reflector` (resume, ``410``
    relist, back-off) into ``on_replace`` (each full list) and ``on_event``; entry returns
    once the first list is in."""
    stop = threading.Event()
    # A short watch so that leaving the ``with`` waits at most that long.
    reflector = Reflector(
        name,
        KubernetesSource(core, "pods"),
        on_replace=on_replace,
        on_event=on_event,
        watch_timeout_s=5,
    )
    thread = threading.Thread(target=reflector.run, args=(stop,), name=name, daemon=True)
    thread.start()
    try:
        if not reflector.synced.wait(sync_timeout_s):
            raise TimeoutError(f"could not list pods within {sync_timeout_s:.0f}s")
        yield
    finally:
        stop.set()
        thread.join(15.0)


def wait_for(
    what: str, check: Callable[[], bool], timeout_s: float, *, every_s: float = 0.5
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(every_s)


def create_nodes(client: Any, problem: Problem, timeout_s: float = 60.0) -> None:
    """Create every node and wait until kwok has made each Ready (a node that is not Ready
    carries the not-ready taint, and the scheduler would skip it)."""
    from kubernetes import client as k8s

    core: Any = k8s.CoreV1Api(client)
    # A few at a time: one by one, 5,000 nodes take minutes of round trips on a busy
    # machine; more than the client's pool would open and drop connections.
    with ThreadPoolExecutor(CREATE_WORKERS) as pool:
        list(
            pool.map(lambda n: core.create_node(node_object(problem, n)), range(problem.fleet.size))
        )

    def all_ready() -> bool:
        items = orjson.loads(core.list_node(_preload_content=False).data)["items"]
        ready = {
            item["metadata"]["name"]
            for item in items
            if any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (item.get("status") or {}).get("conditions") or []
            )
        }
        return ready >= set(problem.fleet.names)

    wait_for("nodes to be Ready", all_ready, timeout_s)


def create_deployments(client: Any, problem: Problem) -> None:
    from kubernetes import client as k8s

    apps: Any = k8s.AppsV1Api(client)
    for s in range(problem.services.size):
        apps.create_namespaced_deployment(NAMESPACE, deployment_object(problem, s))


@dataclass(frozen=True)
class Observed:
    """What the API server says: the placement, and each Pending pod's last
    FailedScheduling message (empty when it has none yet)."""

    assignment: Assignment
    pending: dict[str, str]
    pods: int


def observe(client: Any, problem: Problem) -> Observed:
    from kubernetes import client as k8s

    core: Any = k8s.CoreV1Api(client)
    pods = orjson.loads(
        core.list_namespaced_pod(
            NAMESPACE, label_selector=SERVICE_LABEL, _preload_content=False
        ).data
    )["items"]
    events = orjson.loads(
        core.list_namespaced_event(
            NAMESPACE, field_selector="reason=FailedScheduling", _preload_content=False
        ).data
    )["items"]
    latest: dict[str, tuple[str, str]] = {}
    for ev in events:
        obj = ev.get("involvedObject", {})
        stamp = ev.get("lastTimestamp") or ev.get("eventTime") or ""
        name = obj.get("name", "")
        if name not in latest or stamp >= latest[name][0]:
            latest[name] = (stamp, ev.get("message", ""))
    counts = np.zeros((problem.services.size, problem.fleet.size), dtype=np.int64)
    pending: dict[str, str] = {}
    for pod in pods:
        if pod["metadata"].get("deletionTimestamp"):
            continue
        name = pod["metadata"]["name"]
        node = pod.get("spec", {}).get("nodeName")
        service = pod["metadata"]["labels"][SERVICE_LABEL]
        if node:
            counts[problem.services.index[service], problem.fleet.index[node]] += 1
        else:
            pending[name] = latest.get(name, ("", ""))[1]
    live = sum(1 for p in pods if not p["metadata"].get("deletionTimestamp"))
    return Observed(Assignment(counts), pending, live)


def decided_by_extender(message: str) -> bool:
    """A FailedScheduling from a completed filter pass in which the extender turned nodes
    away ("0/6 nodes are available: 3 powercap: domain …"), not from a failed call to the
    extender or a lost race at bind, after either of which the scheduler retries the pod."""
    return "nodes are available" in message and "powercap" in message


def wait_settled(
    client: Any,
    problem: Problem,
    timeout_s: float = 90.0,
    *,
    quiet_s: float = 8.0,
    wanted: int | None = None,
    decided: Callable[[str], bool] = bool,
    context: Callable[[], str] = str,
) -> Observed:
    """Wait until ``wanted`` pods (default: the scenario's demand) exist, each bound or
    Pending with a FailedScheduling message that ``decided`` accepts, with nothing changing
    for ``quiet_s``; then return what the API server says.

    The default accepts any FailedScheduling. Pass :func:`decided_by_extender` where the
    extender may have been unreachable: such a pod sits in the scheduler's back-off, so a
    quiet spell alone does not mean it was judged. ``context()`` is appended to the
    timeout's message (log tails, say)."""
    wanted = int(problem.services.demand.sum()) if wanted is None else wanted
    deadline = time.monotonic() + timeout_s
    last: tuple[int, ...] | None = None
    since = time.monotonic()
    while True:
        seen = observe(client, problem)
        undecided = {pod: msg for pod, msg in seen.pending.items() if not decided(msg)}
        key = (seen.pods, *seen.assignment.counts.ravel().tolist(), len(seen.pending))
        if seen.pods != wanted or undecided or key != last:
            last, since = key, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return seen
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"placement did not settle in {timeout_s:.0f}s: {seen.pods}/{wanted} pods, "
                f"{int(seen.assignment.hosted.sum())} bound, {len(seen.pending)} Pending, "
                f"{len(undecided)} not yet decided, e.g. {dict(list(undecided.items())[:4])}"
                f"{context()}"
            )
        time.sleep(1.0)
