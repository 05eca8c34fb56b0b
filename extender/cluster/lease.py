"""Leader election through a coordination.k8s.io/v1 Lease.

Several ``powercap serve`` processes may run (one per scheduler replica); each tracks
breaches and feeds its own ledger, but only the one holding the Lease acts. The rules
follow client-go's leader election:

* **Acquire** when the Lease does not exist (create it), has no holder (released), or
  its record (holder and ``renewTime``) has not changed for ``leaseDurationSeconds``
  *as observed here* — time is measured on this process's clock from when the record
  was last seen changing, never by comparing another machine's ``renewTime`` with
  ours, so clock skew between nodes cannot hand the lease over early.
* **Renew** every ``retryPeriod`` while holding it. Every write is a replace carrying
  the ``resourceVersion`` read, so two candidates racing for one Lease cannot both win:
  the loser gets ``409 Conflict``.
* **Act only while the last successful renewal is younger than ``renewDeadline``**
  (shorter than the lease duration), so a leader cut off from the API server stops
  acting before anyone else may take over.
* **Release** on a clean stop (holder cleared), so a successor need not wait.

:meth:`LeaderElector.try_acquire_or_renew` is one attempt with the time passed in, so
tests drive it with a fake clock and a fake API.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from extender.cluster.client import DEFAULT_TIMEOUTS, call_timeout
from extender.config.controller import LeaseSettings
from extender.config.kubernetes import KubernetesSettings

log = logging.getLogger(__name__)


class LeaseApi(Protocol):
    """Raw reads and writes of one Lease; ``None`` from :meth:`read` when it does not
    exist; writes raise :class:`LeaseConflict` when someone else wrote first."""

    def read(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...

    def replace(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]: ...


class LeaseConflict(RuntimeError):
    """409: the Lease changed (or appeared) since it was read."""


def micro_time(unix_s: float) -> str:
    """A metav1.MicroTime: RFC 3339 with microseconds, UTC."""
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_identity() -> str:
    """``POD_NAME``-like and unique: the host name plus a random suffix (two processes
    on one host must not share an identity)."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


class KubernetesLeaseApi:
    """:class:`LeaseApi` over a ``kubernetes.client.CoordinationV1Api``, raw JSON; every
    call has the connect and read timeouts of ``timeouts`` (a call that hangs counts as a
    failed attempt once it times out)."""

    def __init__(
        self, coordination: Any, *, timeouts: KubernetesSettings = DEFAULT_TIMEOUTS
    ) -> None:
        self.api = coordination
        self.timeouts = timeouts

    @property
    def _timeout(self) -> tuple[float, float]:
        return call_timeout(self.timeouts)

    @staticmethod
    def _body(response: Any) -> dict[str, Any]:
        data: dict[str, Any] = orjson.loads(response.data)
        response.release_conn()
        return data

    def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._body(
                self.api.read_namespaced_lease(
                    name, namespace, _preload_content=False, _request_timeout=self._timeout
                )
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._body(
                self.api.create_namespaced_lease(
                    namespace, body, _preload_content=False, _request_timeout=self._timeout
                )
            )
        except ApiException as exc:
            if exc.status == 409:
                raise LeaseConflict("the Lease was created by someone else") from exc
            raise

    def replace(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._body(
                self.api.replace_namespaced_lease(
                    name, namespace, body, _preload_content=False, _request_timeout=self._timeout
                )
            )
        except ApiException as exc:
            if exc.status == 409:
                raise LeaseConflict("the Lease changed since it was read") from exc
            raise


class LeaderElector:
    """Holds (or waits for) one Lease; see the module docstring.

    ``on_change(leading)`` is called whenever leadership is gained or lost.
    """

    def __init__(
        self,
        api: LeaseApi,
        settings: LeaseSettings,
        identity: str | None = None,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.api = api
        self.settings = settings
        self.identity = identity or default_identity()
        self.clock = clock
        self.monotonic = monotonic
        self.on_change = on_change
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = -math.inf  # monotonic time it was seen changing
        self._renewed_at = -math.inf  # monotonic time of our last successful write
        self._leading = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- state --------------------------------------------------------------------------
    def is_leader(self, now: float | None = None) -> bool:
        """Whether this process may act now (``now`` on the monotonic clock)."""
        t = self.monotonic() if now is None else now
        return self._leading and t - self._renewed_at < self.settings.renew_deadline_s

    def _set_leading(self, leading: bool) -> None:
        if leading != self._leading:
            log.info(
                "%s %s the lease %s/%s",
                self.identity,
                "holds" if leading else "lost",
                self.settings.namespace,
                self.settings.name,
            )
            self._leading = leading
            if self.on_change is not None:
                self.on_change(leading)

    # --- one attempt --------------------------------------------------------------------
    def _spec(self, wall: float, acquired: str | None, transitions: int) -> dict[str, Any]:
        stamp = micro_time(wall)
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, math.ceil(self.settings.duration_s)),
            "acquireTime": acquired or stamp,
            "renewTime": stamp,
            "leaseTransitions": transitions,
        }

    def try_acquire_or_renew(self) -> bool:
        """One attempt; returns whether this process holds the Lease afterwards.
        API errors other than a conflict count as a failed attempt (logged)."""
        now = self.monotonic()
        try:
            held = self._attempt(now)
        except LeaseConflict as exc:
            log.info("lease %s: %s", self.settings.name, exc)
            held = None
        except Exception as exc:  # the API server unreachable: keep trying
            log.warning("lease %s: %s: %s", self.settings.name, type(exc).__name__, exc)
            held = None
        if held:
            self._renewed_at = now
        if held is None:
            # A failed write does not end leadership at once: the lease written last
            # still stands, so is_leader() holds until the renew deadline.
            self._set_leading(self._leading and self.is_leader(now))
        else:
            self._set_leading(held)  # False: someone else holds it now
        return self.is_leader(now)

    def _attempt(self, now: float) -> bool:
        s = self.settings
        wall = self.clock()
        current = self.api.read(s.namespace, s.name)
        if current is None:
            spec_new = self._spec(wall, None, 0)
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": s.name, "namespace": s.namespace},
                "spec": spec_new,
            }
            self.api.create(s.namespace, body)
            self._observe(self.identity, spec_new["renewTime"], now)
            return True
        spec = current.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        renewed = str(spec.get("renewTime") or "")
        if (holder, renewed) != self._observed:
            self._observe(holder, renewed, now)
        duration = float(spec.get("leaseDurationSeconds") or s.duration_s)
        mine = holder == self.identity
        expired = now - self._observed_at >= duration
        if holder and not mine and not expired:
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if mine else 1)
        body = dict(current)
        spec_new = self._spec(
            wall, str(spec.get("acquireTime") or "") if mine else None, transitions
        )
        body["spec"] = spec_new
        # The resourceVersion read is in the metadata we send back: a concurrent write
        # makes this a 409 (LeaseConflict), never a silent double leader.
        self.api.replace(s.namespace, s.name, body)
        self._observe(self.identity, spec_new["renewTime"], now)
        if not mine:
            log.info("%s took over the lease from %r", self.identity, holder or "(none)")
        return True

    def _observe(self, holder: str, renewed: str, now: float) -> None:
        self._observed = (holder, renewed)
        self._observed_at = now

    def release(self) -> None:
        """Give the Lease up if held (clear the holder), so a successor need not wait."""
        if not self._leading:
            return
        s = self.settings
        try:
            current = self.api.read(s.namespace, s.name)
            spec = (current or {}).get("spec") or {}
            if current is not None and spec.get("holderIdentity") == self.identity:
                body = dict(current)
                body["spec"] = {**spec, "holderIdentity": "", "leaseDurationSeconds": 1}
                self.api.replace(s.namespace, s.name, body)
        except Exception as exc:
            log.warning("lease %s: release failed: %s", s.name, exc)
        self._set_leading(False)

    # --- the background thread ------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="powercap-lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.try_acquire_or_renew()
            if self._stop.wait(self.settings.retry_period_s):
                break

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.release()
