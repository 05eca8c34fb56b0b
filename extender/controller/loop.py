"""The companion controller: measured power against the caps, and the action ladder.

:class:`Controller` runs one control period per :meth:`Controller.tick`: it reads
measured watts per node (a :class:`PowerSource`, in production
:class:`extender.controller.readings.PrometheusPowerSource`), tracks breaches with
:mod:`placement.control.breach`, feeds the overage into the extender's ledger, and — only
while this process holds the Lease — takes the next step of
:mod:`placement.control.ladder` in each domain through an
:class:`extender.controller.actions.ClusterApi`. It returns a :class:`TickReport` with an
:class:`ActionRecord` per step. :class:`ControllerLoop` runs it every
``controller.period`` once the mirror has synced. :func:`pod_watts`,
:func:`eviction_priority`, :func:`scaled_object_service` and :func:`selector_matches` are
the pure rules it applies.

With a :class:`extender.controller.memory.MemoryKeeper`, the leader keeps the breach
starts, steps and eviction times in the cluster (a ConfigMap) and the next leader reads
them back, carrying on each ladder and rate window where the last one left it.

The tick step by step, dry-run, missing data and the choices made where the design is
silent (deepest domain first, watts per pod, priorities, ScaledObject services, 429s):
docs/controller.md, "The loop in powercap serve".
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from extender.cluster.events import Event, EventSink
from extender.cluster.mirror import pod_record
from extender.cluster.pods import DemandResolver, PodRef
from extender.cluster.raw import RawObject
from extender.cluster.state import ClusterState, PodRecord
from extender.config.controller import ControllerSettings
from extender.config.model import Config
from extender.controller.actions import (
    KEDA_GROUP,
    KEDA_VERSION,
    POWERCAP_GROUP,
    POWERCAP_VERSION,
    ApiRefused,
    ClusterApi,
    EvictOutcome,
)
from extender.controller.memory import (
    ControllerMemory,
    MemoryKeeper,
    StateStoreError,
    union_times,
)
from extender.controller.readings import PowerReadings, leaf_watts, rollup_watts
from extender.periodic import PeriodicLoop
from extender.telemetry import ControllerMetrics
from placement.control.breach import (
    BreachState,
    HeldFeedback,
    TickEvents,
    feedback_watts,
    resume,
    step,
)
from placement.control.capping import LimitChange, NodeGpus
from placement.control.ladder import (
    Action,
    Cap,
    DomainStatus,
    Evict,
    Idle,
    Reshape,
    Restore,
    ScaleChange,
    ScaledService,
    Step,
    Uncap,
    Wait,
    eviction_budget,
    guard_line_w,
    next_action,
)
from placement.control.victims import Candidates, VictimChoice, choose_victims
from placement.throughput import DEFAULT_CURVE, H100_DEFAULT_WATTS

log = logging.getLogger(__name__)


COMPONENT = "powercap-controller"


# KEDA's defaults when a ScaledObject leaves the fields out.
KEDA_DEFAULT_MAX = 100


KEDA_DEFAULT_MIN = 0


# NodePowerLimit patches of one cap or uncap step in flight at once (see Controller._limit).
LIMIT_WRITES_AT_ONCE = 8
CREATE_PER_TICK = 50  # empty NodePowerLimits created per tick for nodes that have none


HISTORY_KEPT = 64  # steps remembered per domain; the ladder only looks at the recent ones


FloatArray = NDArray[np.float64]


class PowerSource(Protocol):
    def read(self, nodes: Iterable[str], at: float | None = None) -> PowerReadings: ...


# --- pure helpers ------------------------------------------------------------------------------
def _meta(obj: RawObject) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _labels(obj: RawObject) -> Mapping[str, Any]:
    labels = _meta(obj).get("labels")
    return labels if isinstance(labels, Mapping) else {}


def _annotations(obj: RawObject) -> Mapping[str, Any]:
    annotations = _meta(obj).get("annotations")
    return annotations if isinstance(annotations, Mapping) else {}


def selector_matches(selector: Any, labels: Mapping[str, Any]) -> bool:
    """Whether a metav1.LabelSelector selects ``labels``. An empty selector selects
    everything; a missing one (``None``) nothing, as a PodDisruptionBudget reads it."""
    if not isinstance(selector, Mapping):
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or ():
        key, op = expr.get("key"), expr.get("operator")
        values = expr.get("values") or ()
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def scaled_object_service(obj: RawObject, service_label: str) -> str | None:
    """The service a ScaledObject scales: its ``service_label`` label, else the name of
    its ``scaleTargetRef``."""
    label = _labels(obj).get(service_label)
    if isinstance(label, str) and label:
        return label
    spec = obj.get("spec") or {}
    target = spec.get("scaleTargetRef") or {}
    name = target.get("name")
    return name if isinstance(name, str) and name else None


def _int_or(value: Any, default: int) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return default


def eviction_priority(
    class_priority: int | None, label_priority: int | None, service_priority: int
) -> tuple[int, int]:
    """A pod's eviction priority: pods with the smaller pair go first.

    ``class_priority`` is the pod's ``spec.priority``: the value of its PriorityClass, set
    by the API server's Priority admission from ``priorityClassName`` (the default class's,
    or 0, without one) and refused on create when it does not match, so a tenant can only
    pick among the classes the cluster's administrators created. When it is there the
    pair is (that value, the service's configured priority) and ``label_priority`` — the
    ``powercap.io/priority`` label, which whoever creates the pod writes — is not read: as
    a tie-breaker it would let a tenant reorder every pod of its class, which for the
    default class is most of the cluster. Only when the pod has no ``spec.priority`` (an
    API server without Priority admission) does the label stand in for it: (the label,
    else the service priority; the service priority)."""
    if class_priority is not None:
        return (class_priority, service_priority)
    return (service_priority if label_priority is None else label_priority, service_priority)


def pod_watts(
    pods: Sequence[PodRecord], node_w: float, idle_w: float, *, slot: int
) -> NDArray[np.float64]:
    """Watts each pod of one node draws now: profiles at ``slot``, scaled so they add up
    to the node's measured watts above idle; the profiles alone when ``node_w`` is NaN."""
    profiled = np.array([float(p.profile[slot]) for p in pods], dtype=np.float64)
    if not pods or not math.isfinite(node_w):
        return profiled
    above = max(node_w - idle_w, 0.0)
    total = float(profiled.sum())
    if total > 0:
        return profiled * (above / total)
    return np.full(len(pods), above / len(pods))


# --- what a tick did ---------------------------------------------------------------------
@dataclass(frozen=True)
class ActionRecord:
    """One step (or, in dry-run, one decision) on one object."""

    kind: str  # reshape | restore | evict
    domain: str
    target: str  # namespace/name of the ScaledObject or pod
    message: str
    dry_run: bool
    outcome: str = "done"  # done | dry-run | blocked | gone | conflict | error


@dataclass
class TickReport:
    """What one :meth:`Controller.tick` saw and did."""

    at: float
    slot: int
    leader: bool
    measured: FloatArray
    caps: FloatArray
    events: TickEvents | None = None
    decisions: dict[str, Action] = field(default_factory=dict)
    actions: list[ActionRecord] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    feedback: FloatArray | None = None
    error: str | None = None


@dataclass
class _ScaledObject:
    namespace: str
    name: str
    uid: str
    service: str
    max_replicas: int
    min_replicas: int
    original_max: int | None
    reshaped_by: tuple[str, ...]
    resource_version: str | None


@dataclass
class _LimitObject:
    """A node's NodePowerLimit as read: per GPU (the first GPU's where they differ, the
    lowest limit) the default, the minimum and the limit in force; ``can_set`` is the
    status's ``canSetLimits`` (``None``: no status yet). ``generation`` is the object's,
    ``observed`` the status's ``observedGeneration``: the spec the agent last applied."""

    node: str
    uid: str
    can_set: bool | None
    default_w: float | None
    min_w: float
    limit_w: float | None
    capped_by: tuple[str, ...]
    resource_version: str | None
    generation: int | None = None
    observed: int | None = None

    @property
    def unobserved(self) -> bool:
        """Whether the agent has yet to apply the current spec."""
        return self.generation is not None and (
            self.observed is None or self.observed < self.generation
        )


def limit_object(obj: RawObject, capped_by_annotation: str) -> _LimitObject | None:
    """The parts of a raw NodePowerLimit the controller decides on (``None``: unnamed)."""
    meta = _meta(obj)
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        return None
    status = obj.get("status") or {}
    spec = obj.get("spec") or {}
    gpus = [g for g in status.get("gpus") or () if isinstance(g, Mapping)]

    def watts(key: str, pick: Callable[[Iterable[float]], float]) -> float | None:
        values = [float(g[key]) for g in gpus if isinstance(g.get(key), int | float)]
        return pick(values) if values else None

    default = watts("defaultWatts", max)
    enforced = watts("enforcedWatts", min)
    requested = spec.get("wattsPerGpu")
    limit = enforced if enforced is not None else default
    if limit is None and isinstance(requested, int | float):
        limit = float(requested)
    can = status.get("canSetLimits")
    by = str(_annotations(obj).get(capped_by_annotation) or "")
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    return _LimitObject(
        node=name,
        uid=str(meta.get("uid") or ""),
        can_set=can if isinstance(can, bool) else None,
        default_w=default if default and default > 0 else None,
        min_w=watts("minWatts", max) or 0.0,
        limit_w=limit if limit and limit > 0 else None,
        capped_by=tuple(x for x in by.split(",") if x),
        resource_version=meta.get("resourceVersion") or None,
        generation=generation if isinstance(generation, int) else None,
        observed=observed if isinstance(observed, int) else None,
    )


@dataclass
class _LimitWrite:
    """One node's write in a cap or uncap step: the change, its NodePowerLimit as read,
    the domains capping it after the write, the merge patch and the event text."""

    change: LimitChange
    lo: _LimitObject | None
    by: tuple[str, ...]
    patch: dict[str, Any]
    message: str
    refusal: str = ""  # the API server's refusal, when it refused


class Controller:
    """One control loop over one :class:`ClusterState`; :meth:`tick` does one period.

    ``api`` is ``None`` for a controller that only tracks breaches and feeds placement
    (no cluster to act on); ``leader`` says whether this process may act now. ``memory``
    keeps what the leader knows for the next one (ignored in dry-run, which writes
    nothing): read when this process becomes the leader — it takes no step until it has
    been read — written when it changes, and before every Eviction.
    """

    def __init__(
        self,
        config: Config,
        state: ClusterState,
        source: PowerSource,
        *,
        api: ClusterApi | None,
        events: EventSink,
        metrics: ControllerMetrics | None = None,
        leader: Callable[[], bool] = lambda: True,
        settings: ControllerSettings | None = None,
        memory: MemoryKeeper | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self.source = source
        self.api = api
        self.events = events
        self.metrics = metrics
        self.leader = leader
        self.settings = settings or config.controller
        self.resolver = DemandResolver(config)
        self.breach = BreachState.initial(state.tree.size)
        self.history: dict[int, list[Step]] = {}
        self.evictions: dict[int, list[float]] = {}
        self.cluster_evictions: list[float] = []
        self.blocked: dict[str, float] = {}  # pod uid → until when it is left out
        self._feedback = np.zeros(state.tree.size)  # this slot's feedback, last tick
        self.held = HeldFeedback.empty(state.tree.size, config.grid.slots)
        self.memory = None if self.settings.dry_run else memory
        self._recalled = False  # the memory has been read since this process became leader
        # Breach starts a previous leader recorded, not yet taken over or dropped (resume).
        self._resumed = np.full(state.tree.size, np.nan)
        self.last: TickReport | None = None
        self.limit_ratio: dict[str, float] = {}  # node → limit / default, as last read
        # Dry run: the limits decided (node → watts per GPU, capped-by), as if written.
        self._dry_limits: dict[str, tuple[float, tuple[str, ...]]] = {}
        # Per node, the generation its agent has not observed yet, since when, and whether
        # that was logged.
        self._unobserved: dict[str, tuple[int, float, bool]] = {}
        self.lost: dict[str, float] = {}  # domain → throughput_lost of its GPUs
        if metrics is not None:
            metrics.zero(state.tree.names, self.settings.dry_run)

    # --- one period -------------------------------------------------------------------
    def tick(self, now: float) -> TickReport:
        """Read, track, feed back and (as leader) act, at wall-clock ``now``."""
        state, tree = self.state, self.state.tree
        slot = self.config.grid.slot_of(now)
        with state.lock:
            nodes = state.nodes()
            caps = state.tree.caps[:, slot].astype(np.float64)
        names = [n.name for n in nodes]
        readings = self.source.read(names, now)
        node_w = readings.watts(names)
        leaves = np.fromiter((n.leaf for n in nodes), dtype=np.int64, count=len(nodes))
        measured = rollup_watts(tree.membership, leaf_watts(node_w, leaves, tree.size))
        leader = bool(self.leader())
        acting = leader and self.api is not None and readings.error is None
        if not leader:
            self._recalled = False  # whoever leads meanwhile writes; read it again first
            self._resumed[:] = np.nan
        elif acting and self.memory is not None and not self._recalled:
            self._recall()
        if leader and not np.isnan(self._resumed).all():
            self.breach, settled = resume(
                self.breach, self._resumed, measured, caps=caps, settings=self.settings.breach
            )
            self._resumed[settled] = np.nan
        self.breach, events = step(
            self.breach, measured, caps, now=now, settings=self.settings.breach
        )
        report = TickReport(now, slot, leader, measured, caps, events)
        report.stale = [tree.names[d] for d in np.flatnonzero(events.stale)]
        if readings.error:
            report.error = readings.error
            log.warning("no power data: %s; no action this period", readings.error)
        elif report.stale:
            log.warning(
                "no fresh power data for %d domains (%s); no action there",
                len(report.stale),
                ", ".join(report.stale[:5]),
            )
        for d in np.flatnonzero(events.entered):
            log.warning(
                "domain %s in breach: %.0f W measured, cap %.0f W",
                tree.names[d],
                measured[d],
                caps[d],
            )
        for d in np.flatnonzero(events.cleared):
            log.info("domain %s cleared: %.0f W, cap %.0f W", tree.names[d], measured[d], caps[d])

        fb = feedback_watts(
            tree.parents,
            self.breach.in_breach,
            measured,
            caps=caps,
            predicted=state.predicted_watts(slot),
        )
        # Missing data never clears a breach, nor may it drop the breach's feedback (the
        # pure core gives a domain without data nothing): keep what it had.
        held = self.breach.in_breach & events.stale
        fb = np.where(held, self._feedback, fb)
        self._feedback = fb
        self.held = self.held.record(
            fb, self.breach.in_breach, slot, now=now, hold_s=self.settings.hold_s
        )
        active = self.held.active(now)
        state.set_feedback(active)
        report.feedback = active[:, slot]

        # Without the last leader's memory a step could repeat its steps or overrun its
        # rate windows: wait until it has been read.
        if acting and (self.memory is None or self._recalled):
            took = self._act(report, nodes, node_w, now, slot)
            self._remember(now, urgent=took)
        self._export(report, readings)
        self.last = report
        return report

    # --- acting ---------------------------------------------------------------------------
    def _act(
        self,
        report: TickReport,
        nodes: Sequence[Any],
        node_w: FloatArray,
        now: float,
        slot: int,
    ) -> bool:
        """Decide and take a step in every domain that needs one; whether any was taken."""
        assert self.api is not None
        tree = self.state.tree
        events = report.events
        assert events is not None
        in_breach = self.breach.in_breach
        lowered_by: set[str] = set()
        scaled = self._scaled_objects()
        for so in scaled.values():
            lowered_by.update(so.reshaped_by)
        found = self._limit_objects(nodes, now)
        limits = found if found is not None else {}
        capping = self.settings.capping if found is not None else None
        for lo in limits.values():
            lowered_by.update(lo.capped_by)
        self._throughput_lost(nodes, limits)
        watts = self._pod_watts(nodes, node_w, slot)
        self.blocked = {u: t for u, t in self.blocked.items() if t > now}
        taken = False
        # Deepest first (see the module doc).
        for d in sorted(range(tree.size), key=lambda d: -int(tree.depth[d])):
            name = tree.names[d]
            if not in_breach[d] and name not in lowered_by:
                continue
            below = tree.membership[d].copy()
            below[d] = False
            if in_breach[d] and (below & in_breach & ~events.stale).any():
                report.decisions[name] = Wait("a domain below is in breach and acts first")
                continue
            status = DomainStatus.of(
                self.breach, events, report.measured, caps=report.caps, domain=d
            )
            services = self._services(d, scaled, watts, slot)
            budget = eviction_budget(
                self.evictions.get(d, []),
                self.cluster_evictions,
                now,
                per_domain=self.settings.per_domain,
                cluster=self.settings.cluster,
            )
            near = (
                capping is not None
                and not in_breach[d]
                and status.measured_w > guard_line_w(status, capping)
            )
            gpus = self._node_gpus(d, nodes, node_w, limits, near=near)
            action = next_action(
                status,
                services,
                self.history.get(d, []),
                now=now,
                settings=self.settings.ladder,
                evictions_allowed=budget,
                gpus=gpus,
                capping=capping,
            )
            report.decisions[name] = action
            try:
                if isinstance(action, Reshape | Evict) and action.note:
                    self._unavailable(d, action.note, gpus, report)
                took = self._take(action, d, scaled, watts, now, report, limits)
            except Exception as exc:  # one domain's failure must not stop the others
                log.exception("domain %s: %s failed: %s", name, type(action).__name__, exc)
                took = None
            if took is not None:
                history = self.history.setdefault(d, [])
                history.append(Step(took, now))
                del history[:-HISTORY_KEPT]
                taken = True
        return taken

    def _take(
        self,
        action: Action,
        d: int,
        scaled: dict[str, _ScaledObject],
        watts: Mapping[str, float],
        now: float,
        report: TickReport,
        limits: dict[str, _LimitObject],
    ) -> Any:
        """Carry out one action; returns the step kind taken (or decided, in dry-run)."""
        if isinstance(action, Cap):
            done = self._limit(action.plan.changes, d, limits, "cap", report, guard=action.guard)
            return "cap" if done else None
        if isinstance(action, Uncap):
            done = self._limit(action.changes, d, limits, "uncap", report)
            return "uncap" if done else None
        if isinstance(action, Reshape):
            done = self._scale(action.changes, d, scaled, "reshape", report)
            return "reshape" if done else None
        if isinstance(action, Restore):
            done = self._scale(action.changes, d, scaled, "restore", report)
            return "restore" if done else None
        if isinstance(action, Evict):
            return "evict" if self._evict(action, d, watts, now, report) else None
        if isinstance(action, Wait | Idle):
            return None
        raise TypeError(f"unknown action {action!r}")

    def _scale(
        self,
        changes: Sequence[ScaleChange],
        d: int,
        scaled: dict[str, _ScaledObject],
        kind: str,
        report: TickReport,
    ) -> bool:
        assert self.api is not None
        s = self.settings
        domain = self.state.tree.names[d]
        done = False
        for change in changes:
            so = scaled[change.service]
            target = f"{so.namespace}/{so.name}"
            annotations: dict[str, str | None]
            if kind == "reshape":
                by = tuple(sorted({*so.reshaped_by, domain}))
                annotations = {
                    s.original_max_annotation: str(change.original_max),
                    s.reshaped_by_annotation: ",".join(by),
                }
                message = (
                    f"domain {domain} is over its cap: maxReplicaCount of {change.service} "
                    f"{change.from_max} → {change.to_max} (original {change.original_max})"
                )
            else:
                back = change.to_max >= change.original_max
                annotations = (
                    {s.original_max_annotation: None, s.reshaped_by_annotation: None}
                    if back
                    else {}
                )
                message = (
                    f"domain {domain} has headroom: maxReplicaCount of {change.service} "
                    f"{change.from_max} → {change.to_max} (original {change.original_max})"
                )
            patch: dict[str, Any] = {"spec": {"maxReplicaCount": change.to_max}}
            meta: dict[str, Any] = {}
            if annotations:
                meta["annotations"] = annotations
            if so.resource_version:
                # Optimistic concurrency: a ScaledObject changed since it was read is
                # refused (409) and decided again next period from what it is now.
                meta["resourceVersion"] = so.resource_version
            if meta:
                patch["metadata"] = meta
            outcome = "dry-run" if s.dry_run else "done"
            if not s.dry_run:
                try:
                    patched = self.api.patch_scaled_object(so.namespace, so.name, patch)
                except ApiRefused as exc:
                    outcome = exc.reason
                    message += f" — refused: {exc}"
                else:
                    # Later domains of this tick decide on the object as it is now.
                    fresh = self._scaled_object(patched)
                    if fresh is not None and fresh.service == so.service:
                        scaled[so.service] = fresh
            ok = outcome in ("done", "dry-run")
            done = done or ok
            self._record(
                report,
                ActionRecord(kind, domain, target, message, s.dry_run, outcome),
                PodRef(so.namespace, so.name, so.uid),
                kind="ScaledObject",
                api_version=f"{KEDA_GROUP}/{KEDA_VERSION}",
                reason="PowerCapReshape" if kind == "reshape" else "PowerCapRestore",
                warning=kind == "reshape" or not ok,
            )
        return done

    def _limit(
        self,
        changes: Sequence[LimitChange],
        d: int,
        limits: dict[str, _LimitObject],
        kind: str,
        report: TickReport,
        *,
        guard: bool = False,
    ) -> bool:
        """Write the NodePowerLimit specs of one cap or uncap step (a merge patch with the
        ``resourceVersion`` read: a request the agent or someone else changed since is
        refused and decided again next period); ``guard``: a guard step, out of breach.

        The patches of a step go out together, at most :data:`LIMIT_WRITES_AT_ONCE` at a
        time: a breach lasts until the last node's agent applies its limit, and one patch
        after another on a busy API server adds their round trips up. Every write is
        recorded, in the step's order, before an unexpected failure of one is raised."""
        assert self.api is not None
        s = self.settings
        domain = self.state.tree.names[d]
        writes = [
            self._limit_write(change, limits, kind, domain, guard=guard) for change in changes
        ]
        if s.dry_run:
            for w in writes:
                # Decided as if applied, so a dry run walks the ladder as a real one would.
                if w.by and not (kind == "uncap" and w.change.withdraw):
                    self._dry_limits[w.change.node] = (w.change.to_w, w.by)
                else:
                    self._dry_limits.pop(w.change.node, None)
            outcomes: list[str | BaseException] = ["dry-run"] * len(writes)
        elif len(writes) == 1:
            outcomes = [self._patch_limit(writes[0])]
        else:
            with ThreadPoolExecutor(
                min(len(writes), LIMIT_WRITES_AT_ONCE), thread_name_prefix="powercap-limits"
            ) as pool:
                outcomes = list(pool.map(self._patch_limit, writes))
        done = False
        failed: BaseException | None = None
        for w, outcome in zip(writes, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if failed is None:
                    failed = outcome  # raised below, after the others are recorded
                else:  # one exception is raised; the others are not lost
                    log.error("NodePowerLimit %s: write failed: %s", w.change.node, outcome)
                continue
            ok = outcome in ("done", "dry-run")
            message = w.message if ok else f"{w.message} — refused: {w.refusal}"
            if outcome == "done" and w.lo is not None:
                w.lo.capped_by = w.by
                w.lo.resource_version = None  # changed: the next tick reads it again
            done = done or ok
            self._record(
                report,
                ActionRecord(kind, domain, w.change.node, message, s.dry_run, outcome),
                PodRef("default", w.change.node, w.lo.uid if w.lo is not None else ""),
                kind="NodePowerLimit",
                api_version=f"{POWERCAP_GROUP}/{POWERCAP_VERSION}",
                reason="PowerCapCapped" if kind == "cap" else "PowerCapUncapped",
                warning=kind == "cap" or not ok,
            )
        if failed is not None:
            raise failed
        return done

    def _limit_write(
        self,
        change: LimitChange,
        limits: Mapping[str, _LimitObject],
        kind: str,
        domain: str,
        *,
        guard: bool,
    ) -> _LimitWrite:
        """The patch and the event text of one node's change in a cap or uncap step."""
        lo = limits.get(change.node)
        by = set(lo.capped_by if lo is not None else ())
        if kind == "cap":
            by.add(domain)
            spec: dict[str, Any] = {"wattsPerGpu": round(change.to_w, 1), "gpus": None}
            verb = "is near its cap, holding power limits" if guard else "is over its cap"
        elif change.withdraw:
            by = set()
            spec = {"wattsPerGpu": None, "gpus": None}
            verb = "has headroom"
        else:
            spec = {"wattsPerGpu": round(change.to_w, 1), "gpus": None}
            verb = "has headroom"
        annotation = ",".join(sorted(by)) or None
        meta: dict[str, Any] = {"annotations": {self.settings.capped_by_annotation: annotation}}
        if lo is not None and lo.resource_version:
            meta["resourceVersion"] = lo.resource_version
        message = (
            f"domain {domain} {verb}: power limit of {change.gpus} GPU(s) on "
            f"{change.node} {change.from_w:.0f} W → {change.to_w:.0f} W per GPU "
            f"({change.fraction:.0%} of the default {change.default_w:.0f} W)"
            + (", request withdrawn" if kind == "uncap" and change.withdraw else "")
        )
        return _LimitWrite(change, lo, tuple(sorted(by)), {"metadata": meta, "spec": spec}, message)

    def _patch_limit(self, w: _LimitWrite) -> str | BaseException:
        """Send one write: ``"done"``, the refusal's reason (kept on ``w``), or the
        unexpected exception, returned so the step's other writes are still recorded."""
        assert self.api is not None
        try:
            self.api.patch_node_power_limit(w.change.node, w.patch)
        except ApiRefused as exc:
            w.refusal = str(exc)
            return exc.reason
        except Exception as exc:
            return exc
        return "done"

    def _unavailable(self, d: int, note: str, gpus: Sequence[NodeGpus], report: TickReport) -> None:
        """Say why power limits do not cover a breach (the ladder goes on to reshape or
        evict): a Warning on each node (at most five) whose GPUs cannot be capped, else
        on the domain's log line only."""
        domain = self.state.tree.names[d]
        prefix = "dry run, not done: " if self.settings.dry_run else ""
        log.warning("domain %s: power limits do not cover the breach: %s", domain, note)
        nodes = [n.node for n in gpus if not n.can_set and n.gpus > 0][:5]
        for node in nodes:
            self.events.emit(
                Event(
                    PodRef("default", node, ""),
                    "PowerCapLimitsUnavailable",
                    f"{prefix}domain {domain} is over its cap and power limits do not cover "
                    f"it ({note}); reshaping or evicting instead",
                    "Warning",
                    kind="Node",
                    api_version="v1",
                    component=COMPONENT,
                )
            )

    def _evict(
        self, action: Evict, d: int, watts: Mapping[str, float], now: float, report: TickReport
    ) -> bool:
        assert self.api is not None
        s = self.settings
        tree = self.state.tree
        domain = tree.names[d]
        pods, labels, classes = self._domain_pods(d)
        if not pods:
            log.warning("domain %s in breach: no pod to evict", domain)
            return False
        budgets = self.api.disruption_budgets()
        group = np.full(len(pods), -1, dtype=np.int64)
        protected = np.zeros(len(pods), dtype=bool)
        allowance: list[int] = []
        index: dict[int, int] = {}
        for i, (pod, pod_labels) in enumerate(zip(pods, labels, strict=True)):
            hits = [
                b
                for b, pdb in enumerate(budgets)
                if _meta(pdb).get("namespace") == pod.namespace
                and selector_matches((pdb.get("spec") or {}).get("selector"), pod_labels)
            ]
            if len(hits) > 1 or pod.uid in self.blocked:
                # The eviction API refuses a pod several budgets select.
                protected[i] = True
            elif hits:
                b = hits[0]
                if b not in index:
                    index[b] = len(allowance)
                    status = budgets[b].get("status") or {}
                    allowance.append(max(0, _int_or(status.get("disruptionsAllowed"), 0)))
                group[i] = index[b]
        keys = [self._priority(p, lab, c) for p, lab, c in zip(pods, labels, classes, strict=True)]
        # Either part at or above the threshold protects: a PriorityClass value or the
        # priority the operator gave the service.
        protected |= np.array([max(k) >= s.ladder.protect_priority for k in keys], dtype=bool)
        # choose_victims weighs priorities by rank, so the ranks of the pairs order it.
        rank = {k: r for r, k in enumerate(sorted(set(keys)))}
        draw = [watts.get(p.uid, math.nan) for p in pods]
        candidates = Candidates.build(
            draw, [rank[k] for k in keys], group, protected=protected, allowance=allowance
        )
        choice: VictimChoice = choose_victims(
            candidates,
            action.overage_w,
            priority_threshold=len(rank),
            max_victims=action.max_victims,
            time_limit_s=s.victim_time_limit_s,
        )
        if choice.victims.size == 0:
            log.warning(
                "domain %s in breach by %.0f W to clear: no pod may be evicted "
                "(protected, budgets or rate limit)",
                domain,
                action.overage_w,
            )
            return False
        if not choice.covered:
            log.warning(
                "domain %s: evictions free %.0f W of the %.0f W to clear",
                domain,
                choice.freed_w,
                action.overage_w,
            )
        took = False
        # The evictions are in the memory before they are posted: a leader that dies
        # between the two must not hand its successor a budget it has spent.
        unrecorded = self._remember_ahead(d, len(choice.victims), now)
        for i in choice.victims:
            pod = pods[int(i)]
            first, service = keys[int(i)]
            message = (
                f"domain {domain} is over its cap: evicting {pod.namespace}/{pod.name} "
                f"(priority {first}, service priority {service}, ~{draw[int(i)]:.0f} W) "
                f"to shed {action.overage_w:.0f} W"
            )
            outcome = "dry-run" if s.dry_run else "done"
            if unrecorded is not None:
                outcome = "error"
                message += (
                    f" — not taken: the controller's memory could not be written ({unrecorded})"
                )
            elif not s.dry_run:
                try:
                    result = self.api.evict(pod.namespace, pod.name)
                except ApiRefused as exc:
                    outcome = exc.reason
                    message += f" — refused: {exc}"
                else:
                    if result is EvictOutcome.BLOCKED:
                        outcome = "blocked"
                        message += " — not allowed now by its PodDisruptionBudget"
                        self.blocked[pod.uid] = now + s.ladder.evict_settle_s
                    elif result is EvictOutcome.GONE:
                        outcome = "gone"
            if outcome in ("done", "dry-run"):
                took = True
                self.evictions.setdefault(d, []).append(now)
                self.cluster_evictions.append(now)
            target = f"{pod.namespace}/{pod.name}"
            ok = outcome in ("done", "dry-run")
            self._record(
                report,
                ActionRecord("evict", domain, target, message, s.dry_run, outcome),
                PodRef(pod.namespace, pod.name, pod.uid if "/" not in pod.uid else ""),
                reason="PowerCapEvict" if ok else "PowerCapEvictFailed",
                warning=True,
            )
        window = max(s.per_domain.window_s, s.cluster.window_s)
        self.cluster_evictions = [t for t in self.cluster_evictions if now - t < window]
        self.evictions[d] = [t for t in self.evictions.get(d, []) if now - t < window]
        return took

    # --- the memory a next leader reads ------------------------------------------------
    def _recall(self) -> None:
        """Read the memory (this process has just become the leader) and take it in."""
        assert self.memory is not None
        try:
            recalled = self.memory.load()
        except StateStoreError as exc:
            log.warning("cannot read the controller's memory: %s; no step until it is read", exc)
            return
        self._take_in(recalled)
        self._recalled = True
        log.info(
            "took over the controller's memory: %d domain(s) in breach, %d recent eviction(s)",
            len(recalled.breach_since),
            len(recalled.cluster_evictions),
        )

    def _take_in(self, memory: ControllerMemory) -> None:
        """Merge ``memory`` into what this process knows: steps and eviction times join
        its own; recorded breach starts wait for :func:`resume` and data."""
        index = self.state.tree.index
        for name, steps in memory.steps.items():
            if name in index:
                d = index[name]
                merged = sorted({*self.history.get(d, []), *steps}, key=lambda s: (s.at, s.kind))
                self.history[d] = merged[-HISTORY_KEPT:]
        for name, times in memory.evictions.items():
            if name in index:
                d = index[name]
                self.evictions[d] = list(union_times(self.evictions.get(d, []), times))
        self.cluster_evictions = list(union_times(self.cluster_evictions, memory.cluster_evictions))
        for name, since in memory.breach_since.items():
            if name in index:
                d = index[name]
                self._resumed[d] = np.fmin(self._resumed[d], since)

    def _memory(self, now: float, planned: tuple[int, int] | None = None) -> ControllerMemory:
        """What the next leader needs: per domain in breach its start and the steps of
        this breach, per domain the last step, the eviction times still in a window; with
        ``planned`` ``(domain, count)``, that many evictions at ``now`` more."""
        s, tree = self.settings, self.state.tree
        window = max(s.per_domain.window_s, s.cluster.window_s)
        # A recorded breach not yet taken over or dropped is kept for the next reader.
        since_all = np.fmin(self.breach.breach_since, self._resumed)
        since = {tree.names[d]: float(since_all[d]) for d in np.flatnonzero(~np.isnan(since_all))}
        steps: dict[str, tuple[Step, ...]] = {}
        for d, history in self.history.items():
            start = since_all[d]
            kept = [x for x in history if x.at >= start] if not math.isnan(start) else []
            last = max(history, key=lambda x: x.at, default=None)
            if last is not None and last not in kept:
                kept.append(last)
            if kept:
                steps[tree.names[d]] = tuple(kept)
        evictions = {
            tree.names[d]: tuple(t for t in times if now - t < window)
            for d, times in self.evictions.items()
        }
        cluster = [t for t in self.cluster_evictions if now - t < window]
        if planned is not None:
            d, count = planned
            name = tree.names[d]
            evictions[name] = (*evictions.get(name, ()), *([now] * count))
            cluster += [now] * count
        return ControllerMemory(
            since, steps, {k: v for k, v in evictions.items() if v}, tuple(cluster)
        )

    def _remember(self, now: float, *, urgent: bool) -> None:
        """Write the memory when it changed: at once after a step, else at most once per
        ``state.minInterval``. A failure is logged; the next tick tries again."""
        if self.memory is None or not self._recalled:
            return
        try:
            saved = self.memory.save(self._memory(now), now=now, urgent=urgent)
        except StateStoreError as exc:
            log.warning("cannot write the controller's memory: %s", exc)
            return
        if saved.theirs is not None:
            self._take_in(saved.theirs)  # someone else wrote meanwhile: know it too

    def _remember_ahead(self, d: int, count: int, now: float) -> str | None:
        """Write the memory with ``count`` evictions in domain ``d`` at ``now`` before they
        are posted; ``None`` when written (or nothing to write to), else why not."""
        if self.memory is None:  # none in dry-run either
            return None
        try:
            saved = self.memory.save(self._memory(now, (d, count)), now=now, urgent=True)
        except StateStoreError as exc:
            log.error("cannot write the controller's memory: %s; no eviction now", exc)
            return str(exc)
        if saved.theirs is not None:
            # Their evictions count too; ours are added as they are taken.
            self._take_in(saved.theirs)
        return None

    def flush(self, now: float) -> None:
        """Write whatever the memory has not written yet (a clean stop, while leading)."""
        if self.leader():
            self._remember(now, urgent=True)

    def _record(
        self,
        report: TickReport,
        record: ActionRecord,
        ref: PodRef,
        *,
        reason: str,
        warning: bool,
        kind: str = "Pod",
        api_version: str = "v1",
    ) -> None:
        """The Event, the log line and the metric of one step."""
        report.actions.append(record)
        prefix = "dry run, not done: " if record.dry_run else ""
        self.events.emit(
            Event(
                ref,
                reason,
                prefix + record.message,
                "Warning" if warning else "Normal",
                kind=kind,
                api_version=api_version,
                component=COMPONENT,
            )
        )
        log.log(
            logging.WARNING if warning else logging.INFO,
            "controller %s %s %s [%s]: %s",
            record.kind,
            record.domain,
            record.target,
            record.outcome,
            record.message,
        )
        if self.metrics is not None:
            if record.outcome in ("done", "dry-run"):
                self.metrics.actions.labels(
                    record.kind, record.domain, "true" if record.dry_run else "false"
                ).inc()
            else:
                self.metrics.failures.labels(record.kind, record.domain, record.outcome).inc()

    # --- what the cluster looks like -----------------------------------------------------
    def _scaled_objects(self) -> dict[str, _ScaledObject]:
        """ScaledObjects by service (the first one per service; more are ignored)."""
        assert self.api is not None
        out: dict[str, _ScaledObject] = {}
        for obj in self.api.scaled_objects():
            so = self._scaled_object(obj)
            if so is None:
                continue
            if so.service in out:
                log.warning(
                    "service %s has several ScaledObjects; %s/%s is ignored",
                    so.service,
                    so.namespace,
                    so.name,
                )
                continue
            out[so.service] = so
        return out

    def _scaled_object(self, obj: RawObject) -> _ScaledObject | None:
        s = self.settings
        service = scaled_object_service(obj, s.service_label)
        if service is None:
            return None
        meta = _meta(obj)
        spec = obj.get("spec") or {}
        annotations = _annotations(obj)
        raw_original = annotations.get(s.original_max_annotation)
        original = None if raw_original is None else _int_or(raw_original, -1)
        if original is not None and original < 0:
            log.warning(
                "%s/%s: unreadable %s=%r",
                meta.get("namespace"),
                meta.get("name"),
                s.original_max_annotation,
                raw_original,
            )
            original = None
        by = str(annotations.get(s.reshaped_by_annotation) or "")
        return _ScaledObject(
            namespace=str(meta.get("namespace") or "default"),
            name=str(meta.get("name") or ""),
            uid=str(meta.get("uid") or ""),
            service=service,
            max_replicas=_int_or(spec.get("maxReplicaCount"), KEDA_DEFAULT_MAX),
            min_replicas=_int_or(spec.get("minReplicaCount"), KEDA_DEFAULT_MIN),
            original_max=original,
            reshaped_by=tuple(x for x in by.split(",") if x),
            resource_version=meta.get("resourceVersion") or None,
        )

    def _limit_objects(self, nodes: Sequence[Any], now: float) -> dict[str, _LimitObject] | None:
        """NodePowerLimits by node; ``None`` when the rung is off or the CRD is missing
        (the ladder then starts at reshape, as without the rung).

        A node whose agent has left the current spec unobserved for ``agent_timeout_s``
        counts as one without an agent (``can_set`` ``None``): its status describes limits
        that may no longer hold — the agent was removed, is stuck or cannot reach the API
        server — so capping there would cover nothing.

        A node with GPUs and no NodePowerLimit gets an empty one (it asks nothing), so
        its agent reports the GPUs' constraints and whether it can set limits before a
        breach needs them; at most ``CREATE_PER_TICK`` a tick, none in dry-run."""
        assert self.api is not None
        if self.settings.capping is None:
            return None
        raw = self.api.node_power_limits()
        if raw is None:
            return None
        out: dict[str, _LimitObject] = {}
        for obj in raw:
            lo = limit_object(obj, self.settings.capped_by_annotation)
            if lo is not None:
                out[lo.node] = self._unless_unobserved(lo, now)
        for node in [n for n in self._unobserved if n not in out]:
            del self._unobserved[node]
        for node, (watts, by) in self._dry_limits.items():
            if node in out:
                out[node].limit_w, out[node].capped_by = watts, by
        self.limit_ratio = {
            lo.node: lo.limit_w / lo.default_w
            for lo in out.values()
            if lo.limit_w is not None and lo.default_w is not None
        }
        if self.settings.dry_run:
            return out
        missing = [n.name for n in nodes if n.gpus > 0 and n.name not in out]
        for name in missing[:CREATE_PER_TICK]:
            body = {
                "apiVersion": f"{POWERCAP_GROUP}/{POWERCAP_VERSION}",
                "kind": "NodePowerLimit",
                "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "powercap"}},
                "spec": {},
            }
            try:
                self.api.create_node_power_limit(body)
            except ApiRefused as exc:
                log.warning("cannot create the NodePowerLimit of %s: %s", name, exc)
        return out

    def _unless_unobserved(self, lo: _LimitObject, now: float) -> _LimitObject:
        """``lo``, or ``lo`` without an agent once its agent has left the spec unobserved
        past the timeout (logged once per generation)."""
        if not lo.unobserved or lo.generation is None:
            self._unobserved.pop(lo.node, None)
            return lo
        generation, since, warned = self._unobserved.get(lo.node, (lo.generation, now, False))
        if generation != lo.generation:  # a newer spec: its agent gets the whole timeout
            since, warned = now, False
        waited = now - since
        late = waited >= self.settings.agent_timeout_s
        if late and not warned:
            log.warning(
                "NodePowerLimit %s: the agent has not applied generation %d in %.0f s "
                "(observed %s); its GPUs count as uncappable until it does — check the "
                "powercap agent on that node",
                lo.node,
                lo.generation,
                waited,
                lo.observed if lo.observed is not None else "none",
            )
        self._unobserved[lo.node] = (lo.generation, since, warned or late)
        if late:
            lo.can_set = None
        return lo

    def _node_gpus(
        self,
        d: int,
        nodes: Sequence[Any],
        node_w: FloatArray,
        limits: Mapping[str, _LimitObject],
        *,
        near: bool = False,
    ) -> list[NodeGpus]:
        """The GPU nodes of domain ``d`` as the capping rung sees them: in breach, every
        one; out of breach, those this domain capped that no other breached domain holds,
        and with ``near`` (its draw past the guard line) also the others no breached
        domain holds, once it holds limits of its own: the guard's step may cap any of
        them. A node without a NodePowerLimit status counts as one without an agent."""
        s, tree = self.settings, self.state.tree
        if s.capping is None:
            return []
        below = tree.membership[d]
        name = tree.names[d]
        in_breach = self.breach.in_breach
        widened = near and any(
            name in lo.capped_by
            for n in nodes
            if below[n.leaf] and (lo := limits.get(n.name)) is not None
        )
        out: list[NodeGpus] = []
        for node, w in zip(nodes, node_w, strict=True):
            if node.gpus <= 0 or not below[node.leaf]:
                continue
            lo = limits.get(node.name)
            if not in_breach[d]:
                if not widened and (lo is None or name not in lo.capped_by):
                    continue
                if lo is not None and any(
                    x != name and x in tree.index and in_breach[tree.index[x]] for x in lo.capped_by
                ):
                    continue
            pods = self.state.pods_on(node.name)
            priorities = [self._class_or_service(p) for p in pods]
            floors = [
                s.floors[p.service] for p in pods if p.service is not None and p.service in s.floors
            ]
            busy = min(sum(p.gpus for p in pods), node.gpus) or node.gpus
            draw = self._busy_gpu_watts(node, float(w), busy)
            default = lo.default_w if lo is not None else None
            if lo is None or default is None:
                out.append(
                    NodeGpus(node.name, busy, H100_DEFAULT_WATTS, H100_DEFAULT_WATTS, can_set=None)
                )
                continue
            out.append(
                NodeGpus(
                    node.name,
                    busy,
                    limit_w=min(lo.limit_w or default, default),
                    default_w=default,
                    min_w=lo.min_w,
                    draw_w=draw,
                    priority=max(priorities) if priorities else None,
                    floor=max(floors) if floors else None,
                    can_set=lo.can_set,
                    curve=DEFAULT_CURVE,
                )
            )
        return out

    def _busy_gpu_watts(self, node: Any, node_w: float, busy: int) -> float:
        """What one GPU holding a pod draws now, from the node's measured watts: its GPU
        part (less the configured non-GPU watts) less the idle draw of the GPUs without a
        pod (the node's idle watts above the non-GPU part, shared by its GPUs), over the
        busy GPUs. NaN without a reading. A limit frees only what a GPU draws above it, and
        idle GPUs draw below any floor, so the cap is sized on the busy ones."""
        if not math.isfinite(node_w) or node.gpus <= 0 or busy <= 0:
            return math.nan
        power = self.config.power
        non_gpu = power.non_gpu_watts(node.name) if power is not None else 0.0
        gpu_idle = max(float(node.idle_watts) - non_gpu, 0.0) / node.gpus
        return float(node_w - non_gpu - (node.gpus - busy) * gpu_idle) / busy

    def _throughput_lost(self, nodes: Sequence[Any], limits: Mapping[str, _LimitObject]) -> None:
        """Per domain, the relative throughput its busy GPUs lose at their limits now
        (by the default curve): 1 − Σ gpus × throughput(limit) / Σ gpus."""
        tree = self.state.tree
        if self.settings.capping is None:
            return
        gpus = np.zeros(tree.size)
        kept = np.zeros(tree.size)
        curve = DEFAULT_CURVE
        for node in nodes:
            lo = limits.get(node.name)
            busy = min(sum(p.gpus for p in self.state.pods_on(node.name)), node.gpus)
            if busy <= 0:
                continue
            ratio = 1.0
            if lo is not None and lo.limit_w is not None and lo.default_w is not None:
                ratio = min(1.0, max(curve.floor, lo.limit_w / lo.default_w))
            gpus[node.leaf] += busy
            kept[node.leaf] += busy * curve.at(ratio)
        total = rollup_watts(tree.membership, gpus)
        held = rollup_watts(tree.membership, kept)
        with np.errstate(invalid="ignore", divide="ignore"):
            lost = np.where(total > 0, 1.0 - held / np.where(total > 0, total, 1.0), 0.0)
        self.lost = {name: float(lost[d]) for d, name in enumerate(tree.names)}

    def _class_or_service(self, pod: PodRecord) -> int:
        """A pod's PriorityClass value, else its service's configured priority."""
        if pod.priority is not None:
            return pod.priority
        entry = self.config.services.get(pod.service) if pod.service is not None else None
        return entry.priority if entry is not None else 0

    def _pod_watts(self, nodes: Sequence[Any], node_w: FloatArray, slot: int) -> dict[str, float]:
        out: dict[str, float] = {}
        for node, w in zip(nodes, node_w, strict=True):
            pods = self.state.pods_on(node.name)
            for pod, pw in zip(
                pods, pod_watts(pods, float(w), node.idle_watts, slot=slot), strict=True
            ):
                out[pod.uid] = float(pw)
        return out

    def _services(
        self,
        d: int,
        scaled: Mapping[str, _ScaledObject],
        watts: Mapping[str, float],
        slot: int,
    ) -> list[ScaledService]:
        """The KEDA-scaled services of domain ``d``: those with replicas there, and those
        this domain lowered (which may have none left there)."""
        state, tree = self.state, self.state.tree
        name = tree.names[d]
        in_breach = self.breach.in_breach
        below = tree.membership[d]
        below_leaves = {int(x) for x in np.flatnonzero(below)}
        per_service: dict[str, list[float]] = {}
        with state.lock:
            for pod in state.pods.values():
                node = state.node(pod.node)
                if pod.service is None or node is None or node.leaf not in below_leaves:
                    continue
                per_service.setdefault(pod.service, []).append(watts.get(pod.uid, math.nan))
            counts = {svc: int(state.counts[row].sum()) for svc, row in state.service_index.items()}
        out: list[ScaledService] = []
        for svc, so in sorted(scaled.items()):
            here = per_service.get(svc, [])
            mine = name in so.reshaped_by
            if not here and not mine:
                continue
            known = [w for w in here if math.isfinite(w)]
            if known:
                per_replica = float(np.mean(known))
            else:
                entry = self.config.services.get(svc)
                profile = entry.profile if entry is not None else None
                per_replica = float(profile[slot]) if profile is not None else 0.0
            others = [
                tree.index[x]
                for x in so.reshaped_by
                if x != name and x in tree.index and in_breach[tree.index[x]]
            ]
            entry = self.config.services.get(svc)
            out.append(
                ScaledService(
                    name=svc,
                    priority=entry.priority if entry is not None else 0,
                    replicas=counts.get(svc, 0),
                    in_domain=len(here),
                    watts_per_replica=max(per_replica, 0.0),
                    max_replicas=so.max_replicas,
                    min_replicas=so.min_replicas,
                    # Out of breach, only what this domain lowered is its to restore.
                    original_max=so.original_max if (in_breach[d] or mine) else None,
                    held_elsewhere=bool(others),
                )
            )
        return out

    def _domain_pods(
        self, d: int
    ) -> tuple[list[PodRecord], list[Mapping[str, Any]], list[int | None]]:
        """Running managed pods on the domain's nodes, read from the API server (their
        labels decide budgets, their ``spec.priority`` the order), with their labels and
        ``spec.priority`` (``None`` when absent)."""
        assert self.api is not None
        tree = self.state.tree
        below = tree.membership[d]
        pods: list[PodRecord] = []
        labels: list[Mapping[str, Any]] = []
        classes: list[int | None] = []
        for node in self.state.nodes():
            if not below[node.leaf]:
                continue
            for obj in self.api.pods_on(node.name):
                if _meta(obj).get("deletionTimestamp"):
                    continue  # already leaving
                record = pod_record(obj, self.resolver)
                if record is None:
                    continue
                pods.append(record)
                labels.append(_labels(obj))
                value = (obj.get("spec") or {}).get("priority")
                classes.append(
                    value if isinstance(value, int) and not isinstance(value, bool) else None
                )
        return pods, labels, classes

    def _priority(
        self, pod: PodRecord, labels: Mapping[str, Any], class_priority: int | None
    ) -> tuple[int, int]:
        """:func:`eviction_priority` of one pod."""
        entry = self.config.services.get(pod.service) if pod.service is not None else None
        service = entry.priority if entry is not None else 0
        label: int | None = None
        raw = labels.get(self.settings.priority_label)
        if class_priority is None and raw is not None:  # read only where it counts
            value = _int_or(raw, -(2**31))
            if value != -(2**31):
                label = value
            else:
                name = self.settings.priority_label
                log.warning("pod %s/%s: unreadable %s=%r", pod.namespace, pod.name, name, raw)
        return eviction_priority(class_priority, label, service)

    # --- metrics ------------------------------------------------------------------------------
    def _export(self, report: TickReport, readings: PowerReadings) -> None:
        m = self.metrics
        if m is None:
            return
        tree = self.state.tree
        events = report.events
        assert events is not None
        in_breach = self.breach.in_breach
        raised = tree.membership.astype(np.float64) @ (
            report.feedback if report.feedback is not None else np.zeros(tree.size)
        )
        for d, name in enumerate(tree.names):
            m.measured.labels(name).set(float(report.measured[d]))
            m.cap.labels(name).set(float(report.caps[d]))
            m.in_breach.labels(name).set(1.0 if in_breach[d] else 0.0)
            m.domain_stale.labels(name).set(1.0 if events.stale[d] else 0.0)
            m.feedback.labels(name).set(float(raised[d]))
            if name in self.lost:
                m.throughput_lost.labels(name).set(self.lost[name])
        for node, ratio in self.limit_ratio.items():
            m.gpu_limit.labels(node).set(ratio)
        counts = {"fresh": 0, "stale": 0, "missing": 0}
        for r in readings.nodes.values():
            counts[str(r.status)] = counts.get(str(r.status), 0) + 1
        for status, n in counts.items():
            m.nodes.labels(status).set(n)
        m.stale.set(0.0 if readings.complete else 1.0)
        m.leader.set(1.0 if report.leader else 0.0)
        m.last_tick.set(report.at)


# --- the loop ------------------------------------------------------------------------------------
class ControllerLoop(PeriodicLoop):
    """Runs :meth:`Controller.tick` every period in a daemon thread, once the mirror has
    synced (before that every pod would look absent). ``clock`` gives wall time."""

    def __init__(
        self,
        controller: Controller,
        period_s: float,
        clock: Callable[[], float] = time.time,
        *,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__(
            "powercap-controller",
            controller.tick,
            period_s,
            ready=ready or (lambda: controller.state.synced),
            clock=clock,
        )
        self.controller = controller

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop ticking, then write what the memory has not written yet (the Lease is
        released after this, so the next leader reads it all)."""
        super().stop(timeout_s)
        try:
            self.controller.flush(self.clock())
        except Exception:  # stopping must go on
            log.exception("%s: writing the controller's memory at stop failed", self.name)
