"""What keeps site-scale calls cheap gives the answers the plain way would: the node
lookup kept for a repeated candidate list, the filter's rejections classified with numpy,
the tree's path passes, the prioritize answer grouped by score; and records keep none of
the decoded objects' strings (which would keep a whole relist resident)."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extender.cluster.mirror import pending_pod, pod_record
from extender.cluster.pods import DemandResolver
from extender.cluster.state import PodRecord
from extender.runtime import Extender
from extender.webhook.explanations import UNKNOWN_NODE, busy_gpus_text, too_few_gpus_text
from extender.webhook.protocol import ExtenderArgs, encode_host_priorities, parse
from placement.admission import fitting_domains
from placement.ledger import Ledger
from placement.problem import Problem
from placement.scoring import peak_increase
from tests.problems import problems
from tests.scheduler_payloads import filter_body, pod, small_extender, small_problem

ALL = ["gpu-1a", "gpu-1b", "gpu-2a", "gpu-2b", "gpu-3a", "gpu-3b", "gpu-4a", "gpu-4b"]


def fresh(names: list[str]) -> list[str]:
    """The same names as new string objects, as each request's JSON decodes them."""
    decoded: list[str] = orjson.loads(orjson.dumps(names))
    return decoded


def test_a_repeated_list_is_looked_up_once_and_gives_the_same_slots() -> None:
    state = small_extender().state
    names = [*ALL, "cpu-node-7"]
    first = state.node_slots(fresh(names))
    again = state.node_slots(fresh(names))
    assert again is first  # kept, not looked up again
    assert first.tolist() == [state.node_slot(n) for n in names]
    assert first[-1] == -1


def test_a_different_list_is_looked_up_anew() -> None:
    state = small_extender().state
    state.node_slots(fresh(ALL))
    other = ["gpu-4b", "gpu-1a", "nowhere"]
    assert state.node_slots(fresh(other)).tolist() == [state.node_slot(n) for n in other]
    shorter = ALL[:-1]
    assert state.node_slots(fresh(shorter)).tolist() == [state.node_slot(n) for n in shorter]


def test_the_kept_lookup_follows_nodes_removed_and_added() -> None:
    state = small_extender().state
    names = [*ALL, "gpu-9z"]
    before = state.node_slots(fresh(names))
    leaf = int(state.node_leaf[before[0]])
    assert state.remove_node("gpu-1b")
    gone = state.node_slots(fresh(names))
    assert gone[1] == -1 and gone.tolist() == [state.node_slot(n) for n in names]
    # A new node may take the freed slot: the list must see it under its own name.
    state.upsert_node("gpu-9z", leaf, 8)
    added = state.node_slots(fresh(names))
    assert added[-1] == state.node_slot("gpu-9z") >= 0
    assert added[1] == -1
    state.upsert_node("gpu-1b", leaf, 8)
    assert state.node_slots(fresh(names)).tolist() == [state.node_slot(n) for n in names]
    # replace() renumbers every slot
    nodes = state.nodes()
    state.replace(reversed(nodes), [])
    assert state.node_slots(fresh(names)).tolist() == [state.node_slot(n) for n in names]


def test_filter_sees_a_node_removed_between_two_identical_requests() -> None:
    ext = small_extender()
    body = filter_body(pod("eu-0"), ALL)
    first = ext.decider.filter(parse(body, ExtenderArgs))
    assert first.passed == list(range(len(ALL)))
    ext.state.remove_node("gpu-2a")
    second = ext.decider.filter(parse(body, ExtenderArgs))
    assert ALL.index("gpu-2a") not in second.passed
    assert second.unresolvable == {"gpu-2a": UNKNOWN_NODE}


def test_what_filter_passed_is_looked_up_once_for_prioritize() -> None:
    ext = small_extender()
    state = ext.state
    names = ["cpu-node-7", *ALL]
    result = ext.decider.filter(parse(filter_body(pod("eu-0"), names), ExtenderArgs))
    passed = [names[i] for i in result.passed]
    assert passed == ALL
    noted = state.node_slots(fresh(passed))
    assert noted is state.node_slots(fresh(passed))
    assert noted.tolist() == [state.node_slot(n) for n in passed]
    # Nodes changing between filter and prioritize: the noted slots are not used.
    state.remove_node("gpu-3a")
    hosts, values = ext.decider.prioritize(parse(filter_body(pod("eu-0"), passed), ExtenderArgs))
    assert dict(zip(hosts, values, strict=True))["gpu-3a"] == 0
    assert state.node_slots(fresh(passed)).tolist() == [state.node_slot(n) for n in passed]


def test_only_the_last_few_lists_are_kept() -> None:
    state = small_extender().state
    lists = [ALL[k:] for k in range(8)]
    for names in lists:
        state.node_slots(fresh(names))
    assert len(state._lookups) <= 4
    for names in lists:
        assert state.node_slots(fresh(names)).tolist() == [state.node_slot(n) for n in names]


def reference_rejections(
    ext: Extender, names: list[str], p: dict[str, Any]
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Why each failing candidate fails, one node at a time, in the request's order."""
    state = ext.state
    decider = ext.decider
    demand = decider.demand(p)
    assert demand.profile is not None
    view = decider._view(demand)
    failed: dict[str, str] = {}
    unresolvable: dict[str, str] = {}
    for name in names:
        slot = state.node_slot(name)
        if slot < 0:
            unresolvable[name] = UNKNOWN_NODE
            continue
        leaf = int(state.node_leaf[slot])
        total = int(state.node_gpus[slot])
        free = total - int(state.node_used[slot])
        if not view.fits[leaf]:
            failed[name] = decider._why_not(view, leaf)
        elif total < demand.gpus:
            unresolvable[name] = too_few_gpus_text(total, demand.gpus)
        elif free < demand.gpus:
            failed[name] = busy_gpus_text(free, demand.gpus)
    return list(failed.items()), list(unresolvable.items())


def test_rejections_match_the_node_by_node_reasons_in_order() -> None:
    ext = small_extender(rack_cap_problem())
    state = ext.state
    for k, node in enumerate(["gpu-1a", "gpu-1a", "gpu-2b", "gpu-3a"]):
        assert state.add_pod(
            PodRecord(
                uid=f"u{k}",
                namespace="llm",
                name=f"p{k}",
                node=node,
                service="batch",
                profile=ext.config.services["batch"].profile,  # type: ignore[arg-type]
                gpus=4,
                profile_key="service:batch",
            )
        )
    names = ["cpu-1", *reversed(ALL), "gpu-2b", "cpu-2"]  # unknown, duplicate
    for p in (pod("eu-0"), pod("b-0", service="batch", gpus=4), pod("huge", gpus=16)):
        result = ext.decider.filter(parse(filter_body(p, names), ExtenderArgs))
        failed, unresolvable = reference_rejections(ext, names, p)
        assert list(result.failed.items()) == failed
        assert list(result.unresolvable.items()) == unresolvable
        assert result.failed or result.unresolvable


def rack_cap_problem() -> Problem:
    return small_problem(rack_cap=9000.0)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(), st.data())
def test_path_passes_agree_with_the_membership_matrix(problem: Problem, data: Any) -> None:
    tree = problem.tree
    values = np.array(
        data.draw(st.lists(st.floats(-1e4, 1e4), min_size=tree.size, max_size=tree.size))
    )
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=tree.size, max_size=tree.size)))
    np.testing.assert_allclose(tree.sum_on_path(values), values @ tree.membership, atol=1e-6)
    expected = ~(tree.membership & ~mask[:, None]).any(axis=0)
    assert tree.all_on_path(mask).tolist() == expected.tolist()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_admission_and_scoring_keep_their_meaning(problem: Problem) -> None:
    tree = problem.tree
    ledger = Ledger(tree, problem.fleet.idle_by_domain(tree.membership))
    profile = problem.services.profiles[0]
    fits_here = np.all(ledger.load + profile <= tree.caps + 1e-6, axis=1)
    expected = ~(tree.membership & ~fits_here[:, None]).any(axis=0)
    assert fitting_domains(ledger, profile, tree.caps).tolist() == expected.tolist()
    rise = ((ledger.load + profile) / tree.caps).max(axis=1) - (ledger.load / tree.caps).max(axis=1)
    np.testing.assert_allclose(
        peak_increase(ledger, profile, tree.caps), rise @ tree.membership, atol=1e-9
    )


def test_host_priorities_group_by_score_and_keep_every_host() -> None:
    hosts = ["a", "b", 'quote"d', "c", "back\\slash", "d"]
    scores = [3, 10, 3, 0, 10, 7]
    out = orjson.loads(encode_host_priorities(hosts, scores))
    assert out == [
        {"Host": "b", "Score": 10},
        {"Host": "back\\slash", "Score": 10},
        {"Host": "d", "Score": 7},
        {"Host": "a", "Score": 3},
        {"Host": 'quote"d', "Score": 3},
    ]
    full = orjson.loads(encode_host_priorities(hosts, np.array(scores), omit_zero=False))
    assert {h["Host"]: h["Score"] for h in full} == dict(zip(hosts, scores, strict=True))
    assert encode_host_priorities([], []) == b"[]"


def test_records_keep_no_string_of_the_raw_pod() -> None:
    ext = small_extender()
    resolver = DemandResolver(ext.config)
    raw = orjson.loads(orjson.dumps(pod("eu-0", node_name="gpu-1a", phase="Running")))
    record = pod_record(raw, resolver)
    assert record is not None
    meta = raw["metadata"]
    kept = {
        "uid": (record.uid, meta["uid"]),
        "name": (record.name, meta["name"]),
        "namespace": (record.namespace, meta["namespace"]),
        "node": (record.node, raw["spec"]["nodeName"]),
        "service": (record.service, meta["labels"]["powercap.io/service"]),
    }
    for field, (mine, theirs) in kept.items():
        assert mine == theirs and mine is not theirs, field
    raw["spec"]["priority"] = 2_000_000
    record = pod_record(orjson.loads(orjson.dumps(raw)), resolver)
    assert record is not None and record.priority == 2_000_000
    waiting = pending_pod(orjson.loads(orjson.dumps(pod("eu-1"))), resolver)
    assert waiting is not None and waiting.uid == "uid-llm-eu-1"
