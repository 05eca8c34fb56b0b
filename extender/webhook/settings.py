"""How ``powercap serve`` listens and what it bounds, as plain values: the addresses,
TLS files and :class:`Limits` the servers (:mod:`extender.webhook.serving`) and the verbs'
app (:mod:`extender.webhook.app`) run with. Nothing here imports the HTTP stack, so the
CLI can take its defaults from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

MiB = 1024 * 1024
DEFAULT_VERBS_HOST = "127.0.0.1"
DEFAULT_VERBS_PORT = 8888
DEFAULT_METRICS_ADDRESS = "0.0.0.0:8889"


@dataclass(frozen=True)
class Limits:
    """Bounds on the scheduler verbs (``/filter``, ``/prioritize``, ``/bind``, ``/preempt``).

    * ``max_body_bytes`` — a request body over it is refused with 413 from its
      ``Content-Length`` (nothing read), or as soon as the bytes read pass it.
    * ``max_candidates`` — ``NodeNames``, ``Nodes.items``, the nodes of ``/preempt`` and
      their victims: a longer list is refused with 413 naming the field.
    * ``read_timeout_s`` — a client has this long to send its headers (from connecting, or
      from the first byte of a later request on the connection) and, once admitted, its
      body; then the connection is closed (headers) or the call answered 408 (body).
    * ``max_concurrent`` — filter, prioritize and preempt calls served at once, each on a
      worker thread; ``max_queued`` more wait their turn in arrival order; beyond that a
      call is answered 503 at once.
    * ``max_binds`` — binds served at once, each on a worker thread of its own pool (a
      bind waits on the API server); one more is answered 503 at once, never queued, so
      no bind outlasts the scheduler's ``httpTimeout`` waiting for a thread. Bind bodies
      are held to 64 KiB. kube-scheduler binds asynchronously: at 200 pods/s and an API
      server that takes half a second under load, 100 binds are under way; a 503 costs
      the pod a back-off and a second scheduling cycle, so the bound is generous.
    * ``max_header_bytes`` — request line and headers together; more is answered 431.
    * ``inline_max_bytes`` — a filter or prioritize body up to this size is parsed and
      decided on the verbs' event loop (a millisecond or two at most), not handed to a
      worker thread: the hop costs two thread wake-ups, which on a busy machine is most
      of a small call's tail. Larger bodies, preempt and bind always go to the workers;
      0 sends every call to them.

    Raises ``ValueError`` naming the field when a bound is not positive.
    """

    max_body_bytes: int = 8 * MiB
    max_candidates: int = 20_000
    read_timeout_s: float = 5.0
    max_concurrent: int = 16
    max_queued: int = 64
    max_binds: int = 256
    max_header_bytes: int = 64 * 1024
    inline_max_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        for name in (
            "max_body_bytes",
            "max_candidates",
            "max_concurrent",
            "max_binds",
            "max_header_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        for name in ("max_queued", "inline_max_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be 0 or more, got {getattr(self, name)}")
        if not self.read_timeout_s > 0:
            raise ValueError(f"read_timeout_s: must be positive, got {self.read_timeout_s}")


class ServeError(ValueError):
    """Settings the servers cannot run with; ``str()`` names the option."""


@dataclass(frozen=True)
class Address:
    """A host and port to listen on."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, *, option: str) -> Address:
        """``HOST:PORT`` (``[::]:8889`` for an IPv6 host); raises :class:`ServeError`
        naming ``option``."""
        host, sep, port = text.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ServeError(f"{option}: expected HOST:PORT (e.g. 0.0.0.0:8889), got {text!r}")
        return cls(host, int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Tls:
    """The verbs' TLS: a PEM certificate and key; with ``client_ca``, a client
    certificate signed by that CA is required (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True)
class ServeSettings:
    """Where and how the two servers listen (see the module doc)."""

    verbs: Address = field(default_factory=lambda: Address(DEFAULT_VERBS_HOST, DEFAULT_VERBS_PORT))
    metrics: Address = field(
        default_factory=lambda: Address.parse(DEFAULT_METRICS_ADDRESS, option="metrics")
    )
    tls: Tls | None = None
    limits: Limits = field(default_factory=Limits)
    log_level: str = "info"
