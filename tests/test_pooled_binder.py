"""The Binding as a plain POST through the client's pool (:class:`PooledBinder`): the
request the API server gets, and what a failed one means."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import orjson
import pytest

from extender.cluster.client import core_api
from extender.cluster.pods import PodRef
from extender.webhook.binding import (
    BindError,
    KubernetesBinder,
    PooledBinder,
    binder_for,
)


class _Recorder(BaseHTTPRequestHandler):
    status = 201
    seen: ClassVar[list[tuple[str, str, dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.seen.append(("POST", self.path, dict(self.headers.items()), body))
        reply = b'{"kind":"Status","status":"Success"}'
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def api_server() -> Iterator[tuple[ThreadingHTTPServer, type[_Recorder]]]:
    handler = type("Recorder", (_Recorder,), {"seen": [], "status": 201})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


def _core(port: int, token: str | None = "s3cret") -> Any:
    from kubernetes import client

    settings = client.Configuration()
    settings.host = f"http://127.0.0.1:{port}"
    if token is not None:
        settings.api_key = {"authorization": token}
        settings.api_key_prefix = {"authorization": "Bearer"}
    return core_api(settings)


def test_a_real_client_gets_the_pooled_binder_and_a_stand_in_the_clients_methods() -> None:
    assert type(binder_for(_core(1))) is PooledBinder
    assert type(binder_for(object())) is KubernetesBinder


def test_the_binding_is_the_v1_binding_with_the_clients_token(
    api_server: tuple[ThreadingHTTPServer, type[_Recorder]],
) -> None:
    server, handler = api_server
    binder = binder_for(_core(server.server_address[1]))
    binder.bind(PodRef("llm", "eu-0", "u-1"), "gpu-1a")
    binder.bind(PodRef("llm", "eu-1", ""), "gpu-1b")
    (method, path, headers, body), second = handler.seen
    assert (method, path) == ("POST", "/api/v1/namespaces/llm/pods/eu-0/binding")
    assert headers["authorization"] == "Bearer s3cret"
    assert headers["Content-Type"] == "application/json"
    assert orjson.loads(body) == {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": "eu-0", "namespace": "llm", "uid": "u-1"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "gpu-1a"},
    }
    # No uid, no precondition: as the client's own binder sends it.
    assert orjson.loads(second[3])["metadata"] == {"name": "eu-1", "namespace": "llm"}


def test_a_token_hook_is_asked_at_every_bind(
    api_server: tuple[ThreadingHTTPServer, type[_Recorder]],
) -> None:
    # A rotated token file reaches the client through its refresh hook: each bind asks.
    server, handler = api_server
    core = _core(server.server_address[1])
    tokens = iter(["one", "two"])

    def refresh(configuration: Any) -> None:
        configuration.api_key["authorization"] = next(tokens)

    core.api_client.configuration.refresh_api_key_hook = refresh
    binder = binder_for(core)
    binder.bind(PodRef("llm", "eu-0", "u-1"), "gpu-1a")
    binder.bind(PodRef("llm", "eu-1", "u-2"), "gpu-1a")
    assert [h["authorization"] for _, _, h, _ in handler.seen] == ["Bearer one", "Bearer two"]


@pytest.mark.parametrize(("status", "maybe_bound"), [(409, False), (429, False), (504, True)])
def test_a_refused_or_failed_binding_says_whether_it_may_exist(
    api_server: tuple[ThreadingHTTPServer, type[_Recorder]], status: int, maybe_bound: bool
) -> None:
    server, handler = api_server
    handler.status = status
    with pytest.raises(BindError, match=rf"binding llm/eu-0.*gpu-1a failed: {status}") as raised:
        binder_for(_core(server.server_address[1])).bind(PodRef("llm", "eu-0", "u-1"), "gpu-1a")
    assert raised.value.maybe_bound is maybe_bound


def test_no_connection_means_no_binding() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    port = server.server_address[1]
    server.server_close()  # nothing listens there now
    with pytest.raises(BindError) as raised:
        binder_for(_core(port)).bind(PodRef("llm", "eu-0", "u-1"), "gpu-1a")
    assert raised.value.maybe_bound is False
