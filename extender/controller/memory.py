"""What a leading controller knows that the cluster does not show, kept for the next leader.

The ScaledObjects' annotations say what was lowered; nothing in the cluster says when the
current breach of a domain began, which steps the ladder has taken in it (settle periods,
reshape rounds) or when the last evictions were (the rate windows). A new leader starting
from nothing would begin every ladder at the bottom again and evict a whole fresh budget
at once. :class:`ControllerMemory` is that knowledge, by domain name, as JSON;
:class:`MemoryKeeper` writes it through a :class:`StateStore` — in production
:class:`ConfigMapStateStore`, one ConfigMap in the controller's namespace — only when it
changed, at most once per ``minInterval`` unless a step was taken, and reads it back when
this process becomes the leader.

Why a ConfigMap and not annotations on the Lease: the elector replaces the Lease every
retry period with the ``resourceVersion`` it read, so a second writer on the same object
would make renewals conflict and could cost the leadership; carrying the state inside the
renewals would tie the election's small, frequent writes to whatever the state weighs. A
ConfigMap has its own RBAC rule (limited to its name), 1 MiB of room, can be read with
``kubectl``, and a conflict there costs a retry, nothing more. Its writes carry the
``resourceVersion`` read too: two leaders' records are merged, never lost.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import orjson

from placement.control.ladder import Step

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DATA_KEY = "memory.json"
WRITER_ANNOTATION = "powercap.io/written-by"
STEP_KINDS = ("reshape", "evict", "restore")
# Power-limit steps are kept under their own key, which readers without the power-limit
# rung ignore: a memory written by either version reads back in the other.
LIMIT_STEP_KINDS = ("cap", "uncap")


class StateStoreError(RuntimeError):
    """The store could not be read or written."""


class StateConflict(StateStoreError):
    """409: someone wrote the state since it was read."""


@dataclass(frozen=True)
class ControllerMemory:
    """Per domain name: when its current breach began (``breach_since``, only domains in
    breach), the steps taken (``steps``) and eviction times (``evictions``); and the
    cluster's eviction times. Times are unix seconds of the leader's clock."""

    breach_since: Mapping[str, float] = field(default_factory=dict)
    steps: Mapping[str, tuple[Step, ...]] = field(default_factory=dict)
    evictions: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    cluster_evictions: tuple[float, ...] = ()

    def payload(self) -> bytes:
        """Canonical JSON (sorted keys and times), so equal memories give equal bytes."""
        doc = {
            "version": FORMAT_VERSION,
            "breachSince": {d: t for d, t in sorted(self.breach_since.items())},
            "steps": _steps_doc(self.steps, STEP_KINDS),
            "limitSteps": _steps_doc(self.steps, LIMIT_STEP_KINDS),
            "evictions": {d: sorted(ts) for d, ts in sorted(self.evictions.items()) if ts},
            "clusterEvictions": sorted(self.cluster_evictions),
        }
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)

    @staticmethod
    def from_payload(data: bytes | str) -> ControllerMemory:
        """The memory in ``data`` (as :meth:`payload` writes it); raises ``ValueError``
        on anything else, naming what is wrong."""
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
            raise ValueError(f"not a version {FORMAT_VERSION} controller memory")
        steps: dict[str, tuple[Step, ...]] = {}
        for key, kinds in (("steps", STEP_KINDS), ("limitSteps", LIMIT_STEP_KINDS)):
            for d, v in _mapping(doc, key).items():
                steps[d] = (*steps.get(d, ()), *(_step(s, kinds) for s in _list(v)))
        return ControllerMemory(
            breach_since={d: _time(t) for d, t in _mapping(doc, "breachSince").items()},
            steps=steps,
            evictions={
                d: tuple(_time(t) for t in _list(v)) for d, v in _mapping(doc, "evictions").items()
            },
            cluster_evictions=tuple(_time(t) for t in _list(doc.get("clusterEvictions", []))),
        )

    def merged(self, other: ControllerMemory) -> ControllerMemory:
        """What both know: every recorded breach (the earlier start where both record
        one), every step either took, and every eviction either counted (one both
        record is one)."""
        since = dict(other.breach_since)
        for d, t in self.breach_since.items():
            since[d] = min(t, since.get(d, math.inf))
        steps = {
            d: tuple(sorted({*self.steps.get(d, ()), *other.steps.get(d, ())}, key=_step_key))
            for d in {*self.steps, *other.steps}
        }
        evictions = {
            d: union_times(self.evictions.get(d, ()), other.evictions.get(d, ()))
            for d in {*self.evictions, *other.evictions}
        }
        return ControllerMemory(
            since, steps, evictions, union_times(self.cluster_evictions, other.cluster_evictions)
        )


def union_times(a: Iterable[float], b: Iterable[float]) -> tuple[float, ...]:
    """Both lists of times as one, sorted: a time listed n times in one and m in the other
    is listed max(n, m) times (two victims of one tick share their time)."""
    counts = Counter(a) | Counter(b)
    return tuple(sorted(counts.elements()))


def _step_key(s: Step) -> tuple[float, str]:
    return (s.at, s.kind)


def _mapping(doc: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{key}: expected an object keyed by domain name")
    return value


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list, got {value!r}")
    return value


def _time(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"expected a time in unix seconds, got {value!r}")
    return float(value)


def _step(value: Any, kinds: tuple[str, ...] = STEP_KINDS) -> Step:
    if not (isinstance(value, list) and len(value) == 2 and value[0] in kinds):
        raise ValueError(f"expected a step [kind, time] of {'/'.join(kinds)}, got {value!r}")
    return Step(value[0], _time(value[1]))


def _steps_doc(
    steps: Mapping[str, tuple[Step, ...]], kinds: tuple[str, ...]
) -> dict[str, list[list[Any]]]:
    out: dict[str, list[list[Any]]] = {}
    for d, domain_steps in sorted(steps.items()):
        kept = sorted((s for s in domain_steps if s.kind in kinds), key=_step_key)
        if kept:
            out[d] = [[s.kind, s.at] for s in kept]
    return out


# --- where it is kept ---------------------------------------------------------------------
class StateStore(Protocol):
    """One opaque payload and its version (the object's ``resourceVersion``)."""

    def read(self) -> tuple[bytes | None, str | None]:
        """The payload and its version; ``(None, None)`` when nothing was written yet.
        Raises :class:`StateStoreError`."""

    def write(self, payload: bytes, version: str | None) -> str:
        """Create (``version`` ``None``) or replace the payload read at ``version``;
        returns the new version. Raises :class:`StateConflict` when it changed since."""


class ConfigMapStateStore:
    """:class:`StateStore` in the ConfigMap ``name`` of ``namespace``, through a
    ``kubernetes.client.CoreV1Api``; the payload is its ``data["memory.json"]``, and
    ``identity`` (the writer's) goes into an annotation, for whoever reads it."""

    def __init__(
        self, core: Any, namespace: str, name: str, *, identity: str, timeout_s: float = 10.0
    ) -> None:
        self.core = core
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timeout_s = timeout_s

    def read(self) -> tuple[bytes | None, str | None]:
        from kubernetes.client.exceptions import ApiException

        try:
            response = self.core.read_namespaced_config_map(
                self.name,
                self.namespace,
                _preload_content=False,
                _request_timeout=self.timeout_s,
            )
            obj = orjson.loads(response.data)
            response.release_conn()
        except ApiException as exc:
            if exc.status == 404:
                return None, None
            raise StateStoreError(f"reading ConfigMap {self}: {exc.status} {exc.reason}") from exc
        except OSError as exc:  # urllib3's errors: the API server unreachable or slow
            raise StateStoreError(f"reading ConfigMap {self}: {exc}") from exc
        data = (obj.get("data") or {}).get(DATA_KEY)
        version = (obj.get("metadata") or {}).get("resourceVersion")
        return (None if data is None else str(data).encode()), version

    def write(self, payload: bytes, version: str | None) -> str:
        from kubernetes.client.exceptions import ApiException

        meta: dict[str, Any] = {
            "name": self.name,
            "namespace": self.namespace,
            "labels": {"app.kubernetes.io/part-of": "powercap"},
            "annotations": {WRITER_ANNOTATION: self.identity},
        }
        if version is not None:
            meta["resourceVersion"] = version
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta,
            "data": {DATA_KEY: payload.decode()},
        }
        try:
            if version is None:
                response = self.core.create_namespaced_config_map(
                    self.namespace, body, _preload_content=False, _request_timeout=self.timeout_s
                )
            else:
                response = self.core.replace_namespaced_config_map(
                    self.name,
                    self.namespace,
                    body,
                    _preload_content=False,
                    _request_timeout=self.timeout_s,
                )
            written = orjson.loads(response.data)
            response.release_conn()
        except ApiException as exc:
            if exc.status == 409:
                raise StateConflict(f"ConfigMap {self} changed since it was read") from exc
            raise StateStoreError(f"writing ConfigMap {self}: {exc.status} {exc.reason}") from exc
        except OSError as exc:
            raise StateStoreError(f"writing ConfigMap {self}: {exc}") from exc
        return cast(str, written["metadata"]["resourceVersion"])

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Saved:
    """What :meth:`MemoryKeeper.save` did: ``written`` or not (unchanged, or not due yet);
    ``theirs`` is the newer memory someone else had written, which the write merged in
    (``None`` when there was none)."""

    written: bool
    theirs: ControllerMemory | None = None


class MemoryKeeper:
    """Reads and writes a :class:`ControllerMemory` through ``store``: a write happens only
    when the memory differs from what was last read or written, and, unless ``urgent``,
    at most once per ``min_interval_s``. A write that meets a newer version re-reads it,
    merges and tries once more."""

    def __init__(self, store: StateStore, min_interval_s: float) -> None:
        self.store = store
        self.min_interval_s = min_interval_s
        self.writes = 0
        self._payload: bytes | None = None  # as last read or written
        self._version: str | None = None
        self._written_at = -math.inf

    def load(self) -> ControllerMemory:
        """What the store holds (empty when nothing, or nothing readable, is there).
        Raises :class:`StateStoreError` when it cannot be read."""
        payload, version = self.store.read()
        self._version = version
        if payload is None:
            # Nothing written yet reads as nothing remembered: no write until there is.
            self._payload = ControllerMemory().payload()
            return ControllerMemory()
        self._payload = payload
        try:
            return ControllerMemory.from_payload(payload)
        except ValueError as exc:
            # Overwritten by the next write; acting on a guess of it would be worse.
            log.error(
                "controller memory in %s is unreadable (%s); starting afresh", self.store, exc
            )
            return ControllerMemory()

    def save(self, memory: ControllerMemory, *, now: float, urgent: bool) -> Saved:
        """Write ``memory`` if it changed and is due (see :class:`Saved`). Raises
        :class:`StateStoreError` (:class:`StateConflict` when the store changed again
        between the re-read and the second try)."""
        payload = memory.payload()
        if payload == self._payload:
            return Saved(False)
        if not urgent and now - self._written_at < self.min_interval_s:
            return Saved(False)
        theirs: ControllerMemory | None = None
        try:
            self._version = self.store.write(payload, self._version)
        except StateConflict:
            theirs = self.load()
            payload = memory.merged(theirs).payload()
            self._version = self.store.write(payload, self._version)
        self._payload = payload
        self._written_at = now
        self.writes += 1
        return Saved(True, theirs)
