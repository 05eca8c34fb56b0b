"""The cluster mirror at unit level: what objects mean for the state, and list+watch
with resume, 410 relist and back-off, against a scripted source (no cluster)."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes.client.exceptions import ApiException

from extender.cluster.mirror import (
    Backoff,
    Gone,
    KubernetesSource,
    Mirror,
    Reflector,
    apply_node_event,
    apply_pod_event,
    node_view,
    pod_record,
    replace_nodes,
    replace_pods,
    split_events,
)
from extender.cluster.pods import DemandResolver, PodRef
from extender.cluster.state import ClusterState, PodRecord
from extender.config.loading import config_from_problem
from extender.config.model import Config, PolicySpec, SchedulerSettings
from extender.webhook.protocol import ExtenderArgs, ExtenderBindingArgs, parse
from tests.scheduler_payloads import (
    bind_body,
    filter_body,
    node,
    pod,
    small_extender,
    small_problem,
)


@pytest.fixture
def config() -> Config:
    return config_from_problem(small_problem(), policy=PolicySpec())


@pytest.fixture
def state(config: Config) -> ClusterState:
    return ClusterState(config.grid, config.tree, config.headroom)


def eu_profile(config: Config) -> Any:
    profile = config.services["chat-eu"].profile
    assert profile is not None
    return profile


def leaf(config: Config, name: str) -> int:
    return config.tree.index[name]


def load(state: ClusterState, domain: str) -> Any:
    return state.ledger.load[state.tree.index[domain]].copy()


# --- what objects mean ----------------------------------------------------------------------
def test_node_view(config: Config) -> None:
    v = node_view(node("gpu-1a", "rack-1", gpus=8, idle_watts=1500), config)
    assert (v.name, v.leaf, v.gpus, v.idle_watts, v.problem) == (
        "gpu-1a",
        leaf(config, "rack-1"),
        8,
        1500.0,
        None,
    )
    assert node_view(node("x", None), config).problem == "no powercap.io/domain label"
    assert "not in the config" in str(node_view(node("x", "rack-9"), config).problem)
    assert "not a leaf" in str(node_view(node("x", "row-1"), config).problem)
    assert node_view(node("x", "rack-1"), config).idle_watts == 0.0  # the config default


def test_pod_record(config: Config) -> None:
    resolver = DemandResolver(config)
    bound = pod("eu-0", node_name="gpu-1a", phase="Running")
    record = pod_record(bound, resolver)
    assert record is not None
    assert (record.uid, record.node, record.service, record.gpus) == (
        "uid-llm-eu-0",
        "gpu-1a",
        "chat-eu",
        8,
    )
    assert record.profile_key == "service:chat-eu"
    assert pod_record(pod("eu-1"), resolver) is None  # pending
    assert pod_record(pod("eu-2", node_name="gpu-1a", phase="Succeeded"), resolver) is None
    web = pod("web", service=None, gpus=0, node_name="gpu-1a", phase="Running")
    assert pod_record(web, resolver) is None  # unmanaged


def test_running_pod_without_profile_is_accounted_at_nameplate(config: Config) -> None:
    reject = config_from_problem(
        small_problem(), policy=PolicySpec.model_validate({"missingProfile": "reject"})
    )
    bad = pod("x", service="mystery", node_name="gpu-1a", phase="Running")
    record = pod_record(bad, DemandResolver(reject))
    assert record is not None
    np.testing.assert_allclose(record.profile, reject.policy.default_nameplate_watts)


def test_node_events_move_pods_with_their_node(config: Config, state: ClusterState) -> None:
    resolver = DemandResolver(config)
    apply_node_event(state, config, "ADDED", obj=node("gpu-1a", "rack-1", idle_watts=1000))
    apply_pod_event(state, resolver, "ADDED", obj=pod("eu-0", node_name="gpu-1a", phase="Running"))
    profile = eu_profile(config)
    np.testing.assert_allclose(load(state, "rack-1"), 1000 + profile)
    assert state.free_gpus("gpu-1a") == 0
    # relabelled into rack-3: idle and pod follow
    apply_node_event(state, config, "MODIFIED", obj=node("gpu-1a", "rack-3", idle_watts=1000))
    np.testing.assert_allclose(load(state, "rack-1"), 0, atol=1e-9)
    np.testing.assert_allclose(load(state, "rack-3"), 1000 + profile)
    assert state.counts[state.service_row("chat-eu"), leaf(config, "rack-3")] == 1
    # label removed: the node leaves the tree, its pod waits uncounted
    apply_node_event(state, config, "MODIFIED", obj=node("gpu-1a", None))
    np.testing.assert_allclose(state.ledger.load, 0, atol=1e-9)
    assert "uid-llm-eu-0" in state.pods
    apply_node_event(state, config, "ADDED", obj=node("gpu-1a", "rack-2"))
    np.testing.assert_allclose(load(state, "rack-2"), profile)
    apply_node_event(state, config, "DELETED", obj=node("gpu-1a", "rack-2"))
    assert state.node("gpu-1a") is None


def test_pod_events(config: Config, state: ClusterState) -> None:
    resolver = DemandResolver(config)
    replace_nodes(state, config, [node("gpu-1a", "rack-1")])
    pending: list[str] = []

    def on_pending(obj: Any) -> None:
        pending.append(obj["metadata"]["name"])

    apply_pod_event(state, resolver, "ADDED", obj=pod("eu-0"), on_pending=on_pending)
    assert pending == ["eu-0"] and state.pods == {}
    apply_pod_event(
        state, resolver, "MODIFIED", obj=pod("eu-0", node_name="gpu-1a"), on_pending=on_pending
    )
    assert state.pods["uid-llm-eu-0"].node == "gpu-1a"
    version = state.version
    # the same pod again (bind recorded it first, then the watch event arrives): no change
    apply_pod_event(
        state, resolver, "MODIFIED", obj=pod("eu-0", node_name="gpu-1a", phase="Running")
    )
    assert state.version == version
    apply_pod_event(
        state, resolver, "MODIFIED", obj=pod("eu-0", node_name="gpu-1a", phase="Succeeded")
    )
    assert state.pods == {}
    np.testing.assert_allclose(load(state, "rack-1"), 0, atol=1e-9)
    apply_pod_event(state, resolver, "ADDED", obj=pod("eu-1", node_name="gpu-1a"))
    apply_pod_event(state, resolver, "DELETED", obj=pod("eu-1", node_name="gpu-1a"))
    assert state.pods == {}


def test_a_stale_pending_event_does_not_unrecord_a_bound_pod(
    config: Config, state: ClusterState
) -> None:
    """The extender's bind records a pod before the Binding exists; the watch may still
    deliver older events of it without nodeName (the scheduler's status updates). They
    must not free its power: that let a burst of binds exceed caps."""
    resolver = DemandResolver(config)
    replace_nodes(state, config, [node("gpu-1a", "rack-1")])
    bound = pod_record(pod("eu-0", node_name="gpu-1a"), resolver)
    assert bound is not None
    state.add_pod(bound)  # as Decider.bind does, before creating the Binding
    before = load(state, "rack-1").copy()
    apply_pod_event(state, resolver, "MODIFIED", obj=pod("eu-0"))  # an older, unbound version
    assert "uid-llm-eu-0" in state.pods
    np.testing.assert_allclose(load(state, "rack-1"), before)
    # Deletion and a terminal phase still release it.
    apply_pod_event(state, resolver, "MODIFIED", obj=pod("eu-0", phase="Failed"))
    assert state.pods == {}


def test_pod_before_its_node(config: Config, state: ClusterState) -> None:
    resolver = DemandResolver(config)
    apply_pod_event(state, resolver, "ADDED", obj=pod("eu-0", node_name="gpu-4b"))
    np.testing.assert_allclose(state.ledger.load, 0)
    apply_node_event(state, config, "ADDED", obj=node("gpu-4b", "rack-4"))
    np.testing.assert_allclose(load(state, "rack-4"), eu_profile(config))


def test_replace_drops_what_is_gone(config: Config, state: ClusterState) -> None:
    resolver = DemandResolver(config)
    replace_nodes(state, config, [node("gpu-1a", "rack-1"), node("gpu-2a", "rack-2")])
    replace_pods(
        state,
        resolver,
        [pod("a", node_name="gpu-1a"), pod("b", node_name="gpu-2a"), pod("c")],
    )
    assert sorted(state.pods) == ["uid-llm-a", "uid-llm-b"]
    replace_nodes(state, config, [node("gpu-1a", "rack-1")])
    replace_pods(state, resolver, [pod("a", node_name="gpu-1a")])
    assert state.node_names() == ["gpu-1a"]
    assert sorted(state.pods) == ["uid-llm-a"]
    np.testing.assert_allclose(load(state, "rack-2"), 0, atol=1e-9)


# --- assumed pods across relists ----------------------------------------------------------
def test_a_relist_keeps_a_pod_whose_binding_is_in_flight() -> None:
    """The pods watch expires while a bind is between recording the pod and creating its
    Binding; the relist's list was read before the Binding landed and shows the pod still
    pending. The pod keeps its GPUs and watts: without that the node showed 0 free GPUs
    during the bind, 8 after the relist, and a second 8-GPU pod passed filter there."""
    ext = small_extender()
    ext.decider.pods_from_requests = False
    state, resolver = ext.state, DemandResolver(ext.config)
    first = pod("eu-0")
    replace_pods(state, resolver, [first])  # the mirror's list: eu-0 waits for a node
    free_during: list[int] = []

    class BindingInFlight:
        def bind(self, pod_ref: PodRef, node_name: str, *, deadline: float | None = None) -> None:
            free_during.append(state.free_gpus(node_name))
            replace_pods(state, resolver, [first])  # 410 Gone: relisted meanwhile

        def bound_node(self, pod_ref: PodRef, *, deadline: float | None = None) -> str | None:
            return None

    ext.decider.binder = BindingInFlight()
    bound = ext.decider.bind(parse(bind_body(first, "gpu-1a"), ExtenderBindingArgs))
    assert bound == ""
    assert free_during == [0]
    assert state.free_gpus("gpu-1a") == 0
    second = pod("eu-1")
    apply_pod_event(state, resolver, "ADDED", obj=second)
    result = ext.decider.filter(parse(filter_body(second, ["gpu-1a"]), ExtenderArgs))
    assert result.passed == []
    assert "free GPUs" in result.failed["gpu-1a"]
    # The watch from the relist's version brings the Binding: the pod is confirmed.
    apply_pod_event(state, resolver, "MODIFIED", obj=pod("eu-0", node_name="gpu-1a"))
    assert state.assumed == {}
    assert state.free_gpus("gpu-1a") == 0


def test_an_assumed_pod_leaves_at_a_relist_after_its_ttl_or_once_it_is_gone(
    config: Config, state: ClusterState
) -> None:
    config = dataclasses.replace(config, scheduler=SchedulerSettings(assumed_pod_ttl_s=5.0))
    resolver = DemandResolver(config)
    now = [100.0]
    state.clock = lambda: now[0]
    replace_nodes(state, config, [node("gpu-1a", "rack-1"), node("gpu-2a", "rack-2")])

    def assume(name: str, node_name: str) -> PodRecord:
        record = pod_record(pod(name, node_name=node_name), resolver)
        assert record is not None
        state.assume(record)  # as Decider.bind records a pod before its Binding
        return record

    assume("a", "gpu-1a")
    now[0] += 4.0
    replace_pods(state, resolver, [pod("a")])  # listed pending, within the TTL: kept
    assert "uid-llm-a" in state.pods and state.free_gpus("gpu-1a") == 0
    now[0] += 2.0
    replace_pods(state, resolver, [pod("a")])  # past the TTL: the binding never landed
    assert state.pods == {} and state.assumed == {}
    assert "uid-llm-a" in state.pending
    np.testing.assert_allclose(load(state, "rack-1"), 0, atol=1e-9)

    assume("b", "gpu-1a")
    replace_pods(state, resolver, [])  # not listed at all: deleted meanwhile
    assert state.pods == {} and state.assumed == {} and state.pending == {}

    assume("c", "gpu-2a")
    replace_pods(state, resolver, [pod("c", node_name="gpu-2a")])  # listed bound: confirmed
    assert "uid-llm-c" in state.pods and state.assumed == {}
    now[0] += 60.0
    replace_pods(state, resolver, [pod("c", node_name="gpu-2a")])
    assert state.free_gpus("gpu-2a") == 0


def test_an_assumed_pod_still_waiting_after_its_ttl_is_forgotten_without_a_relist(
    config: Config, state: ClusterState
) -> None:
    """A Binding that got no answer (the API server froze) leaves its pod assumed and
    unsure. Once the API server is back no relist comes and, its power held, nothing
    retries the pod: past the TTL, a pod the mirror still shows waiting is forgotten. A
    pod whose Binding landed (no longer waiting) is kept until the watch confirms it."""
    resolver = DemandResolver(config)
    now = [100.0]
    state.clock = lambda: now[0]
    replace_nodes(state, config, [node("gpu-1a", "rack-1"), node("gpu-2a", "rack-2")])
    replace_pods(state, resolver, [pod("a"), pod("b")])  # both wait for a node
    a = pod_record(pod("a", node_name="gpu-1a"), resolver)
    b = pod_record(pod("b", node_name="gpu-2a"), resolver)
    assert a is not None and b is not None
    state.assume(a)
    assert state.mark_unsure(a)
    state.assume(b)
    state.drop_pending(b.uid)  # its Binding was created
    now[0] += 29.0
    assert state.expire_assumed(ttl_s=30.0) == []
    assert state.free_gpus("gpu-1a") == 0
    now[0] += 2.0
    assert state.expire_assumed(ttl_s=30.0) == ["uid-llm-a"]
    assert "uid-llm-a" not in state.pods and state.unsure == set()
    assert state.free_gpus("gpu-1a") == 8
    np.testing.assert_allclose(load(state, "rack-1"), 0, atol=1e-9)
    assert "uid-llm-b" in state.pods and state.free_gpus("gpu-2a") == 0


def test_the_mirror_keeps_pending_pods_for_bind(config: Config, state: ClusterState) -> None:
    """Pending pods are kept as waiting (with their scheduler) until bound, terminal or
    deleted; a relist replaces them."""
    resolver = DemandResolver(config)
    replace_nodes(state, config, [node("gpu-1a", "rack-1")])
    other = pod("x-0")
    other["spec"]["schedulerName"] = "default-scheduler"
    replace_pods(state, resolver, [pod("a"), other, pod("b", node_name="gpu-1a")])
    assert sorted(state.pending) == ["uid-llm-a", "uid-llm-x-0"]
    assert state.pending["uid-llm-x-0"].scheduler == "default-scheduler"
    assert state.pending["uid-llm-a"].scheduler == "powercap-scheduler"
    assert state.pending_uid_of("llm", "a") == "uid-llm-a"
    apply_pod_event(state, resolver, "MODIFIED", obj=pod("a", node_name="gpu-1a"))
    apply_pod_event(state, resolver, "ADDED", obj=pod("c"))
    apply_pod_event(state, resolver, "MODIFIED", obj=pod("c", phase="Failed"))
    apply_pod_event(state, resolver, "DELETED", obj=other)
    assert state.pending == {} and state.pending_uid_of("llm", "a") is None
    apply_pod_event(state, resolver, "ADDED", obj=pod("d"))
    replace_pods(state, resolver, [pod("e")])
    assert list(state.pending) == ["uid-llm-e"]


# --- list + watch ----------------------------------------------------------------------------
def event(kind: str, obj: dict[str, Any], rv: str) -> dict[str, Any]:
    obj = orjson.loads(orjson.dumps(obj))
    obj["metadata"]["resourceVersion"] = rv
    return {"type": kind, "object": obj}


def gone() -> dict[str, Any]:
    return {
        "type": "ERROR",
        "object": {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": "too old resource version: 5 (90)",
            "reason": "Expired",
            "code": 410,
        },
    }


class ScriptedSource:
    """Lists and watches from scripts; records the resourceVersions it was asked for."""

    def __init__(
        self,
        lists: list[tuple[list[dict[str, Any]], str]],
        watches: list[list[dict[str, Any]] | Exception],
    ) -> None:
        self.lists = list(lists)
        self.watches = list(watches)
        self.list_calls = 0
        self.watched_from: list[str] = []

    def list(self) -> tuple[list[dict[str, Any]], str]:
        self.list_calls += 1
        return self.lists.pop(0)

    def watch(self, resource_version: str, timeout_s: int) -> Iterator[dict[str, Any]]:
        self.watched_from.append(resource_version)
        script = self.watches.pop(0) if self.watches else []
        if isinstance(script, Exception):
            raise script
        yield from script


def reflector_for(source: ScriptedSource) -> tuple[Reflector, list[Any], list[Any]]:
    replaced: list[Any] = []
    events: list[Any] = []
    r = Reflector(
        "pods",
        source,
        on_replace=lambda items: replaced.append([i["metadata"]["name"] for i in items]),
        on_event=lambda kind, obj: events.append((kind, obj["metadata"]["name"])),
    )
    return r, replaced, events


def test_reflector_lists_then_watches_and_resumes() -> None:
    source = ScriptedSource(
        lists=[([pod("a")], "10")],
        watches=[
            [
                event("ADDED", pod("b"), "11"),
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}},
            ],
            [event("MODIFIED", pod("b"), "16")],
        ],
    )
    r, replaced, events = reflector_for(source)
    r.step()  # list, then the first watch until the server ends it
    assert replaced == [["a"]] and r.synced.is_set()
    assert events == [("ADDED", "b")]
    assert r.resource_version == "15"  # bookmarks advance the version, no event
    r.step()  # resumes: no relist
    assert source.list_calls == 1
    assert source.watched_from == ["10", "15"]
    assert events[-1] == ("MODIFIED", "b")


def test_reflector_relists_on_410_in_the_watch() -> None:
    source = ScriptedSource(
        lists=[([pod("a"), pod("b")], "10"), ([pod("b")], "90")],
        watches=[[event("ADDED", pod("c"), "11"), gone()], [event("DELETED", pod("b"), "91")]],
    )
    r, replaced, events = reflector_for(source)
    r.step()
    assert r.resource_version is None  # expired: the next step relists
    r.step()
    assert replaced == [["a", "b"], ["b"]]
    assert source.watched_from == ["10", "90"]
    assert events == [("ADDED", "c"), ("DELETED", "b")]
    assert r.relists == 2


def test_reflector_relists_when_the_watch_call_is_gone() -> None:
    source = ScriptedSource(lists=[([], "1"), ([], "2")], watches=[Gone("expired"), []])
    r, _, _ = reflector_for(source)
    r.step()
    r.step()
    assert source.list_calls == 2 and source.watched_from == ["1", "2"]


def test_reflector_errors_keep_the_version_and_back_off() -> None:
    source = ScriptedSource(
        lists=[([], "7")],
        watches=[ConnectionResetError("api server restarted"), [event("ADDED", pod("x"), "8")]],
    )
    r, _, events = reflector_for(source)
    with pytest.raises(ConnectionResetError):
        r.step()
    assert r.resource_version == "7"
    r.step()
    assert source.list_calls == 1 and source.watched_from == ["7", "7"]
    assert events == [("ADDED", "x")]


def test_reflector_run_backs_off_then_stops() -> None:
    stop = threading.Event()
    waits: list[float] = []

    class Stopper(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(timeout or 0.0)
            if len(waits) >= 3:
                stop.set()
            return stop.is_set()

        def is_set(self) -> bool:
            return stop.is_set()

    source = ScriptedSource(lists=[], watches=[])
    source.lists = []  # every list fails
    r, _, _ = reflector_for(source)
    r.backoff = Backoff(base_s=1.0, cap_s=4.0, rng=random.Random(0))
    r.run(Stopper())
    assert len(waits) == 3 and r.errors == 3
    assert 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 2.0 and 2.0 <= waits[2] <= 4.0


def test_backoff_is_capped_and_resets() -> None:
    b = Backoff(base_s=0.5, cap_s=30.0, rng=random.Random(1))
    delays = [b.next() for _ in range(12)]
    assert all(d <= 30.0 for d in delays) and delays[-1] >= 15.0
    b.reset()
    assert b.next() <= 0.5


@given(st.lists(st.integers(1, 40), min_size=1, max_size=30))
def test_split_events_any_chunking(cuts: list[int]) -> None:
    events = [{"type": "ADDED", "object": {"metadata": {"name": f"p{i}"}}} for i in range(5)]
    stream = b"".join(orjson.dumps(e) + b"\n" for e in events)
    chunks, pos = [], 0
    for c in cuts:
        chunks.append(stream[pos : pos + c])
        pos += c
    chunks.append(stream[pos:])
    assert list(split_events(chunks)) == events


def test_mirror_becomes_ready_after_both_lists(config: Config, state: ClusterState) -> None:
    nodes = ScriptedSource([([node("gpu-1a", "rack-1")], "5")], [])
    pods = ScriptedSource([([pod("eu-0", node_name="gpu-1a")], "6")], [])
    seen: dict[str, float] = {}
    mirror = Mirror(state, config, nodes, pods=pods, seen=seen)
    assert not state.synced
    mirror.start()
    deadline = time.monotonic() + 5
    while not state.synced and time.monotonic() < deadline:
        time.sleep(0.01)
    mirror.stop()
    assert bool(state.synced)
    assert state.pods["uid-llm-eu-0"].node == "gpu-1a"
    assert set(seen) == {"nodes", "pods"}


def test_mirror_counts_relists_after_410_in_its_metrics(
    config: Config, state: ClusterState
) -> None:
    from extender.telemetry import Telemetry

    nodes = ScriptedSource([([node("gpu-1a", "rack-1")], "5")], [])
    # The first pods watch expires; the relist finds a pod bound meanwhile.
    pods = ScriptedSource([([], "6"), ([pod("eu-0", node_name="gpu-1a")], "40")], [[gone()]])
    telemetry = Telemetry(state)
    mirror = Mirror(
        state,
        config,
        nodes,
        pods=pods,
        seen=telemetry.mirror_seen,
        relists=telemetry.mirror_relists,
    )
    assert telemetry.mirror_relists == {"nodes": 0, "pods": 0}  # zero before any list
    mirror.start()
    deadline = time.monotonic() + 5
    while telemetry.mirror_relists["pods"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    mirror.stop()
    assert telemetry.mirror_relists == {"nodes": 0, "pods": 1}
    assert "uid-llm-eu-0" in state.pods
    text = telemetry.render().decode()
    assert 'powercap_mirror_relists_total{resource="pods"} 1.0' in text
    assert 'powercap_mirror_relists_total{resource="nodes"} 0.0' in text


# --- the Kubernetes source, with a stand-in CoreV1Api ------------------------------------------
class _Raw:
    def __init__(self, data: bytes = b"", chunks: list[bytes] | None = None) -> None:
        self.data = data
        self._chunks = chunks or []
        self.released = False

    def stream(self, amt: int, decode_content: bool = True) -> Iterator[bytes]:
        yield from self._chunks

    def read(self) -> bytes:
        return self.data

    def release_conn(self) -> None:
        self.released = True


class FakeCore:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.pages = [
            {"metadata": {"continue": "t1"}, "items": [node("a", "rack-1")]},
            {"metadata": {"resourceVersion": "42"}, "items": [node("b", "rack-2")]},
        ]
        self.watch_response = _Raw(
            chunks=[
                orjson.dumps(event("ADDED", node("c", "rack-3"), "43"))[:30],
                orjson.dumps(event("ADDED", node("c", "rack-3"), "43"))[30:] + b"\n",
            ]
        )
        self.fail_with: int | None = None

    def list_node(self, **kwargs: Any) -> _Raw:
        self.calls.append(kwargs)
        if self.fail_with is not None:
            raise ApiException(status=self.fail_with, reason="Gone")
        if kwargs.get("watch"):
            return self.watch_response
        return _Raw(orjson.dumps(self.pages.pop(0)))


def test_kubernetes_source_pages_and_watches_raw() -> None:
    core = FakeCore()
    source = KubernetesSource(core, "nodes", page_size=1)
    items, rv = source.list()
    assert [i["metadata"]["name"] for i in items] == ["a", "b"] and rv == "42"
    assert core.calls[1]["_continue"] == "t1"
    assert all(c["_preload_content"] is False for c in core.calls)
    events = list(source.watch("42", 60))
    assert events[0]["object"]["metadata"]["name"] == "c"
    assert core.calls[-1]["resource_version"] == "42" and core.calls[-1]["watch"] is True
    assert core.calls[-1]["allow_watch_bookmarks"] is True
    assert core.watch_response.released
    core.fail_with = 410
    with pytest.raises(Gone):
        source.list()
    core.fail_with = 500
    with pytest.raises(ApiException):
        list(source.watch("42", 60))


def test_from_cluster_wires_mirror_binder_and_events(config: Config) -> None:
    """The cluster runtime against a stand-in CoreV1Api: it lists, becomes ready,
    binds through the API and serves."""
    from fastapi.testclient import TestClient

    from extender.runtime import from_cluster
    from tests.scheduler_payloads import bind_body, filter_body

    class Core:
        def __init__(self) -> None:
            self.bindings: list[tuple[str, str, Any]] = []
            self.events: list[Any] = []

        def list_node(self, **kw: Any) -> _Raw:
            if kw.get("watch"):
                return _Raw(chunks=[])
            items = [node("gpu-1a", "rack-1"), node("gpu-2a", "rack-2"), node("cpu-1", None)]
            return _Raw(orjson.dumps({"metadata": {"resourceVersion": "3"}, "items": items}))

        def list_pod_for_all_namespaces(self, **kw: Any) -> _Raw:
            assert "status.phase!=Succeeded" in kw["field_selector"]
            if kw.get("watch"):
                return _Raw(chunks=[])
            items = [pod("eu-0", node_name="gpu-1a", phase="Running"), pod("eu-1")]
            return _Raw(orjson.dumps({"metadata": {"resourceVersion": "4"}, "items": items}))

        def create_namespaced_pod_binding(self, name: str, ns: str, body: Any, **_: Any) -> _Raw:
            self.bindings.append((name, ns, body["target"]["name"]))
            return _Raw()

        def create_namespaced_event(self, ns: str, body: Any, **_: Any) -> _Raw:
            self.events.append(body)
            return _Raw()

    core = Core()
    ext = from_cluster(config, core)
    with TestClient(ext.app()) as client, TestClient(ext.metrics_app()) as probes:
        deadline = time.monotonic() + 5
        while probes.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert probes.get("/readyz").status_code == 200
        assert ext.state.node_names() == ["gpu-1a", "gpu-2a"]
        assert "uid-llm-eu-0" in ext.state.pods
        # eu-1 was pending in the list: bind knows it without a filter call
        r = client.post("/bind", content=bind_body(pod("eu-1"), "gpu-2a"))
        assert r.json() == {"Error": ""}
        assert core.bindings == [("eu-1", "llm", "gpu-2a")]
        r = client.post("/filter", content=filter_body(pod("eu-2"), ["gpu-1a", "gpu-2a"]))
        assert r.json()["NodeNames"] == []  # both nodes' GPUs are taken
