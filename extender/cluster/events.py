"""Where the extender's Kubernetes Events go.

Decisions emit through an :class:`EventSink` so tests can record them and the
server can post core/v1 Events without making a decision wait on the API server.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from extender.cluster.client import DEFAULT_TIMEOUTS, call_timeout
from extender.cluster.pods import PodRef
from extender.config.kubernetes import KubernetesSettings

log = logging.getLogger(__name__)

COMPONENT = "powercap-scheduler"
# The API server rejects longer event messages.
MAX_MESSAGE = 1024


@dataclass(frozen=True)
class Event:
    """An Event about ``pod`` — or, with ``kind``/``api_version``, about another
    namespaced object named by the same reference (the controller's ScaledObjects)."""

    pod: PodRef
    reason: str
    message: str
    type: str = "Warning"
    kind: str = "Pod"
    api_version: str = "v1"
    component: str = COMPONENT


class EventSink(Protocol):
    def emit(self, event: Event) -> None:
        """Hand over an event; must not block on I/O."""


class NullEventSink:
    """Drops every event."""

    def emit(self, event: Event) -> None:
        return None


class RecordingEventSink:
    """Keeps events in :attr:`events` (tests, ``serve --scenario``) and logs them."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        log.info("event %s %s %s: %s", event.type, event.reason, event.pod, event.message)
        self.events.append(event)


def event_body(event: Event, now: datetime | None = None) -> dict[str, Any]:
    """The core/v1 Event posted for ``event``."""
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    pod = event.pod
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{pod.name}.", "namespace": pod.namespace},
        "involvedObject": {
            "apiVersion": event.api_version,
            "kind": event.kind,
            "name": pod.name,
            "namespace": pod.namespace,
            "uid": pod.uid,
        },
        "reason": event.reason,
        "message": event.message[:MAX_MESSAGE],
        "type": event.type,
        "source": {"component": event.component, "host": socket.gethostname()},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class KubernetesEventSink:
    """Posts events from a background thread; a full queue drops (and logs) rather
    than slowing a scheduling decision. ``core`` is a ``kubernetes.client.CoreV1Api``;
    each post has the connect and read timeouts of ``timeouts``, so an API server that
    stopped answering delays the queue, never blocks it for good."""

    def __init__(
        self, core: Any, capacity: int = 1000, *, timeouts: KubernetesSettings = DEFAULT_TIMEOUTS
    ) -> None:
        self.core = core
        self.timeouts = timeouts
        self._queue: queue.Queue[Event] = queue.Queue(capacity)
        self._thread = threading.Thread(target=self._run, name="powercap-events", daemon=True)
        self._thread.start()

    def emit(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            log.warning("event queue full; dropped %s for %s", event.reason, event.pod)

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            try:
                self.post(event)
            except Exception as exc:  # an event is best effort; the decision stands
                log.warning("cannot post event %s for %s: %s", event.reason, event.pod, exc)

    def post(self, event: Event) -> None:
        """Post one event now (the background thread's step); raises what the client
        raises, a timeout included."""
        response = self.core.create_namespaced_event(
            event.pod.namespace,
            event_body(event),
            _preload_content=False,
            _request_timeout=call_timeout(self.timeouts),
        )
        response.read()
        response.release_conn()  # back to the pool (see extender/webhook/binding.py)
