"""A 150 MW-class site as the extender's mirror sees it, for the site-scale benchmark.

:func:`site_cluster` builds, deterministically from a seed:

* the tree: one site → ``halls`` halls → ``rows`` rows → ``racks`` racks (leaves), nodes
  of 8 GPUs (2 kW idle) in equal blocks per rack (10,000 nodes, 1,000 racks by default:
  80,000 GPUs, 1,045 domains, T = 144);
* ``services`` GPU services (:class:`~placement.services.Services`, diurnal profiles
  peaking at different hours, replicas of 1, 2, 4 or 8 GPUs, mostly 1) and one named
  CPU profile (``cpu-frontend``) for the managed CPU-side pods;
* ``pods`` pods as the API server lists them (raw dicts, ``managedFields`` and status
  included): GPU replicas packed onto nodes up to ``gpu_fill`` of the GPUs, the rest
  CPU-side pods of each service (``powercap.io/service`` label, ``powercap.io/profile``
  annotation, no GPUs) spread over the nodes, and ``pending`` of them not yet bound.
  Every pod is managed, so every bound one holds a record: the worst case for memory;
* caps set from what is placed: each rack's peak load plus −1 to +3 eight-GPU replicas'
  peak (so some racks are full and most have room), rows 0–4% above their peak load,
  halls 3%, the site 2%.

The builder is the only site-specific piece: a ``site_problem()`` elsewhere that returns a
:class:`~placement.problem.Problem` of the same shape can replace :func:`site_problem`
here, and :func:`site_cluster` places pods on whatever problem it is given.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from placement.fleet import Fleet
from placement.grid import Grid
from placement.problem import Problem
from placement.services import Services
from placement.tree import PowerTree

IDLE_W = 2000.0  # per 8-GPU node
SIZES = np.array([1, 2, 4, 8])  # GPUs per replica
SIZE_SHARE = np.array([0.55, 0.15, 0.15, 0.15])
CPU_PROFILE = "cpu-frontend"
DOMAIN_LABEL = "powercap.io/domain"


@dataclass
class Placement:
    """Which service and node each pod has (GPU replicas, then CPU-side pods)."""

    gpu_service: NDArray[np.int64]  # per GPU pod
    gpu_node: NDArray[np.int64]
    cpu_service: NDArray[np.int64]  # per CPU-side pod
    cpu_node: NDArray[np.int64]


@dataclass
class Site:
    """The site: its problem (tree, fleet, GPU services), the CPU-side profile, and the
    raw Node and Pod objects a list returns."""

    problem: Problem
    cpu_profile: NDArray[np.float64]
    nodes: list[dict[str, Any]]
    placed: Placement
    pending: int

    @property
    def pod_count(self) -> int:
        return int(self.placed.gpu_service.size + self.placed.cpu_service.size)

    @property
    def gpu_pods(self) -> int:
        return int(self.placed.gpu_service.size)

    def pods(self, page: int = 500) -> Iterator[list[dict[str, Any]]]:
        """The pods, a page of ``page`` raw dicts at a time (as a paginated list reads
        them; each page a fresh set of objects, as JSON decoding makes them)."""
        yield from _pod_pages(self, page)


def _bump(hours: NDArray[np.float64], centre: float, fwhm: float) -> NDArray[np.float64]:
    dist = np.abs(hours - centre) % 24.0
    dist = np.minimum(dist, 24.0 - dist)
    sigma = fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    return np.asarray(np.exp(-0.5 * (dist / sigma) ** 2))


def site_problem(
    nodes: int = 10_000,
    racks: int = 1_000,
    rows: int = 40,
    *,
    halls: int = 4,
    gpus_per_node: int = 8,
    services: int = 200,
    seed: int = 0,
) -> tuple[Problem, NDArray[np.float64]]:
    """The site's tree (caps still unset: every cap is 1 W), fleet and GPU services
    (replicas of at most ``gpus_per_node`` GPUs), and the CPU-side profile."""
    rng = np.random.default_rng(seed)
    grid = Grid()
    hours = np.asarray((np.arange(grid.slots) + 0.5) * grid.step_s / 3600.0)
    rack_row = np.arange(racks) * rows // racks
    row_hall = np.arange(rows) * halls // rows
    names = ["site"] + [f"hall-{h + 1}" for h in range(halls)]
    parents: list[str | None] = [None] + ["site"] * halls
    names += [f"row-{r + 1:02d}" for r in range(rows)]
    parents += [f"hall-{row_hall[r] + 1}" for r in range(rows)]
    names += [f"rack-{k + 1:04d}" for k in range(racks)]
    parents += [f"row-{rack_row[k] + 1:02d}" for k in range(racks)]
    tree = PowerTree.build(names, parents, np.ones((len(names), grid.slots)))
    node_rack = np.arange(nodes) * racks // nodes
    rack_index = np.array([tree.index[f"rack-{k + 1:04d}"] for k in range(racks)])
    fleet = Fleet(
        names=tuple(f"gpu-{n + 1:05d}" for n in range(nodes)),
        domain=rack_index[node_rack].astype(np.int64),
        gpus=np.full(nodes, gpus_per_node, dtype=np.int64),
        idle_watts=np.full(nodes, IDLE_W * gpus_per_node / 8),
    )
    sizes = SIZES[gpus_per_node >= SIZES]
    p = SIZE_SHARE[: sizes.size] / SIZE_SHARE[: sizes.size].sum()
    gpus = rng.choice(sizes, size=services, p=p).astype(np.int64)
    centre = rng.choice([3.0, 10.0, 14.0, 17.0, 20.0], size=services) + rng.uniform(
        -1.5, 1.5, services
    )
    fwhm = rng.uniform(4.0, 10.0, services)
    peak_gpu = rng.uniform(440.0, 575.0, services)
    trough_gpu = rng.uniform(90.0, 190.0, services)
    profiles = np.empty((services, grid.slots))
    for s in range(services):
        shape = _bump(hours, float(centre[s]), float(fwhm[s]))
        noise = 1.0 + 0.03 * rng.standard_normal(grid.slots)
        profiles[s] = ((trough_gpu[s] + (peak_gpu[s] - trough_gpu[s]) * shape) * noise).clip(0)
        profiles[s] = (profiles[s] * gpus[s]).round(1)
    svc = Services(
        names=tuple(f"svc-{s + 1:03d}-{gpus[s]}g" for s in range(services)),
        demand=np.ones(services, dtype=np.int64),  # set by site_cluster from the pods
        gpus=gpus,
        priority=rng.choice([0, 100, 200], size=services).astype(np.int64),
        nameplate=np.asarray(700.0 * gpus, dtype=np.float64),
        profiles=profiles,
    )
    cpu = (60.0 + 60.0 * _bump(hours, 14.0, 12.0)).round(1)
    problem = Problem(
        name=f"site-{nodes}n-{racks}r-{services}s-seed{seed}",
        grid=grid,
        tree=tree,
        fleet=fleet,
        services=svc,
    )
    return problem, cpu


def _place(problem: Problem, pods: int, gpu_fill: float, rng: np.random.Generator) -> Placement:
    """GPU replicas packed node by node up to ``gpu_fill`` of each node's GPUs (random
    services that fit what is left), then CPU-side pods up to ``pods`` on random nodes."""
    svc, fleet = problem.services, problem.fleet
    by_size = {g: np.flatnonzero(svc.gpus == g) for g in SIZES}
    sizes = np.array([g for g in SIZES if by_size[g].size])
    size_p = np.array([SIZE_SHARE[i] for i, g in enumerate(SIZES) if by_size[g].size])
    services: list[int] = []
    where: list[int] = []
    for n in range(fleet.size):
        left = round(float(gpu_fill * fleet.gpus[n] * rng.uniform(0.8, 1.2)))
        left = min(left, int(fleet.gpus[n]))
        while left > 0:
            fits = sizes <= left
            g = int(rng.choice(sizes[fits], p=size_p[fits] / size_p[fits].sum()))
            services.append(int(rng.choice(by_size[g])))
            where.append(n)
            left -= g
    gpu_service = np.array(services, dtype=np.int64)[:pods]
    gpu_node = np.array(where, dtype=np.int64)[:pods]
    rest = pods - gpu_service.size
    return Placement(
        gpu_service,
        gpu_node,
        rng.integers(svc.size, size=rest),
        rng.integers(fleet.size, size=rest),
    )


def _set_caps(
    problem: Problem, placed: Placement, cpu: NDArray[np.float64], rng: np.random.Generator
) -> Problem:
    """The problem with caps fitted to what is placed (see the module doc)."""
    tree, fleet, svc = problem.tree, problem.fleet, problem.services
    leaf_load = np.zeros((tree.size, problem.grid.slots))
    np.add.at(leaf_load, fleet.domain, np.repeat(fleet.idle_watts[:, None], leaf_load.shape[1], 1))
    np.add.at(leaf_load, fleet.domain[placed.gpu_node], svc.profiles[placed.gpu_service])
    np.add.at(leaf_load, fleet.domain[placed.cpu_node], cpu)
    load = tree.membership.astype(np.float64) @ leaf_load
    peak = load.max(axis=1)
    biggest = svc.gpus == svc.gpus.max()
    per_8_gpus = float(svc.profiles[biggest].max(axis=1).mean()) * 8 / float(svc.gpus.max())
    factor = np.ones(tree.size)
    headroom = np.zeros(tree.size)
    leaves = tree.leaves
    headroom[leaves] = rng.uniform(-1.0, 3.0, leaves.size) * per_8_gpus
    for d in range(tree.size):
        if tree.depth[d] == 0:
            factor[d] = 1.02
        elif tree.depth[d] == 1:
            factor[d] = 1.03
        elif tree.depth[d] == 2:
            factor[d] = 1.0 + rng.uniform(0.0, 0.04)
    caps = np.repeat((peak * factor + headroom).round(0)[:, None], problem.grid.slots, axis=1)
    demand = np.bincount(placed.gpu_service, minlength=svc.size) + 4
    services = Services(
        names=svc.names,
        demand=demand.astype(np.int64),
        gpus=np.array(svc.gpus),
        priority=np.array(svc.priority),
        nameplate=np.array(svc.nameplate),
        profiles=np.array(svc.profiles),
    )
    return Problem(
        name=problem.name,
        grid=problem.grid,
        tree=tree.with_caps(caps),
        fleet=fleet,
        services=services,
    )


def site_cluster(
    problem: Problem | None = None,
    cpu_profile: NDArray[np.float64] | None = None,
    *,
    pods: int = 100_000,
    gpu_fill: float = 0.85,
    pending: int = 1_000,
    nodes: int = 10_000,
    gpus_per_node: int = 8,
    seed: int = 0,
) -> Site:
    """The site with ``pods`` pods (see the module doc); ``problem`` defaults to
    :func:`site_problem` (``nodes`` of ``gpus_per_node``), whose caps are replaced by
    ones fitted to the placement."""
    if problem is None or cpu_profile is None:
        problem, cpu_profile = site_problem(nodes, gpus_per_node=gpus_per_node, seed=seed)
    rng = np.random.default_rng(seed + 1)
    placed = _place(problem, pods, gpu_fill, rng)
    problem = _set_caps(problem, placed, cpu_profile, rng)
    tree, fleet = problem.tree, problem.fleet
    raw_nodes = [
        _raw_node(
            fleet.names[n],
            tree.names[int(fleet.domain[n])],
            int(fleet.gpus[n]),
            float(fleet.idle_watts[n]),
        )
        for n in range(fleet.size)
    ]
    return Site(problem, cpu_profile, raw_nodes, placed, pending)


def _pod_pages(site: Site, page: int) -> Iterator[list[dict[str, Any]]]:
    placed = site.placed
    svc, fleet = site.problem.services, site.problem.fleet
    total = placed.gpu_service.size + placed.cpu_service.size
    # The pending pods are spread evenly through the list.
    pending_every = max(1, total // site.pending) if site.pending else total + 1
    batch: list[dict[str, Any]] = []
    for i in range(total):
        if i < placed.gpu_service.size:
            s, n, cpu = int(placed.gpu_service[i]), int(placed.gpu_node[i]), False
            gpus = int(svc.gpus[s])
        else:
            j = i - placed.gpu_service.size
            s, n, cpu = int(placed.cpu_service[j]), int(placed.cpu_node[j]), True
            gpus = 0
        bound = i % pending_every != pending_every - 1
        batch.append(
            api_pod(i, svc.names[s], gpus, node=fleet.names[n] if bound else None, cpu=cpu)
        )
        if len(batch) == page:
            yield batch
            batch = []
    if batch:
        yield batch


def _raw_node(name: str, rack: str, gpus: int, idle_watts: float) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "uid": f"node-{name}",
            "resourceVersion": "1000",
            "labels": {
                DOMAIN_LABEL: rack,
                "kubernetes.io/hostname": name,
                "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
                "nvidia.com/gpu.count": str(gpus),
            },
            "annotations": {"powercap.io/idle-watts": f"{idle_watts:g}"},
        },
        "spec": {"providerID": f"site://{name}"},
        "status": {
            "capacity": {"cpu": "224", "memory": "2063937Mi", "nvidia.com/gpu": str(gpus)},
            "allocatable": {"cpu": "220", "memory": "2000000Mi", "nvidia.com/gpu": str(gpus)},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        },
    }


def api_pod(i: int, service: str, gpus: int, *, node: str | None, cpu: bool) -> dict[str, Any]:
    """Pod ``i`` of ``service`` as the API server lists it (a Deployment's replica):
    bound to ``node`` and running, or pending when ``node`` is ``None``; a CPU-side pod
    (``cpu``) carries the powercap label and profile annotation and no GPUs."""
    workload = f"{service}-frontend" if cpu else service
    rs = f"{workload}-7d9f8b6c5d"
    name = f"{rs}-{i:06x}"
    uid = f"00000000-0000-4000-8000-{i:012d}"
    labels: dict[str, str] = {"app": workload, "pod-template-hash": "7d9f8b6c5d"}
    annotations: dict[str, str] = {}
    requests: dict[str, str] = {"cpu": "4" if cpu else "16", "memory": "16Gi"}
    if cpu:
        labels["powercap.io/service"] = workload
        annotations["powercap.io/profile"] = CPU_PROFILE
    else:
        requests["nvidia.com/gpu"] = str(gpus)
    limits = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": "server",
                "image": "vllm/vllm-openai:v0.7.2",
                "args": ["--model", f"models/{service}", "--port", "8000"],
                "ports": [{"containerPort": 8000, "protocol": "TCP"}],
                "resources": {"limits": limits, "requests": requests},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent",
            }
        ],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "schedulerName": "powercap-scheduler",
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "priority": 0,
        "enableServiceLinks": True,
        "preemptionPolicy": "PreemptLowerPriority",
    }
    status: dict[str, Any] = {"phase": "Pending", "qosClass": "Burstable"}
    if node is not None:
        spec["nodeName"] = node
        status = {
            "phase": "Running",
            "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": "2026-12-01T10:00:05Z"}
                for t in ("PodReadyToStartContainers", "Initialized", "Ready", "PodScheduled")
            ],
            "hostIP": "10.1.2.3",
            "podIP": f"10.200.{i // 65536 % 256}.{i % 256}",
            "startTime": "2026-12-01T10:00:01Z",
            "containerStatuses": [
                {
                    "name": "server",
                    "ready": True,
                    "restartCount": 0,
                    "image": "vllm/vllm-openai:v0.7.2",
                    "containerID": f"containerd://{i:064x}",
                    "state": {"running": {"startedAt": "2026-12-01T10:00:04Z"}},
                }
            ],
            "qosClass": "Burstable",
        }
    return {
        "metadata": {
            "name": name,
            "generateName": f"{rs}-",
            "namespace": "llm",
            "uid": uid,
            "resourceVersion": str(100_000 + i),
            "creationTimestamp": "2026-12-01T10:00:00Z",
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": rs,
                    "uid": "11111111-2222-4333-8444-555555555555",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
            "managedFields": [
                {
                    "manager": "kube-controller-manager",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": "2026-12-01T10:00:00Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}},
                },
                {
                    "manager": "kubelet",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": "2026-12-01T10:00:05Z",
                    "fieldsType": "FieldsV1",
                    "subresource": "status",
                    "fieldsV1": {"f:status": {"f:conditions": {}, "f:phase": {}}},
                },
            ],
        },
        "spec": spec,
        "status": status,
    }
