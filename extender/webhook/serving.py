"""Running the extender's two HTTP servers in one process.

* The verbs (:func:`~extender.webhook.app.create_app`) on ``ServeSettings.verbs``,
  default ``127.0.0.1:8888``: in the sidecar layout only the scheduler beside it can
  reach them. Where the extender runs apart, they are served with TLS
  (``ServeSettings.tls``) and, with a client CA, only to clients presenting a
  certificate signed by it (mutual TLS).
* Health, readiness and metrics (:func:`~extender.health.create_health_app`) on
  ``ServeSettings.metrics``, default ``0.0.0.0:8889``, plain HTTP: for the kubelet and
  Prometheus, and nothing else.

The metrics server runs on an event loop of its own, in a thread, so a flood of verb
calls (their connections, bodies and TLS on the verbs' loop; their parsing and decisions
on the verbs' worker threads) does not queue the probes behind it. ``/healthz`` still
fails when the verbs' loop stops turning (:class:`~extender.health.Heartbeat`);
``/readyz`` says ready once the verbs listen and the cluster mirror has synced.

Both servers bound what a client can make them hold before the app sees a request
(:func:`bounded_protocol`): the request line and headers together at most
``Limits.max_header_bytes`` (431 beyond), and sent within ``Limits.read_timeout_s`` of
connecting, or of the first byte of a later request on the connection (else the
connection is closed). Bodies, candidates and concurrency are bounded in the verbs' app
(:mod:`extender.webhook.limits`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from extender.webhook.settings import Address, Limits, ServeError, ServeSettings

log = logging.getLogger(__name__)

# Connections beyond the verb calls admitted and queued: kube-scheduler keeps idle
# keep-alive connections. Past the sum uvicorn answers 503 at once.
IDLE_CONNECTIONS = 64
# The metrics address is for probes and scrapes: a handful of clients.
METRICS_CONNECTIONS = 64


class CoalescedTransport:
    """A transport whose writes made in one turn of the event loop leave in one
    ``write`` at the end of that turn.

    uvicorn writes a response's status line and headers, then its body, as two writes:
    two ``send`` calls on loopback, each waking kube-scheduler's reader, which reads the
    headers, finds no body yet and sleeps again. The verbs answer small bodies in the
    same turn as their headers, so joined they cost one system call and one wake-up.
    Everything else is the wrapped transport's; :meth:`close` sends what is pending
    first."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def writelines(self, lines: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Send what is pending now (nothing once the connection is closing)."""
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header bounds (see the module doc); httptools
    itself takes any number of header bytes, at any pace. :func:`bounded_protocol` makes
    one for a :class:`Limits`."""

    max_header_bytes: ClassVar[int] = Limits.max_header_bytes
    read_timeout_s: ClassVar[float] = Limits.read_timeout_s

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_headers = True
        self._header_bytes = 0  # parsed: request line and headers
        self._raw_bytes = 0  # received while headers were incomplete
        self._refused = False
        self._deadline: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        self._awaiting_headers = True
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.read_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        self._awaiting_headers = False
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            log.debug("closed a connection: no complete headers in %gs", self.read_timeout_s)
            self.transport.close()

    def _refuse(self) -> None:
        """Answer 431 and close; the parser may still call back for the rest of the data
        it was given, and those calls are ignored."""
        self._refused = True
        self._disarm()
        message = b"request line and headers over %d bytes" % self.max_header_bytes
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(message), message)
        )
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        coalesced = CoalescedTransport(transport, self.loop)
        super().connection_made(coalesced)  # type: ignore[arg-type]
        self._arm()  # the first request's headers, from connecting

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        # httptools gathers a header's pieces before it calls back: bytes still short
        # of complete headers count here, so one endless header is refused too.
        if self._awaiting_headers and not self._refused:
            self._raw_bytes += len(data)
            if self._raw_bytes > self.max_header_bytes:
                self._refuse()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._arm()  # a later request's headers, from its first byte

    def _over(self, n: int) -> bool:
        """Count ``n`` more parsed header bytes; True once the request is refused."""
        if not self._refused:
            self._header_bytes += n
            if self._header_bytes > self.max_header_bytes:
                self._refuse()
        return self._refused

    def on_url(self, url: bytes) -> None:
        if not self._over(len(url)):
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._over(len(name) + len(value) + 4):  # ": " and CRLF
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        self._raw_bytes = 0
        if not self._refused:
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()


def bounded_protocol(limits: Limits) -> type[BoundedHttpToolsProtocol]:
    """:class:`BoundedHttpToolsProtocol` with the header bounds of ``limits``."""
    bounds = {
        "max_header_bytes": limits.max_header_bytes,
        "read_timeout_s": limits.read_timeout_s,
    }
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), bounds)


class _Server(uvicorn.Server):
    """A uvicorn server that takes the process's signals only in the main thread (the
    metrics server runs in another, and the caller stops it)."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is threading.main_thread():
            with super().capture_signals():
                yield
        else:
            yield


def _bind(address: Address, option: str) -> socket.socket:
    try:
        family = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0][0]
        return socket.create_server((address.host, address.port), family=family, backlog=2048)
    except OSError as exc:
        raise ServeError(f"{option}: cannot listen on {address}: {exc}") from exc


class Servers:
    """The verbs' server and the metrics server of one extender (see the module doc).

    :meth:`run` serves until SIGINT/SIGTERM (in the main thread) or :meth:`stop`;
    :meth:`start` and :meth:`stop` serve from background threads (tests, benchmarks).
    Listening sockets are bound in the constructor, so a port in use is a
    :class:`ServeError` naming the option before anything starts."""

    def __init__(
        self,
        verbs_app: FastAPI,
        metrics_app: FastAPI,
        settings: ServeSettings,
    ) -> None:
        self.settings = settings
        limits = settings.limits
        protocol = bounded_protocol(limits)
        common: dict[str, Any] = {
            "http": protocol,
            "ws": "none",
            "lifespan": "on",
            "log_level": settings.log_level.lower(),
            "access_log": False,
            # No proxy stands in front of either server: the client's address is the
            # peer's, and the per-request middleware that would rewrite it is skipped.
            "proxy_headers": False,
        }
        tls = settings.tls
        verbs_config = uvicorn.Config(
            verbs_app,
            limit_concurrency=(
                limits.max_concurrent + limits.max_queued + limits.max_binds + IDLE_CONNECTIONS
            ),
            ssl_certfile=str(tls.cert) if tls else None,
            ssl_keyfile=str(tls.key) if tls else None,
            ssl_ca_certs=str(tls.client_ca) if tls and tls.client_ca else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if tls and tls.client_ca else ssl.CERT_NONE,
            **common,
        )
        metrics_config = uvicorn.Config(
            metrics_app, limit_concurrency=METRICS_CONNECTIONS, **common
        )
        try:
            verbs_config.load()  # builds the TLS context: a bad file fails here
        except (OSError, ssl.SSLError) as exc:
            which = "--tls-client-ca" if tls and tls.client_ca else "--tls-cert/--tls-key"
            raise ServeError(f"{which}: cannot load: {exc}") from exc
        metrics_config.load()
        self.verbs = _Server(verbs_config)
        self.metrics = _Server(metrics_config)
        self._verbs_socket = _bind(settings.verbs, "--host/--port")
        try:
            self._metrics_socket = _bind(settings.metrics, "--metrics-address")
        except ServeError:
            self._verbs_socket.close()
            raise
        self._threads: list[threading.Thread] = []

    @property
    def verbs_port(self) -> int:
        """The verbs' port (the one bound when the settings asked for port 0)."""
        return int(self._verbs_socket.getsockname()[1])

    @property
    def metrics_port(self) -> int:
        """The metrics port (the one bound when the settings asked for port 0)."""
        return int(self._metrics_socket.getsockname()[1])

    def _start_metrics(self) -> None:
        thread = threading.Thread(
            target=self.metrics.run,
            kwargs={"sockets": [self._metrics_socket]},
            name="powercap-metrics",
            daemon=True,
        )
        thread.start()
        self._threads.append(thread)
        self._wait(self.metrics, thread, "the metrics server")

    @staticmethod
    def _wait(server: uvicorn.Server, thread: threading.Thread, what: str) -> None:
        done = threading.Event()

        def started() -> bool:
            return bool(server.started) or not thread.is_alive()

        while not started():
            done.wait(0.02)
        if not server.started:
            raise ServeError(f"{what} did not start; see the log above")

    def run(self) -> None:
        """Serve until a signal or :meth:`stop`: the metrics server first (probes answer
        while the verbs' app starts), then the verbs in this thread."""
        tls = self.settings.tls
        log.info(
            "scheduler verbs on %s://%s%s; health, readiness and metrics on http://%s",
            "https" if tls else "http",
            self.settings.verbs,
            " (client certificates required)" if tls and tls.client_ca else "",
            self.settings.metrics,
        )
        self._start_metrics()
        try:
            self.verbs.run(sockets=[self._verbs_socket])
        finally:
            self.metrics.should_exit = True
            for thread in self._threads:
                thread.join(10)

    def start(self) -> None:
        """Serve from background threads; returns once both servers listen."""
        self._start_metrics()
        thread = threading.Thread(
            target=self.verbs.run,
            kwargs={"sockets": [self._verbs_socket]},
            name="powercap-verbs",
            daemon=True,
        )
        thread.start()
        self._threads.append(thread)
        self._wait(self.verbs, thread, "the verbs' server")

    def stop(self) -> None:
        """Stop both servers and wait for them (for :meth:`start`)."""
        self.verbs.should_exit = True
        self.metrics.should_exit = True
        for thread in self._threads:
            thread.join(30)
        self._threads.clear()


class HealthServer:
    """A health-only app (``powercap controller``) on one address, with the header bounds
    and connection limit of ``powercap serve``'s metrics address. The socket is bound in
    the constructor: :class:`ServeError` naming ``--metrics-address`` when it cannot be."""

    def __init__(self, app: FastAPI, address: Address, *, log_level: str = "info") -> None:
        config = uvicorn.Config(
            app,
            http=bounded_protocol(Limits()),
            ws="none",
            lifespan="on",
            log_level=log_level.lower(),
            access_log=False,
            limit_concurrency=METRICS_CONNECTIONS,
        )
        self.app = app
        self.address = address
        self.server = _Server(config)
        self._socket = _bind(address, "--metrics-address")

    @property
    def port(self) -> int:
        """The port listened on (the one the OS chose for port 0)."""
        return int(self._socket.getsockname()[1])

    def run(self) -> None:
        """Serve until a signal (in the main thread) or until ``server.should_exit``."""
        log.info("health, readiness and metrics on http://%s", self.address)
        self.server.run(sockets=[self._socket])
