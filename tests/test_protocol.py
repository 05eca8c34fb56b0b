"""The extender wire protocol: Go field names out, any key case in, clear errors."""

from __future__ import annotations

import orjson
import pytest

from extender.cluster.raw import ProtocolError, get_field
from extender.webhook.protocol import (
    ExtenderArgs,
    ExtenderBindingArgs,
    ExtenderBindingResult,
    ExtenderFilterResult,
    ExtenderPreemptionArgs,
    ExtenderPreemptionResult,
    HostPriority,
    MetaPod,
    MetaVictims,
    NodeList,
    encode,
    encode_filter_result,
    encode_host_priorities,
    parse,
)
from tests.scheduler_payloads import bind_body, filter_body, node, pod


def test_node_names_mode() -> None:
    args = parse(filter_body(pod("p"), ["gpu-1a", "gpu-1b"]), ExtenderArgs)
    assert args.names_only
    assert args.candidate_names() == ["gpu-1a", "gpu-1b"]
    assert args.nodes is None
    assert args.pod["metadata"]["name"] == "p"


def test_full_nodes_mode() -> None:
    nodes = [node("gpu-1a", "rack-1"), node("gpu-1b", "rack-1")]
    args = parse(filter_body(pod("p"), [], nodes), ExtenderArgs)
    assert not args.names_only
    assert args.candidate_names() == ["gpu-1a", "gpu-1b"]
    assert args.nodes is not None and args.nodes.items is not None
    assert args.nodes.items[0]["status"]["allocatable"]["nvidia.com/gpu"] == "8"


def test_empty_candidate_lists() -> None:
    # Go marshals a nil Items slice as null.
    body = orjson.dumps({"Pod": pod("p"), "Nodes": {"metadata": {}, "items": None}})
    assert parse(body, ExtenderArgs).candidate_names() == []
    assert parse(filter_body(pod("p"), []), ExtenderArgs).candidate_names() == []


@pytest.mark.parametrize(
    "keys",
    [
        ("pod", "nodenames"),
        ("POD", "NODENAMES"),
        ("pOd", "nodeNames"),
    ],
)
def test_keys_in_any_case(keys: tuple[str, str]) -> None:
    body = orjson.dumps({keys[0]: pod("p"), keys[1]: ["n1"]})
    args = parse(body, ExtenderArgs)
    assert args.candidate_names() == ["n1"]


def test_nested_node_list_keys_in_any_case() -> None:
    body = orjson.dumps({"pod": pod("p"), "NODES": {"Items": [node("n1", "rack-1")]}})
    assert parse(body, ExtenderArgs).candidate_names() == ["n1"]


def test_later_key_wins_and_unknown_keys_are_ignored() -> None:
    # encoding/json: keys folding onto one field overwrite in order; unknown keys drop.
    body = b'{"NodeNames": ["a"], "nodenames": ["b"], "Pod": {}, "Extra": 1}'
    assert parse(body, ExtenderArgs).candidate_names() == ["b"]


def test_binding_args_any_case() -> None:
    body = b'{"podname": "p", "PODNAMESPACE": "llm", "PodUid": "u1", "node": "gpu-1a"}'
    args = parse(body, ExtenderBindingArgs)
    assert (args.pod_name, args.pod_namespace, args.pod_uid, args.node) == (
        "p",
        "llm",
        "u1",
        "gpu-1a",
    )
    assert parse(bind_body(pod("p"), "gpu-1a"), ExtenderBindingArgs).pod_uid == "uid-llm-p"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", "empty body"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"NodeNames": ["a"]}', "Pod: required field is missing"),
        (b'{"Pod": null, "NodeNames": ["a"]}', "Pod: "),
        (b'{"Pod": [], "NodeNames": ["a"]}', "Pod: "),
        (b'{"Pod": {}}', "NodeNames or Nodes.items"),
        (b'{"Pod": {}, "NodeNames": ["a", 3]}', "NodeNames[1]"),
        (b'{"Pod": {}, "Nodes": {"items": [{"metadata": {}}]}}', "Nodes.items[0].metadata.name"),
        (b'{"Pod": {}, "Nodes": {"items": "x"}}', "Nodes.items"),
    ],
)
def test_malformed_filter_args_name_the_field(body: bytes, expected: str) -> None:
    with pytest.raises(ProtocolError) as err:
        parse(body, ExtenderArgs).candidate_names()
    assert expected in str(err.value)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"PodName": "p", "PodNamespace": "ns", "PodUID": "u"}', "Node: required"),
        (b'{"PodNamespace": "ns", "Node": "n"}', "PodName: required"),
        (b'{"PodName": "", "PodNamespace": "ns", "Node": "n"}', "PodName: "),
        (b'{"PodName": 5, "PodNamespace": "ns", "Node": "n"}', "PodName: "),
    ],
)
def test_malformed_binding_args_name_the_field(body: bytes, expected: str) -> None:
    with pytest.raises(ProtocolError) as err:
        parse(body, ExtenderBindingArgs)
    assert expected in str(err.value)


def test_filter_result_uses_go_field_names() -> None:
    out = orjson.loads(
        encode_filter_result(["a"], None, {"b": "over cap"}, unresolvable={"c": "unknown"})
    )
    assert out == {
        "Nodes": None,
        "NodeNames": ["a"],
        "FailedNodes": {"b": "over cap"},
        "FailedAndUnresolvableNodes": {"c": "unknown"},
        "Error": "",
    }
    items = [node("a", "rack-1")]
    out = orjson.loads(encode_filter_result(None, items, {}, unresolvable={}))
    assert out["NodeNames"] is None
    assert out["Nodes"]["items"] == items


def test_filter_result_model_matches_encoder() -> None:
    model = ExtenderFilterResult(
        node_names=["a"], failed_nodes={"b": "x"}, failed_and_unresolvable_nodes={}
    )
    assert orjson.loads(model.to_json()) == orjson.loads(
        encode_filter_result(["a"], None, {"b": "x"}, unresolvable={})
    )
    # and the generic encoder agrees on the field names
    assert set(orjson.loads(encode(model))) == {
        "Nodes",
        "NodeNames",
        "FailedNodes",
        "FailedAndUnresolvableNodes",
        "Error",
    }


def test_host_priority_list() -> None:
    out = orjson.loads(encode_host_priorities(["a", "b", "c"], [10, 3, 0]))
    assert out == [{"Host": "a", "Score": 10}, {"Host": "b", "Score": 3}]  # 0 is implied
    full = orjson.loads(encode_host_priorities(["a", "c"], [10, 0], omit_zero=False))
    assert full == [{"Host": "a", "Score": 10}, {"Host": "c", "Score": 0}]
    assert orjson.loads(encode(HostPriority(host="a", score=10))) == out[0]
    # a scheduler-side reader accepts any case too
    assert HostPriority.model_validate({"host": "a", "SCORE": 1}).score == 1


def test_binding_result() -> None:
    assert orjson.loads(ExtenderBindingResult(error="x").to_json()) == {"Error": "x"}
    assert orjson.loads(ExtenderBindingResult().to_json()) == {"Error": ""}


def test_preemption_meta_victims_mode() -> None:
    body = orjson.dumps(
        {
            "Pod": pod("p"),
            "NodeNameToVictims": None,
            "NodeNameToMetaVictims": {
                "n1": {"Pods": [{"UID": "u1"}, {"UID": "u2"}], "NumPDBViolations": 1},
                "n2": None,
            },
        }
    )
    args = parse(body, ExtenderPreemptionArgs)
    victims = args.meta_victims()
    assert [p.uid for p in victims["n1"].pods] == ["u1", "u2"]
    assert victims["n1"].num_pdb_violations == 1
    assert victims["n2"].pods == []


def test_preemption_full_victims_mode_and_case() -> None:
    body = orjson.dumps(
        {
            "pod": pod("p"),
            "nodenametovictims": {"n1": {"pods": [pod("v1")], "numpdbviolations": 0}},
        }
    )
    victims = parse(body, ExtenderPreemptionArgs).meta_victims()
    assert [p.uid for p in victims["n1"].pods] == ["uid-llm-v1"]


def test_preemption_victim_without_uid() -> None:
    body = orjson.dumps({"Pod": {}, "NodeNameToVictims": {"n1": {"Pods": [{"metadata": {}}]}}})
    with pytest.raises(ProtocolError, match=r"NodeNameToVictims\.n1\.Pods\[0\]\.metadata\.uid"):
        parse(body, ExtenderPreemptionArgs).meta_victims()


def test_preemption_result_go_names() -> None:
    result = ExtenderPreemptionResult(
        node_name_to_meta_victims={"n1": MetaVictims(pods=[MetaPod(uid="u1")])}
    )
    assert orjson.loads(result.to_json()) == {
        "NodeNameToMetaVictims": {"n1": {"Pods": [{"UID": "u1"}], "NumPDBViolations": 0}}
    }


def test_get_field_is_case_insensitive_for_struct_fields() -> None:
    assert get_field({"metadata": 1}, "metadata") == 1
    assert get_field({"Metadata": 2}, "metadata") == 2
    assert get_field({"x": 3}, "metadata") is None


def test_node_list_names() -> None:
    assert NodeList(items=[node("a", None)]).names() == ["a"]
