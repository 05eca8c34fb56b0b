"""The power-limit rung in the controller's loop, against the same stand-ins as
tests/test_controller.py: a breach is absorbed by NodePowerLimit specs (low-priority node
first, the high-priority one past the second threshold), limits come back step by step and
the request is withdrawn; without an agent or permission the ladder reshapes and says why;
dry-run writes nothing; the memory keeps limit steps for the next leader."""

from __future__ import annotations

import itertools
import threading
from typing import Any

import orjson
import pytest

from extender.cluster.events import event_body
from extender.cluster.mirror import pod_record
from extender.config.loading import config_from_data
from extender.config.model import ConfigError
from extender.controller.loop import TickReport
from extender.controller.loop import limit_object as read_limit_object
from extender.controller.memory import ControllerMemory, MemoryKeeper
from placement.control.ladder import Cap, Reshape, Step, Uncap, Wait
from tests.test_controller import T0, FakeStateStore, Rig, breach, config_data, set_priority

# rack-a: a1 holds batch-0, batch-1 and vip-0 (PriorityClass 2000: a high-priority
# node, three busy GPUs), a2 holds batch-2 and chat-0 (low, two busy GPUs); cap 20 kW,
# cleared under 19 kW. A small surge (a1 12.3 kW, a2 7.9 kW) leaves 1.2 kW to clear,
# 1.32 kW with the 10 % margin, past the second threshold (5 % of 20 kW = 1 kW): a2 gives
# 2 × 350 W (to its floor, half of 700 W), a1 the other 620 W. The big surge of
# tests/test_controller.py (4 kW to clear) is more than the floors allow.
TARGET_W = 1.1 * 1200.0


def status(can_set: bool | None = True, enforced: float = 700.0) -> dict[str, Any]:
    out: dict[str, Any] = {
        "gpus": [
            {
                "index": i,
                "minWatts": 200.0,
                "maxWatts": 700.0,
                "defaultWatts": 700.0,
                "enforcedWatts": enforced,
            }
            for i in range(8)
        ]
    }
    if can_set is not None:
        out["canSetLimits"] = can_set
    return out


def limit_object(node: str, can_set: bool | None = True) -> dict[str, Any]:
    return {
        "apiVersion": "powercap.io/v1alpha1",
        "kind": "NodePowerLimit",
        "metadata": {"name": node, "uid": f"npl-{node}", "resourceVersion": "5"},
        "spec": {},
        "status": status(can_set),
    }


def with_agents(rig: Rig, can_set: bool | None = True) -> Rig:
    """Every node with an agent reporting; vip-0 (on a1) in a PriorityClass of 2000."""
    rig.cluster.limits = {n: limit_object(n, can_set) for n in ("a1", "a2", "b1")}
    set_priority(rig, "vip-0", value=2000)
    record = pod_record(rig.cluster.pods["vip-0"], rig.resolver)
    assert record is not None and record.priority == 2000
    rig.state.remove_pod(record.uid)  # spec.priority is immutable: the pod as created
    rig.state.add_pod(record)
    return rig


def enforce(rig: Rig) -> None:
    """What the agents would do: enforce what the spec asks (the default without one)."""
    assert rig.cluster.limits is not None
    for obj in rig.cluster.limits.values():
        asked = obj.get("spec", {}).get("wattsPerGpu", 700.0)
        obj["status"] = status(True, asked)


def small_breach(rig: Rig) -> TickReport:
    """A surge the power limits can absorb; tick until the grace period is served."""
    rig.power.watts.update({"a1": 12_300.0, "a2": 7_900.0})
    rig.tick(0)
    rig.tick(15)
    return rig.tick(30)


def test_a_breach_is_absorbed_by_power_limits_low_priority_node_first() -> None:
    rig = with_agents(Rig())
    report = small_breach(rig)
    decision = report.decisions["rack-a"]
    assert isinstance(decision, Cap), decision
    assert decision.plan.used_high and decision.plan.uncovered_w == pytest.approx(0.0)
    asked = {name: patch["spec"]["wattsPerGpu"] for name, patch in rig.cluster.limit_patches}
    # a2 (low) goes to its floor (50 % of 700 W); a1 (high) gives the rest.
    assert asked == {"a2": 350.0, "a1": round(700.0 - (TARGET_W - 700.0) / 3, 1)}
    for _, patch in rig.cluster.limit_patches:
        assert patch["metadata"]["annotations"] == {"powercap.io/capped-by": "rack-a"}
        assert patch["metadata"]["resourceVersion"] == "5"
        assert patch["spec"]["gpus"] is None
    assert rig.cluster.patches == [] and rig.cluster.eviction_attempts == []
    reasons = {(e.reason, e.kind, e.pod.name) for e in rig.events.events}
    assert reasons == {
        ("PowerCapCapped", "NodePowerLimit", "a1"),
        ("PowerCapCapped", "NodePowerLimit", "a2"),
    }
    body = event_body(rig.events.events[0])
    assert body["involvedObject"]["apiVersion"] == "powercap.io/v1alpha1"
    labels = {"kind": "cap", "domain": "rack-a", "dry_run": "false"}
    assert rig.metric("powercap_controller_actions_total", **labels) == 2.0
    # Next tick, within the cap's settle period (30 s): wait for the agents.
    assert isinstance(rig.tick(45).decisions["rack-a"], Wait)


def test_limits_come_back_step_by_step_and_the_request_is_withdrawn() -> None:
    rig = with_agents(Rig(powerLimits={"settle": {"hold": "5m"}, "grace": "30s"}))
    small_breach(rig)
    enforce(rig)
    rig.tick(45)
    assert rig.metric("powercap_controller_gpu_limit_ratio", node="a2") == pytest.approx(0.5)
    lost = rig.metric("powercap_controller_throughput_lost_ratio", domain="rack-a")
    assert lost is not None and 0.0 < lost < 0.5
    rig.power.watts.update({"a1": 9_000.0, "a2": 6_000.0})  # the surge is over: 15 kW
    at, steps = 60.0, []
    for _ in range(60):
        at += 15
        decision = rig.tick(at).decisions.get("rack-a")
        if isinstance(decision, Uncap):
            steps.append((at, [(c.node, c.to_w) for c in decision.changes]))
            enforce(rig)
        if decision is None:
            break
    assert decision is None, "the domain should be done with its limits"
    # Hysteresis: the first raise waits for the clear (5 % under the cap) and the 5 min
    # hold after the cap; every step raises by at most 70 W per GPU, the next 2 min later.
    times = [t for t, _ in steps]
    assert times[0] >= 30 + 300 and all(b - a >= 120 for a, b in itertools.pairwise(times))
    first = dict(steps[0][1])
    assert list(first) == ["a1", "a2"]  # high priority first
    assert first["a2"] == pytest.approx(420.0) and first["a1"] == pytest.approx(
        700.0 - (TARGET_W - 700.0) / 3 + 70.0, abs=0.1
    )
    final = rig.cluster.limits
    assert final is not None
    for node in ("a1", "a2"):
        assert "wattsPerGpu" not in final[node]["spec"], final[node]
        assert "powercap.io/capped-by" not in final[node]["metadata"].get("annotations", {})
    assert any(e.reason == "PowerCapUncapped" for e in rig.events.events)
    assert rig.cluster.patches == [] and rig.cluster.eviction_attempts == []


@pytest.mark.parametrize(
    ("can_set", "why"),
    [(None, "no powercap agent reports on a1, a2"), (False, "cannot set limits on a1, a2")],
)
def test_without_agents_or_permission_the_ladder_reshapes_and_says_why(
    can_set: bool | None, why: str
) -> None:
    rig = with_agents(Rig(), can_set)
    report = breach(rig)
    decision = report.decisions["rack-a"]
    assert isinstance(decision, Reshape) and why in decision.note
    assert rig.cluster.limit_patches == []
    assert rig.cluster.patches and rig.cluster.patches[0][0] == "batch"
    warned = [e for e in rig.events.events if e.reason == "PowerCapLimitsUnavailable"]
    assert {e.pod.name for e in warned} == {"a1", "a2"}
    assert all(why in e.message and e.kind == "Node" for e in warned)


def test_an_agent_that_leaves_the_spec_unobserved_past_the_timeout_counts_as_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Generation 3 asked, the status still describes generation 2: the agent was removed
    # or is stuck, and the limits its status reports may no longer hold.
    rig = with_agents(Rig())
    assert rig.cluster.limits is not None
    for obj in rig.cluster.limits.values():
        obj["metadata"]["generation"] = 3
        obj["status"]["observedGeneration"] = 2
    rig.power.watts.update({"a1": 12_300.0, "a2": 7_900.0})
    rig.tick(0)  # first seen unobserved; the 30 s timeout starts
    assert not any("has not applied" in r.message for r in caplog.records)
    rig.tick(15)
    decision = rig.tick(30).decisions["rack-a"]  # grace served, timeout reached
    assert isinstance(decision, Reshape), decision
    assert "no powercap agent reports on a1, a2" in decision.note
    assert rig.cluster.limit_patches == []
    warned = [r.message for r in caplog.records if "has not applied generation 3" in r.message]
    assert len(warned) == 3  # a1, a2, b1: once each
    # The agent catches up: nothing is held against the nodes any more.
    for obj in rig.cluster.limits.values():
        obj["status"]["observedGeneration"] = 3
    caught_up = read_limit_object(rig.cluster.limits["a1"], "x")
    assert caught_up is not None and not caught_up.unobserved
    rig.tick(45)
    assert rig.controller._unobserved == {}


def test_within_the_agent_timeout_the_last_status_holds() -> None:
    rig = with_agents(Rig(powerLimits={"agentTimeout": "5m", "grace": "30s"}))
    assert rig.cluster.limits is not None
    for obj in rig.cluster.limits.values():
        obj["metadata"]["generation"] = 3
        obj["status"]["observedGeneration"] = 2
    decision = small_breach(rig).decisions["rack-a"]
    assert isinstance(decision, Cap), decision


def test_nodes_without_a_nodepowerlimit_get_an_empty_one_for_their_agent() -> None:
    rig = Rig()
    rig.cluster.limits = {}
    rig.tick(0)
    assert sorted(rig.cluster.limits) == ["a1", "a2", "b1"]
    assert all(obj["spec"] == {} for obj in rig.cluster.limits.values())


def test_a_surge_past_the_floors_caps_to_the_floors_then_reshapes() -> None:
    rig = with_agents(Rig())
    decision = breach(rig).decisions["rack-a"]  # 4 kW to clear: more than 5 GPUs give
    assert isinstance(decision, Cap) and "floors leave" in decision.plan.why
    asked = {name: patch["spec"]["wattsPerGpu"] for name, patch in rig.cluster.limit_patches}
    assert asked == {"a1": 350.0, "a2": 350.0}
    enforce(rig)
    then = rig.tick(30 + 30).decisions["rack-a"]  # the cap settled, still in breach
    assert isinstance(then, Reshape) and "floors" in then.note
    assert rig.cluster.patches and rig.cluster.patches[0][0] == "batch"
    assert len(rig.cluster.limit_patches) == 2  # nothing more to cap


def test_without_the_crd_the_ladder_starts_at_reshape_as_before() -> None:
    rig = Rig()  # the fake answers 404 for NodePowerLimits
    decision = breach(rig).decisions["rack-a"]
    assert isinstance(decision, Reshape) and decision.note == ""


def test_dry_run_decides_the_cap_and_writes_nothing() -> None:
    rig = with_agents(Rig(dryRun=True))
    rig.cluster.limits = {"a1": limit_object("a1"), "a2": limit_object("a2")}
    report = small_breach(rig)
    assert isinstance(report.decisions["rack-a"], Cap)
    assert rig.cluster.limit_patches == [] and sorted(rig.cluster.limits) == ["a1", "a2"]
    assert report.actions and all(a.outcome == "dry-run" for a in report.actions)
    assert all(e.message.startswith("dry run, not done: ") for e in rig.events.events)
    labels = {"kind": "cap", "domain": "rack-a", "dry_run": "true"}
    assert rig.metric("powercap_controller_actions_total", **labels) == 2.0
    # The next decisions go on as if the limits were written: at the floors, reshape.
    rig.power.watts.update({"a1": 14_000.0, "a2": 9_000.0})
    decisions = [rig.tick(at).decisions["rack-a"] for at in (60.0, 90.0, 120.0)]
    assert any(isinstance(d, Reshape) for d in decisions), decisions
    assert rig.cluster.limit_patches == [] and rig.cluster.patches == []


def test_the_memory_keeps_limit_steps_for_the_next_leader() -> None:
    rig = Rig()
    store = FakeStateStore(rig.cluster)
    rig = with_agents(Rig(memory=MemoryKeeper(store, 10.0)))
    small_breach(rig)
    payload = store.payload
    assert payload is not None
    kept = ControllerMemory.from_payload(payload)
    assert kept.steps["rack-a"] == (Step("cap", T0 + 30),)
    # A new leader reading it waits for the cap to settle instead of capping again.
    rig2 = with_agents(Rig(memory=MemoryKeeper(store, 10.0)))
    rig2.power.watts.update({"a1": 12_300.0, "a2": 7_900.0})
    rig2.tick(15)
    assert isinstance(rig2.tick(45).decisions["rack-a"], Wait)
    assert rig2.cluster.limit_patches == []


def test_memory_payload_round_trip_and_older_readers() -> None:
    memory = ControllerMemory(
        breach_since={"rack-a": 10.0},
        steps={"rack-a": (Step("cap", 10.0), Step("reshape", 50.0), Step("uncap", 90.0))},
    )
    payload = memory.payload()
    back = ControllerMemory.from_payload(payload)
    assert set(back.steps["rack-a"]) == set(memory.steps["rack-a"])
    assert back.payload() == payload
    doc = orjson.loads(payload)
    # The kinds a reader without the power-limit rung knows stay under "steps".
    assert doc["steps"] == {"rack-a": [["reshape", 50.0]]}
    assert doc["limitSteps"] == {"rack-a": [["cap", 10.0], ["uncap", 90.0]]}
    # A memory written before the rung existed reads back as it was.
    old = b'{"version": 1, "breachSince": {}, "steps": {"r": [["evict", 1]]}}'
    assert ControllerMemory.from_payload(old).steps == {"r": (Step("evict", 1.0),)}


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"margin": -0.1}, "margin"),
        ({"floor": 0}, "floor"),
        ({"restoreStep": 2}, "restoreStep"),
        ({"guard": 0.5}, "guard"),
        ({"settle": {"cap": "soon"}}, "powerLimits.settle.cap"),
        ({"floors": {"chat": 1.5}}, "powerLimits.floors.chat"),
        ({"settle": {"hold": "2h", "maxHold": "1h"}}, "powerLimits.settle.maxHold"),
    ],
)
def test_power_limits_config_errors_name_the_field(section: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_data(config_data(powerLimits=section))
    assert field in str(err.value)


def test_power_limits_config_resolves() -> None:
    config = config_from_data(
        config_data(
            powerLimits={
                "margin": 0.2,
                "highPriority": 500,
                "secondThreshold": 0.1,
                "floor": 0.6,
                "floors": {"chat": 0.8},
                "restoreStep": 0.25,
                "guard": 0.05,
                "settle": {"cap": "45s", "restore": "3m", "hold": "20m", "maxHold": "6h"},
            }
        )
    )
    s = config.controller
    assert s.capping is not None
    assert (s.capping.margin, s.capping.high_priority, s.capping.second_threshold) == (
        0.2,
        500,
        0.1,
    )
    assert (s.capping.floor, s.capping.restore_step, dict(s.floors)) == (0.6, 0.25, {"chat": 0.8})
    assert s.capping.guard == 0.05
    assert (s.ladder.cap_settle_s, s.ladder.uncap_settle_s) == (45.0, 180.0)
    assert (s.ladder.limit_hold_s, s.ladder.limit_hold_max_s) == (1200.0, 21_600.0)
    shipped = config_from_data(config_data(powerLimits={})).controller
    assert shipped.capping is not None and shipped.capping.guard == 0.03
    assert shipped.ladder.limit_hold_s == 86_400.0
    assert shipped.ladder.limit_hold_max_s == 86_400.0
    # Power limits act after their own grace (15 s); reshape and evict after the
    # controller's (30 s here), counted from the breach's start.
    assert shipped.breach.grace_s == 15.0 and shipped.ladder.escalate_after_s == 15.0
    longer = config_from_data(config_data(powerLimits={"grace": "2m"})).controller
    assert longer.breach.grace_s == 30.0 and longer.ladder.escalate_after_s == 0.0
    off = config_from_data(config_data(powerLimits={"enabled": False}))
    assert off.controller.capping is None
    assert off.controller.breach.grace_s == 30.0 and off.controller.ladder.escalate_after_s == 0


def test_a_request_changed_since_it_was_read_is_refused_and_counted() -> None:
    rig = with_agents(Rig())
    assert rig.cluster.limits is not None
    real_patch = rig.cluster.patch_cluster_custom_object

    def agent_wrote_first(*args: Any, **kw: Any) -> Any:
        # Someone (the agent's status write) bumped the object after the list.
        assert rig.cluster.limits is not None
        obj = rig.cluster.limits[args[3]]
        obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
        return real_patch(*args, **kw)

    rig.cluster.patch_cluster_custom_object = agent_wrote_first  # type: ignore[method-assign]
    report = small_breach(rig)
    assert isinstance(report.decisions["rack-a"], Cap)
    assert {a.outcome for a in report.actions} == {"conflict"}
    assert rig.cluster.limit_patches == []
    labels = {"kind": "cap", "domain": "rack-a", "reason": "conflict"}
    assert rig.metric("powercap_controller_action_failures_total", **labels) == 2.0
    # Nothing was taken: the next period decides again, without waiting for a settle.
    rig.cluster.patch_cluster_custom_object = real_patch  # type: ignore[method-assign]
    assert isinstance(rig.tick(45).decisions["rack-a"], Cap)
    assert len(rig.cluster.limit_patches) == 2


def test_the_patches_of_a_step_are_in_flight_together() -> None:
    # Each patch waits for the other at a barrier: written one after the other, the
    # first would wait alone and break it.
    rig = with_agents(Rig())
    real_patch = rig.cluster.patch_cluster_custom_object
    both = threading.Barrier(2, timeout=5.0)

    def meet_then_patch(*args: Any, **kw: Any) -> Any:
        both.wait()
        return real_patch(*args, **kw)

    rig.cluster.patch_cluster_custom_object = meet_then_patch  # type: ignore[method-assign]
    report = small_breach(rig)
    assert isinstance(report.decisions["rack-a"], Cap)
    assert [a.outcome for a in report.actions] == ["done", "done"]
    assert {name for name, _ in rig.cluster.limit_patches} == {"a1", "a2"}


def test_a_write_that_fails_unexpectedly_fails_the_step_after_the_others_are_recorded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = with_agents(Rig())
    real_patch = rig.cluster.patch_cluster_custom_object

    def a1_unreachable(*args: Any, **kw: Any) -> Any:
        if args[3] == "a1":
            raise ConnectionResetError("connection reset by peer")
        return real_patch(*args, **kw)

    rig.cluster.patch_cluster_custom_object = a1_unreachable  # type: ignore[method-assign]
    report = small_breach(rig)
    assert isinstance(report.decisions["rack-a"], Cap)
    assert [name for name, _ in rig.cluster.limit_patches] == ["a2"]
    assert [(e.reason, e.pod.name) for e in rig.events.events] == [("PowerCapCapped", "a2")]
    assert "domain rack-a: Cap failed: connection reset by peer" in caplog.text
    # No step was taken: the next period decides again, on what was written.
    rig.cluster.patch_cluster_custom_object = real_patch  # type: ignore[method-assign]
    assert isinstance(rig.tick(45).decisions["rack-a"], Cap)


def test_when_several_writes_fail_unexpectedly_each_failure_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = with_agents(Rig())

    def unreachable(*args: Any, **kw: Any) -> Any:
        raise ConnectionResetError(f"{args[3]}: connection reset by peer")

    rig.cluster.patch_cluster_custom_object = unreachable  # type: ignore[method-assign]
    report = small_breach(rig)
    assert isinstance(report.decisions["rack-a"], Cap)
    assert rig.cluster.limit_patches == [] and rig.events.events == []
    failed = {node for node in ("a1", "a2") if f"{node}: connection reset by peer" in caplog.text}
    assert failed == {"a1", "a2"}
    assert "domain rack-a: Cap failed" in caplog.text


def test_limit_objects_are_read_from_their_status() -> None:
    obj = limit_object("n1")
    obj["status"]["gpus"][3]["enforcedWatts"] = 420.0  # one GPU lower: the node's limit
    obj["metadata"]["annotations"] = {"powercap.io/capped-by": "rack-a,site"}
    lo = read_limit_object(obj, "powercap.io/capped-by")
    assert lo is not None
    assert (lo.node, lo.can_set, lo.default_w, lo.min_w, lo.limit_w) == (
        "n1",
        True,
        700.0,
        200.0,
        420.0,
    )
    assert lo.capped_by == ("rack-a", "site") and lo.resource_version == "5"
    # No status yet (no agent): nothing known but the request.
    bare = {"metadata": {"name": "n2"}, "spec": {"wattsPerGpu": 500}}
    lo2 = read_limit_object(bare, "powercap.io/capped-by")
    assert lo2 is not None and lo2.can_set is None and lo2.default_w is None
    assert lo2.limit_w == 500.0
    assert read_limit_object({"metadata": {}}, "x") is None


def test_a_capped_rack_nearing_its_cap_again_is_capped_further_before_a_breach() -> None:
    """rack-a holds limits after a breach; its draw comes back to 19.7 kW, within 3% of its
    20 kW cap but not over: the guard lowers limits again (low priority only: vip-0's node
    is left alone) and the rack never enters a second breach."""
    rig = with_agents(Rig())
    first = small_breach(rig).decisions["rack-a"]
    assert isinstance(first, Cap)
    enforce(rig)
    # a1's high-priority GPUs were capped by the breach, past the second threshold. Say
    # a2's request was withdrawn since: rack-a still holds a1's limits, so the guard
    # may lower any of its nodes, and a2 is the one low-priority node.
    assert rig.cluster.limits is not None
    rig.cluster.limits["a2"]["spec"] = {}
    rig.cluster.limits["a2"]["metadata"]["annotations"] = {}
    enforce(rig)
    rig.power.watts.update({"a1": 11_000.0, "a2": 7_500.0})  # cleared: 18.5 kW
    assert isinstance(rig.tick(45).decisions["rack-a"], Wait)
    rig.cluster.limit_patches.clear()
    rig.power.watts.update({"a1": 11_000.0, "a2": 8_700.0})  # 19.7 kW: near, not over
    report = rig.tick(75)
    decision = report.decisions["rack-a"]
    assert isinstance(decision, Cap) and decision.guard, decision
    assert report.events is not None and not report.events.entered.any()
    assert [name for name, _ in rig.cluster.limit_patches] == ["a2"]
    assert "near its cap" in rig.events.events[-1].message
    assert rig.cluster.patches == [] and rig.cluster.eviction_attempts == []
