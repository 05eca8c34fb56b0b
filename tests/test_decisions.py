"""Filter, prioritize, bind and preempt on a small static cluster."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from numpy.typing import NDArray

from extender.cluster.events import RecordingEventSink
from extender.cluster.mirror import apply_pod_event
from extender.cluster.pods import DemandResolver, PodRef, pod_gpus, pod_service
from extender.cluster.raw import ProtocolError
from extender.config.model import SchedulerSettings
from extender.runtime import Extender
from extender.webhook.binding import BindError
from extender.webhook.decisions import Decider
from extender.webhook.explanations import breach_text, worst_on_path
from extender.webhook.protocol import (
    ExtenderArgs,
    ExtenderBindingArgs,
    ExtenderPreemptionArgs,
    parse,
)
from placement.admission import Breach, first_breach
from placement.problem import Problem
from placement.strategies import run_strategy
from tests.problems import problems
from tests.scheduler_payloads import (
    bind_body,
    filter_body,
    pod,
    small_extender,
    small_problem,
)

ALL = ["gpu-1a", "gpu-1b", "gpu-2a", "gpu-2b", "gpu-3a", "gpu-3b", "gpu-4a", "gpu-4b"]


def run_filter(ext: Extender, p: dict[str, Any], names: list[str] = ALL) -> Any:
    return ext.decider.filter(parse(filter_body(p, names), ExtenderArgs))


def passed(ext: Extender, p: dict[str, Any], names: list[str] = ALL) -> list[str]:
    return [names[i] for i in run_filter(ext, p, names).passed]


def scores(ext: Extender, p: dict[str, Any], names: list[str] = ALL) -> dict[str, int]:
    hosts, values = ext.decider.prioritize(parse(filter_body(p, names), ExtenderArgs))
    return dict(zip(hosts, values, strict=True))


def bind(ext: Extender, p: dict[str, Any], node_name: str, filtered: bool = True) -> str:
    """Bind as the scheduler does: after a filter call for the pod (unless not)."""
    if filtered:
        run_filter(ext, p, [node_name])
    return ext.decider.bind(parse(bind_body(p, node_name), ExtenderBindingArgs))


def mirror_sees(ext: Extender, p: dict[str, Any], kind: str = "ADDED") -> None:
    """Deliver a watch event of ``p`` to the state, as the mirror does."""
    apply_pod_event(ext.state, DemandResolver(ext.config), kind, obj=p)


def cluster_extender(
    problem: Problem | None = None, missing_profile: str = "nameplate"
) -> Extender:
    """:func:`small_extender` as against a cluster: bind knows a pod only from the
    mirror (:func:`mirror_sees`), never from a filter request."""
    ext = small_extender(problem, missing_profile)
    ext.decider.pods_from_requests = False
    return ext


def bind_request(p: dict[str, Any], node_name: str, **change: Any) -> dict[str, Any]:
    """The ``/bind`` body for ``p``, with fields changed (``None`` leaves one out)."""
    body: dict[str, Any] = orjson.loads(bind_body(p, node_name))
    for key, value in change.items():
        if value is None:
            del body[key]
        else:
            body[key] = value
    return body


def leaf_load(ext: Extender, domain: str) -> NDArray[np.float64]:
    row: NDArray[np.float64] = ext.state.ledger.load[ext.state.tree.index[domain]].copy()
    return row


def test_filter_passes_every_node_with_room() -> None:
    ext = small_extender()
    assert passed(ext, pod("eu-0")) == ALL


def test_filter_names_domain_time_and_watts_of_a_breach() -> None:
    # Racks of 10 kW: 4 kW idle, room for one EU replica (4.6 kW peak at 10:00).
    ext = small_extender(small_problem(rack_cap=10_000))
    assert bind(ext, pod("eu-0"), "gpu-1a") == ""
    p = pod("eu-1")
    result = run_filter(ext, p)
    names = [ALL[i] for i in result.passed]
    assert "gpu-1b" not in names and "gpu-2a" in names
    message = result.failed["gpu-1b"]
    state = ext.state
    profile = ext.config.services["chat-eu"].profile
    assert profile is not None
    breach = first_breach(
        state.ledger, profile, state.tree.index["rack-1"], caps=state.caps, grid=state.grid
    )
    assert breach is not None
    assert message == "powercap: " + breach.message()
    # The EU bump peaks at 10:00; on an hourly grid the slots either side tie.
    assert "domain rack-1 would exceed its cap at 09:00 by" in message
    assert " W (cap 10000 W)" in message


def test_filter_says_when_the_cap_in_force_was_lowered_by_live_carbon_caps() -> None:
    ext = small_extender(small_problem(rack_cap=10_000))
    assert bind(ext, pod("eu-0"), "gpu-1a") == ""
    state = ext.state
    caps = state.tree.caps.copy()
    caps[state.tree.index["rack-1"]] *= 0.8  # what the carbon loop does on a dirty grid
    state.set_caps(caps)
    message = run_filter(ext, pod("eu-1")).failed["gpu-1b"]
    assert " W (cap 8000 W); lowered from 10000 W by the live carbon caps" in message
    # A rack at its configured cap says nothing of the kind.
    ext = small_extender(small_problem(rack_cap=10_000))
    assert bind(ext, pod("eu-0"), "gpu-1a") == ""
    assert "lowered" not in run_filter(ext, pod("eu-1")).failed["gpu-1b"]


def test_filter_gpu_shortage_and_too_small_nodes() -> None:
    ext = small_extender()
    assert bind(ext, pod("eu-0"), "gpu-1a") == ""
    result = run_filter(ext, pod("eu-1"))
    assert "free GPUs" in result.failed["gpu-1a"]
    # A node with fewer GPUs than the pod asks for can never host it.
    big = pod("huge", gpus=16)
    result = run_filter(ext, big)
    assert result.passed == []
    assert "GPUs in all" in result.unresolvable["gpu-2a"]


def test_unknown_nodes_are_unresolvable() -> None:
    ext = small_extender()
    result = run_filter(ext, pod("eu-0"), ["gpu-1a", "cpu-node-7"])
    assert [["gpu-1a", "cpu-node-7"][i] for i in result.passed] == ["gpu-1a"]
    assert "not in the power tree" in result.unresolvable["cpu-node-7"]


def test_unmanaged_pods_pass_unchanged_with_neutral_scores() -> None:
    ext = small_extender()
    web = pod("web-0", service=None, gpus=0, labels={"app": "web"})
    names = [*ALL, "cpu-node-7"]
    result = run_filter(ext, web, names)
    assert result.passed == list(range(len(names)))
    assert result.failed == {} and result.unresolvable == {}
    assert set(scores(ext, web, names).values()) == {0}


def test_powercap_label_alone_makes_a_pod_managed() -> None:
    ext = small_extender()
    labelled = pod("side-0", service="chat-eu", gpus=0)
    result = run_filter(ext, labelled, [*ALL, "cpu-node-7"])
    assert "cpu-node-7" in result.unresolvable


def test_bad_annotation_rejected_without_blocking_others() -> None:
    ext = small_extender(missing_profile="reject")
    sink = ext.events
    assert isinstance(sink, RecordingEventSink)
    bad = pod("bad-0", annotations={"powercap.io/profile": "no-such-profile"})
    for _ in range(3):  # the scheduler retries; one event is enough
        result = run_filter(ext, bad)
        assert result.passed == []
        assert set(result.unresolvable) == set(ALL)
        assert "no-such-profile" in result.unresolvable["gpu-1a"]
        assert "powercap.io/profile" in result.unresolvable["gpu-1a"]
    assert [e.reason for e in sink.events] == ["PowercapProfileRejected"]
    assert sink.events[0].pod == PodRef("llm", "bad-0", "uid-llm-bad-0")
    assert "no-such-profile" in sink.events[0].message
    # A well-described pod right after is unaffected.
    assert passed(ext, pod("good-0")) == ALL
    assert bind(ext, pod("good-0"), "gpu-1a") == ""
    # and the bad one cannot be bound either
    assert "no-such-profile" in bind(ext, bad, "gpu-2a", filtered=False)


def test_nameplate_policy_admits_at_nameplate() -> None:
    ext = small_extender(missing_profile="nameplate")
    mystery = pod("m-0", service="mystery", gpus=8)
    assert passed(ext, mystery) == ALL
    before = leaf_load(ext, "rack-2")
    assert bind(ext, mystery, "gpu-2a") == ""
    delta = leaf_load(ext, "rack-2") - before
    np.testing.assert_allclose(delta, ext.config.policy.default_nameplate_watts)
    sink = ext.events
    assert isinstance(sink, RecordingEventSink)
    assert sink.events[0].reason == "PowercapNameplateFallback"
    assert "mystery" in sink.events[0].message


def test_nameplate_policy_uses_the_services_nameplate() -> None:
    ext = small_extender()
    bad = pod("b-0", service="batch", gpus=4, annotations={"powercap.io/profile": "nope"})
    before = leaf_load(ext, "rack-3")
    assert bind(ext, bad, "gpu-3a") == ""
    np.testing.assert_allclose(leaf_load(ext, "rack-3") - before, 2800.0)


def test_prioritize_prefers_the_asynchronous_domain() -> None:
    ext = small_extender()
    assert bind(ext, pod("eu-0"), "gpu-1a") == ""
    assert bind(ext, pod("us-0", service="chat-us"), "gpu-2a") == ""
    got = scores(ext, pod("eu-1"), ["gpu-1b", "gpu-2b"])
    # EU next to US (peaks 7 h apart) raises the rack's peak less than EU next to EU.
    assert got["gpu-2b"] == 10
    assert got["gpu-1b"] < got["gpu-2b"]


class FixedPlan:
    def __init__(self, targets: dict[str, NDArray[np.int64]]) -> None:
        self._targets = targets

    def targets(self, service: str) -> NDArray[np.int64] | None:
        return self._targets.get(service)

    def all_targets(self) -> tuple[object, dict[str, NDArray[np.int64]]] | None:
        """No snapshot: only read to hold the plan's power (``reserve_plan``), which the
        tests of a plain FixedPlan leave off; see ``Plan`` in the reserve test."""
        return None


def test_prioritize_follows_the_plan() -> None:
    ext = small_extender()
    want = np.zeros(ext.state.tree.size, dtype=np.int64)
    want[ext.state.tree.index["rack-3"]] = 1
    ext.decider.plan = FixedPlan({"chat-eu": want})
    got = scores(ext, pod("eu-0"))
    assert min(got["gpu-3a"], got["gpu-3b"]) >= 6
    assert max(v for k, v in got.items() if not k.startswith("gpu-3")) <= 4
    assert bind(ext, pod("eu-0"), "gpu-3a") == ""
    # The plan's one replica in rack-3 is there now: rack-3 is no longer preferred.
    got = scores(ext, pod("eu-1"))
    assert got["gpu-3b"] <= 4


def test_filter_to_plan_offers_the_planned_domains_while_the_plan_wants_more() -> None:
    ext = small_extender()
    want = np.zeros(ext.state.tree.size, dtype=np.int64)
    want[ext.state.tree.index["rack-3"]] = 1
    ext.decider.plan = FixedPlan({"chat-eu": want})
    assert passed(ext, pod("eu-0")) == ALL  # off: every node that fits
    ext.decider.filter_to_plan = True
    outcome = run_filter(ext, pod("eu-0"))
    assert [ALL[i] for i in outcome.passed] == ["gpu-3a", "gpu-3b"]
    # The others fit: they are left out, not failed.
    assert outcome.failed == {} and outcome.unresolvable == {}
    # A request without the planned nodes gets every node that fits, as without it.
    assert passed(ext, pod("eu-0"), ["gpu-1a", "gpu-2a"]) == ["gpu-1a", "gpu-2a"]
    # Services the plan does not name, and a plan whose replicas are all placed, too.
    assert passed(ext, pod("us-0", service="chat-us")) == ALL
    assert bind(ext, pod("eu-0"), "gpu-3a") == ""
    ext.decider.filter_to_plan = False
    unnarrowed = passed(ext, pod("eu-1"))
    ext.decider.filter_to_plan = True
    assert passed(ext, pod("eu-1")) == unnarrowed and len(unnarrowed) > 2
    # Nodes that do not fit still fail with their reason, narrowed or not.
    want[ext.state.tree.index["rack-1"]] = 5
    narrowed = run_filter(ext, pod("eu-1"), ["gpu-1a", "gpu-2a", "gpu-9z"])
    assert [["gpu-1a", "gpu-2a", "gpu-9z"][i] for i in narrowed.passed] == ["gpu-1a"]
    assert list(narrowed.unresolvable) == ["gpu-9z"] and narrowed.failed == {}


def test_bind_records_once_and_refuses_a_second_node() -> None:
    ext = small_extender()
    p = pod("eu-0")
    run_filter(ext, p)
    before = ext.state.ledger.load.copy()
    assert bind(ext, p, "gpu-1a") == ""
    record = ext.state.pods["uid-llm-eu-0"]
    assert (record.node, record.service, record.gpus) == ("gpu-1a", "chat-eu", 8)
    profile = ext.config.services["chat-eu"].profile
    assert profile is not None
    for domain in ("site", "row-1", "rack-1"):
        d = ext.state.tree.index[domain]
        np.testing.assert_allclose(ext.state.ledger.load[d] - before[d], profile)
    d = ext.state.tree.index["rack-2"]
    np.testing.assert_allclose(ext.state.ledger.load[d], before[d])
    assert ext.binder.bound == {PodRef("llm", "eu-0", "uid-llm-eu-0"): "gpu-1a"}  # type: ignore[attr-defined]
    after = ext.state.ledger.load.copy()
    assert bind(ext, p, "gpu-1a") == ""  # a retried bind is not counted twice
    np.testing.assert_array_equal(ext.state.ledger.load, after)
    assert "already bound to gpu-1a" in bind(ext, p, "gpu-2a")


def test_bind_rechecks_caps_under_the_lock() -> None:
    # Two pods filtered against the same state both see room for one more in rack-1.
    ext = small_extender(small_problem(rack_cap=10_000))
    a, b = pod("eu-a"), pod("eu-b")
    assert "gpu-1a" in passed(ext, a) and "gpu-1b" in passed(ext, b)
    assert bind(ext, a, "gpu-1a") == ""
    error = bind(ext, b, "gpu-1b")
    assert "rack-1 would exceed its cap at 09:00" in error
    assert "re-checked at bind" in error
    assert "uid-llm-eu-b" not in ext.state.pods


class FailingBinder:
    def bind(self, pod_ref: PodRef, node: str, *, deadline: float | None = None) -> None:
        raise BindError(f"binding {pod_ref} to {node} failed: 409 Conflict")

    def bound_node(self, pod_ref: PodRef, *, deadline: float | None = None) -> str | None:
        return ""


def test_bind_failure_rolls_back_the_ledger() -> None:
    ext = small_extender()
    ext.decider.binder = FailingBinder()
    p = pod("eu-0")
    run_filter(ext, p)
    before = ext.state.ledger.load.copy()
    assert "409 Conflict" in bind(ext, p, "gpu-1a")
    np.testing.assert_allclose(ext.state.ledger.load, before)
    assert ext.state.pods == {}
    assert ext.state.free_gpus("gpu-1a") == 8


class AnswerlessBinder:
    """Its Binding calls get no answer (``maybe_bound``) unless ``answers``; ``created``
    says whether such a Binding exists all the same, ``readable`` whether
    :meth:`bound_node` can read the pod."""

    def __init__(self, *, created: bool, readable: bool) -> None:
        self.created, self.readable, self.answers = created, readable, False
        self.bound: dict[PodRef, str] = {}

    def bind(self, pod_ref: PodRef, node: str, *, deadline: float | None = None) -> None:
        if self.answers or self.created:
            self.bound[pod_ref] = node
        if not self.answers:
            raise BindError(f"binding {pod_ref} to {node} failed: reset", maybe_bound=True)

    def bound_node(self, pod_ref: PodRef, *, deadline: float | None = None) -> str | None:
        return self.bound.get(pod_ref, "") if self.readable else None


def test_a_binding_whose_answer_was_lost_is_read_back() -> None:
    for created in (True, False):
        ext = cluster_extender()
        ext.decider.binder = AnswerlessBinder(created=created, readable=True)
        p = pod("eu-0")
        mirror_sees(ext, p)
        error = ext.decider.bind(parse(bind_body(p, "gpu-1a"), ExtenderBindingArgs))
        if created:  # bound after all: the scheduler is told so, the power stays held
            assert error == ""
            assert ext.state.pods["uid-llm-eu-0"].node == "gpu-1a"
            assert ext.state.free_gpus("gpu-1a") == 0
        else:
            assert "failed: reset" in error
            assert ext.state.pods == {} and ext.state.free_gpus("gpu-1a") == 8
        assert ext.state.unsure == set()


def test_a_binding_without_an_answer_holds_its_power_until_it_is_read() -> None:
    ext = cluster_extender()
    binder = AnswerlessBinder(created=True, readable=False)
    ext.decider.binder = binder
    p = pod("eu-0")
    mirror_sees(ext, p)
    error = ext.decider.bind(parse(bind_body(p, "gpu-1a"), ExtenderBindingArgs))
    assert "whether the Binding was created is unknown" in error
    assert ext.state.unsure == {"uid-llm-eu-0"} and ext.state.free_gpus("gpu-1a") == 0
    other = pod("eu-1")
    mirror_sees(ext, other)
    assert "free GPUs" in run_filter(ext, other, ["gpu-1a"]).failed["gpu-1a"]
    # A retry while the pod cannot be read is refused and changes nothing.
    before = state_snapshot(ext)
    error = ext.decider.bind(parse(bind_body(p, "gpu-2a"), ExtenderBindingArgs))
    assert "its Binding to gpu-1a got no answer" in error
    assert state_snapshot(ext)[3:] == before[3:]
    # Readable again: it was bound, so the retry to that node is answered as done.
    binder.readable = True
    assert ext.decider.bind(parse(bind_body(p, "gpu-1a"), ExtenderBindingArgs)) == ""
    assert ext.state.unsure == set() and ext.state.assumed == {}
    assert ext.state.free_gpus("gpu-1a") == 0


def test_a_binding_without_an_answer_that_was_not_created_is_let_go() -> None:
    ext = cluster_extender()
    binder = AnswerlessBinder(created=False, readable=False)
    ext.decider.binder = binder
    p = pod("eu-0")
    mirror_sees(ext, p)
    assert "unknown" in ext.decider.bind(parse(bind_body(p, "gpu-1a"), ExtenderBindingArgs))
    assert ext.state.free_gpus("gpu-1a") == 0
    binder.readable = binder.answers = True
    assert ext.decider.bind(parse(bind_body(p, "gpu-2a"), ExtenderBindingArgs)) == ""
    assert ext.state.pods["uid-llm-eu-0"].node == "gpu-2a"
    assert ext.state.free_gpus("gpu-1a") == 8 and ext.state.free_gpus("gpu-2a") == 0
    assert binder.bound == {PodRef("llm", "eu-0", "uid-llm-eu-0"): "gpu-2a"}


def test_a_failed_binding_never_undoes_what_the_watch_recorded() -> None:
    """The Binding is refused because another binder bound the pod, and the watch has
    recorded it there before the refusal comes back: that record stays."""
    ext = cluster_extender()
    p = pod("eu-0")
    mirror_sees(ext, p)

    class Overtaken(FailingBinder):
        def bind(self, pod_ref: PodRef, node: str, *, deadline: float | None = None) -> None:
            mirror_sees(ext, pod("eu-0", node_name="gpu-2a"), "MODIFIED")
            super().bind(pod_ref, node)

    ext.decider.binder = Overtaken()
    assert "409 Conflict" in ext.decider.bind(parse(bind_body(p, "gpu-1a"), ExtenderBindingArgs))
    assert ext.state.pods["uid-llm-eu-0"].node == "gpu-2a"
    assert ext.state.free_gpus("gpu-1a") == 8 and ext.state.free_gpus("gpu-2a") == 0


def test_bind_of_a_pod_filter_never_saw() -> None:
    ext = small_extender()
    p = pod("eu-0")
    assert "unknown to the extender" in bind(ext, p, "gpu-1a", filtered=False)
    mirror_sees(ext, p)  # the watch delivers it pending: bind knows it without a filter
    assert bind(ext, p, "gpu-1a", filtered=False) == ""


# --- a strict bind: every refusal says why and changes nothing ----------------------------------
Refusal = tuple[Extender, dict[str, Any], list[str]]


def refuse_without_uid() -> Refusal:
    ext = cluster_extender()
    p = pod("eu-0")
    mirror_sees(ext, p)
    return ext, bind_request(p, "gpu-1a", PodUID=None), ["PodUID is empty", "metadata.uid"]


def refuse_a_pod_known_only_from_filter() -> Refusal:
    ext = cluster_extender()
    p = pod("eu-0")
    run_filter(ext, p)  # a filter request is no evidence the pod exists
    expected = ["PodUID uid-llm-eu-0 is unknown to the extender", "waiting for a node"]
    return ext, bind_request(p, "gpu-1a"), expected


def refuse_the_uid_of_a_deleted_pod() -> Refusal:
    ext = cluster_extender()
    mirror_sees(ext, pod("eu-0", uid="uid-new"))  # deleted and created again
    expected = ["PodUID uid-old is not the UID of llm/eu-0", "uid-new"]
    return ext, bind_request(pod("eu-0", uid="uid-old"), "gpu-1a"), expected


def refuse_the_uid_of_another_pod() -> Refusal:
    ext = cluster_extender()
    a, b = pod("eu-0"), pod("eu-1")
    mirror_sees(ext, a)
    mirror_sees(ext, b)
    body = bind_request(b, "gpu-1a", PodUID="uid-llm-eu-0")
    return ext, body, ["PodUID uid-llm-eu-0 is the UID of llm/eu-0, not of PodNamespace/PodName"]


def refuse_the_uid_of_another_bound_pod() -> Refusal:
    ext = cluster_extender()
    mirror_sees(ext, pod("eu-0", node_name="gpu-2a"), "MODIFIED")
    mirror_sees(ext, pod("eu-1"))
    body = bind_request(pod("eu-1"), "gpu-1a", PodUID="uid-llm-eu-0")
    return ext, body, ["PodUID uid-llm-eu-0 is the UID of llm/eu-0, not of PodNamespace/PodName"]


def refuse_another_schedulers_pod() -> Refusal:
    ext = cluster_extender()
    p = pod("eu-0")
    p["spec"]["schedulerName"] = "default-scheduler"
    mirror_sees(ext, p)
    expected = [
        "spec.schedulerName is 'default-scheduler'",
        "'powercap-scheduler'",
        "scheduler.name",
    ]
    return ext, bind_request(p, "gpu-1a"), expected


def refuse_an_unmanaged_pod() -> Refusal:
    ext = cluster_extender()
    web = pod("web-0", service=None, gpus=0, labels={"app": "web"})
    mirror_sees(ext, web)
    expected = ["not managed by powercap", "nvidia.com/gpu", "powercap.io/service"]
    return ext, bind_request(web, "gpu-1a"), expected


def refuse_a_pod_bound_elsewhere() -> Refusal:
    ext = cluster_extender()
    mirror_sees(ext, pod("eu-0"))
    mirror_sees(ext, pod("eu-0", node_name="gpu-2a"), "MODIFIED")  # bound by someone else
    return ext, bind_request(pod("eu-0"), "gpu-1a"), ["refused: the pod is already bound to gpu-2a"]


def refuse_an_unknown_node() -> Refusal:
    ext = cluster_extender()
    p = pod("eu-0")
    mirror_sees(ext, p)
    expected = ["Node 'cpu-node-7' is not a node of the power tree", "powercap.io/domain"]
    return ext, bind_request(p, "cpu-node-7"), expected


def refuse_a_node_without_free_gpus() -> Refusal:
    ext = cluster_extender()
    mirror_sees(ext, pod("eu-0", node_name="gpu-1a"), "MODIFIED")
    p = pod("eu-1")
    mirror_sees(ext, p)
    expected = ["Node gpu-1a has 0 free GPUs now and the pod needs 8"]
    return ext, bind_request(p, "gpu-1a"), expected


def refuse_a_rejected_profile() -> Refusal:
    ext = cluster_extender(missing_profile="reject")
    bad = pod("bad-0", annotations={"powercap.io/profile": "no-such-profile"})
    mirror_sees(ext, bad)
    return ext, bind_request(bad, "gpu-1a"), ["no-such-profile", "powercap.io/profile"]


def refuse_a_breach() -> Refusal:
    ext = cluster_extender(small_problem(rack_cap=10_000))
    mirror_sees(ext, pod("eu-a", node_name="gpu-1a"), "MODIFIED")
    b = pod("eu-b")
    mirror_sees(ext, b)
    expected = ["rack-1 would exceed its cap at 09:00", "re-checked at bind"]
    return ext, bind_request(b, "gpu-1b"), expected


REFUSALS: list[Callable[[], Refusal]] = [
    refuse_without_uid,
    refuse_a_pod_known_only_from_filter,
    refuse_the_uid_of_a_deleted_pod,
    refuse_the_uid_of_another_pod,
    refuse_the_uid_of_another_bound_pod,
    refuse_another_schedulers_pod,
    refuse_an_unmanaged_pod,
    refuse_a_pod_bound_elsewhere,
    refuse_an_unknown_node,
    refuse_a_node_without_free_gpus,
    refuse_a_rejected_profile,
    refuse_a_breach,
]


def state_snapshot(ext: Extender) -> tuple[Any, ...]:
    s = ext.state
    pods = {uid: id(record) for uid, record in s.pods.items()}
    return s.version, s.ledger.load.copy(), s.node_used.copy(), pods, dict(s.assumed)


@pytest.mark.parametrize("case", REFUSALS, ids=lambda case: case.__name__)
def test_every_bind_refusal_says_why_and_leaves_the_state_unchanged(
    case: Callable[[], Refusal],
) -> None:
    ext, body, expected = case()
    before = state_snapshot(ext)
    error = ext.decider.bind(parse(orjson.dumps(body), ExtenderBindingArgs))
    assert error.startswith("powercap: ")
    for text in expected:
        assert text in error
    after = state_snapshot(ext)
    assert (after[0], after[3], after[4]) == (before[0], before[3], before[4])
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[2], before[2])
    assert ext.binder.bound == {}  # type: ignore[attr-defined]


def test_bind_takes_the_pod_from_the_mirror_and_assumes_it_until_the_watch_agrees() -> None:
    ext = cluster_extender()
    # What the filter request says of the pod is not what counts: the mirror's copy is.
    seen_by_filter = pod("eu-0", gpus=1)
    run_filter(ext, seen_by_filter)
    mirror_sees(ext, pod("eu-0"))
    assert ext.decider.bind(parse(bind_body(seen_by_filter, "gpu-1a"), ExtenderBindingArgs)) == ""
    assert ext.state.pods["uid-llm-eu-0"].gpus == 8 and ext.state.free_gpus("gpu-1a") == 0
    assert "uid-llm-eu-0" in ext.state.assumed
    assert "uid-llm-eu-0" not in ext.state.pending
    mirror_sees(ext, pod("eu-0", node_name="gpu-1a"), "MODIFIED")  # the Binding, watched
    assert ext.state.assumed == {}
    assert ext.state.free_gpus("gpu-1a") == 0


def test_bind_follows_the_configured_scheduler_name() -> None:
    ext = cluster_extender()
    config = dataclasses.replace(ext.config, scheduler=SchedulerSettings(name="gpu-scheduler"))
    ext.decider.config = config
    ours, theirs = pod("eu-0"), pod("eu-1")
    ours["spec"]["schedulerName"] = "gpu-scheduler"
    mirror_sees(ext, ours)
    mirror_sees(ext, theirs)
    assert ext.decider.bind(parse(bind_body(ours, "gpu-1a"), ExtenderBindingArgs)) == ""
    error = ext.decider.bind(parse(bind_body(theirs, "gpu-2a"), ExtenderBindingArgs))
    assert "spec.schedulerName is 'powercap-scheduler'" in error


def test_preempt_keeps_nodes_where_the_victims_make_room() -> None:
    ext = small_extender(small_problem(rack_cap=10_000))
    assert bind(ext, pod("eu-0"), "gpu-1a") == ""
    assert bind(ext, pod("eu-1"), "gpu-2a") == ""
    body = orjson.dumps(
        {
            "Pod": pod("eu-new"),
            "NodeNameToVictims": None,
            "NodeNameToMetaVictims": {
                "gpu-1a": {"Pods": [{"UID": "uid-llm-eu-0"}], "NumPDBViolations": 0},
                "gpu-2b": {"Pods": [], "NumPDBViolations": 0},
                "gpu-1b": {"Pods": [{"UID": "uid-llm-eu-0"}], "NumPDBViolations": 0},
                "gpu-3a": {"Pods": [{"UID": "not-recorded"}], "NumPDBViolations": 0},
            },
        }
    )
    kept = ext.decider.preempt(parse(body, ExtenderPreemptionArgs))
    # Evicting eu-0 frees its node's GPUs and rack-1's power; nothing is freed in rack-2
    # (full); a victim is only counted on its own node (gpu-1b); rack-3 had room anyway.
    assert sorted(kept) == ["gpu-1a", "gpu-3a"]
    assert [v.uid for v in kept["gpu-1a"].pods] == ["uid-llm-eu-0"]


def test_preempt_passes_unmanaged_pods_through() -> None:
    ext = small_extender()
    body = orjson.dumps(
        {
            "Pod": pod("web", service=None, gpus=0),
            "NodeNameToMetaVictims": {"x": {"Pods": [{"UID": "u"}], "NumPDBViolations": 2}},
        }
    )
    kept = ext.decider.preempt(parse(body, ExtenderPreemptionArgs))
    assert kept["x"].num_pdb_violations == 2


def test_breach_text_matches_the_core_message() -> None:
    for over, cap in ((0.4, 41000.0), (1234.56, 9999.5), (7.0, 1e6)):
        b = Breach("rack-1-01", 61, "10:10", over, cap)
        assert (
            breach_text(b.domain, b.time_of_day, over, cap_watts=cap) == "powercap: " + b.message()
        )


def test_worst_on_path_prefers_the_rootmost_on_ties() -> None:
    parents = np.array([-1, 0, 0, 1, 1, 2])
    levels = [np.array([0]), np.array([1, 2]), np.array([3, 4, 5])]
    worst = np.array([5.0, 5.0, 1.0, 9.0, 2.0, 0.5])
    assert worst_on_path(worst, parents, levels).tolist() == [0, 0, 0, 3, 0, 0]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_breach_messages_agree_with_first_breach(problem: Problem) -> None:
    """Vectorised explanations equal the core's first_breach for every leaf, in a
    cluster filled with greedy's placement."""
    ext = small_extender(problem)
    state = ext.state
    placed = run_strategy("greedy", problem).assignment.counts
    for s, n in zip(*placed.nonzero(), strict=True):
        for k in range(int(placed[s, n])):
            name = f"{problem.services.names[s]}-{n}-{k}"
            p = pod(name, problem.services.names[s], int(problem.services.gpus[s]))
            bind(ext, p, problem.fleet.names[n])
    decider: Decider = ext.decider
    for s, service in enumerate(problem.services.names):
        probe = pod(f"probe-{s}", service, int(problem.services.gpus[s]))
        demand = decider.demand(probe)
        assert demand.profile is not None
        with state.lock:
            view = decider._view(demand)
            for leaf in problem.tree.leaves:
                breach = first_breach(
                    state.ledger, demand.profile, int(leaf), caps=state.caps, grid=state.grid
                )
                assert (breach is None) == bool(view.fits[leaf])
                if breach is not None:
                    text = decider._why_not(view, int(leaf))
                    assert text == "powercap: " + breach.message()


# --- pods: service, GPUs --------------------------------------------------------------------
def test_service_from_label_kserve_owner() -> None:
    assert pod_service(pod("x", service="chat-eu")) == "chat-eu"
    kserve = pod("x", service=None, labels={"serving.kserve.io/inferenceservice": "llama"})
    assert pod_service(kserve) == "llama"
    owned = pod("x", service=None, replicaset="chat-eu-v2-7d9f8b6c5d")
    assert pod_service(owned) == "chat-eu-v2"
    no_hash = pod("x", service=None, replicaset="chat-eu-v2-7d9f8b6c5d")
    del no_hash["metadata"]["labels"]["pod-template-hash"]
    assert pod_service(no_hash) == "chat-eu-v2"
    sts = pod("x", service=None)
    sts["metadata"]["ownerReferences"] = [
        {"kind": "StatefulSet", "name": "big", "controller": True}
    ]
    assert pod_service(sts) == "big"
    assert pod_service(pod("x", service=None)) is None


def test_pod_gpus_requests_limits_and_init_containers() -> None:
    p = pod("x", gpus=2)
    assert pod_gpus(p) == 2
    del p["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"]
    assert pod_gpus(p) == 2  # a limit alone implies the request
    p["spec"]["initContainers"] = [{"name": "warm", "resources": {"limits": {"nvidia.com/gpu": 4}}}]
    assert pod_gpus(p) == 4
    p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "lots"
    with pytest.raises(ProtocolError, match=r"Pod\.spec\.containers\[0\]\.resources\.limits"):
        pod_gpus(p)


def test_unreadable_gpu_request_is_a_bad_request() -> None:
    ext = small_extender()
    p = pod("x")
    p["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] = "0.5"
    with pytest.raises(ProtocolError, match=r"nvidia\.com/gpu"):
        run_filter(ext, p)


def test_reserve_plan_keeps_planned_power_for_planned_replicas() -> None:
    # Racks of 9 kW hold one 8-GPU chat replica each (EU and US overlap by ~0.9 kW too
    # much). The plan puts chat-us in rack-1.
    problem = small_problem(rack_cap=9_000)
    ext = small_extender(problem)
    want = np.zeros(ext.state.tree.size, dtype=np.int64)
    want[ext.state.tree.index["rack-1"]] = 1

    class Plan(FixedPlan):
        def all_targets(self) -> tuple[object, dict[str, NDArray[np.int64]]]:
            return self, self._targets

    ext.decider.plan = Plan({"chat-us": want})
    ext.decider.reserve_plan = True
    eu = pod("eu-0")
    result = run_filter(ext, eu)
    held = result.failed["gpu-1a"]
    assert "the plan holds the rest of domain rack-1's cap" in held
    assert "gpu-2a" in [ALL[i] for i in result.passed]
    assert "the plan holds" in bind(ext, eu, "gpu-1b", filtered=False)
    # the planned replica takes its own held share
    us = pod("us-0", service="chat-us")
    assert "gpu-1a" in passed(ext, us)
    assert bind(ext, us, "gpu-1a") == ""
    # without reservations the EU pod could have taken it
    fresh = small_extender(problem)
    fresh.decider.plan = Plan({"chat-us": want})
    assert "gpu-1a" in passed(fresh, eu)


def test_held_power_updates_incrementally_like_a_rebuild() -> None:
    """Held watts kept up to date from the journal equal a from-scratch rebuild after
    binds, deletions, a node leaving and coming back."""
    problem = small_problem()
    ext = small_extender(problem, planner=True)
    assert ext.planner is not None
    ext.planner.plan_now()
    decider = ext.decider
    decider.reserve_plan = True
    state = ext.state
    rng = np.random.default_rng(7)
    bound: list[dict[str, Any]] = []
    for step in range(40):
        if bound and rng.random() < 0.3:
            gone = bound.pop(int(rng.integers(len(bound))))
            state.remove_pod(gone["metadata"]["uid"])
        elif step == 20:
            state.remove_node("gpu-2a")
            state.upsert_node("gpu-2a", state.tree.index["rack-2"], 8, idle_watts=2000.0)
        else:
            s = int(rng.integers(problem.services.size))
            p = pod(f"p{step}", problem.services.names[s], int(problem.services.gpus[s]))
            fits = passed(ext, p)
            if fits and bind(ext, p, fits[int(rng.integers(len(fits)))]) == "":
                bound.append(p)
        with state.lock:
            snapshot = ext.planner.all_targets()
            assert snapshot is not None
            got = decider._held()
            assert got is not None
            rebuilt = decider._held_from_counts(*snapshot)
            np.testing.assert_allclose(
                got[1],
                np.minimum(rebuilt, np.maximum(state.caps - state.ledger.load, 0.0)),
                atol=1e-6,
            )
