"""The powercap.io resources and the workloads watched by a running extender: a changed cap
applies to filter at once, an invalid set keeps the last good tree, the demand follows the
workloads and re-plans after the debounce (:mod:`extender.cluster.custom`)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any
from unittest.mock import MagicMock

import numpy as np
import pytest

from extender import runtime
from extender.cluster.custom import (
    POWERCAP_KINDS,
    WORKLOAD_KINDS,
    Store,
    rebuild,
    structure_change,
    trim_workload,
)
from extender.cluster.events import RecordingEventSink
from extender.cluster.mirror import Source
from extender.cluster.state import PodRecord
from extender.cluster.status import StatusWriter, changed_enough
from extender.config.loading import config_from_data
from extender.config.model import Config
from extender.controller.readings import PowerReadings, readings_from_vectors
from extender.webhook.protocol import ExtenderArgs
from tests.scheduler_payloads import pod

SLOTS = 24


def config_data(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "apiVersion": "powercap.io/v1alpha1",
        "kind": "PowercapConfig",
        "grid": {"period": "24h", "step": "1h"},
        "domains": [{"name": "site", "cap": 100000}],
        "planner": {"enabled": True, "strategy": "greedy", "debounce": "1s"},
        "resources": {"enabled": True},
    }
    data.update(extra)
    return data


def domain(
    name: str, watts: float, parent: str | None = None, generation: int = 1
) -> dict[str, Any]:
    spec: dict[str, Any] = {"cap": {"watts": watts}}
    if parent is not None:
        spec["parent"] = parent
    return {
        "apiVersion": "powercap.io/v1alpha1",
        "kind": "PowerDomain",
        "metadata": {"name": name, "resourceVersion": "1", "generation": generation},
        "spec": spec,
    }


def profile(name: str, watts: float) -> dict[str, Any]:
    return {
        "apiVersion": "powercap.io/v1alpha1",
        "kind": "PowerProfile",
        "metadata": {"name": name, "namespace": "llm", "resourceVersion": "1"},
        "spec": {"watts": [watts] * SLOTS},
    }


def policy(service: str, profile_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "powercap.io/v1alpha1",
        "kind": "PowerPolicy",
        "metadata": {"name": service, "namespace": "llm", "resourceVersion": "1"},
        "spec": {"profileRef": profile_name, "gpusPerReplica": 8},
    }


def tree(rack_a: float = 4000.0) -> list[dict[str, Any]]:
    return [
        domain("site", 20000),
        domain("rack-a", rack_a, "site"),
        domain("rack-b", 4000, "site"),
        profile("chat", 1000),
        policy("chat-eu", "chat"),
    ]


class FakeSource:
    """A list, then the watch events given (each watch round pops one batch)."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.batches: list[list[dict[str, Any]]] = []

    def list(self) -> tuple[list[dict[str, Any]], str]:
        return copy.deepcopy(self.items), "1"

    def watch(self, resource_version: str, timeout_s: int) -> Iterator[dict[str, Any]]:
        yield from self.batches.pop(0) if self.batches else []


def sources(objects: list[dict[str, Any]], workloads: bool = False) -> dict[str, FakeSource]:
    out = {
        plural: FakeSource([o for o in objects if o["kind"] == kind])
        for plural, kind in POWERCAP_KINDS.items()
    }
    if workloads:
        for _path, plural, kind in WORKLOAD_KINDS:
            out[plural] = FakeSource([o for o in objects if o["kind"] == kind])
    return out


def live(objects: list[dict[str, Any]], workloads: bool = False) -> runtime.Extender:
    """An extender as ``from_cluster`` builds it, its resource watch on fake sources and
    listed once; two nodes, one per rack."""
    base = config_from_data(config_data())
    fakes = sources(objects, workloads)
    typed: dict[str, Source] = dict(fakes)
    config = runtime.initial_config(base, typed)
    ext = runtime.from_cluster(config, MagicMock())
    ext.events = RecordingEventSink()
    runtime.add_resource_watch(ext, typed)
    ext.fakes = fakes  # type: ignore[attr-defined]
    for name, rack in (("n-a", "rack-a"), ("n-b", "rack-b")):
        ext.state.upsert_node(name, ext.state.tree.index[rack], 8, idle_watts=200.0)
    ext.state.synced = True
    assert ext.resources is not None
    for reflector in ext.resources.reflectors:
        reflector.step()
    return ext


def watch_event(ext: runtime.Extender, plural: str, kind: str, obj: dict[str, Any]) -> None:
    assert ext.resources is not None
    fakes: dict[str, FakeSource] = ext.fakes  # type: ignore[attr-defined]
    fakes[plural].batches.append([{"type": kind, "object": obj}])
    (reflector,) = [r for r in ext.resources.reflectors if r.name == plural]
    reflector.step()


def filter_nodes(ext: runtime.Extender, name: str) -> list[str]:
    candidates = ["n-a", "n-b"]
    args = ExtenderArgs.model_validate(
        {"Pod": pod(name, service="chat-eu", gpus=8), "NodeNames": candidates}
    )
    outcome = ext.decider.filter(args)
    return [candidates[i] for i in outcome.passed]


def test_the_tree_comes_from_the_resources_at_start() -> None:
    ext = live(tree())
    assert ext.config.tree.names == ("site", "rack-a", "rack-b")
    assert ext.config.services["chat-eu"].profile_name == "chat"
    assert filter_nodes(ext, "p1") == ["n-a", "n-b"]


def test_a_lowered_cap_applies_to_filter_at_once_and_shows_as_negative_headroom() -> None:
    ext = live(tree())
    ext.state.add_pod(
        PodRecord(
            uid="u1",
            namespace="llm",
            name="running",
            node="n-a",
            service="chat-eu",
            profile=np.full(SLOTS, 1000.0),
            gpus=0,
            profile_key="service:chat-eu",
        )
    )
    version = ext.state.topology_version
    watch_event(ext, "powerdomains", "MODIFIED", domain("rack-a", 1000, "site"))
    a = ext.state.tree.index["rack-a"]
    assert ext.state.caps[a, 0] == 1000.0
    assert ext.state.configured_caps[a, 0] == 1000.0
    assert ext.config.tree.caps[a, 0] == 1000.0
    assert filter_nodes(ext, "p2") == ["n-b"], "the lowered rack still admits"
    # 200 W idle + 1000 W running > 1000 W: the controller's view (state.tree) is over.
    assert ext.state.headroom_watts()[a] < 0
    assert ext.state.tree.caps[a, 0] == 1000.0
    assert ext.state.topology_version > version, "no re-plan trigger"


def test_an_invalid_set_keeps_the_last_good_tree_and_a_valid_one_applies_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ext = live(tree())
    good = ext.config
    watch_event(ext, "powerdomains", "MODIFIED", domain("rack-a", 3000, "row-9"))
    assert ext.config is good
    assert ext.resources is not None and ext.resources.last_problems
    assert "PowerDomain/rack-a spec.parent: unknown domain 'row-9'" in caplog.text
    sink = ext.resources.events
    assert isinstance(sink, RecordingEventSink)
    (event,) = sink.events
    assert (event.kind, event.pod.name, event.reason) == ("PowerDomain", "rack-a", "UnknownParent")
    assert event.message.startswith("PowerDomain/rack-a spec.parent: unknown domain 'row-9'")
    assert filter_nodes(ext, "p3") == ["n-a", "n-b"], "scheduling stopped"
    watch_event(ext, "powerdomains", "MODIFIED", domain("rack-a", 500, "site"))
    assert ext.config is not good
    assert ext.state.caps[ext.state.tree.index["rack-a"], 0] == 500.0


def test_a_profile_of_the_wrong_length_is_refused_with_its_field() -> None:
    ext = live(tree())
    bad = profile("chat", 900)
    bad["spec"]["watts"] = [900.0] * 7
    watch_event(ext, "powerprofiles", "MODIFIED", bad)
    assert ext.resources is not None
    assert any("PowerProfile/chat spec.watts: 7 values" in p for p in ext.resources.last_problems)
    assert ext.config.profiles["chat"][0] == 1000.0


def test_a_new_domain_is_not_swapped_into_a_running_ledger() -> None:
    ext = live(tree())
    before = ext.config
    watch_event(ext, "powerdomains", "ADDED", domain("rack-c", 4000, "site"))
    assert ext.config is before
    assert ext.state.tree.names == ("site", "rack-a", "rack-b")


def test_rebuild_and_structure_change_are_pure() -> None:
    base = config_from_data(config_data())
    first = rebuild(tree(), base)
    assert first.config is not None
    lowered = rebuild(tree(rack_a=100), base)
    assert lowered.config is not None
    assert structure_change(first.config, lowered.config) is None
    grown = rebuild([*tree(), domain("rack-c", 1, "site")], base)
    assert grown.config is not None
    assert "rack-c" in (structure_change(first.config, grown.config) or "")
    cycle = rebuild([domain("a", 1, "b"), domain("b", 1, "a")], base)
    assert cycle.config is None and any("cycle" in p for p in cycle.problems)
    empty = rebuild([], base)
    assert empty.config is None and "powercap config migrate" in empty.problems[0]


def deployment(name: str, replicas: int, service: str = "chat-eu") -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "llm", "resourceVersion": "2"},
        "spec": {
            "replicas": replicas,
            "template": {
                "metadata": {"labels": {"powercap.io/service": service}},
                "spec": {"containers": [{"name": "vllm", "image": "x" * 1000}]},
            },
        },
    }


def test_the_demand_follows_the_workloads_and_replans() -> None:
    ext = live([*tree(), deployment("chat", 4)], workloads=True)
    planner = ext.planner
    assert planner is not None and planner.demand == {"chat-eu": 4}
    first = planner.plan_now()
    assert first is not None and first.demand == 4
    version = ext.state.topology_version
    scaled = deployment("chat", 12)
    scaled["metadata"]["resourceVersion"] = "3"
    watch_event(ext, "deployments", "MODIFIED", scaled)
    assert planner.demand == {"chat-eu": 12}
    assert ext.state.topology_version > version, "the planner would not re-plan"
    again = planner.plan_now()
    assert again is not None and again.demand == 12
    keda = {
        "kind": "ScaledObject",
        "metadata": {"name": "chat", "namespace": "llm", "resourceVersion": "4"},
        "spec": {"scaleTargetRef": {"name": "chat"}, "maxReplicaCount": 6},
    }
    watch_event(ext, "scaledobjects", "ADDED", keda)
    assert planner.demand == {"chat-eu": 6}


def test_an_unchanged_demand_does_not_trigger_a_replan() -> None:
    ext = live([*tree(), deployment("chat", 4)], workloads=True)
    version = ext.state.topology_version
    same = deployment("chat", 4)
    same["metadata"]["resourceVersion"] = "9"
    watch_event(ext, "deployments", "MODIFIED", same)
    assert ext.state.topology_version == version


def test_workloads_are_trimmed_to_what_the_demand_reads() -> None:
    kept = trim_workload(deployment("chat", 3))
    assert kept["spec"] == {
        "replicas": 3,
        "template": {"metadata": {"labels": {"powercap.io/service": "chat-eu"}}},
    }
    store = Store()
    store.replace("Deployment", [kept])
    store.apply("Deployment", "DELETED", kept)
    assert store.values() == []


def test_a_config_without_resources_watches_nothing() -> None:
    data = config_data()
    del data["resources"]
    config: Config = config_from_data(data)
    ext = runtime.from_cluster(config, MagicMock())
    assert ext.resources is None


# --- PowerDomain status ----------------------------------------------------------------------
def status(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "observedGeneration": 1,
        "predictedPeakWatts": 1000.0,
        "predictedPeakAt": "10:00",
        "headroomWatts": 3000.0,
        "measuredWatts": 900.0,
        "measuredAt": "2026-12-06T05:00:00Z",
        "breached": False,
        "state": "Ok",
        "conditions": [],
    }
    base.update(changes)
    return base


def test_status_changes_below_the_noise_are_not_written() -> None:
    assert changed_enough(None, status()) == (True, True)
    assert changed_enough(status(), status(measuredWatts=930.0)) == (False, False)
    assert changed_enough(status(), status(measuredWatts=1000.0)) == (True, False)
    assert changed_enough(status(), status(predictedPeakAt="11:00")) == (True, False)
    assert changed_enough(status(), status(breached=True, state="Breached")) == (True, True)
    assert changed_enough(status(), status(observedGeneration=2)) == (True, True)


def test_the_writer_rate_limits_all_but_urgent_changes() -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    writer = StatusWriter(lambda name, body: calls.append((name, body)), min_interval_s=30)
    assert writer.write({"rack-a": status()}, now=0) == ["rack-a"]
    assert writer.write({"rack-a": status(measuredWatts=2000.0)}, now=10) == []
    assert writer.write({"rack-a": status(state="Breached", breached=True)}, now=11) == ["rack-a"]
    assert writer.write({"rack-a": status(state="Breached", breached=True)}, now=50) == []
    big = status(state="Breached", breached=True, measuredWatts=5000.0)
    assert writer.write({"rack-a": big}, now=50) == ["rack-a"]
    assert [c[1]["state"] for c in calls] == ["Ok", "Breached", "Breached"]

    def broken(name: str, body: dict[str, Any]) -> None:
        raise RuntimeError("apiserver down")

    failing = StatusWriter(broken)
    assert failing.write({"rack-a": status()}, now=0) == [] and failing.errors == 1
    assert failing.written == {}, "a failed write must be retried"


def test_the_leader_writes_domain_status_with_the_new_cap_and_conditions() -> None:
    ext = live(tree())
    calls: dict[str, dict[str, Any]] = {}
    leader = MagicMock()
    leader.is_leader.return_value = True
    ext.elector = leader
    writer = runtime.add_domain_status(ext, lambda name, body: calls.__setitem__(name, body))
    runtime.domain_status_tick(ext, writer, now=36000.0)  # 10:00 UTC
    assert set(calls) == {"site", "rack-a", "rack-b"}
    assert calls["rack-a"]["headroomWatts"] == 3800.0  # the idle 200 W of n-a
    assert calls["rack-a"]["predictedPeakWatts"] == 200.0
    assert calls["rack-a"]["observedGeneration"] == 1
    ready = [c for c in calls["rack-a"]["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True"
    calls.clear()
    runtime.domain_status_tick(ext, writer, now=36005.0)
    assert calls == {}, "an unchanged status was written again"
    # A spec change (a new generation) is written at once, with the new headroom.
    watch_event(ext, "powerdomains", "MODIFIED", domain("rack-a", 1500, "site", generation=2))
    runtime.domain_status_tick(ext, writer, now=36006.0)
    assert set(calls) == {"rack-a"}
    assert calls["rack-a"]["headroomWatts"] == 1300.0
    assert calls["rack-a"]["observedGeneration"] == 2
    # An invalid set: the tree stays, the domain says why.
    watch_event(ext, "powerdomains", "MODIFIED", domain("rack-a", 1500, "row-9", generation=3))
    calls.clear()
    runtime.domain_status_tick(ext, writer, now=36007.0)
    assert calls["rack-a"]["state"] == "Invalid"
    invalid = [c for c in calls["rack-a"]["conditions"] if c["type"] == "InvalidParent"]
    assert invalid[0]["status"] == "True" and "row-9" in invalid[0]["message"]
    leader.is_leader.return_value = False
    calls.clear()
    watch_event(ext, "powerdomains", "MODIFIED", domain("rack-a", 1500, "site", generation=4))
    assert runtime.domain_status_tick(ext, writer, now=36200.0) == [] and calls == {}


class MeasuredPower:
    """Measured watts per node, fed by hand."""

    def __init__(self, config: Config, watts: dict[str, float]) -> None:
        assert config.power is not None
        self.settings = config.power
        self.watts = watts

    def read(self, nodes: Iterable[str], at: float | None = None) -> PowerReadings:
        return readings_from_vectors(
            self.watts, None, nodes, settings=self.settings, at=at if at is not None else 0.0
        )


def test_a_cap_lowered_below_the_measured_load_is_a_breach_for_the_controller() -> None:
    ext = live(tree())
    power = {"url": "http://prometheus:9090"}
    controlled = config_from_data(
        config_data(power=power, controller={"enabled": True, "grace": "0s"})
    )
    ext.config = replace(ext.config, power=controlled.power, controller=controlled.controller)
    runtime.add_tracking(ext, MeasuredPower(ext.config, {"n-a": 1800.0, "n-b": 300.0}))
    controller = ext.controller
    assert controller is not None
    a = ext.state.tree.index["rack-a"]
    controller.tick(36000.0)
    assert not controller.breach.in_breach[a], "1800 W under a 4000 W cap"
    watch_event(ext, "powerdomains", "MODIFIED", domain("rack-a", 1000, "site", generation=2))
    report = controller.tick(36010.0)
    assert report.caps[a] == 1000.0
    assert controller.breach.in_breach[a], "the lowered cap did not reach the controller"
    assert not controller.breach.in_breach[ext.state.tree.index["rack-b"]]


@pytest.mark.parametrize("workloads", [False, True])
def test_the_planner_waits_for_the_workloads_only_when_they_are_watched(workloads: bool) -> None:
    ext = live(tree(), workloads=workloads)
    assert ext.planner is not None
    assert ext.planner.wait_for_demand is workloads
