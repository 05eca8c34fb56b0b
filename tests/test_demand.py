"""Demand read from the workloads: Deployments, StatefulSets, KEDA ceilings, KServe."""

from __future__ import annotations

from typing import Any

from extender.cluster.demand import demand_from_workloads


def deployment(name: str, replicas: Any, service: str | None, kind: str = "Deployment") -> Any:
    labels = {"powercap.io/service": service} if service else {}
    spec: dict[str, Any] = {"template": {"metadata": {"labels": labels}}}
    if replicas is not None:
        spec["replicas"] = replicas
    return {"kind": kind, "metadata": {"name": name, "namespace": "ml"}, "spec": spec}


def scaled_object(target: str, max_count: Any) -> Any:
    spec: dict[str, Any] = {"scaleTargetRef": {"name": target}}
    if max_count is not None:
        spec["maxReplicaCount"] = max_count
    return {"kind": "ScaledObject", "metadata": {"name": f"{target}-so", "namespace": "ml"},
            "spec": spec}  # fmt: skip


def test_replicas_of_every_workload_of_a_service_add_up() -> None:
    demand = demand_from_workloads(
        [
            deployment("chat-eu-a", 4, "chat-eu"),
            deployment("chat-eu-b", 8, "chat-eu", kind="StatefulSet"),
            deployment("batch", None, "batch"),  # unset: the API server's default, 1
            deployment("unlabelled", 30, None),
            {"kind": "ConfigMap", "metadata": {"name": "x"}},
        ]
    )
    assert demand.replicas("chat-eu") == 12
    assert demand.replicas("batch") == 1
    assert demand.replicas("unlabelled") == 0
    assert set(demand.services) == {"batch", "chat-eu"}
    fields = {c.name: c.field for c in demand.services["chat-eu"].contributions}
    assert fields == {"chat-eu-a": "spec.replicas", "chat-eu-b": "spec.replicas"}
    assert demand.notes == ()


def test_scaling_a_deployment_moves_the_demand() -> None:
    before = demand_from_workloads([deployment("chat", 4, "chat")])
    after = demand_from_workloads([deployment("chat", 12, "chat")])
    assert (before.replicas("chat"), after.replicas("chat")) == (4, 12)


def test_a_scaled_object_sets_the_ceiling() -> None:
    demand = demand_from_workloads(
        [deployment("chat", 12, "chat"), scaled_object("chat", 6), deployment("other", 3, "o")]
    )
    assert demand.replicas("chat") == 6
    (c,) = demand.services["chat"].contributions
    assert c.field == "ScaledObject/chat-so spec.maxReplicaCount"
    assert demand.replicas("o") == 3
    # KEDA's own default without maxReplicaCount
    assert (
        demand_from_workloads(
            [deployment("chat", 2, "chat"), scaled_object("chat", None)]
        ).replicas("chat")
        == 100
    )


def test_an_inference_service_counts_its_max_replicas() -> None:
    isvc: dict[str, Any] = {
        "kind": "InferenceService",
        "metadata": {"name": "llm", "namespace": "ml", "labels": {"powercap.io/service": "llm"}},
        "spec": {"predictor": {"minReplicas": 2, "maxReplicas": 9}},
    }
    assert demand_from_workloads([isvc]).replicas("llm") == 9
    del isvc["spec"]["predictor"]["maxReplicas"]
    demand = demand_from_workloads([isvc])
    assert demand.replicas("llm") == 2
    assert demand.notes == (
        "InferenceService/ml/llm spec.predictor.maxReplicas: not set, so the demand is "
        "minReplicas (2); set maxReplicas for the planner to provision for the ceiling",
    )


def test_unreadable_counts_are_named() -> None:
    demand = demand_from_workloads(
        [deployment("chat", "many", "chat"), scaled_object("ghost", None) | {"spec": {}}]
    )
    assert demand.replicas("chat") == 1
    assert set(demand.notes) == {
        "Deployment/ml/chat spec.replicas: 'many' is not a replica count; counted as 1",
        "ScaledObject/ml/ghost-so spec.scaleTargetRef.name: missing; the ScaledObject is ignored",
    }
