"""``powercap serve``'s two servers on loopback sockets: what each address serves, the
header bounds every connection gets before the app sees a request, and mutual TLS on the
verbs. Certificates are made for the test by ``trustme``."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from typer.testing import CliRunner

from extender.runtime import Extender
from extender.webhook.serving import CoalescedTransport, HealthServer, Servers
from extender.webhook.settings import Address, Limits, ServeError, ServeSettings, Tls
from tests.scheduler_payloads import filter_body, pod, small_extender

ALL = ["gpu-1a", "gpu-1b", "gpu-2a"]
LOOPBACK = "127.0.0.1"
# Generous: a wait for something that happens, not a measured time.
WAIT_S = 30.0


def _settings(tls: Tls | None = None, limits: Limits | None = None) -> ServeSettings:
    return ServeSettings(
        verbs=Address(LOOPBACK, 0),
        metrics=Address(LOOPBACK, 0),
        tls=tls,
        limits=limits or Limits(),
        log_level="warning",
    )


def _serving(ext: Extender, settings: ServeSettings) -> Iterator[Servers]:
    servers = ext.servers(settings)
    servers.start()
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def ext() -> Extender:
    return small_extender()


@pytest.fixture
def servers(ext: Extender) -> Iterator[Servers]:
    """Both servers with a short read deadline and a small header budget."""
    yield from _serving(ext, _settings(limits=Limits(read_timeout_s=0.2, max_header_bytes=4096)))


def test_each_address_serves_only_its_own(servers: Servers) -> None:
    verbs = f"http://{LOOPBACK}:{servers.verbs_port}"
    metrics = f"http://{LOOPBACK}:{servers.metrics_port}"
    body = filter_body(pod("eu-0"), ALL)
    with httpx.Client(timeout=WAIT_S) as c:
        r = c.post(f"{verbs}/filter", content=body)
        assert r.status_code == 200 and r.json()["NodeNames"] == ALL
        assert c.get(f"{metrics}/healthz").text == "ok"
        assert c.get(f"{metrics}/readyz").text == "ok"
        assert "powercap_extender_request_seconds" in c.get(f"{metrics}/metrics").text
        for path in ("/healthz", "/readyz", "/metrics"):
            assert c.get(f"{verbs}{path}").status_code == 404
        for path in ("/filter", "/prioritize", "/bind", "/preempt"):
            assert c.post(f"{metrics}{path}", content=body).status_code in (404, 405)


def _raw(port: int, data: bytes) -> bytes:
    """Send ``data`` on a new connection; everything the server answers until it
    closes the connection."""
    with socket.create_connection((LOOPBACK, port), timeout=WAIT_S) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


@pytest.mark.parametrize("which", ["verbs", "metrics"])
def test_oversize_headers_are_a_431_and_the_connection_closes(servers: Servers, which: str) -> None:
    port = servers.verbs_port if which == "verbs" else servers.metrics_port
    many = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 100) for i in range(100))
    answer = _raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert answer.endswith(b"request line and headers over 4096 bytes")
    # One endless header, sent in pieces: httptools would gather it whole.
    with socket.create_connection((LOOPBACK, port), timeout=WAIT_S) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        with pytest.raises(OSError):  # closed while we still send
            for _ in range(10_000):
                s.sendall(b"a" * 1024)
    with httpx.Client(timeout=WAIT_S) as c:  # and the server still serves
        assert c.get(f"http://{LOOPBACK}:{servers.metrics_port}/healthz").text == "ok"


def test_the_controllers_health_server_bounds_headers(ext: Extender) -> None:
    """``powercap controller`` serves its health address with the same header bound as
    ``powercap serve``'s metrics address (64 KiB by default)."""
    import threading
    import time

    server = HealthServer(ext.health_app(), Address(LOOPBACK, 0), log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not server.server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        assert server.server.started
        many = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(70))
        answer = _raw(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
        assert answer.startswith(b"HTTP/1.1 431 ")
        with httpx.Client(timeout=WAIT_S) as c:
            assert c.get(f"http://{LOOPBACK}:{server.port}/healthz").text == "ok"
    finally:
        server.server.should_exit = True
        thread.join(WAIT_S)


@pytest.mark.parametrize(
    "sent",
    [b"", b"POST /filter HTTP/1.1\r\nHost: x\r\n"],
    ids=["silent", "headers-never-end"],
)
def test_headers_not_sent_in_time_close_the_connection(servers: Servers, sent: bytes) -> None:
    """With a 0.2 s read deadline, a client that sends nothing, or headers that never
    end, is disconnected without an answer (the socket timeout only keeps a broken
    server from hanging the test)."""
    assert _raw(servers.verbs_port, sent) == b""


def test_body_not_sent_in_time_is_a_408(servers: Servers) -> None:
    head = b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"
    answer = _raw(servers.verbs_port, head)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"request body not received within 0.2 s" in answer


def test_pipelined_requests_are_all_answered(servers: Servers) -> None:
    body = filter_body(pod("eu-0"), ALL)
    one = b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    last = one.replace(b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n")
    answer = _raw(servers.verbs_port, one + one + last)
    assert answer.count(b"HTTP/1.1 200 ") == 3


def test_port_in_use_names_the_option(ext: Extender) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = _settings()
        clash = ServeSettings(verbs=settings.verbs, metrics=Address(LOOPBACK, port))
        with pytest.raises(ServeError, match=r"^--metrics-address: cannot listen on 127\.0\.0\.1"):
            ext.servers(clash)
        clash = ServeSettings(verbs=Address(LOOPBACK, port), metrics=settings.metrics)
        with pytest.raises(ServeError, match=r"^--host/--port: cannot listen"):
            ext.servers(clash)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A server CA with the extender's certificate, and a client CA with
    kube-scheduler's: as PEM files."""
    out = tmp_path_factory.mktemp("pki")
    server_ca, client_ca, stranger_ca = trustme.CA(), trustme.CA(), trustme.CA()
    server = server_ca.issue_cert(LOOPBACK)
    client = client_ca.issue_cert("kube-scheduler")
    stranger = stranger_ca.issue_cert("kube-scheduler")
    files = {
        "server.crt": server.cert_chain_pems[0].bytes(),
        "server.key": server.private_key_pem.bytes(),
        "server-ca.crt": server_ca.cert_pem.bytes(),
        "client-ca.crt": client_ca.cert_pem.bytes(),
        "client.pem": client.private_key_and_cert_chain_pem.bytes(),
        "stranger.pem": stranger.private_key_and_cert_chain_pem.bytes(),
    }
    for name, data in files.items():
        (out / name).write_bytes(data)
    return {name: out / name for name in files}


def _client_context(pki: dict[str, Path], cert: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki["server-ca.crt"])
    if cert is not None:
        context.load_cert_chain(pki[cert])
    return context


def test_mutual_tls_admits_only_the_client_ca(ext: Extender, pki: dict[str, Path]) -> None:
    tls = Tls(pki["server.crt"], pki["server.key"], client_ca=pki["client-ca.crt"])
    body = filter_body(pod("eu-0"), ALL)
    for servers in _serving(ext, _settings(tls)):
        url = f"https://{LOOPBACK}:{servers.verbs_port}/filter"
        with httpx.Client(verify=_client_context(pki, "client.pem"), timeout=WAIT_S) as c:
            r = c.post(url, content=body)
            assert r.status_code == 200 and r.json()["NodeNames"] == ALL
        for cert in (None, "stranger.pem"):  # no certificate, or one from another CA
            with (
                httpx.Client(verify=_client_context(pki, cert), timeout=WAIT_S) as c,
                pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)),
            ):
                c.post(url, content=body)
        with httpx.Client(timeout=WAIT_S) as c:  # plain HTTP is not spoken there at all
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                c.post(f"http://{LOOPBACK}:{servers.verbs_port}/filter", content=body)
            # The metrics address stays plain HTTP, for the kubelet and Prometheus.
            assert c.get(f"http://{LOOPBACK}:{servers.metrics_port}/healthz").text == "ok"


def test_tls_without_client_ca_serves_any_client(ext: Extender, pki: dict[str, Path]) -> None:
    tls = Tls(pki["server.crt"], pki["server.key"])
    for servers in _serving(ext, _settings(tls)):
        url = f"https://{LOOPBACK}:{servers.verbs_port}/filter"
        with httpx.Client(verify=_client_context(pki, None), timeout=WAIT_S) as c:
            assert c.post(url, content=filter_body(pod("eu-0"), ALL)).status_code == 200


def test_unreadable_tls_files_name_the_option(ext: Extender, pki: dict[str, Path]) -> None:
    bad = Tls(pki["server.crt"], pki["client-ca.crt"])  # a certificate is no key
    with pytest.raises(ServeError, match=r"^--tls-cert/--tls-key: cannot load"):
        ext.servers(_settings(bad))
    bad = Tls(pki["server.crt"], pki["server.key"], client_ca=pki["server.key"])
    with pytest.raises(ServeError, match=r"^--tls-client-ca: cannot load"):
        ext.servers(_settings(bad))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-client-ca", "ca.crt"], "--tls-client-ca needs --tls-cert and --tls-key"),
        (["--tls-cert", "a.crt"], "give both --tls-cert and --tls-key"),
        (["--tls-cert", "nope.crt", "--tls-key", "nope.key"], "--tls-cert: no such file"),
        (["--metrics-address", "8889"], "--metrics-address: expected HOST:PORT"),
        (["--metrics-address", "host:port"], "--metrics-address: expected HOST:PORT"),
        (["--port", "9000", "--metrics-address", "127.0.0.1:9000"], "give them two addresses"),
        (["--max-concurrent", "0"], "--max-concurrent"),
        (["--max-body-bytes", "0"], "--max-body-bytes"),
        (["--max-candidates", "0"], "--max-candidates"),
        (["--max-queued", "-1"], "--max-queued"),
        (["--max-binds", "0"], "--max-binds"),
        (["--read-timeout", "0"], "--read-timeout"),
    ],
)
def test_serve_options_are_checked_naming_the_option(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """The options are checked before anything is read: the scenario need not exist."""
    import typer

    from powercap.commands.serve import register

    scenario = tmp_path / "never-read.yaml"
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:
        """A group, so ``serve`` is a subcommand."""

    result = CliRunner().invoke(app, ["serve", "--scenario", str(scenario), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_address_parses_hosts_and_ports() -> None:
    assert Address.parse("0.0.0.0:8889", option="--x") == Address("0.0.0.0", 8889)
    assert Address.parse("[::]:8889", option="--x") == Address("::", 8889)
    assert str(Address("::", 8889)) == "[::]:8889"
    for bad in ("", ":8889", "0.0.0.0:", "0.0.0.0:99999", "localhost"):
        with pytest.raises(ServeError, match=r"^--x: expected HOST:PORT"):
            Address.parse(bad, option="--x")


class _RecordingTransport:
    """The part of an asyncio transport :class:`CoalescedTransport` writes through."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def test_writes_of_one_loop_turn_leave_as_one() -> None:
    """Headers and body written in the same turn reach the socket in one write, in
    order; close sends what is pending first; a closing connection gets nothing more."""

    async def scenario() -> list[list[bytes]]:
        loop = asyncio.get_running_loop()
        raw = _RecordingTransport()
        t = CoalescedTransport(raw, loop)  # type: ignore[arg-type]
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        t.write(memoryview(b"{}"))
        assert raw.writes == [] and t.get_write_buffer_size() == 21
        await asyncio.sleep(0)
        seen = [list(raw.writes)]
        t.write(b"late")
        t.close()
        seen.append(list(raw.writes))
        t.write(b"after close")
        await asyncio.sleep(0)
        seen.append(list(raw.writes))
        assert t.get_extra_info("peername") == "info:peername"
        return seen

    first, closed, after = asyncio.run(scenario())
    assert first == [b"HTTP/1.1 200 OK\r\n\r\n{}"]
    assert closed == [*first, b"late"]
    assert after == closed
