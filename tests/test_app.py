"""The HTTP app, driven with the bytes kube-scheduler sends."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from extender.config.model import SchedulerSettings
from extender.health import Heartbeat, create_health_app
from extender.runtime import Extender
from extender.webhook.protocol import ExtenderArgs, parse
from tests.scheduler_payloads import bind_body, filter_body, node, pod, small_extender

ALL = ["gpu-1a", "gpu-1b", "gpu-2a", "gpu-2b", "gpu-3a", "gpu-3b", "gpu-4a", "gpu-4b"]
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def ext() -> Extender:
    return small_extender()


@pytest.fixture
def client(ext: Extender) -> Iterator[TestClient]:
    with TestClient(ext.app(), raise_server_exceptions=False) as c:
        yield c


def test_filter_node_names_mode(client: TestClient) -> None:
    r = client.post("/filter", content=filter_body(pod("eu-0"), ALL), headers=JSON)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    out = r.json()
    assert out["NodeNames"] == ALL
    assert out["Nodes"] is None
    assert out["FailedNodes"] == {} and out["FailedAndUnresolvableNodes"] == {}
    assert out["Error"] == ""


def test_filter_full_nodes_mode_returns_node_objects(client: TestClient) -> None:
    nodes = [node("gpu-1a", "rack-1"), node("gpu-2a", "rack-2"), node("cpu-1", None)]
    r = client.post("/filter", content=filter_body(pod("eu-0"), [], nodes), headers=JSON)
    assert r.status_code == 200
    out = r.json()
    assert out["NodeNames"] is None
    assert out["Nodes"]["items"] == nodes[:2]  # unchanged objects, in order
    # Reasons come when no node is left (see test_filter_says_why_…).
    r = client.post("/filter", content=filter_body(pod("eu-0"), [], nodes[2:]), headers=JSON)
    out = r.json()
    assert out["Nodes"]["items"] == [] and list(out["FailedAndUnresolvableNodes"]) == ["cpu-1"]


def test_prioritize_both_modes(client: TestClient) -> None:
    r = client.post("/prioritize", content=filter_body(pod("eu-0"), ALL[:3]), headers=JSON)
    assert r.status_code == 200
    out = r.json()
    # Hosts in request order; a host left out scores 0 (the scheduler's reading).
    hosts = [h["Host"] for h in out]
    assert hosts == [n for n in ALL[:3] if n in hosts]
    assert all(0 < h["Score"] <= 10 and set(h) == {"Host", "Score"} for h in out)
    nodes = [node(n, None) for n in ALL[:2]]
    r = client.post("/prioritize", content=filter_body(pod("eu-0"), [], nodes), headers=JSON)
    assert r.status_code == 200 and {h["Host"] for h in r.json()} <= set(ALL[:2])


def test_prioritize_answers_each_score_less_the_lowest(client: TestClient, ext: Extender) -> None:
    """kube-scheduler adds the same amount to every candidate either way, so the answer
    leaves out the lowest-scoring hosts and lowers the rest by the lowest score."""
    caps = ext.state.tree.caps.copy()
    tight = caps.copy()
    tight[ext.state.tree.index["rack-1"]] = 1.0  # rack 1 fits nothing: its nodes score 0
    ext.state.set_caps(tight)
    body = filter_body(pod("eu-0"), ALL)
    hosts, absolute = ext.decider.prioritize(parse(body, ExtenderArgs))
    assert min(absolute) == 0 and max(absolute) > 0
    answer = client.post("/prioritize", content=body, headers=JSON).json()
    wire = {h["Host"]: h["Score"] for h in answer}
    assert wire == {h: s for h, s in zip(hosts, absolute, strict=True) if s > 0}
    ext.state.set_caps(caps)  # every candidate fits again
    hosts, absolute = ext.decider.prioritize(parse(body, ExtenderArgs))
    low = min(absolute)
    answer = client.post("/prioritize", content=body, headers=JSON).json()
    wire = {h["Host"]: h["Score"] for h in answer}
    assert wire == {h: s - low for h, s in zip(hosts, absolute, strict=True) if s > low}


def test_bind_and_filter_see_it(client: TestClient, ext: Extender) -> None:
    p = pod("eu-0")
    client.post("/filter", content=filter_body(p, ALL), headers=JSON)
    r = client.post("/bind", content=bind_body(p, "gpu-1a"), headers=JSON)
    assert r.status_code == 200
    assert r.json() == {"Error": ""}
    assert ext.state.pods["uid-llm-eu-0"].node == "gpu-1a"
    r = client.post("/filter", content=filter_body(pod("eu-1"), ["gpu-1a"]), headers=JSON)
    assert "free GPUs" in r.json()["FailedNodes"]["gpu-1a"]


def test_filter_says_why_nodes_fail_only_when_none_passes(
    client: TestClient, ext: Extender
) -> None:
    # kube-scheduler reads the reasons only when no node is left (its event, preemption).
    p = pod("eu-0")
    client.post("/filter", content=filter_body(p, ALL), headers=JSON)
    assert client.post("/bind", content=bind_body(p, "gpu-1a"), headers=JSON).json()["Error"] == ""
    some = client.post("/filter", content=filter_body(pod("eu-1"), ALL), headers=JSON).json()
    assert some["NodeNames"] == ALL[1:]
    assert some["FailedNodes"] == {} and some["FailedAndUnresolvableNodes"] == {}
    assert ext.telemetry.decisions.labels("filter", "some_fit")._value.get() == 1
    none = client.post("/filter", content=filter_body(pod("eu-1"), ALL[:1]), headers=JSON).json()
    assert none["NodeNames"] == [] and "free GPUs" in none["FailedNodes"]["gpu-1a"]


def test_filter_says_why_nodes_fail_always_when_configured() -> None:
    ext = small_extender()
    ext.config = dataclasses.replace(
        ext.config, scheduler=SchedulerSettings(failure_reasons="always")
    )
    ext.decider.config = ext.config
    with TestClient(ext.app(), raise_server_exceptions=False) as client:
        p = pod("eu-0")
        client.post("/filter", content=filter_body(p, ALL), headers=JSON)
        client.post("/bind", content=bind_body(p, "gpu-1a"), headers=JSON)
        out = client.post("/filter", content=filter_body(pod("eu-1"), ALL), headers=JSON).json()
    assert out["NodeNames"] == ALL[1:] and "free GPUs" in out["FailedNodes"]["gpu-1a"]


def test_bind_error_is_reported_in_the_body(client: TestClient) -> None:
    r = client.post("/bind", content=bind_body(pod("ghost"), "gpu-1a"), headers=JSON)
    assert r.status_code == 200
    assert "unknown to the extender" in r.json()["Error"]


def test_mixed_case_keys(client: TestClient) -> None:
    body = orjson.dumps({"pod": pod("eu-0"), "nodenames": ["gpu-1a"]})
    r = client.post("/filter", content=body, headers=JSON)
    assert r.status_code == 200
    assert r.json()["NodeNames"] == ["gpu-1a"]
    body = b'{"podname":"eu-0","podnamespace":"llm","poduid":"uid-llm-eu-0","NODE":"gpu-1a"}'
    assert client.post("/bind", content=body, headers=JSON).json() == {"Error": ""}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/filter", b"{", "not valid JSON"),
        ("/filter", b'{"NodeNames": ["a"]}', "Pod: required"),
        ("/prioritize", b'{"Pod": {}, "NodeNames": "gpu-1a"}', "NodeNames: "),
        ("/bind", b'{"PodName": "p", "PodNamespace": "ns"}', "Node: required"),
        ("/preempt", b'{"NodeNameToMetaVictims": {}}', "Pod: required"),
        ("/filter", b"", "empty body"),
    ],
)
def test_malformed_requests_get_400_naming_the_field(
    client: TestClient, path: str, body: bytes, field: str
) -> None:
    r = client.post(path, content=body, headers=JSON)
    assert r.status_code == 400
    assert field in r.json()["Error"]
    assert "Traceback" not in r.text


def test_internal_errors_are_500_naming_only_the_verb(
    ext: Extender, caplog: pytest.LogCaptureFixture
) -> None:
    """The exception text can carry what the API server answered (headers, bodies): it
    goes to the log, and the caller learns only that the verb failed."""

    def broken(*_: object, **__: object) -> Any:
        raise RuntimeError("boom: Authorization: Bearer s3cret")

    ext.decider.filter = broken  # type: ignore[method-assign]
    with TestClient(ext.app(), raise_server_exceptions=False) as c:
        r = c.post("/filter", content=filter_body(pod("eu-0"), ALL), headers=JSON)
    assert r.status_code == 500
    assert r.json() == {"Error": "filter: internal error; the extender's log has the details"}
    assert "boom" not in r.text and "RuntimeError" not in r.text
    logged = [rec for rec in caplog.records if rec.getMessage() == "filter failed"]
    assert logged and logged[0].exc_info is not None
    assert "s3cret" in str(logged[0].exc_info[1])


def test_preempt(client: TestClient) -> None:
    body = orjson.dumps(
        {
            "Pod": pod("eu-0"),
            "NodeNameToMetaVictims": {"gpu-1a": {"Pods": [], "NumPDBViolations": 0}},
        }
    )
    r = client.post("/preempt", content=body, headers=JSON)
    assert r.status_code == 200
    assert r.json() == {"NodeNameToMetaVictims": {"gpu-1a": {"Pods": [], "NumPDBViolations": 0}}}


def test_health_and_readiness(ext: Extender) -> None:
    ext.state.synced = False
    app = create_health_app(ext.telemetry, ext.ready)
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and "first sync" in r.text
        ext.state.synced = True
        assert c.get("/readyz").status_code == 200


def test_readiness_and_health_follow_the_verbs_app(ext: Extender) -> None:
    """``/readyz`` waits for the verbs' app to run; ``/healthz`` fails when its event
    loop stops turning, and passes while it has not started or after it stopped."""
    heartbeat = Heartbeat(stale_after_s=30.0)

    def beating() -> bool:
        return heartbeat.running

    with TestClient(ext.metrics_app(heartbeat)) as probes:
        r = probes.get("/readyz")
        assert r.status_code == 503 and "verbs are not served" in r.text
        assert probes.get("/healthz").status_code == 200
        with TestClient(ext.app(heartbeat=heartbeat)):
            assert beating()
            assert probes.get("/readyz").status_code == 200
            assert probes.get("/healthz").status_code == 200
        assert not beating()
        assert probes.get("/healthz").status_code == 200
        assert probes.get("/readyz").status_code == 503
        heartbeat.last = time.monotonic() - 31.0  # a beat 31 s ago, none since: stuck
        r = probes.get("/healthz")
        assert r.status_code == 503 and "has not turned for 31 s" in r.text


def test_each_app_serves_only_its_own_paths(ext: Extender) -> None:
    """The verbs' address answers no probe or scrape; the metrics address no verb."""
    with TestClient(ext.app()) as verbs, TestClient(ext.metrics_app()) as probes:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert verbs.get(path).status_code == 404
            assert probes.get(path).status_code == 200
        for path in ("/filter", "/prioritize", "/bind", "/preempt"):
            r = probes.post(path, content=filter_body(pod("eu-0"), ALL), headers=JSON)
            assert r.status_code in (404, 405)
            assert verbs.post(path, content=b"{}", headers=JSON).status_code == 400


def test_metrics(client: TestClient, ext: Extender) -> None:
    client.post("/filter", content=filter_body(pod("eu-0"), ALL), headers=JSON)
    client.post("/filter", content=b"{", headers=JSON)
    with TestClient(ext.metrics_app()) as probes:
        text = probes.get("/metrics").text
    assert 'powercap_extender_request_seconds_bucket{le="0.001",verb="filter"}' in text
    assert 'powercap_extender_decisions_total{outcome="all_fit",verb="filter"} 1.0' in text
    assert 'powercap_extender_decisions_total{outcome="bad_request",verb="filter"} 1.0' in text
    assert 'powercap_domain_predicted_headroom_watts{domain="rack-1"}' in text
    assert "powercap_plan_age_seconds" in text
    assert "powercap_build_info{" in text


def test_kubernetes_binder_posts_a_v1_binding() -> None:
    from kubernetes.client.exceptions import ApiException

    from extender.cluster.pods import PodRef
    from extender.config.kubernetes import KubernetesSettings
    from extender.webhook.binding import BindError, KubernetesBinder

    class Reply:
        def __init__(self) -> None:
            self.read_and_released = [False, False]

        def read(self) -> bytes:
            self.read_and_released[0] = True
            return b"{}"

        def release_conn(self) -> None:
            self.read_and_released[1] = True

    class Core:
        def __init__(self) -> None:
            self.calls: list[tuple[Any, ...]] = []
            self.replies: list[Reply] = []
            self.fail = False

        def create_namespaced_pod_binding(
            self, name: str, namespace: str, body: Any, **kw: Any
        ) -> Reply:
            self.calls.append((name, namespace, body, kw))
            if self.fail:
                raise ApiException(status=409, reason="Conflict")
            self.replies.append(Reply())
            return self.replies[-1]

    core = Core()
    # The whole Binding call is bounded by the bind timeout (connect and read together).
    binder = KubernetesBinder(core, timeouts=KubernetesSettings(bind_timeout_s=2.5))
    binder.bind(PodRef("llm", "eu-0", "u-1"), "gpu-1a")
    name, namespace, body, kw = core.calls[0]
    assert (name, namespace) == ("eu-0", "llm")
    assert body == {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": "eu-0", "namespace": "llm", "uid": "u-1"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "gpu-1a"},
    }
    assert kw == {"_preload_content": False, "_request_timeout": 2.5}
    # The raw reply is drained and its connection handed back to the pool.
    assert core.replies[0].read_and_released == [True, True]
    core.fail = True
    with pytest.raises(BindError, match="409 Conflict"):
        binder.bind(PodRef("llm", "eu-0", "u-1"), "gpu-1a")


@pytest.mark.parametrize(
    ("failure", "maybe_bound"),
    [
        ("409", False),  # refused: no Binding
        ("429", False),  # turned away before it was handled
        ("504", True),  # timed out: the write may still commit
        ("reset", True),  # the connection dropped with the request sent
        ("read-timeout", True),
        ("refused", False),  # no connection: the request never left
    ],
)
def test_kubernetes_binder_says_whether_a_failed_binding_may_exist(
    failure: str, maybe_bound: bool
) -> None:
    from http.client import RemoteDisconnected

    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import (
        MaxRetryError,
        NewConnectionError,
        ProtocolError,
        ReadTimeoutError,
    )

    from extender.cluster.pods import PodRef
    from extender.webhook.binding import BindError, KubernetesBinder

    errors: dict[str, Exception] = {
        "409": ApiException(status=409, reason="Conflict"),
        "429": ApiException(status=429, reason="Too Many Requests"),
        "504": ApiException(status=504, reason="Gateway Timeout"),
        "reset": ProtocolError("Connection aborted.", RemoteDisconnected("closed")),
        "read-timeout": ReadTimeoutError(None, "/binding", "read timed out"),  # type: ignore[arg-type]
        "refused": MaxRetryError(
            None,  # type: ignore[arg-type]
            "/binding",
            NewConnectionError(None, "Connection refused"),  # type: ignore[arg-type]
        ),
    }

    class Core:
        def create_namespaced_pod_binding(self, *args: Any, **kw: Any) -> Any:
            raise errors[failure]

    with pytest.raises(BindError) as raised:
        KubernetesBinder(Core()).bind(PodRef("llm", "eu-0", "u-1"), "gpu-1a")
    assert raised.value.maybe_bound is maybe_bound


def test_kubernetes_binder_reads_where_a_pod_is() -> None:
    from kubernetes.client.exceptions import ApiException

    from extender.cluster.pods import PodRef
    from extender.webhook.binding import KubernetesBinder

    class Raw:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def release_conn(self) -> None:
            pass

    answers: list[Any] = [
        pod("eu-0", uid="u-1", node_name="gpu-1a"),
        pod("eu-0", uid="u-1"),
        pod("eu-0", uid="u-2", node_name="gpu-1a"),  # recreated: not the pod bound
        ApiException(status=404, reason="Not Found"),
        ApiException(status=500, reason="Internal Server Error"),
        ConnectionResetError("reset"),
    ]

    class Core:
        def read_namespaced_pod(self, name: str, namespace: str, **kw: Any) -> Raw:
            # bounded as the Binding is (the default bindTimeout, 4 s)
            assert (name, namespace, kw) == (
                "eu-0",
                "llm",
                {"_preload_content": False, "_request_timeout": 4.0},
            )
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return Raw(orjson.dumps(answer))

    binder = KubernetesBinder(Core())
    ref = PodRef("llm", "eu-0", "u-1")
    assert [binder.bound_node(ref) for _ in range(6)] == ["gpu-1a", "", "", "", None, None]


def test_kubernetes_event_body() -> None:
    from datetime import UTC, datetime

    from extender.cluster.events import Event, event_body
    from extender.cluster.pods import PodRef

    body = event_body(
        Event(PodRef("llm", "eu-0", "u-1"), "PowercapProfileRejected", "x" * 2000),
        now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    assert body["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "eu-0",
        "namespace": "llm",
        "uid": "u-1",
    }
    assert body["type"] == "Warning" and body["reason"] == "PowercapProfileRejected"
    assert len(body["message"]) == 1024
    assert body["firstTimestamp"] == "2026-01-02T03:04:05Z"
    assert body["metadata"] == {"generateName": "eu-0.", "namespace": "llm"}
