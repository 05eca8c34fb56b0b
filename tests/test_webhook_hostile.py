"""The scheduler verbs against hostile and wrong input: fuzzed bodies shaped after the
wire models, and hand-written worst cases (oversize bodies, deep nesting, bytes that are
not UTF-8, 100,000-entry lists, forged binds, slow and vanishing clients, a flood).

Whatever arrives, a verb answers 200, 400 or 413 (408 for a body that never comes, 503
when every slot is taken), never 500; the app keeps serving; and a call that is refused
leaves the ledger (the cluster state's load and pods) as it was. Hypothesis runs
:data:`EXAMPLES` examples per verb with no deadline: the bound is the example count.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterator, MutableMapping
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.requests import Request

from extender.runtime import Extender
from extender.webhook.limits import BodyTooLarge, Busy, Gate, SlowBody, read_body
from extender.webhook.settings import Limits
from tests.scheduler_payloads import bind_body, filter_body, node, pod, small_extender

ALL = ["gpu-1a", "gpu-1b", "gpu-2a", "gpu-2b", "gpu-3a", "gpu-3b", "gpu-4a", "gpu-4b"]
JSON = {"Content-Type": "application/json"}
EXAMPLES = 200
ANSWERS = {200, 400, 413}
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


class Ledger:
    """What the cluster state holds, to compare before and after a call."""

    def __init__(self, ext: Extender) -> None:
        state = ext.state
        self.load = state.ledger.load.copy()
        self.pods = sorted(state.pods)
        self.used = state.node_used.copy()

    def same_as(self, ext: Extender) -> bool:
        state = ext.state
        return (
            np.array_equal(self.load, state.ledger.load)
            and self.pods == sorted(state.pods)
            and np.array_equal(self.used, state.node_used)
        )


class Target:
    """An extender, a client over its verbs' app, and the checks every call must pass."""

    def __init__(self, ext: Extender, client: TestClient) -> None:
        self.ext = ext
        self.client = client

    def post(self, path: str, body: bytes) -> httpx.Response:
        """``body`` to ``path``: an allowed status, a JSON ``Error`` on a refusal, and
        the ledger unchanged unless a bind succeeded."""
        before = Ledger(self.ext)
        r: httpx.Response = self.client.post(path, content=body, headers=JSON)
        assert r.status_code in ANSWERS, (r.status_code, r.text[:300], body[:300])
        if r.status_code != 200:
            error = r.json()["Error"]
            assert isinstance(error, str) and error.startswith(path[1:] + ":"), error
            assert "Traceback" not in error
        bound = path == "/bind" and r.status_code == 200 and r.json() == {"Error": ""}
        if not bound:
            assert before.same_as(self.ext), f"{path} changed the ledger: {body[:300]!r}"
        return r

    def still_serves(self) -> None:
        """A well-formed filter and bind still work after whatever came before."""
        p = pod("after-the-storm")
        r = self.client.post("/filter", content=filter_body(p, ALL), headers=JSON)
        assert r.status_code == 200 and r.json()["NodeNames"], r.text
        target = r.json()["NodeNames"][0]
        r = self.client.post("/bind", content=bind_body(p, target), headers=JSON)
        assert r.json() == {"Error": ""}
        assert self.ext.state.pods["uid-llm-after-the-storm"].node == target


def _target(limits: Limits | None = None) -> Iterator[Target]:
    ext = small_extender()
    with TestClient(ext.app(limits), raise_server_exceptions=False) as client:
        yield Target(ext, client)


@pytest.fixture
def target() -> Iterator[Target]:
    yield from _target()


@pytest.fixture
def tight() -> Iterator[Target]:
    """Small limits, so fuzzed bodies cross them often and cheaply."""
    yield from _target(Limits(max_body_bytes=4096, max_candidates=6))


# --- strategies from the wire models ---------------------------------------------------
json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def any_case(name: str) -> st.SearchStrategy[str]:
    """``name`` in the cases Go's decoder accepts for it."""
    return st.sampled_from([name, name.lower(), name.upper()])


def shaped(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """An object with most of ``fields`` (each under a case variant of its name, its
    value mostly from its own strategy, sometimes any JSON), and sometimes an unknown
    key."""

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, values in fields.items():
            if draw(st.integers(0, 4)):
                shape = values if draw(st.integers(0, 3)) else json_values
                out[draw(any_case(name))] = draw(shape)
        if not draw(st.integers(0, 4)):
            out[draw(st.text(max_size=8))] = draw(json_values)
        return out

    return build()


# Pod paths the extender reads; a drawn value replaces the one at the path.
POD_PATHS = [
    ("metadata",),
    ("metadata", "name"),
    ("metadata", "namespace"),
    ("metadata", "uid"),
    ("metadata", "labels"),
    ("metadata", "labels", "powercap.io/service"),
    ("metadata", "annotations"),
    ("metadata", "annotations", "powercap.io/profile"),
    ("metadata", "ownerReferences"),
    ("spec",),
    ("spec", "containers"),
    ("spec", "containers", 0),
    ("spec", "containers", 0, "resources"),
    ("spec", "containers", 0, "resources", "requests"),
    ("spec", "containers", 0, "resources", "requests", "nvidia.com/gpu"),
    ("spec", "containers", 0, "resources", "limits", "nvidia.com/gpu"),
    ("spec", "initContainers"),
    ("status",),
]


@st.composite
def pods(draw: st.DrawFn) -> Any:
    """A pod as the scheduler sends it with one to three fields replaced by any JSON, or
    any JSON at all."""
    if not draw(st.integers(0, 9)):
        return draw(json_values)
    p: Any = pod(
        draw(st.sampled_from(["eu-0", "eu-1", "x"])),
        service=draw(st.sampled_from(["chat-eu", "batch", None])),
        gpus=draw(st.sampled_from([0, 4, 8])),
    )
    for path in draw(st.lists(st.sampled_from(POD_PATHS), min_size=1, max_size=3)):
        parent = p
        for key in path[:-1]:
            if isinstance(parent, dict) and isinstance(key, str):
                parent = parent.setdefault(key, {})
            elif isinstance(parent, list) and parent and key == 0:
                parent = parent[0]
            else:
                break
        else:
            last = path[-1]
            if isinstance(parent, dict) and isinstance(last, str):
                parent[last] = draw(json_values)
            elif isinstance(parent, list) and parent and last == 0:
                parent[0] = draw(json_values)
    return p


node_names = st.lists(st.sampled_from([*ALL, "nowhere", ""]) | st.text(max_size=6), max_size=8)
node_lists = shaped(
    {"items": st.lists(st.sampled_from([node(n, "rack-1") for n in ALL[:3]]) | json_values)}
)
filter_args = shaped({"Pod": pods(), "Nodes": node_lists, "NodeNames": node_names})
meta_victims = shaped(
    {
        "Pods": st.lists(shaped({"UID": st.text(max_size=8)}), max_size=4),
        "NumPDBViolations": json_values,
    }
)
preempt_args = shaped(
    {
        "Pod": pods(),
        "NodeNameToMetaVictims": st.dictionaries(
            st.sampled_from(ALL) | st.text(max_size=4), meta_victims | st.none()
        ),
        "NodeNameToVictims": st.dictionaries(
            st.sampled_from(ALL), shaped({"Pods": st.lists(pods(), max_size=2)}) | st.none()
        ),
    }
)
bind_args = shaped(
    {
        "PodName": st.sampled_from(["eu-0", "ghost", ""]) | st.text(max_size=6),
        "PodNamespace": st.sampled_from(["llm", "default"]) | st.text(max_size=6),
        "PodUID": st.sampled_from(["uid-llm-eu-0", "forged"]) | st.text(max_size=6),
        "Node": st.sampled_from([*ALL, "nowhere"]) | st.text(max_size=6),
    }
)


def bodies(args: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """Mostly the JSON of ``args``; sometimes cut short, a JSON value that is no
    object, or bytes."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        kind = draw(st.integers(0, 9))
        if kind < 7:
            return orjson.dumps(draw(args))
        if kind == 7:
            whole = orjson.dumps(draw(args))
            return whole[: draw(st.integers(0, len(whole)))]
        if kind == 8:
            return orjson.dumps(draw(json_values))
        return draw(st.binary(max_size=64))

    return build()


@pytest.mark.parametrize(
    ("path", "strategy"),
    [("/filter", filter_args), ("/prioritize", filter_args), ("/preempt", preempt_args)],
    ids=["filter", "prioritize", "preempt"],
)
def test_fuzzed_requests_are_answered_and_change_nothing(
    target: Target, path: str, strategy: st.SearchStrategy[dict[str, Any]]
) -> None:
    @FUZZ
    @given(body=bodies(strategy))
    def check(body: bytes) -> None:
        target.post(path, body)

    check()
    target.still_serves()


def test_fuzzed_binds_of_pods_no_filter_saw_bind_nothing(target: Target) -> None:
    """Every bind here names a pod the extender never saw (no filter call, no API
    server to ask): answered with an ``Error``, never recorded."""

    @FUZZ
    @given(body=bodies(bind_args))
    def check(body: bytes) -> None:
        r = target.post("/bind", body)
        if r.status_code == 200:
            assert r.json()["Error"], body

    check()
    assert not target.ext.binder.bound  # type: ignore[attr-defined]
    target.still_serves()


def test_fuzzed_requests_over_tight_limits(tight: Target) -> None:
    @FUZZ
    @given(
        path=st.sampled_from(["/filter", "/prioritize", "/preempt"]),
        body=bodies(filter_args | preempt_args),
        names=st.integers(0, 12),
    )
    def check(path: str, body: bytes, names: int) -> None:
        r = tight.post(path, body)
        if len(body) > 4096:
            assert r.status_code == 413 and "4,096 bytes" in r.json()["Error"]
        big = orjson.dumps({"Pod": pod("eu-0"), "NodeNames": (ALL * 2)[:names]})
        r = tight.post("/filter", big)
        assert (r.status_code == 413) == (names > 6), r.text

    check()


# --- hand-written worst cases ------------------------------------------------------------
def test_wrong_shaped_pod_is_a_400_naming_the_field(target: Target) -> None:
    cases = {
        b'{"Pod": {"spec": {"containers": 5}}, "NodeNames": ["gpu-1a"]}': (
            "Pod.spec.containers: expected a list, got int"
        ),
        b'{"Pod": {"spec": {"containers": [7]}}, "NodeNames": ["gpu-1a"]}': (
            "Pod.spec.containers[0]: expected an object"
        ),
        b'{"Pod": {"spec": {"containers": [{"resources": {"requests": []}}]}}, "NodeNames": []}': (
            "Pod.spec.containers[0].resources.requests: expected an object"
        ),
        b'{"Pod": {"metadata": {"uid": 5}}, "NodeNames": ["gpu-1a"]}': (
            "Pod.metadata.uid: expected a string, got int"
        ),
        b'{"Pod": {"metadata": {"labels": []}}, "NodeNames": ["gpu-1a"]}': (
            "Pod.metadata.labels: expected an object, got list"
        ),
        b'{"Pod": {"metadata": {"ownerReferences": {}}, "spec": {"containers": '
        b'[{"resources": {"limits": {"nvidia.com/gpu": 1}}}]}}, "NodeNames": []}': (
            "Pod.metadata.ownerReferences: expected a list, got dict"
        ),
        b'{"Pod": {}, "NodeNames": [1, 2]}': "NodeNames[0]: expected a node name (string)",
        b'{"Pod": {}, "NodeNames": [1' + b"0" * 40 + b"]}": "NodeNames[0]: expected a node name",
        b'{"Pod": {}, "Nodes": {"items": [3]}}': "Nodes.items[0]: Input should be a valid dict",
    }
    for body, field in cases.items():
        for path in ("/filter", "/prioritize"):
            r = target.post(path, body)
            assert r.status_code == 400 and field in r.json()["Error"], (path, body, r.text)
    target.still_serves()


def test_oversize_body_is_a_413_naming_the_limit(target: Target) -> None:
    body = orjson.dumps({"Pod": pod("eu-0"), "NodeNames": ["x" * 1000] * 9000})
    assert len(body) > 8 * 1024 * 1024
    for path in ("/filter", "/prioritize", "/bind", "/preempt"):
        r = target.post(path, body)
        assert r.status_code == 413, r.text
        if path == "/bind":  # a bind names a pod and a node: its limit is fixed
            assert "over the limit of 65,536 bytes (a bind names" in r.json()["Error"]
        else:
            assert "over the limit of 8,388,608 bytes" in r.json()["Error"]
            assert "--max-body-bytes" in r.json()["Error"]
        assert r.headers["connection"] == "close"
    target.still_serves()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"Pod": {}, "NodeNames": [f"n{i}" for i in range(100_000)]}, "NodeNames: 100,000"),
        ({"Pod": {}, "Nodes": {"items": [{}] * 100_000}}, "Nodes.items: 100,000"),
        # Go keeps the last of two keys that differ in case: each one is checked.
        ({"Pod": {}, "NodeNames": [], "nodenames": ["n"] * 100_000}, "nodenames: 100,000"),
        (
            {"Pod": {}, "NodeNameToMetaVictims": {f"n{i}": None for i in range(100_000)}},
            "NodeNameToMetaVictims: 100,000",
        ),
        (
            {
                "Pod": {},
                "NodeNameToMetaVictims": {
                    f"n{i}": {"Pods": [{"UID": "u"}] * 25_000} for i in range(4)
                },
            },
            "NodeNameToMetaVictims.*.Pods: 100,000",
        ),
    ],
    ids=["names", "items", "case-twin", "victim-nodes", "victims"],
)
def test_100k_entry_lists_are_a_413_naming_the_field(
    target: Target, body: dict[str, Any], field: str
) -> None:
    path = "/preempt" if "NodeNameToMetaVictims" in body else "/filter"
    r = target.post(path, orjson.dumps(body))
    assert r.status_code == 413, r.text
    error = r.json()["Error"]
    assert field in error and "over the limit of 20,000" in error and "--max-candidates" in error
    target.still_serves()


def test_20k_bad_entries_get_a_short_error(target: Target) -> None:
    """A list just under the limit, every entry wrong: the first problems and a count,
    not an error as long as the body."""
    body = orjson.dumps({"Pod": {}, "Nodes": {"items": list(range(20_000))}})
    r = target.post("/filter", body)
    assert r.status_code == 400
    error = r.json()["Error"]
    assert "Nodes.items[0]" in error and "and 19,995 more" in error and len(error) < 1000


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"[" * 5_000, "depth limit exceeded"),
        (b'{"Pod": ' + b'{"a": ' * 2000 + b"1" + b"}" * 2001 + b', "NodeNames": []}', "depth"),
        (b'{"Pod": {"metadata": {"name": "\xff\xfe"}}, "NodeNames": ["gpu-1a"]}', "UTF-8"),
        (b"\xff\xfe\x00\x00", "not valid JSON"),
        (b'{"Pod": {}, "NodeNames": ["\xed\xa0\x80"]}', "not valid JSON"),
        (b"null", "must be a JSON object"),
        (b"", "empty body"),
    ],
    ids=["deep-list", "deep-pod", "latin1", "utf32", "surrogate", "null", "empty"],
)
def test_unparsable_bodies_are_a_400(target: Target, body: bytes, field: str) -> None:
    for path in ("/filter", "/prioritize", "/bind", "/preempt"):
        r = target.post(path, body)
        assert r.status_code == 400 and field in r.json()["Error"], (path, r.text)
    target.still_serves()


def test_100k_deep_nesting_is_refused(target: Target) -> None:
    body = b'{"Pod": ' + b"[" * 100_000
    for path in ("/filter", "/prioritize", "/preempt"):
        r = target.post(path, body)
        assert r.status_code == 400 and "depth limit exceeded" in r.json()["Error"]
    assert target.post("/bind", body).status_code == 413  # over a bind's 64 KiB first
    target.still_serves()


def test_forged_binds_are_refused_and_record_nothing(target: Target) -> None:
    """Binds for a pod no filter saw, for a node the extender does not know, and with a
    UID that is not the pod's: each answered with an ``Error``, none recorded."""
    p = pod("eu-0")
    target.post("/filter", filter_body(p, ALL))
    forged = [
        bind_body(pod("never-filtered"), "gpu-1a"),
        bind_body(p, "no-such-node"),
        bind_body(pod("eu-0", uid="forged-uid"), "gpu-1a"),
        orjson.dumps({"PodName": "eu-0", "PodNamespace": "llm", "Node": "gpu-1a"}),
    ]
    for body in forged:
        r = target.post("/bind", body)
        assert r.status_code == 200 and r.json()["Error"], body
    assert not target.ext.state.pods
    assert not target.ext.binder.bound  # type: ignore[attr-defined]
    target.still_serves()


# --- bodies read in pieces, slow and vanishing clients --------------------------------------
def _request(chunks: list[bytes], headers: dict[str, str], *, stall: bool = False) -> Request:
    """A request whose body arrives as ``chunks`` (and then never, with ``stall``),
    counting what was taken from the wire in ``request.state``."""
    taken: list[int] = []

    async def receive() -> dict[str, Any]:
        if len(taken) < len(chunks):
            taken.append(len(chunks[len(taken)]))
            more = len(taken) < len(chunks) or stall
            return {"type": "http.request", "body": chunks[len(taken) - 1], "more_body": more}
        await asyncio.Event().wait()  # a client that stops sending
        raise AssertionError("unreachable")

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/filter",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "state": {"taken": taken},
    }
    return Request(scope, receive)


def test_declared_oversize_body_is_refused_before_reading() -> None:
    request = _request([b"x" * 1024] * 8, {"content-length": str(8 * 1024)})
    with pytest.raises(BodyTooLarge) as raised:
        asyncio.run(read_body(request, Limits(max_body_bytes=4096)))
    assert raised.value.declared == 8 * 1024
    assert request.state.taken == []


def test_undeclared_oversize_body_stops_at_the_limit() -> None:
    """A chunked body declares no length: reading stops at the first chunk past the
    limit, the rest stays unread."""
    request = _request([b"x" * 1024] * 1000, {})
    with pytest.raises(BodyTooLarge):
        asyncio.run(read_body(request, Limits(max_body_bytes=4096)))
    assert request.state.taken == [1024] * 5


def test_slow_body_is_a_408(target: Target) -> None:
    request = _request([b'{"Pod": {}'], {}, stall=True)
    with pytest.raises(SlowBody):
        asyncio.run(read_body(request, Limits(read_timeout_s=0.05)))
    ext = target.ext

    async def call() -> httpx.Response:
        async def stalled() -> AsyncIterator[bytes]:
            yield b'{"Pod": {}'
            await asyncio.Event().wait()

        transport = httpx.ASGITransport(app=ext.app(Limits(read_timeout_s=0.05)))
        async with httpx.AsyncClient(transport=transport, base_url="http://extender") as c:
            return await c.post("/filter", content=stalled())

    r = asyncio.run(call())
    assert r.status_code == 408
    assert (
        "not received within 0.05 s" in r.json()["Error"] and "--read-timeout" in r.json()["Error"]
    )


def test_client_that_hangs_up_is_not_an_error(
    target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    ext = target.ext
    app = ext.app()
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/filter",
        "raw_path": b"/filter",
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8888),
    }
    with caplog.at_level(logging.DEBUG):
        asyncio.run(app(scope, receive, send))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    text = ext.telemetry.render().decode()
    assert 'powercap_extender_decisions_total{outcome="client_gone",verb="filter"} 1.0' in text


# --- concurrency -------------------------------------------------------------------------------
def test_gate_runs_some_queues_some_refuses_the_rest() -> None:
    async def scenario() -> list[str]:
        gate = Gate(running=2, queued=1)
        order: list[str] = []
        release = asyncio.Event()

        async def hold(name: str) -> None:
            async with gate.slot():
                order.append(f"{name} in")
                await release.wait()
            order.append(f"{name} out")

        tasks = [asyncio.create_task(hold(n)) for n in ("a", "b", "c")]
        while gate.in_use < 2 or gate.waiting < 1:
            await asyncio.sleep(0)
        with pytest.raises(Busy):
            async with gate.slot():
                pass
        assert (gate.in_use, gate.waiting) == (2, 1)
        release.set()
        await asyncio.gather(*tasks)
        assert (gate.in_use, gate.waiting) == (0, 0)
        return order

    order = asyncio.run(scenario())
    assert order[:2] == ["a in", "b in"] and "c in" in order
    assert order.index("c in") > order.index("a out")


def test_gate_passes_a_cancelled_waiters_slot_on() -> None:
    async def scenario() -> None:
        gate = Gate(running=1, queued=2)
        release = asyncio.Event()
        done: list[str] = []

        async def hold(name: str) -> None:
            async with gate.slot():
                await release.wait()
                done.append(name)

        first = asyncio.create_task(hold("first"))
        second = asyncio.create_task(hold("second"))
        third = asyncio.create_task(hold("third"))
        while gate.waiting < 2:
            await asyncio.sleep(0)
        second.cancel()
        release.set()
        await asyncio.gather(first, third)
        assert done == ["first", "third"]
        assert (gate.in_use, gate.waiting) == (0, 0)

    asyncio.run(scenario())


def test_busy_verbs_answer_503_at_once() -> None:
    """With one slot and no queue, a call while another is being decided is a 503
    naming the limits; the first call still completes."""
    ext = small_extender()
    entered, release = threading.Event(), threading.Event()
    decide = ext.decider.filter

    def slow_filter(args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(30)
        return decide(args, **kwargs)

    ext.decider.filter = slow_filter  # type: ignore[method-assign]
    # Every call on the workers: an inline call would hold the test's loop itself.
    app = ext.app(Limits(max_concurrent=1, max_queued=0, inline_max_bytes=0))
    body = filter_body(pod("eu-0"), ALL)

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://extender") as c:
            first = asyncio.create_task(c.post("/filter", content=body))
            assert await asyncio.to_thread(entered.wait, 30)
            second = await c.post("/prioritize", content=body)
            release.set()
            return await first, second

    first, second = asyncio.run(scenario())
    assert first.status_code == 200 and first.json()["NodeNames"] == ALL
    assert second.status_code == 503
    error = second.json()["Error"]
    assert error.startswith("prioritize: the extender is busy") and "--max-concurrent" in error
    text = ext.telemetry.render().decode()
    assert 'powercap_extender_decisions_total{outcome="busy",verb="prioritize"} 1.0' in text


def test_small_calls_are_decided_inline_large_ones_on_workers() -> None:
    """Filter and prioritize bodies up to ``inline_max_bytes`` are decided on the
    event loop's thread; a larger one, and every preempt, on a worker thread."""
    ext = small_extender()
    threads: list[str] = []
    decide = ext.decider.filter

    def recording_filter(args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return decide(args, **kwargs)

    ext.decider.filter = recording_filter  # type: ignore[method-assign]
    small = filter_body(pod("eu-0"), ALL)
    large = orjson.dumps({"Pod": pod("eu-0"), "NodeNames": ALL, "Pad": "x" * 2_000})
    assert len(small) < 2_000 < len(large)
    app = ext.app(Limits(inline_max_bytes=2_000))

    async def scenario() -> tuple[str, list[httpx.Response]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://extender") as c:
            answers = [await c.post("/filter", content=body) for body in (small, large)]
            return threading.current_thread().name, answers

    loop_thread, answers = asyncio.run(scenario())
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json() == answers[1].json()
    assert threads[0] == loop_thread
    assert threads[1].startswith("powercap-verb")


def test_binds_stuck_on_the_api_server_hold_up_no_other_verb() -> None:
    """A bind waiting on the API server takes a bind worker, not one of filter's; with
    every bind worker taken, the next bind is a 503 at once, never queued."""
    ext = small_extender()
    entered, release = threading.Event(), threading.Event()
    bind = ext.decider.bind

    def stuck_bind(args: Any) -> str:
        entered.set()
        release.wait(30)
        return bind(args)

    ext.decider.bind = stuck_bind  # type: ignore[method-assign]
    app = ext.app(Limits(max_concurrent=1, max_queued=0, max_binds=1))
    p = pod("eu-0")

    async def scenario() -> tuple[httpx.Response, ...]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://extender") as c:
            seen = await c.post("/filter", content=filter_body(p, ALL))
            first = asyncio.create_task(c.post("/bind", content=bind_body(p, "gpu-1a")))
            assert await asyncio.to_thread(entered.wait, 30)
            other = await c.post("/bind", content=bind_body(pod("eu-1"), "gpu-1b"))
            during = await c.post("/filter", content=filter_body(pod("eu-2"), ALL))
            release.set()
            return seen, await first, other, during

    seen, first, other, during = asyncio.run(scenario())
    assert seen.status_code == 200 and during.status_code == 200
    assert during.json()["NodeNames"]
    assert first.json() == {"Error": ""}
    assert other.status_code == 503 and "--max-binds" in other.json()["Error"]
    assert list(ext.state.pods) == ["uid-llm-eu-0"]


def test_bind_bodies_are_held_to_64_kib(target: Target) -> None:
    body = orjson.dumps(
        {"PodName": "eu-0", "PodNamespace": "llm", "Node": "gpu-1a", "Pad": "x" * 70_000}
    )
    r = target.post("/bind", body)
    assert r.status_code == 413 and "over the limit of 65,536 bytes" in r.json()["Error"]
    r = target.post(
        "/filter", orjson.dumps({"Pod": pod("eu-0"), "NodeNames": ALL, "Pad": "x" * 70_000})
    )
    assert r.status_code == 200


def test_refusals_are_counted_from_zero() -> None:
    """The refusals the alert watches exist at 0 before the first one: a counter born at
    its first increment hides that increment from rate()."""
    text = small_extender().telemetry.render().decode()
    for verb in ("filter", "prioritize", "bind", "preempt"):
        for outcome in ("too_large", "busy"):
            sample = f'powercap_extender_decisions_total{{outcome="{outcome}",verb="{verb}"}} 0.0'
            assert sample in text


def test_limits_name_the_field_they_refuse() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"max_body_bytes": 0}, "max_body_bytes"),
        ({"max_candidates": -1}, "max_candidates"),
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"max_binds": 0}, "max_binds"),
        ({"max_queued": -1}, "max_queued"),
        ({"read_timeout_s": 0.0}, "read_timeout_s"),
        ({"max_header_bytes": 0}, "max_header_bytes"),
        ({"inline_max_bytes": -1}, "inline_max_bytes"),
    ]
    for kwargs, field in cases:
        with pytest.raises(ValueError, match=f"^{field}: "):
            Limits(**kwargs)
