"""The cluster mirror: Nodes and Pods from the API server into the cluster state.

Two reflectors (one per resource) list, then watch from the list's resourceVersion,
on raw JSON (orjson; the client's model objects are far too slow at 50k pods):

* a watch that ends (server timeout) resumes from the last resourceVersion seen;
* ``410 Gone`` (the version was compacted away) relists and replaces what is known;
* any other error backs off exponentially (with jitter) and resumes.

What an object means for the state is decided by pure functions —
:func:`node_view`, :func:`pod_record`, :func:`pending_pod`, :func:`apply_node_event`,
:func:`apply_pod_event`, :func:`replace_nodes`, :func:`replace_pods` — so it is tested
without a cluster. Nodes map to leaf domains by the ``powercap.io/domain`` label (the
config's ``nodes.domainLabel``). Pods count once bound (``spec.nodeName`` set) and
until they are deleted or terminal. Pending pods are kept in the state's
:attr:`~extender.cluster.state.ClusterState.pending` — the only pods ``/bind`` binds —
and handed to ``on_pending``. A relist keeps the pods the extender is binding
(assumed) that the list still shows pending (``scheduler.assumedPodTTL``).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from extender.cluster.client import DEFAULT_TIMEOUTS, call_timeout, watch_timeout
from extender.cluster.pods import DemandResolver, is_terminal, node_name_of, scheduler_name_of
from extender.cluster.raw import ProtocolError, RawObject, get_field, metadata_of, shared
from extender.cluster.state import ClusterState, PendingPod, PodRecord
from extender.config.kubernetes import KubernetesSettings
from extender.config.model import Config

log = logging.getLogger(__name__)


# --- pure: what objects mean ------------------------------------------------------------
@dataclass(frozen=True)
class NodeView:
    """A node as powercap sees it; ``leaf`` is ``None`` (with ``problem``) when the
    node is not in the tree."""

    name: str
    leaf: int | None
    gpus: int
    idle_watts: float
    problem: str | None = None


def resource_version(obj: RawObject) -> str | None:
    rv = get_field(metadata_of(obj), "resourceVersion")
    return rv if isinstance(rv, str) and rv else None


def node_view(obj: RawObject, config: Config) -> NodeView:
    """Read a raw v1.Node: its domain label, allocatable GPUs and idle watts."""
    meta = metadata_of(obj)
    name = str(get_field(meta, "name") or "")
    labels = get_field(meta, "labels") or {}
    annotations = get_field(meta, "annotations") or {}
    spec = config.nodes
    status = get_field(obj, "status") or {}
    allocatable = get_field(status, "allocatable") or {}
    gpus = 0
    raw_gpus = allocatable.get(spec.gpu_resource)
    if raw_gpus is not None:
        try:
            gpus = int(str(raw_gpus))
        except ValueError:
            log.warning("node %s: unreadable %s %r", name, spec.gpu_resource, raw_gpus)
    idle = spec.default_idle_watts
    raw_idle = annotations.get(spec.idle_watts_annotation)
    if raw_idle is not None:
        try:
            idle = float(raw_idle)
        except ValueError:
            log.warning("node %s: unreadable %s %r", name, spec.idle_watts_annotation, raw_idle)
    domain = labels.get(spec.domain_label)
    if not isinstance(domain, str) or not domain:
        return NodeView(name, None, gpus, idle, f"no {spec.domain_label} label")
    leaf = config.tree.index.get(domain)
    if leaf is None:
        return NodeView(name, None, gpus, idle, f"domain {domain!r} is not in the config")
    if (config.tree.parents == leaf).any():
        return NodeView(name, None, gpus, idle, f"domain {domain!r} is not a leaf domain")
    return NodeView(name, leaf, gpus, idle)


def pod_record(obj: RawObject, resolver: DemandResolver) -> PodRecord | None:
    """The record of a bound, running, managed pod; ``None`` for any other pod.

    A running pod whose profile is missing or rejected still draws power: it is
    accounted at its nameplate, whatever the admission policy.
    """
    node = node_name_of(obj)
    if node is None or is_terminal(obj):
        return None
    try:
        demand = resolver.resolve(obj)
    except ProtocolError as exc:
        log.warning("pod %s ignored: %s", metadata_of(obj).get("name"), exc)
        return None
    if not demand.managed:
        return None
    profile, key = demand.profile, demand.profile_key
    if profile is None:
        watts = resolver.config.nameplate_of(demand.service)
        profile, key = resolver.flat_profile(watts), f"nameplate:{watts:g}"
    return PodRecord(
        uid=demand.pod.uid or f"{demand.pod.namespace}/{demand.pod.name}",
        namespace=demand.pod.namespace,
        name=demand.pod.name,
        node=shared(node),  # a copy (raw.detached says why)
        service=demand.service,
        profile=profile,
        gpus=demand.gpus,
        profile_key=key,
        priority=_class_priority(obj),
    )


def _class_priority(obj: RawObject) -> int | None:
    """A pod's ``spec.priority``: its PriorityClass value, as admission set it."""
    value = (obj.get("spec") or {}).get("priority")
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    # A copy, as for the record's strings (raw.detached says why); int(x) is x itself.
    return int(str(value))


def pending_pod(obj: RawObject, resolver: DemandResolver) -> PendingPod | None:
    """A pod waiting for a node as ``/bind`` checks it; ``None`` for a pod that is bound
    or terminal, has no uid, or whose GPU request is unreadable (logged)."""
    if node_name_of(obj) is not None or is_terminal(obj):
        return None
    try:
        demand = resolver.resolve(obj)
    except ProtocolError as exc:
        log.warning("pending pod %s ignored: %s", metadata_of(obj).get("name"), exc)
        return None
    if not demand.pod.uid:
        return None
    return PendingPod(demand=demand, scheduler=shared(scheduler_name_of(obj)))


def apply_node_event(state: ClusterState, config: Config, kind: str, *, obj: RawObject) -> None:
    """Apply one watch event (``ADDED``/``MODIFIED``/``DELETED``) of a Node."""
    view = node_view(obj, config)
    if kind == "DELETED" or view.leaf is None:
        if state.remove_node(view.name) and view.problem:
            log.warning("node %s left the power tree: %s", view.name, view.problem)
        return
    state.upsert_node(view.name, view.leaf, view.gpus, idle_watts=view.idle_watts)


def _uid(obj: RawObject) -> str:
    meta = metadata_of(obj)
    uid = get_field(meta, "uid")
    if isinstance(uid, str) and uid:
        return uid
    return f"{get_field(meta, 'namespace') or 'default'}/{get_field(meta, 'name') or ''}"


def apply_pod_event(
    state: ClusterState,
    resolver: DemandResolver,
    kind: str,
    *,
    obj: RawObject,
    on_pending: Callable[[RawObject], None] | None = None,
) -> None:
    """Apply one watch event of a Pod: record it while bound and running, forget it
    when deleted or terminal; keep a pending one as waiting and hand it to
    ``on_pending``."""
    uid = _uid(obj)
    if kind == "DELETED":
        state.remove_pod(uid)
        state.drop_pending(uid)
        return
    if node_name_of(obj) is None and not is_terminal(obj):
        # Not bound in this event. A pod's nodeName never clears once set, so if the
        # pod is recorded (the extender's own bind records it before the Binding is
        # created) this event is older than the binding — the watch lags behind binds
        # during a burst. Dropping the record here would free power that is in use.
        waiting = pending_pod(obj, resolver)
        if waiting is not None:
            state.set_pending(waiting)
            if on_pending is not None:
                on_pending(obj)
        return
    state.drop_pending(uid)
    record = pod_record(obj, resolver)
    if record is None:
        state.remove_pod(uid)
        return
    state.add_pod(record)


def replace_nodes(state: ClusterState, config: Config, objs: Iterable[RawObject]) -> None:
    """Make the state's nodes exactly the listed ones (after a list or relist)."""
    views = [node_view(o, config) for o in objs]
    keep = {v.name for v in views if v.leaf is not None}
    with state.lock:
        for name in state.node_names():
            if name not in keep:
                state.remove_node(name)
        for v in views:
            if v.leaf is not None:
                state.upsert_node(v.name, v.leaf, v.gpus, idle_watts=v.idle_watts)
    skipped = [f"{v.name} ({v.problem})" for v in views if v.leaf is None]
    if skipped:
        log.info("%d nodes are outside the power tree, e.g. %s", len(skipped), skipped[:3])


def replace_pods(
    state: ClusterState,
    resolver: DemandResolver,
    objs: Iterable[RawObject],
    *,
    on_pending: Callable[[RawObject], None] | None = None,
) -> None:
    """Make the state's pods exactly the listed ones (after a list or relist): the bound
    ones recorded, the pending ones waiting; pods the extender is binding stay while the
    list shows them pending (:meth:`~extender.cluster.state.ClusterState.replace_pods`,
    for the config's ``scheduler.assumedPodTTL``)."""
    records: dict[str, PodRecord] = {}
    waiting: list[PendingPod] = []
    for obj in objs:
        record = pod_record(obj, resolver)
        if record is not None:
            records[record.uid] = record
        elif (pending := pending_pod(obj, resolver)) is not None:
            waiting.append(pending)
            if on_pending is not None:
                on_pending(obj)
    state.replace_pods(
        records.values(), waiting, assumed_ttl_s=resolver.config.scheduler.assumed_pod_ttl_s
    )


# --- list + watch -------------------------------------------------------------------------
class Gone(Exception):
    """The resourceVersion is too old (HTTP 410): relist."""


class Source(Protocol):
    """One resource of the API server, raw."""

    def list(self) -> tuple[list[dict[str, Any]], str]:
        """Every object and the list's resourceVersion; raises :class:`Gone` on 410."""

    def watch(self, resource_version: str, timeout_s: int) -> Iterator[dict[str, Any]]:
        """Raw watch events ``{"type", "object"}`` from ``resource_version``; ends when
        the server closes the watch; raises :class:`Gone` on 410."""


class Backoff:
    """Exponential back-off with full jitter, capped."""

    def __init__(self, base_s: float = 0.5, cap_s: float = 30.0, rng: random.Random | None = None):
        self.base_s = base_s
        self.cap_s = cap_s
        self.failures = 0
        self.rng = rng or random.Random()

    def next(self) -> float:
        self.failures += 1
        # 2 ** int is typed Any (a negative exponent gives a float)
        ceiling: float = min(self.cap_s, self.base_s * 2 ** (self.failures - 1))
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.failures = 0


class Reflector:
    """List, then watch, one resource into callbacks (see the module doc).

    ``on_replace(items)`` gets a full list, ``on_event(type, obj)`` every change,
    ``on_contact()`` every sign of life from the server, ``on_relist()`` every full
    list after the first (each one follows a ``410 Gone``). ``sleep`` waits for a
    back-off and returns early (``True``) when the reflector should stop.
    """

    def __init__(
        self,
        name: str,
        source: Source,
        on_replace: Callable[[list[dict[str, Any]]], None],
        *,
        on_event: Callable[[str, dict[str, Any]], None],
        on_contact: Callable[[], None] | None = None,
        backoff: Backoff | None = None,
        watch_timeout_s: int = 300,
        on_relist: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.source = source
        self.on_replace = on_replace
        self.on_event = on_event
        self.on_contact = on_contact or (lambda: None)
        self.on_relist = on_relist or (lambda: None)
        self.backoff = backoff or Backoff()
        self.watch_timeout_s = watch_timeout_s
        self.resource_version: str | None = None
        self.synced = threading.Event()
        self.relists = 0
        self.errors = 0

    def step(self) -> None:
        """One round: list if needed, then one watch until it ends. Raises on errors
        (the caller backs off); a 410 clears the resourceVersion so the next round
        relists."""
        try:
            if self.resource_version is None:
                items, rv = self.source.list()
                self.on_replace(items)
                # The raw objects (a GiB at 100,000 pods) go now, not when the watch
                # below ends minutes later: the state keeps what it needs of them.
                del items
                self.resource_version = rv
                self.relists += 1
                if self.relists > 1:
                    self.on_relist()
                self.on_contact()
                self.synced.set()
            for event in self.source.watch(self.resource_version, self.watch_timeout_s):
                self._handle(event)
        except Gone:
            log.info(
                "%s: resourceVersion %s expired (410); relisting", self.name, self.resource_version
            )
            self.resource_version = None

    def _handle(self, event: Mapping[str, Any]) -> None:
        kind = get_field(event, "type")
        obj = get_field(event, "object")
        if not isinstance(obj, dict):
            raise ValueError(f"{self.name}: watch event without an object: {event!r:.200}")
        self.on_contact()
        if kind == "ERROR":
            code = get_field(obj, "code")
            if code == 410:
                raise Gone(get_field(obj, "message"))
            raise RuntimeError(f"{self.name}: watch error {code}: {get_field(obj, 'message')}")
        rv = resource_version(obj)
        if kind != "BOOKMARK":
            self.on_event(str(kind), obj)
        if rv is not None:
            self.resource_version = rv

    def run(self, stop: threading.Event, min_round_s: float = 1.0) -> None:
        """Run until ``stop`` is set, backing off on errors. A watch the server ends
        sooner than ``min_round_s`` is not reopened at once (no hot loop against an
        API server that keeps closing it)."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.step()
                self.backoff.reset()
                spent = time.monotonic() - started
                quick = spent < min_round_s and self.resource_version is not None
                if quick and stop.wait(min_round_s - spent):
                    return
            except Exception as exc:
                self.errors += 1
                delay = self.backoff.next()
                log.warning(
                    "%s: %s: %s; retrying in %.1fs", self.name, type(exc).__name__, exc, delay
                )
                if stop.wait(delay):
                    return


# --- the Kubernetes source -------------------------------------------------------------------
class KubernetesSource:
    """Nodes (``resource="nodes"``) or Pods of all namespaces (``"pods"``) through a
    ``kubernetes.client.CoreV1Api``, raw. Terminal pods are filtered out by the server
    (they leave the watch as DELETED). Each page of a list has the connect and read
    timeouts of ``timeouts``; a watch reads for its server-side timeout plus the read
    timeout (:mod:`extender.cluster.client`)."""

    def __init__(
        self,
        core: Any,
        resource: str,
        page_size: int = 500,
        *,
        timeouts: KubernetesSettings = DEFAULT_TIMEOUTS,
    ) -> None:
        if resource not in ("nodes", "pods"):
            raise ValueError(f"unknown resource {resource!r}")
        self.core = core
        self.resource = resource
        self.page_size = page_size
        self.timeouts = timeouts

    def _call(self, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        if self.resource == "pods":
            kwargs["field_selector"] = "status.phase!=Succeeded,status.phase!=Failed"
            fn = self.core.list_pod_for_all_namespaces
        else:
            fn = self.core.list_node
        try:
            return fn(_preload_content=False, **kwargs)
        except ApiException as exc:
            if exc.status == 410:
                raise Gone(str(exc.reason)) from exc
            raise

    def list(self) -> tuple[list[dict[str, Any]], str]:
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {
                "limit": self.page_size,
                "_request_timeout": call_timeout(self.timeouts),
            }
            if token:
                kwargs["_continue"] = token
            response = self._call(**kwargs)
            data = orjson.loads(response.data)
            response.release_conn()  # back to the pool for the next page or the watch
            items.extend(data.get("items") or [])
            meta = data.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                return items, str(meta.get("resourceVersion") or "")

    def watch(self, resource_version: str, timeout_s: int) -> Iterator[dict[str, Any]]:
        response = self._call(
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout_s,
            _request_timeout=watch_timeout(self.timeouts, timeout_s),
        )
        try:
            yield from split_events(response.stream(65536, decode_content=True))
        finally:
            response.release_conn()


def split_events(chunks: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """Newline-delimited JSON watch events from a byte stream cut anywhere."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                yield orjson.loads(line)
    if pending.strip():
        yield orjson.loads(pending)


# --- the mirror --------------------------------------------------------------------------------
class Mirror:
    """Both reflectors feeding one state; marks the state synced once both have
    listed. ``seen`` (resource → monotonic time) feeds the mirror-lag metric,
    ``relists`` (resource → full lists after the first, i.e. watches that expired
    with ``410 Gone``) the relist counter; both start with an entry per resource."""

    def __init__(
        self,
        state: ClusterState,
        config: Config,
        nodes: Source,
        *,
        pods: Source,
        on_pending: Callable[[RawObject], None] | None = None,
        seen: dict[str, float] | None = None,
        relists: dict[str, int] | None = None,
    ) -> None:
        self.state = state
        self.config = config
        self.resolver = DemandResolver(config)
        self.seen = seen if seen is not None else {}
        self.relists = relists if relists is not None else {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

        def contact(resource: str) -> Callable[[], None]:
            def mark() -> None:
                self.seen[resource] = time.monotonic()

            return mark

        def relisted(resource: str) -> Callable[[], None]:
            # Zero from the start, so a scrape before any expiry shows the series.
            self.relists.setdefault(resource, 0)

            def count() -> None:
                self.relists[resource] = self.relists.get(resource, 0) + 1

            return count

        self.nodes = Reflector(
            "nodes",
            nodes,
            on_replace=lambda items: replace_nodes(state, config, items),
            on_event=lambda kind, obj: apply_node_event(state, config, kind, obj=obj),
            on_contact=contact("nodes"),
            on_relist=relisted("nodes"),
        )
        self.pods = Reflector(
            "pods",
            pods,
            on_replace=lambda items: replace_pods(
                state, self.resolver, items, on_pending=on_pending
            ),
            on_event=lambda kind, obj: apply_pod_event(
                state, self.resolver, kind, obj=obj, on_pending=on_pending
            ),
            on_contact=contact("pods"),
            on_relist=relisted("pods"),
        )

    def start(self) -> None:
        for reflector in (self.nodes, self.pods):
            thread = threading.Thread(
                target=reflector.run,
                args=(self._stop,),
                name=f"powercap-{reflector.name}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        threading.Thread(target=self._await_sync, name="powercap-sync", daemon=True).start()

    def _await_sync(self) -> None:
        for reflector in (self.nodes, self.pods):
            while not reflector.synced.wait(0.5):
                if self._stop.is_set():
                    return
        self.state.synced = True
        log.info(
            "mirror synced: %d nodes, %d pods", len(self.state.node_names()), len(self.state.pods)
        )

    def stop(self) -> None:
        self._stop.set()
