"""The companion controller's loop against stand-ins of the Kubernetes client (CoreV1Api,
CustomObjectsApi, PolicyV1Api) and a power source fed by hand: breach after the grace
period → reshape with the original kept in an annotation; still in breach after the
settle period → evictions of the lowest-priority pods, PodDisruptionBudgets and the
protected priority respected; clear → restore from the annotation; stale data, dry-run,
not leader; feedback into the extender's ledger; the ``controller:`` config section."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import orjson
import pytest
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry

from extender.cluster.events import RecordingEventSink, event_body
from extender.cluster.mirror import pod_record
from extender.cluster.pods import DemandResolver
from extender.cluster.state import ClusterState, NodeRecord
from extender.config.kubernetes import KubernetesSettings
from extender.config.loading import config_from_data
from extender.config.model import Config, ConfigError
from extender.controller.actions import KubernetesClusterApi
from extender.controller.loop import (
    Controller,
    TickReport,
    eviction_priority,
    pod_watts,
    scaled_object_service,
    selector_matches,
)
from extender.controller.memory import (
    ConfigMapStateStore,
    ControllerMemory,
    MemoryKeeper,
    StateConflict,
    StateStoreError,
    union_times,
)
from extender.controller.readings import PowerReadings, failed_readings, readings_from_vectors
from extender.telemetry import ControllerMetrics
from placement.control.ladder import Evict, Reshape, Restore, Step, Wait
from tests.scheduler_payloads import pod

T0 = 1_795_730_400.0  # a whole hour, so one slot spans the test
# Every call the controller makes carries the timeouts it was given (as (connect, read)).
TIMEOUTS = KubernetesSettings(connect_timeout_s=1.5, read_timeout_s=7.0)
TIMEOUT = (1.5, 7.0)
IDLE = 500.0
RACK_CAP = 20_000.0


def config_data(**controller: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "enabled": True,
        "grace": "30s",
        "hysteresis": 0.05,
        "settle": {"reshape": "5m", "evict": "60s", "restore": "5m"},
        "protectPriority": 1000,
        "evictions": {"perDomain": {"limit": 2, "window": "5m"}},
        # The power-limit rung on the controller's grace, unless a test says otherwise.
        "powerLimits": {"grace": "30s"},
    }
    settings.update(controller)
    return {
        "apiVersion": "powercap.io/v1alpha1",
        "kind": "PowercapConfig",
        "grid": {"period": "24h", "step": "1h"},
        "domains": [
            {"name": "site", "cap": 100_000},
            {"name": "rack-a", "parent": "site", "cap": RACK_CAP},
            {"name": "rack-b", "parent": "site", "cap": RACK_CAP},
        ],
        "nodes": {"defaultIdleWatts": IDLE},
        "services": {
            "batch": {"profile": {"constant": 3000}, "priority": 10},
            "chat": {"profile": {"constant": 4000}, "priority": 100},
            "vip": {"profile": {"constant": 5000}, "priority": 2000},
        },
        "power": {"url": "http://prometheus:9090"},
        "controller": settings,
    }


# --- stand-ins for the Kubernetes client --------------------------------------------------
class _Raw:
    def __init__(self, data: Any) -> None:
        self.data = orjson.dumps(data)

    def read(self) -> bytes:
        return self.data

    def release_conn(self) -> None:
        return None


def merge(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    """RFC 7386 JSON merge patch, as the API server applies it."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping):
            child = target.setdefault(key, {})
            merge(child, value)
        else:
            target[key] = value


class FakeCluster:
    """Pods, ScaledObjects and PodDisruptionBudgets, served through the methods of the
    Kubernetes client the controller calls; every write is recorded."""

    def __init__(self) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self.scaled: dict[str, dict[str, Any]] = {}
        self.pdbs: list[dict[str, Any]] = []
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.evicted: list[str] = []
        self.eviction_attempts: list[str] = []
        self.refuse_eviction: set[str] = set()  # names answered with 429
        self.reads = 0
        self.configmaps: dict[tuple[str, str], dict[str, Any]] = {}
        # NodePowerLimits by name; None: the CRD is not installed (404 on every call).
        self.limits: dict[str, dict[str, Any]] | None = None
        self.limit_patches: list[tuple[str, dict[str, Any]]] = []

    # CoreV1Api
    def list_pod_for_all_namespaces(self, **kw: Any) -> _Raw:
        assert kw["_request_timeout"] == TIMEOUT
        self.reads += 1
        node = kw["field_selector"].removeprefix("spec.nodeName=")
        items = [p for p in self.pods.values() if p["spec"].get("nodeName") == node]
        return _Raw({"metadata": {"resourceVersion": "9"}, "items": items})

    def create_namespaced_pod_eviction(
        self, name: str, namespace: str, body: Any, **kw: Any
    ) -> _Raw:
        assert kw["_request_timeout"] == TIMEOUT
        assert body["kind"] == "Eviction" and body["apiVersion"] == "policy/v1"
        self.eviction_attempts.append(name)
        if name in self.refuse_eviction:
            raise ApiException(status=429, reason="Too Many Requests")
        if name not in self.pods:
            raise ApiException(status=404, reason="Not Found")
        del self.pods[name]
        self.evicted.append(name)
        return _Raw({"kind": "Status", "status": "Success"})

    def read_namespaced_config_map(self, name: str, namespace: str, **_: Any) -> _Raw:
        if (namespace, name) not in self.configmaps:
            raise ApiException(status=404, reason="Not Found")
        return _Raw(self.configmaps[namespace, name])

    def create_namespaced_config_map(self, namespace: str, body: Any, **_: Any) -> _Raw:
        key = (namespace, body["metadata"]["name"])
        if key in self.configmaps:
            raise ApiException(status=409, reason="AlreadyExists")
        obj = copy.deepcopy(body)
        obj["metadata"]["resourceVersion"] = "1"
        self.configmaps[key] = obj
        return _Raw(obj)

    def replace_namespaced_config_map(self, name: str, namespace: str, body: Any, **_: Any) -> _Raw:
        current = self.configmaps[namespace, name]
        version = current["metadata"]["resourceVersion"]
        if body["metadata"].get("resourceVersion") != version:
            raise ApiException(status=409, reason="Conflict")
        obj = copy.deepcopy(body)
        obj["metadata"]["resourceVersion"] = str(int(version) + 1)
        self.configmaps[namespace, name] = obj
        return _Raw(obj)

    # CustomObjectsApi
    def list_cluster_custom_object(
        self, group: str, version: str, plural: str, *, _request_timeout: Any
    ) -> Any:
        assert _request_timeout == TIMEOUT
        self.reads += 1
        if (group, version, plural) == ("powercap.io", "v1alpha1", "nodepowerlimits"):
            if self.limits is None:
                raise ApiException(status=404, reason="Not Found")
            return {"items": copy.deepcopy(list(self.limits.values()))}
        assert (group, version, plural) == ("keda.sh", "v1alpha1", "scaledobjects")
        return {"items": copy.deepcopy(list(self.scaled.values()))}

    def create_cluster_custom_object(
        self, group: str, version: str, plural: str, body: Any, *, _request_timeout: Any
    ) -> Any:
        assert (group, version, plural) == ("powercap.io", "v1alpha1", "nodepowerlimits")
        if self.limits is None:
            raise ApiException(status=404, reason="Not Found")
        name = body["metadata"]["name"]
        if name in self.limits:
            raise ApiException(status=409, reason="AlreadyExists")
        obj = copy.deepcopy(body)
        obj["metadata"].update(resourceVersion="1", uid=f"npl-{name}")
        self.limits[name] = obj
        return obj

    def patch_cluster_custom_object(
        self, group: str, version: str, plural: str, name: str, body: Any, *, _request_timeout: Any
    ) -> Any:
        assert (group, version, plural) == ("powercap.io", "v1alpha1", "nodepowerlimits")
        if self.limits is None or name not in self.limits:
            raise ApiException(status=404, reason="Not Found")
        obj = self.limits[name]
        rv = body.get("metadata", {}).get("resourceVersion")
        if rv is not None and rv != obj["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        self.limit_patches.append((name, copy.deepcopy(body)))
        merge(obj, body)
        obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
        return obj

    def patch_namespaced_custom_object(
        self,
        group: str,
        version: str,
        ns: str,
        plural: str,
        name: str,
        body: Any,
        *,
        _request_timeout: Any,
    ) -> Any:
        assert _request_timeout == TIMEOUT
        obj = self.scaled[name]
        rv = body.get("metadata", {}).get("resourceVersion")
        if rv is not None and rv != obj["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        self.patches.append((name, copy.deepcopy(body)))
        merge(obj, body)
        obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
        return obj

    # PolicyV1Api
    def list_pod_disruption_budget_for_all_namespaces(self, **kw: Any) -> _Raw:
        assert kw["_request_timeout"] == TIMEOUT
        self.reads += 1
        return _Raw({"items": self.pdbs})

    @property
    def writes(self) -> int:
        return len(self.patches) + len(self.eviction_attempts)


def scaled_object(name: str, max_replicas: int, min_replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {
            "name": name,
            "namespace": "llm",
            "uid": f"so-{name}",
            "resourceVersion": "100",
            "labels": {"powercap.io/service": name},
        },
        "spec": {
            "scaleTargetRef": {"name": f"{name}-deploy"},
            "minReplicaCount": min_replicas,
            "maxReplicaCount": max_replicas,
        },
    }


class FakePower:
    """Per-node measured watts (absent: no series); ``down`` makes every read fail."""

    def __init__(self, config: Config) -> None:
        assert config.power is not None
        self.settings = config.power
        self.watts: dict[str, float] = {}
        self.down = False

    def read(self, nodes: Iterable[str], at: float | None = None) -> PowerReadings:
        when = T0 if at is None else at
        if self.down:
            return failed_readings(nodes, when, "querying Prometheus failed: connection refused")
        return readings_from_vectors(self.watts, None, nodes, settings=self.settings, at=when)


class Rig:
    """A config, a state with three nodes and five pods, a fake cluster and the controller."""

    def __init__(
        self, leader: bool = True, *, memory: MemoryKeeper | None = None, **controller: Any
    ) -> None:
        self.config = config_from_data(config_data(**controller))
        self.state = ClusterState(self.config.grid, self.config.tree, self.config.headroom)
        tree = self.config.tree
        for name, rack in (("a1", "rack-a"), ("a2", "rack-a"), ("b1", "rack-b")):
            self.state.upsert_node(name, tree.index[rack], 8, idle_watts=IDLE)
        self.cluster = FakeCluster()
        self.resolver = DemandResolver(self.config)
        for name, service, node in (
            ("batch-0", "batch", "a1"),
            ("batch-1", "batch", "a1"),
            ("vip-0", "vip", "a1"),
            ("batch-2", "batch", "a2"),
            ("chat-0", "chat", "a2"),
        ):
            self.add_pod(name, service, node)
        self.cluster.scaled = {"batch": scaled_object("batch", 5), "chat": scaled_object("chat", 4)}
        # chat's budget allows no disruption now.
        self.cluster.pdbs = [
            {
                "metadata": {"name": "chat", "namespace": "llm"},
                "spec": {"selector": {"matchLabels": {"powercap.io/service": "chat"}}},
                "status": {"disruptionsAllowed": 0},
            }
        ]
        self.power = FakePower(self.config)
        self.power.watts = {"a1": 11_500.0, "a2": 7_500.0, "b1": IDLE}  # as predicted
        self.events = RecordingEventSink()
        self.registry = CollectorRegistry()
        self.metrics = ControllerMetrics(self.registry)
        self.leader = leader
        api = KubernetesClusterApi(self.cluster, self.cluster, self.cluster, timeouts=TIMEOUTS)
        self.controller = Controller(
            self.config,
            self.state,
            self.power,
            api=api,
            events=self.events,
            metrics=self.metrics,
            leader=lambda: self.leader,
            memory=memory,
        )

    def add_pod(self, name: str, service: str, node: str) -> None:
        raw = pod(name, service=service, gpus=1, node_name=node, phase="Running")
        self.cluster.pods[name] = raw
        record = pod_record(raw, self.resolver)
        assert record is not None
        self.state.add_pod(record)

    def mirror_evictions(self) -> None:
        """What the mirror would do once evicted pods are gone."""
        for uid, record in list(self.state.pods.items()):
            if record.name not in self.cluster.pods:
                self.state.remove_pod(uid)

    def surge(self) -> None:
        self.power.watts.update({"a1": 14_000.0, "a2": 9_000.0})  # rack-a at 23 kW

    def tick(self, at: float) -> TickReport:
        return self.controller.tick(T0 + at)

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def rack(self, report: TickReport) -> int:
        return self.config.tree.index["rack-a"]


def breach(rig: Rig) -> TickReport:
    """Surge, then tick until the grace period (30 s) is served."""
    rig.surge()
    first = rig.tick(0)
    assert first.events is not None and first.events.pending[rig.config.tree.index["rack-a"]]
    assert rig.tick(15).decisions == {}  # over, grace not served: nothing decided
    return rig.tick(30)


# --- the ladder end to end ---------------------------------------------------------------------
def test_breach_after_grace_reshapes_keeping_the_original_in_an_annotation() -> None:
    rig = Rig()
    assert rig.tick(-15).decisions == {}  # as predicted: nothing to do
    assert rig.cluster.writes == 0
    report = breach(rig)
    assert isinstance(report.decisions["rack-a"], Reshape)
    # batch is the lowest priority: 3 running, each ~3.7 kW now; 4 kW to clear → 2 fewer.
    assert rig.cluster.patches == [
        (
            "batch",
            {
                "spec": {"maxReplicaCount": 1},
                "metadata": {
                    "annotations": {
                        "powercap.io/original-max-replicas": "5",
                        "powercap.io/reshaped-by": "rack-a",
                    },
                    "resourceVersion": "100",
                },
            },
        )
    ]
    assert rig.cluster.evicted == []
    (event,) = rig.events.events
    assert event.reason == "PowerCapReshape" and event.kind == "ScaledObject"
    assert "maxReplicaCount of batch 5 → 1" in event.message
    body = event_body(event)
    assert body["involvedObject"]["apiVersion"] == "keda.sh/v1alpha1"
    assert body["source"]["component"] == "powercap-controller"
    labels = {"kind": "reshape", "domain": "rack-a", "dry_run": "false"}
    assert rig.metric("powercap_controller_actions_total", **labels) == 1.0
    assert rig.metric("powercap_domain_in_breach", domain="rack-a") == 1.0
    assert rig.metric("powercap_domain_measured_watts", domain="rack-a") == 23_000.0
    assert rig.metric("powercap_power_data_stale") == 0.0
    # Within the settle period: wait for the reshape to take effect.
    assert isinstance(rig.tick(120).decisions["rack-a"], Wait)
    assert len(rig.cluster.patches) == 1


def test_still_in_breach_after_settle_evicts_lowest_priority_respecting_budgets() -> None:
    rig = Rig()
    breach(rig)
    rig.cluster.refuse_eviction = {"batch-2"}  # its eviction meets a 429
    report = rig.tick(30 + 300)
    decision = report.decisions["rack-a"]
    assert isinstance(decision, Evict) and decision.max_victims == 2
    # 4 kW to clear: two batch pods (the smallest cover includes batch-2, refused).
    assert "batch-2" in rig.cluster.eviction_attempts
    assert len(rig.cluster.eviction_attempts) == 2
    assert set(rig.cluster.eviction_attempts) <= {"batch-0", "batch-1", "batch-2"}
    assert len(rig.cluster.evicted) == 1  # the other one went
    outcomes = {a.target: a.outcome for a in report.actions}
    assert outcomes["llm/batch-2"] == "blocked"
    done = {"kind": "evict", "domain": "rack-a", "dry_run": "false"}
    blocked = {"kind": "evict", "domain": "rack-a", "reason": "blocked"}
    assert rig.metric("powercap_controller_actions_total", **done) == 1.0
    assert rig.metric("powercap_controller_action_failures_total", **blocked) == 1.0
    reasons = sorted(e.reason for e in rig.events.events if e.kind == "Pod")
    assert reasons == ["PowerCapEvict", "PowerCapEvictFailed"]

    # Still over after the evict settle period: only one more eviction fits the
    # per-domain limit (2 per 5 min, one used; the refused one does not count), and
    # chat (budget 0) and vip (priority ≥ 1000) are never candidates.
    rig.mirror_evictions()
    rig.cluster.refuse_eviction = set()
    report = rig.tick(30 + 300 + 60)
    decision = report.decisions["rack-a"]
    assert isinstance(decision, Evict) and decision.max_victims == 1
    assert len(rig.cluster.evicted) == 2
    assert not {"chat-0", "vip-0"} & set(rig.cluster.eviction_attempts)
    # The budget is spent for this window.
    rig.mirror_evictions()
    report = rig.tick(30 + 300 + 60 + 60)
    assert report.decisions["rack-a"] == Wait("eviction rate limit reached")
    assert not {"chat-0", "vip-0"} & set(rig.cluster.eviction_attempts)


def test_breach_cleared_and_headroom_restores_from_the_annotation() -> None:
    rig = Rig()
    breach(rig)
    rig.tick(330)  # evicts
    rig.mirror_evictions()
    rig.power.watts.update({"a1": 5_000.0, "a2": 4_000.0})  # well under 19 kW
    report = rig.tick(345)
    assert report.events is not None
    assert report.events.cleared[rig.config.tree.index["rack-a"]]
    # The last step settles (max of evict's 60 s and restore's 300 s) before restoring.
    assert isinstance(report.decisions["rack-a"], Wait)
    patches = len(rig.cluster.patches)
    report = rig.tick(330 + 300)
    assert isinstance(report.decisions["rack-a"], Restore)
    name, body = rig.cluster.patches[patches]
    assert name == "batch" and body["spec"]["maxReplicaCount"] == 5
    # Back at the original: both annotations go.
    assert body["metadata"]["annotations"] == {
        "powercap.io/original-max-replicas": None,
        "powercap.io/reshaped-by": None,
    }
    so = rig.cluster.scaled["batch"]
    assert so["spec"]["maxReplicaCount"] == 5 and not so["metadata"].get("annotations")
    assert rig.events.events[-1].reason == "PowerCapRestore"
    assert rig.events.events[-1].type == "Normal"
    # Nothing lowered any more: idle, and no further writes.
    writes = rig.cluster.writes
    assert rig.tick(330 + 600).decisions == {}
    assert rig.cluster.writes == writes


def test_restore_is_paced_by_headroom() -> None:
    rig = Rig()
    breach(rig)
    rig.mirror_evictions()
    # 18 kW: cleared (< 19 kW), headroom under cap × 0.9 = 18 kW is nothing yet.
    rig.power.watts.update({"a1": 10_500.0, "a2": 7_500.0})
    report = rig.tick(30 + 300)
    assert report.decisions["rack-a"] == Wait("waiting for headroom to restore")
    assert len(rig.cluster.patches) == 1
    # 3.3 kW below 18 kW: one batch replica (3 kW at its current draw) fits.
    rig.power.watts.update({"a1": 7_200.0, "a2": 7_500.0})
    rig.tick(30 + 315)
    _, body = rig.cluster.patches[-1]
    assert body["spec"]["maxReplicaCount"] == 2
    # Not back at the original: the annotations stay.
    assert "annotations" not in body.get("metadata", {})
    assert rig.cluster.scaled["batch"]["metadata"]["annotations"] == {
        "powercap.io/original-max-replicas": "5",
        "powercap.io/reshaped-by": "rack-a",
    }


def test_stale_or_missing_data_means_no_action_and_the_stale_metric() -> None:
    rig = Rig()
    breach(rig)
    writes = rig.cluster.writes
    del rig.power.watts["a2"]  # its exporter stopped: no series
    report = rig.tick(30 + 300)
    assert set(report.stale) == {"site", "rack-a"}
    assert report.decisions["rack-a"] == Wait("no power data for this domain")
    assert rig.cluster.writes == writes
    assert rig.metric("powercap_power_data_stale") == 1.0
    assert rig.metric("powercap_domain_power_stale", domain="rack-a") == 1.0
    assert rig.metric("powercap_domain_power_stale", domain="rack-b") == 0.0
    assert rig.metric("powercap_power_nodes", status="missing") == 1.0
    assert math.isnan(rig.metric("powercap_domain_measured_watts", domain="rack-a") or 0.0)
    # The breach is held, not cleared, while the data is missing; so is its feedback.
    assert rig.metric("powercap_domain_in_breach", domain="rack-a") == 1.0
    slot = rig.config.grid.slot_of(T0)
    assert rig.state.ledger.load[rig.config.tree.index["rack-a"], slot] == 23_000.0
    # Prometheus down: no API call at all.
    rig.power.down = True
    reads = rig.cluster.reads
    report = rig.tick(30 + 315)
    assert report.error is not None and "connection refused" in report.error
    assert rig.cluster.reads == reads and rig.cluster.writes == writes
    assert rig.metric("powercap_power_data_stale") == 1.0


def test_dry_run_decides_and_reports_but_changes_nothing() -> None:
    rig = Rig(dryRun=True)
    report = breach(rig)
    assert isinstance(report.decisions["rack-a"], Reshape)
    report = rig.tick(30 + 300)
    assert isinstance(report.decisions["rack-a"], Evict)
    assert rig.cluster.writes == 0
    assert rig.cluster.scaled["batch"]["spec"]["maxReplicaCount"] == 5
    assert report.actions and all(a.dry_run and a.outcome == "dry-run" for a in report.actions)
    assert rig.events.events
    assert all(e.message.startswith("dry run, not done: ") for e in rig.events.events)
    dry = {"domain": "rack-a", "dry_run": "true"}
    assert rig.metric("powercap_controller_actions_total", kind="reshape", **dry) == 1.0
    assert (rig.metric("powercap_controller_actions_total", kind="evict", **dry) or 0) >= 1.0
    assert (
        rig.metric(
            "powercap_controller_actions_total", kind="reshape", domain="rack-a", dry_run="false"
        )
        is None
    )


def test_not_leader_tracks_and_feeds_back_but_never_acts() -> None:
    rig = Rig(leader=False)
    report = breach(rig)
    assert report.decisions == {} and rig.cluster.writes == 0 and rig.cluster.reads == 0
    assert rig.metric("powercap_controller_leader") == 0.0
    assert rig.metric("powercap_domain_in_breach", domain="rack-a") == 1.0
    assert rig.state.feedback.any()
    # Leadership arrives: the ladder starts at the bottom.
    rig.leader = True
    report = rig.tick(45)
    assert isinstance(report.decisions["rack-a"], Reshape)
    assert rig.metric("powercap_controller_leader") == 1.0


def test_feedback_while_in_breach_and_removed_after() -> None:
    rig = Rig(feedback={"hold": 0})  # the overage counts only while the breach lasts
    state, tree = rig.state, rig.config.tree
    slot = rig.config.grid.slot_of(T0)
    rack, site = tree.index["rack-a"], tree.index["site"]
    before = state.ledger.load.copy()
    assert before[rack, slot] == 19_000.0
    rig.surge()
    rig.tick(0)
    np.testing.assert_array_equal(state.ledger.load, before)  # pending: no feedback yet
    version = state.version
    rig.tick(30)
    assert state.version > version  # cached decisions see the change
    # In breach: the ledger reads what was measured (23 kW) in the current slot only.
    assert state.ledger.load[rack, slot] == 23_000.0
    assert state.ledger.load[site, slot] == before[site, slot] + 4_000.0
    other = [t for t in range(rig.config.grid.slots) if t != slot]
    np.testing.assert_array_equal(state.ledger.load[:, other], before[:, other])
    # Replaced, never accumulated, tick after tick; and kept through a relist.
    rig.tick(45)
    assert state.ledger.load[rack, slot] == 23_000.0
    state.replace(
        [NodeRecord(n.name, n.leaf, n.gpus, n.idle_watts) for n in state.nodes()],
        list(state.pods.values()),
    )
    assert state.ledger.load[rack, slot] == 23_000.0
    assert rig.metric("powercap_domain_feedback_watts", domain="rack-a") == 4_000.0
    # Cleared: the feedback goes, the prediction is back.
    rig.power.watts.update({"a1": 11_000.0, "a2": 7_000.0})
    rig.tick(60)
    np.testing.assert_allclose(state.ledger.load, before)
    assert not state.feedback.any()


def test_a_breach_overage_is_held_in_its_slot_after_the_breach_clears() -> None:
    rig = Rig(feedback={"hold": "24h"})
    state, tree, grid = rig.state, rig.config.tree, rig.config.grid
    slot = grid.slot_of(T0)
    rack = tree.index["rack-a"]
    before = state.ledger.load.copy()
    rig.surge()
    rig.tick(0)
    rig.tick(30)  # in breach: 23 kW measured, 19 kW predicted
    assert state.ledger.load[rack, slot] == 23_000.0
    # The breach clears, by itself here: the overage of that time of day stays, so a
    # replacement is not scored back into the rack to breach again tomorrow.
    rig.power.watts.update({"a1": 11_000.0, "a2": 7_000.0})
    rig.tick(60)
    assert not rig.controller.breach.in_breach[rack]
    assert state.ledger.load[rack, slot] == 23_000.0
    other = [t for t in range(grid.slots) if t != slot]
    np.testing.assert_array_equal(state.ledger.load[:, other], before[:, other])
    assert rig.metric("powercap_domain_feedback_watts", domain="rack-a") == 4_000.0
    # A 3 kW replica no longer fits in that slot (cap 20 kW) but still does elsewhere.
    assert state.ledger.load[rack, slot] + 3_000.0 > state.caps[rack, slot]
    # Later the same day, another slot: the held entry is still in the ledger.
    rig.tick(2 * 3600)
    assert state.ledger.load[rack, slot] == 23_000.0
    # The hold runs out a day after the breach was last seen.
    rig.tick(30 + 24 * 3600 + 1)
    np.testing.assert_allclose(state.ledger.load, before)


def test_the_deepest_breached_domain_acts_first() -> None:
    data = config_data()
    data["domains"][0]["cap"] = 20_000  # the site is over too (23.5 kW)
    rig = Rig()
    rig.config = config_from_data(data)
    rig.state.set_caps(rig.config.tree.caps)
    rig.controller.config = rig.config
    report = breach(rig)
    assert report.decisions["site"] == Wait("a domain below is in breach and acts first")
    assert isinstance(report.decisions["rack-a"], Reshape)
    assert len(rig.cluster.patches) == 1


def test_a_scaled_object_changed_under_the_patch_is_a_conflict() -> None:
    rig = Rig()
    rig.surge()
    rig.tick(0)
    rig.tick(15)
    rig.cluster.scaled["batch"]["metadata"]["resourceVersion"] = "101"  # changed since read?
    original = rig.cluster.list_cluster_custom_object

    def stale_list(group: str, version: str, plural: str, *, _request_timeout: Any) -> Any:
        listed = original(group, version, plural, _request_timeout=_request_timeout)
        for item in listed["items"]:
            item["metadata"]["resourceVersion"] = "100"  # what the controller saw
        return listed

    rig.cluster.list_cluster_custom_object = stale_list  # type: ignore[method-assign]
    report = rig.tick(30)
    assert [a.outcome for a in report.actions] == ["conflict"]
    assert rig.cluster.patches == []
    failed = {"kind": "reshape", "domain": "rack-a", "reason": "conflict"}
    assert rig.metric("powercap_controller_action_failures_total", **failed) == 1.0
    # Nothing was taken, so the next period decides again.
    rig.cluster.list_cluster_custom_object = original  # type: ignore[method-assign]
    rig.tick(45)
    assert len(rig.cluster.patches) == 1


# --- whose priority counts -------------------------------------------------------------------
def set_priority(rig: Rig, name: str, *, value: int | None, label: str | None = None) -> None:
    """``spec.priority`` as the API server's Priority admission sets it from the pod's
    PriorityClass (``None``: no such field), and the tenant-written priority label."""
    raw = rig.cluster.pods[name]
    if value is None:
        raw["spec"].pop("priority", None)
    else:
        raw["spec"]["priority"] = value
    if label is not None:
        raw["metadata"]["labels"]["powercap.io/priority"] = label


@pytest.mark.parametrize("label", ["999", "5000"])  # above the others; above protectPriority
def test_a_priority_class_outranks_a_tenant_set_priority_label(label: str) -> None:
    """batch-0 is labelled important by whoever created it, but its PriorityClass is the
    lowest in the domain: it goes first, and its label protects nothing."""
    rig = Rig()
    for name in rig.cluster.pods:
        set_priority(rig, name, value=500)
    set_priority(rig, "batch-0", value=100, label=label)
    breach(rig)
    report = rig.tick(30 + 300)
    decision = report.decisions["rack-a"]
    assert isinstance(decision, Evict) and decision.max_victims == 2
    # 4 kW to clear, ~3.7 kW per batch pod: two go, batch-0 and one of the others.
    assert len(rig.cluster.evicted) == 2 and "batch-0" in rig.cluster.evicted, rig.cluster.evicted
    message = next(a.message for a in report.actions if a.target == "llm/batch-0")
    assert "(priority 100, service priority 10," in message


def test_a_priority_class_at_the_threshold_protects_whatever_the_labels_say() -> None:
    """batch-0's PriorityClass is at or above protectPriority: never evicted, though its
    service is the lowest and the other batch pods claim more with their labels. vip-0's
    class is the default, but the operator protects its service."""
    rig = Rig()
    for name in rig.cluster.pods:
        set_priority(rig, name, value=0)
    set_priority(rig, "batch-0", value=2_000_000)
    set_priority(rig, "batch-1", value=0, label="20")
    set_priority(rig, "batch-2", value=0, label="20")
    breach(rig)
    report = rig.tick(30 + 300)
    assert isinstance(report.decisions["rack-a"], Evict)
    assert sorted(rig.cluster.evicted) == ["batch-1", "batch-2"]
    assert not {"batch-0", "vip-0", "chat-0"} & set(rig.cluster.eviction_attempts)


def test_eviction_priority_reads_the_label_only_without_a_class_value() -> None:
    assert eviction_priority(100, 5000, 10) == (100, 10)
    assert eviction_priority(0, None, 10) == (0, 10)
    # No spec.priority (an API server without Priority admission): the label, else the
    # service's priority.
    assert eviction_priority(None, 5000, 10) == (5000, 10)
    assert eviction_priority(None, None, 10) == (10, 10)


# --- the memory a next leader reads -------------------------------------------------------------
class FakeStateStore:
    """A ConfigMap's payload and resourceVersion; each write is kept with the number of
    eviction attempts the cluster had seen when it was made."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster
        self.payload: bytes | None = None
        self.version = 0
        self.writes: list[tuple[ControllerMemory, int]] = []
        self.down = False

    def read(self) -> tuple[bytes | None, str | None]:
        if self.down:
            raise StateStoreError("reading ConfigMap: 503 Service Unavailable")
        return self.payload, None if self.payload is None else str(self.version)

    def write(self, payload: bytes, version: str | None) -> str:
        if self.down:
            raise StateStoreError("writing ConfigMap: 503 Service Unavailable")
        if version != (None if self.payload is None else str(self.version)):
            raise StateConflict("the ConfigMap changed since it was read")
        self.payload = payload
        self.version += 1
        memory = ControllerMemory.from_payload(payload)
        self.writes.append((memory, len(self.cluster.eviction_attempts)))
        return str(self.version)

    def memory(self) -> ControllerMemory:
        assert self.payload is not None
        return ControllerMemory.from_payload(self.payload)


def test_a_new_leader_carries_on_the_breach_its_steps_and_the_rate_windows() -> None:
    """Leader a reshapes and evicts, then dies; b, a process that starts only then, reads
    what a wrote: the breach goes on from a's start, the evictions' settle period and
    rate window hold, and no second reshape happens."""
    a = Rig(memory=None)
    store = FakeStateStore(a.cluster)
    a.controller.memory = MemoryKeeper(store, 10.0)
    breach(a)
    rack = a.config.tree.index["rack-a"]
    assert store.memory().breach_since == {"rack-a": T0 + 30}
    assert store.memory().steps["rack-a"] == (Step("reshape", T0 + 30),)
    a.tick(330)
    assert len(a.cluster.evicted) == 2
    # The two evictions were written before the first was posted.
    ahead = [m for m, attempts in store.writes if attempts == 0]
    assert ahead[-1].evictions == {"rack-a": (T0 + 330, T0 + 330)}
    assert ahead[-1].cluster_evictions == (T0 + 330, T0 + 330)

    # a dies. b starts on the same cluster, as leader at once, the surge still on.
    b = Rig(memory=MemoryKeeper(store, 10.0))
    b.cluster, b.power = a.cluster, a.power
    b.controller.api = a.controller.api
    b.controller.source = a.power
    b.mirror_evictions()
    patches = len(a.cluster.patches)
    report = b.tick(345)
    # In breach since a's start (not pending a grace period of its own), within the
    # settle period of a's evictions.
    assert b.controller.breach.breach_since[rack] == T0 + 30
    assert report.decisions["rack-a"] == Wait("waiting for the effect of evict", T0 + 390)
    # Settled: a's two evictions fill the 5-minute window; the reshape was this breach's.
    report = b.tick(390)
    assert report.decisions["rack-a"] == Wait("eviction rate limit reached")
    assert len(a.cluster.patches) == patches and len(a.cluster.evicted) == 2
    # Once a's evictions leave the window, b evicts the last batch pod.
    report = b.tick(631)
    assert isinstance(report.decisions["rack-a"], Evict)
    assert len(a.cluster.evicted) == 3


def test_the_memory_is_written_on_change_only_and_rate_limited_without_a_step() -> None:
    rig = Rig(state={"minInterval": "60s"})
    store = FakeStateStore(rig.cluster)
    keeper = MemoryKeeper(store, rig.config.controller.state_min_interval_s)
    rig.controller.memory = keeper
    for at in (-30, -15):
        rig.tick(at)
    assert store.writes == []  # nothing to remember: nothing written
    breach(rig)  # reshape at 30: written at once
    assert len(store.writes) == 1
    rig.tick(45)  # waiting for the reshape to settle: nothing changed
    assert len(store.writes) == 1
    rig.power.watts.update({"a1": 5_000.0, "a2": 4_000.0})
    rig.tick(60)  # cleared, no step: the change waits for the interval
    assert len(store.writes) == 1
    rig.tick(75)
    assert len(store.writes) == 1
    rig.tick(90)  # 60 s since the last write
    assert len(store.writes) == 2
    assert store.memory().breach_since == {}
    assert store.memory().steps == {"rack-a": (Step("reshape", T0 + 30),)}


def test_what_a_stop_finds_unwritten_is_written_then() -> None:
    rig = Rig(state={"minInterval": "1h"})
    store = FakeStateStore(rig.cluster)
    rig.controller.memory = MemoryKeeper(store, rig.config.controller.state_min_interval_s)
    breach(rig)
    rig.power.watts.update({"a1": 5_000.0, "a2": 4_000.0})
    rig.tick(45)  # cleared: not due for an hour
    assert [m.breach_since for m, _ in store.writes] == [{"rack-a": T0 + 30}]
    rig.controller.flush(T0 + 46)
    assert [m.breach_since for m, _ in store.writes] == [{"rack-a": T0 + 30}, {}]


def test_no_eviction_is_posted_unless_its_memory_was_written_first() -> None:
    rig = Rig()
    store = FakeStateStore(rig.cluster)
    rig.controller.memory = MemoryKeeper(store, 10.0)
    breach(rig)
    store.down = True
    report = rig.tick(330)
    assert isinstance(report.decisions["rack-a"], Evict)
    assert rig.cluster.eviction_attempts == []
    assert {a.outcome for a in report.actions} == {"error"}
    failed = {"kind": "evict", "domain": "rack-a", "reason": "error"}
    assert rig.metric("powercap_controller_action_failures_total", **failed) == 2.0
    # Nothing was taken, so the next period tries again, and the memory is there first.
    store.down = False
    rig.tick(345)
    assert len(rig.cluster.evicted) == 2
    assert store.memory().cluster_evictions == (T0 + 345, T0 + 345)


def test_a_leader_that_cannot_read_the_memory_takes_no_step() -> None:
    rig = Rig()
    store = FakeStateStore(rig.cluster)
    rig.controller.memory = MemoryKeeper(store, 10.0)
    store.down = True
    report = breach(rig)
    assert report.decisions == {} and rig.cluster.writes == 0
    store.down = False
    assert isinstance(rig.tick(45).decisions["rack-a"], Reshape)


def test_two_writers_merge_what_each_recorded() -> None:
    """A write that meets a newer version (another leader wrote) keeps both records."""
    cluster = FakeCluster()
    store = FakeStateStore(cluster)
    first, second = MemoryKeeper(store, 0.0), MemoryKeeper(store, 0.0)
    assert first.load() == ControllerMemory() and second.load() == ControllerMemory()
    mine = ControllerMemory(
        {"r": 100.0}, {"r": (Step("reshape", 100.0),)}, {"r": (200.0,)}, (200.0,)
    )
    theirs = ControllerMemory({"r": 90.0}, {"r": (Step("evict", 150.0),)}, {}, (150.0, 200.0))
    assert first.save(theirs, now=0.0, urgent=False).written
    saved = second.save(mine, now=0.0, urgent=False)
    assert saved.written and saved.theirs == theirs
    assert store.memory() == ControllerMemory(
        {"r": 90.0},
        {"r": (Step("reshape", 100.0), Step("evict", 150.0))},
        {"r": (200.0,)},
        (150.0, 200.0),
    )
    # Unchanged: not written again.
    assert not second.save(store.memory(), now=1.0, urgent=True).written


def test_the_memory_lives_in_a_configmap_of_the_lease_namespace() -> None:
    from extender.runtime import from_cluster
    from tests.test_lease import LeaseStore

    config = config_from_data(config_data(lease={"namespace": "ops"}))
    cluster = FakeCluster()
    api = KubernetesClusterApi(cluster, cluster, cluster)
    ext = from_cluster(
        config, cluster, cluster_api=api, lease_api=LeaseStore(), power_source=FakePower(config)
    )
    assert ext.controller is not None and ext.controller.memory is not None
    assert ext.elector is not None
    store = ext.controller.memory.store
    assert isinstance(store, ConfigMapStateStore)
    keeper = MemoryKeeper(store, 0.0)
    assert keeper.load() == ControllerMemory()  # no ConfigMap yet
    memory = ControllerMemory({"rack-a": T0}, {"rack-a": (Step("reshape", T0),)}, {}, ())
    assert keeper.save(memory, now=T0, urgent=True).written
    written = cluster.configmaps["ops", "powercap-controller-state"]
    assert written["metadata"]["annotations"]["powercap.io/written-by"] == ext.elector.identity
    assert ControllerMemory.from_payload(written["data"]["memory.json"]) == memory
    # A second process reads it; a stale write is a conflict, merged and retried.
    other = MemoryKeeper(store, 0.0)
    assert other.load() == memory
    later = ControllerMemory({"rack-a": T0}, {}, {}, (T0 + 60,))
    assert keeper.save(later, now=T0 + 60, urgent=True).written
    saved = other.save(ControllerMemory({"rack-b": T0 + 90}), now=T0 + 90, urgent=True)
    assert saved.theirs == later
    assert keeper.load().breach_since == {"rack-a": T0, "rack-b": T0 + 90}
    # In dry run the controller writes nothing, its memory neither.
    dry = config_from_data(config_data(dryRun=True))
    ext = from_cluster(
        dry, cluster, cluster_api=api, lease_api=LeaseStore(), power_source=FakePower(dry)
    )
    assert ext.controller is not None and ext.controller.memory is None


def test_memory_payload_round_trip_and_refusals() -> None:
    memory = ControllerMemory(
        {"rack-a": T0}, {"rack-a": (Step("evict", T0 + 1), Step("reshape", T0))}, {}, (T0 + 1,)
    )
    again = ControllerMemory.from_payload(memory.payload())
    assert again.payload() == memory.payload()
    assert again.steps["rack-a"] == (Step("reshape", T0), Step("evict", T0 + 1))
    for bad in (b"{", b"[]", b'{"version": 2}', b'{"version": 1, "steps": {"r": [["jump", 1]]}}'):
        with pytest.raises(ValueError):
            ControllerMemory.from_payload(bad)
    # Two victims of one tick are two evictions; one both writers record is one.
    assert union_times([5.0, 5.0, 7.0], [5.0, 9.0]) == (5.0, 5.0, 7.0, 9.0)


def test_state_section_is_resolved_and_checked() -> None:
    c = config_from_data(config_data()).controller
    assert c.state_config_map == "powercap-controller-state" and c.state_min_interval_s == 10.0
    c = config_from_data(config_data(state={"configMap": "", "minInterval": 0})).controller
    assert c.state_config_map == "" and c.state_min_interval_s == 0.0
    with pytest.raises(ConfigError) as err:
        config_from_data(config_data(state={"configMap": "Controller_State"}))
    assert any(p.startswith("controller.state.configMap:") for p in err.value.problems)


# --- pieces --------------------------------------------------------------------------------
def test_pod_watts_share_the_node_measurement_by_profile() -> None:
    rig = Rig()
    pods = rig.state.pods_on("a1")
    slot = 0
    watts = pod_watts(pods, 14_000.0, IDLE, slot=slot)
    assert watts.sum() == pytest.approx(13_500.0)
    by_name = dict(zip((p.name for p in pods), watts, strict=True))
    assert by_name["vip-0"] == pytest.approx(13_500.0 * 5 / 11)
    # No fresh reading: the profiles as they are.
    np.testing.assert_array_equal(
        sorted(pod_watts(pods, math.nan, IDLE, slot=slot)), [3000.0, 3000.0, 5000.0]
    )
    # Measured below idle: nothing is attributed to the pods.
    assert pod_watts(pods, 100.0, IDLE, slot=slot).sum() == 0.0


def test_label_selectors_as_budgets_read_them() -> None:
    labels = {"app": "chat", "tier": "gold"}
    assert selector_matches({}, labels)  # empty selects all
    assert not selector_matches(None, labels)  # absent selects none
    assert selector_matches({"matchLabels": {"app": "chat"}}, labels)
    assert not selector_matches({"matchLabels": {"app": "batch"}}, labels)
    expr = [{"key": "tier", "operator": "In", "values": ["gold", "silver"]}]
    assert selector_matches({"matchExpressions": expr}, labels)
    expr = [{"key": "tier", "operator": "NotIn", "values": ["gold"]}]
    assert not selector_matches({"matchExpressions": expr}, labels)
    assert selector_matches(
        {"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]}, labels
    )
    assert not selector_matches({"matchExpressions": [{"key": "x", "operator": "Exists"}]}, labels)


def test_scaled_object_service() -> None:
    so = scaled_object("batch", 5)
    assert scaled_object_service(so, "powercap.io/service") == "batch"
    del so["metadata"]["labels"]
    assert scaled_object_service(so, "powercap.io/service") == "batch-deploy"


def test_a_pod_in_two_budgets_is_never_evicted() -> None:
    rig = Rig()
    rig.cluster.pdbs += [
        {
            "metadata": {"name": f"all-{i}", "namespace": "llm"},
            "spec": {"selector": {"matchLabels": {"powercap.io/service": "batch"}}},
            "status": {"disruptionsAllowed": 5},
        }
        for i in range(2)
    ]
    breach(rig)
    report = rig.tick(330)
    assert isinstance(report.decisions["rack-a"], Evict)
    assert rig.cluster.eviction_attempts == []  # batch: two budgets; chat: none allowed


# --- the config section --------------------------------------------------------------------------
def test_controller_section_is_resolved() -> None:
    config = config_from_data(config_data(period="30s", dryRun=True))
    c = config.controller
    assert c.enabled and c.dry_run and c.period_s == 30.0
    assert c.breach.grace_s == 30.0 and c.breach.hysteresis == 0.05
    assert c.ladder.evict_settle_s == 60.0 and c.ladder.protect_priority == 1000
    assert c.per_domain.limit == 2 and c.per_domain.window_s == 300.0
    assert c.lease.duration_s == 15.0 and c.lease.namespace == "powercap-system"
    assert c.original_max_annotation == "powercap.io/original-max-replicas"
    # Absent: off.
    data = config_data()
    del data["controller"]
    assert not config_from_data(data).controller.enabled


def test_controller_problems_name_their_path() -> None:
    data = config_data(grace="soon", lease={"duration": "10s", "renewDeadline": "10s"})
    data["controller"]["evictions"] = {"perDomain": {"limit": -1}}
    data["controller"]["wat"] = 1
    with pytest.raises(ConfigError) as err:
        config_from_data(data)
    problems = err.value.problems
    assert any(p.startswith("controller.evictions.perDomain.limit:") for p in problems), problems
    assert any(p.startswith("controller.wat: unknown field") for p in problems), problems
    data = config_data(grace="soon", lease={"duration": "10s", "renewDeadline": "10s"})
    with pytest.raises(ConfigError) as err:
        config_from_data(data)
    problems = err.value.problems
    assert any(p.startswith("controller.grace:") for p in problems), problems
    assert any(p.startswith("controller.lease.renewDeadline:") for p in problems), problems
    data = config_data()
    del data["power"]
    with pytest.raises(ConfigError) as err:
        config_from_data(data)
    assert any(p.startswith("controller.enabled:") for p in err.value.problems)


# --- wiring -------------------------------------------------------------------------------------
def test_from_cluster_adds_the_controller_its_lease_and_metrics() -> None:
    from extender.runtime import from_cluster
    from tests.test_lease import LeaseStore

    config = config_from_data(config_data())
    cluster = FakeCluster()
    store = LeaseStore()
    power = FakePower(config)
    api = KubernetesClusterApi(cluster, cluster, cluster, timeouts=TIMEOUTS)
    ext = from_cluster(config, cluster, cluster_api=api, lease_api=store, power_source=power)
    assert ext.controller is not None and ext.elector is not None
    assert ext.controller_loop is not None and ext.controller_loop.period_s == 15.0
    assert b"powercap_controller_leader 0.0" in ext.telemetry.render()
    assert not ext.controller.leader()  # acts only once it holds the lease
    assert ext.elector.try_acquire_or_renew()
    assert ext.controller.leader()
    assert b"powercap_controller_leader 1.0" in ext.telemetry.render()
    assert store.spec()["holderIdentity"] == ext.elector.identity
    # Off: nothing of it.
    off = config_from_data(config_data(enabled=False))
    ext = from_cluster(off, cluster)
    assert ext.controller is None and ext.elector is None
    assert b"powercap_controller" not in ext.telemetry.render()


def test_the_loop_waits_for_the_mirror_and_outlives_a_failing_tick() -> None:
    import threading

    from extender.controller.loop import ControllerLoop

    rig = Rig()
    ticks: list[float] = []
    done = threading.Event()

    def tick(now: float) -> TickReport:
        ticks.append(now)
        if len(ticks) == 1:
            raise RuntimeError("API server hiccup")
        done.set()
        raise RuntimeError("stop here")

    rig.controller.tick = tick  # type: ignore[method-assign]
    ready = threading.Event()
    loop = ControllerLoop(rig.controller, 0.01, clock=lambda: T0, ready=ready.is_set)
    loop.start()
    try:
        assert not done.wait(0.1) and ticks == []  # not synced: no tick
        ready.set()
        assert done.wait(5.0)
        assert ticks[:2] == [T0, T0]
    finally:
        loop.stop()


def test_two_domains_restoring_one_scaled_object_in_one_tick() -> None:
    """Both racks lowered batch; with headroom in both, rack-a restores one replica and
    rack-b the rest from the object as rack-a left it (not a stale copy, which the API
    server would refuse)."""
    rig = Rig()
    rig.add_pod("batch-3", "batch", "b1")
    so = rig.cluster.scaled["batch"]
    so["spec"]["maxReplicaCount"] = 1
    so["metadata"]["annotations"] = {
        "powercap.io/original-max-replicas": "5",
        "powercap.io/reshaped-by": "rack-a,rack-b",
    }
    # rack-a: 3 kW under cap × 0.9, one batch replica (~2.35 kW now) fits; rack-b: plenty.
    rig.power.watts = {"a1": 9_500.0, "a2": 5_500.0, "b1": 3_500.0}
    report = rig.tick(0)
    assert isinstance(report.decisions["rack-a"], Restore)
    assert isinstance(report.decisions["rack-b"], Restore)
    assert [a.outcome for a in report.actions] == ["done", "done"]
    (_, first), (_, second) = rig.cluster.patches
    assert first["spec"]["maxReplicaCount"] == 2
    assert "annotations" not in first["metadata"]  # partial: they stay
    assert second["spec"]["maxReplicaCount"] == 5
    assert second["metadata"]["resourceVersion"] == "101"  # as rack-a's patch left it
    assert not rig.cluster.scaled["batch"]["metadata"].get("annotations")


def test_a_domain_does_not_restore_what_another_breach_holds() -> None:
    rig = Rig(grace="0s")
    rig.add_pod("batch-3", "batch", "b1")
    so = rig.cluster.scaled["batch"]
    so["spec"]["maxReplicaCount"] = 1
    so["metadata"]["annotations"] = {
        "powercap.io/original-max-replicas": "5",
        "powercap.io/reshaped-by": "rack-a,rack-b",
    }
    rig.power.watts = {"a1": 9_500.0, "a2": 5_500.0, "b1": 25_000.0}
    report = rig.tick(0)  # rack-b in breach at once; rack-a has headroom
    assert report.decisions["rack-a"] == Wait("waiting for headroom to restore")
    assert rig.cluster.patches == []
    # rack-b sheds its own pod and clears: rack-a may restore.
    rig.mirror_evictions()
    rig.power.watts["b1"] = IDLE
    report = rig.tick(15)
    assert isinstance(report.decisions["rack-a"], Restore)


def test_grace_and_settle_may_be_zero_the_period_may_not() -> None:
    c = config_from_data(config_data(grace=0, settle={"evict": "0s"})).controller
    assert c.breach.grace_s == 0.0 and c.ladder.evict_settle_s == 0.0
    with pytest.raises(ConfigError) as err:
        config_from_data(config_data(period="0s"))
    assert any(p.startswith("controller.period:") for p in err.value.problems)
