"""Requests shaped exactly as kube-scheduler sends them to an extender, and a small
cluster to send them to.

kube-scheduler marshals ``ExtenderArgs`` with Go's encoding/json: Go field names
(``Pod``, ``Nodes``, ``NodeNames``), nil pointers as ``null``, the embedded v1.Pod and
v1.Node with their own lowercase JSON tags and without kind/apiVersion (objects from
the informer cache carry no TypeMeta).
"""

from __future__ import annotations

from typing import Any

import orjson

from extender import runtime
from extender.config.loading import config_from_problem
from extender.config.model import PlannerSettings, PolicySpec
from placement.problem import Problem
from tests.problems import problem_from_dict

GPU = "nvidia.com/gpu"


def pod(
    name: str,
    service: str | None = "chat-eu",
    gpus: int = 8,
    namespace: str = "llm",
    uid: str | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    replicaset: str | None = None,
    node_name: str | None = None,
    phase: str = "Pending",
) -> dict[str, Any]:
    """A v1.Pod as the scheduler has it: a vLLM-like container requesting ``gpus``."""
    all_labels = dict(labels or {})
    if service is not None:
        all_labels["powercap.io/service"] = service
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": uid or f"uid-{namespace}-{name}",
        "resourceVersion": "1001",
        "creationTimestamp": "2025-03-01T09:59:58Z",
        "labels": all_labels,
    }
    if annotations:
        meta["annotations"] = annotations
    if replicaset is not None:
        template_hash = replicaset.rsplit("-", 1)[-1]
        meta["labels"]["pod-template-hash"] = template_hash
        meta["generateName"] = f"{replicaset}-"
        meta["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": replicaset,
                "uid": "0b8a5f0e-3d1c-4c53-9a7e-2f43bd2a1c11",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    resources: dict[str, Any] = {"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {}}
    if gpus:
        resources["requests"][GPU] = str(gpus)
        resources["limits"][GPU] = str(gpus)
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": "vllm",
                "image": "vllm/vllm-openai:v0.7.2",
                "ports": [{"containerPort": 8000, "protocol": "TCP"}],
                "resources": resources,
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent",
            }
        ],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "serviceAccount": "default",
        "securityContext": {},
        "schedulerName": "powercap-scheduler",
        "tolerations": [
            {
                "key": "node.kubernetes.io/not-ready",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            }
        ],
        "priority": 0,
        "enableServiceLinks": True,
        "preemptionPolicy": "PreemptLowerPriority",
    }
    if node_name is not None:
        spec["nodeName"] = node_name
    return {
        "metadata": meta,
        "spec": spec,
        "status": {"phase": phase, "qosClass": "Burstable"},
    }


def node(
    name: str, domain: str | None, gpus: int = 8, idle_watts: float | None = None
) -> dict[str, Any]:
    """A v1.Node as the scheduler has it (GPU capacity from the device plugin)."""
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
    }
    if domain is not None:
        labels["powercap.io/domain"] = domain
    meta: dict[str, Any] = {
        "name": name,
        "uid": f"node-uid-{name}",
        "resourceVersion": "77",
        "labels": labels,
    }
    if idle_watts is not None:
        meta["annotations"] = {"powercap.io/idle-watts": str(idle_watts)}
    capacity = {"cpu": "96", "memory": "1056Gi", "pods": "110", GPU: str(gpus)}
    return {
        "metadata": meta,
        "spec": {"providerID": f"kwok://{name}"},
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "conditions": [{"type": "Ready", "status": "True"}],
            "nodeInfo": {"kubeletVersion": "v1.36.0", "architecture": "amd64"},
        },
    }


def filter_body(
    pod_obj: dict[str, Any], names: list[str], nodes: list[dict[str, Any]] | None = None
) -> bytes:
    """``ExtenderArgs`` as sent with ``nodeCacheCapable: true`` (names) or, when
    ``nodes`` is given, ``false`` (full node objects)."""
    if nodes is not None:
        return orjson.dumps(
            {"Pod": pod_obj, "Nodes": {"metadata": {}, "items": nodes}, "NodeNames": None}
        )
    return orjson.dumps({"Pod": pod_obj, "Nodes": None, "NodeNames": names})


def bind_body(pod_obj: dict[str, Any], node_name: str) -> bytes:
    meta = pod_obj["metadata"]
    return orjson.dumps(
        {
            "PodName": meta["name"],
            "PodNamespace": meta["namespace"],
            "PodUID": meta["uid"],
            "Node": node_name,
        }
    )


def small_problem(rack_cap: float = 14000.0, headroom: float = 0.0) -> Problem:
    """site → 2 rows → 4 racks, 2 nodes of 8 GPUs per rack (2,000 W idle each), and
    three services peaking at different hours: EU chat at 10:00, US chat at 17:00 (both
    8 GPUs), a night batch job at 02:00 (4 GPUs). T = 24 (hourly)."""
    racks = [("rack-1", "row-1"), ("rack-2", "row-1"), ("rack-3", "row-2"), ("rack-4", "row-2")]
    return problem_from_dict(
        {
            "metadata": {"name": "small"},
            "grid": {"period": "24h", "step": "1h"},
            "headroom": headroom,
            "domains": [
                {"name": "site", "cap": 100000},
                {"name": "row-1", "parent": "site", "cap": 30000},
                {"name": "row-2", "parent": "site", "cap": 30000},
                *({"name": r, "parent": p, "cap": rack_cap} for r, p in racks),
            ],
            "nodes": [
                {"name": f"gpu-{r[-1]}{k}", "domain": r, "gpus": 8, "idleWatts": 2000}
                for r, _ in racks
                for k in ("a", "b")
            ],
            "services": [
                {
                    "name": "chat-eu",
                    "replicas": 6,
                    "gpusPerReplica": 8,
                    "priority": 100,
                    "nameplateWatts": 5600,
                    "profile": {
                        "diurnal": {"low": 1200, "high": 4600, "peakAt": "10:00", "width": "6h"}
                    },
                },
                {
                    "name": "chat-us",
                    "replicas": 6,
                    "gpusPerReplica": 8,
                    "priority": 100,
                    "nameplateWatts": 5600,
                    "profile": {
                        "diurnal": {"low": 1200, "high": 4600, "peakAt": "17:00", "width": "6h"}
                    },
                },
                {
                    "name": "batch",
                    "replicas": 4,
                    "gpusPerReplica": 4,
                    "priority": 0,
                    "nameplateWatts": 2800,
                    "profile": {
                        "diurnal": {"low": 200, "high": 2300, "peakAt": "02:00", "width": "5h"}
                    },
                },
            ],
        }
    )


def small_extender(
    problem: Problem | None = None, missing_profile: str = "nameplate", planner: bool = False
) -> runtime.Extender:
    """An extender over :func:`small_problem` (planner off unless asked)."""
    problem = problem or small_problem()
    config = config_from_problem(
        problem,
        policy=PolicySpec.model_validate({"missingProfile": missing_profile}),
        planner=PlannerSettings(enabled=planner, strategy="greedy"),
    )
    return runtime.from_scenario(problem, config)
