"""Filter, prioritize, bind and preempt: the extender's decisions on the cluster state.

:class:`Decider` makes them over one :class:`~extender.cluster.state.ClusterState`:

* **filter** is the hard guarantee: a node passes when one more replica of the pod's
  profile keeps every level above it within its effective cap in every slot
  (:func:`placement.admission.fitting_domains`) and the node has the pod's GPUs free.
  Failed nodes say which domain would exceed its cap, at what time of day, by how many
  watts (:mod:`extender.webhook.explanations`). With ``reservePlan`` it also keeps the
  power the plan holds for its planned but not yet placed replicas. With
  ``filterToPlan`` it offers only the passing nodes under domains where the plan wants
  more of the pod's service, when there are any (the others pass, so they are not
  reported as failed).
* **prioritize** scores 0–10: agreement with the current plan weighted by
  ``planWeight``, the rest by the least rise of peak utilisation along the path.
* **bind** trusts nothing in the request: the ``PodUID`` must name a pod the mirror
  read from the API server, waiting for a node, under the request's namespace and name,
  addressed to this scheduler (``scheduler.name``) and managed; the node must be in the
  tree with the pod's GPUs free. Under the state lock it re-checks the node's path
  (:func:`placement.admission.fits_on_path`) and records the pod in the ledger as
  assumed, then creates the binding through a :class:`~extender.webhook.binding.Binder`
  and undoes the record if that fails. A Binding call that ends without an answer is
  settled by reading where the pod is; while that cannot be read the pod keeps its
  power. Every refusal is an error naming the field and the fix (the scheduler retries
  the pod).
* **preempt** keeps the candidates where evicting the proposed victims would let the pod
  fit, victims unchanged.

:func:`candidate_items` returns the passing nodes when the scheduler sends whole Node
objects. Per request the work is a few passes over the (domains × T) ledger, computed once
per (profile, state version) and shared by filter and prioritize of the same pod. More:
docs/extender.md, "Decisions".
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from extender.cluster.events import Event, EventSink, NullEventSink
from extender.cluster.pods import (
    Demand,
    DemandResolver,
    PodRef,
    node_name_of,
    scheduler_name_of,
)
from extender.cluster.raw import ProtocolError
from extender.cluster.state import ClusterState, PendingPod, PodRecord
from extender.config.model import Config
from extender.telemetry import Telemetry
from extender.webhook.binding import Binder, BindError
from extender.webhook.explanations import (
    UNKNOWN_NODE,
    Explainer,
    busy_gpus_text,
    too_few_gpus_text,
)
from extender.webhook.protocol import (
    ExtenderArgs,
    ExtenderBindingArgs,
    ExtenderPreemptionArgs,
    MetaVictims,
)
from placement.admission import fits_on_path, fitting_domains
from placement.scoring import peak_increase, scores_0_to_10

log = logging.getLogger(__name__)


class PlanSource(Protocol):
    def targets(self, service: str) -> NDArray[np.int64] | None:
        """Replicas of ``service`` the latest plan wants per domain, or ``None``."""

    def all_targets(self) -> tuple[object, Mapping[str, NDArray[np.int64]]] | None:
        """``(plan, targets per service)`` of the latest plan (the first item identifies
        the plan: a new plan is a new object), or ``None`` before the first plan."""


@dataclass(frozen=True)
class FilterOutcome:
    """``passed`` holds positions into the request's candidates (order kept)."""

    passed: list[int]
    failed: dict[str, str]
    unresolvable: dict[str, str]
    error: str = ""


@dataclass
class _DomainView:
    """What one more replica of one profile does to every domain, at one state version
    (and, with plan reservations, for one service under one plan)."""

    hard_fits: NDArray[np.bool_]  # within every cap on the path
    fits: NDArray[np.bool_]  # and, with reservations, outside what the plan holds
    hard: Explainer
    held: Explainer | None = None
    rise: NDArray[np.float64] | None = None


@dataclass(frozen=True)
class _Candidates:
    """A request's candidate nodes at one state version, in the request's order."""

    slots: NDArray[np.int64]  # -1 for a node the mirror does not know
    known: NDArray[np.bool_]
    leaf: NDArray[np.int64]  # leaf domain per node
    free: NDArray[np.int64]  # free GPUs per node
    power_ok: NDArray[np.bool_]  # known, and within every cap (and the plan's holds)
    ok: NDArray[np.bool_]  # and with the pod's GPUs free


class Decider:
    """The decisions over one :class:`ClusterState`.

    ``events`` receives a Warning per pod and problem (missing/invalid profile).
    ``pods_from_requests`` is for a cluster without an API server (``serve --scenario``):
    the pods filter and prioritize are asked about are then taken as the pods waiting
    for a node, which bind otherwise knows only from the mirror.
    """

    def __init__(
        self,
        state: ClusterState,
        config: Config,
        binder: Binder,
        *,
        events: EventSink | None = None,
        plan: PlanSource | None = None,
        telemetry: Telemetry | None = None,
        pods_from_requests: bool = False,
    ) -> None:
        self.state = state
        self.config = config
        self.binder = binder
        self.events: EventSink = events or NullEventSink()
        self.plan = plan
        self.telemetry = telemetry
        self.pods_from_requests = pods_from_requests
        self.resolver = DemandResolver(config)
        self.plan_weight = config.scoring.plan_weight
        self.reserve_plan = config.scoring.reserve_plan and plan is not None
        self.filter_to_plan = config.scoring.filter_to_plan and plan is not None
        self._last_plan: object = None
        self._plan_seq = 0
        self._held_cache: tuple[tuple[int, int], NDArray[np.float64]] | None = None
        self._held_raw: tuple[object, tuple[int, int], NDArray[np.float64]] | None = None
        self._plan_cache: (
            tuple[object, tuple[list[str], NDArray[np.int64], NDArray[np.float64]]] | None
        ) = None
        # Bind runs in a worker thread, so the warnings cache has a lock of its own.
        self._cache_lock = threading.Lock()
        self._warned: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._views: OrderedDict[tuple[str, str, int, int], _DomainView] = OrderedDict()

    # --- demand --------------------------------------------------------------------
    def demand(self, pod: Mapping[str, Any]) -> Demand:
        """Resolve a pod and warn once about profile problems (with
        ``pods_from_requests``, also take it as waiting for a node)."""
        demand = self.resolver.resolve(pod)
        if self.pods_from_requests and demand.pod.uid and node_name_of(pod) is None:
            self.state.set_pending(PendingPod(demand, scheduler_name_of(pod)))
        if demand.problem is not None:
            self._warn(demand)
        return demand

    def remember(self, pod: Mapping[str, Any]) -> None:
        """:meth:`demand` for a pending pod the mirror saw (its profile problems are
        reported before the scheduler asks); an unreadable pod is logged, not raised
        (the mirror must keep going)."""
        try:
            self.demand(pod)
        except ProtocolError as exc:
            log.warning("pending pod ignored: %s", exc)

    def _warn(self, demand: Demand) -> None:
        assert demand.problem is not None
        key = (demand.pod.uid or str(demand.pod), demand.problem)
        with self._cache_lock:
            if key in self._warned:
                return
            self._warned[key] = None
            while len(self._warned) > 10_000:
                self._warned.popitem(last=False)
        if demand.rejected:
            reason = "PowercapProfileRejected"
            tail = "the pod fits no node until this is fixed (policy missingProfile: reject)"
        else:
            reason = "PowercapNameplateFallback"
            watts = float(demand.profile[0]) if demand.profile is not None else 0.0
            tail = f"admitted at nameplate {watts:.0f} W in every slot (policy nameplate)"
        self.events.emit(Event(demand.pod, reason, f"{demand.problem}; {tail}"))

    # --- per-domain analysis ------------------------------------------------------------
    def _view(self, demand: Demand) -> _DomainView:
        """Cached per (profile, service, state version, plan); call under the state lock."""
        assert demand.profile is not None
        state = self.state
        held = self._held() if self.reserve_plan else None
        plan_key = self._plan_seq if held is not None else 0
        key = (demand.profile_key, demand.service or "", state.version, plan_key)
        view = self._views.get(key)
        if view is None:
            hard = fitting_domains(state.ledger, demand.profile, state.caps)
            view = _DomainView(hard, hard, Explainer(state.ledger.load, demand.profile))
            if held is not None:
                view.fits, view.held = self._outside_held(demand, hard, held[1])
            self._views[key] = view
            while len(self._views) > 16:
                self._views.popitem(last=False)
        return view

    def _held(self) -> tuple[object, NDArray[np.float64]] | None:
        """``(plan, watts)``: per domain and slot, what the plan holds for its planned
        replicas not placed yet, at most what is left under each cap. Call under the
        state lock. Rebuilt when the plan changes, else updated from the state's
        journal of replica counts; clipped once per state version."""
        assert self.plan is not None
        snapshot = self.plan.all_targets()
        if snapshot is None:
            return None
        plan, targets = snapshot
        if plan is not self._last_plan:
            # Numbered, not keyed by id(): a freed plan's id can come back.
            self._last_plan = plan
            self._plan_seq += 1
        state = self.state
        if self._held_cache is not None and self._held_cache[0] == (self._plan_seq, state.version):
            return plan, self._held_cache[1]
        raw = self._held_raw
        changes = None
        if raw is not None and raw[0] is plan:
            changes = state.journal_since(raw[1])
        if raw is None or changes is None:
            held = self._held_from_counts(plan, targets)
        else:
            held = raw[2]
            for service, leaf, sign, after in changes:
                target = targets.get(service)
                entry = self.config.services.get(service)
                if target is None or entry is None or entry.profile is None:
                    continue
                wanted = int(target[leaf])
                # The held share moves only while the count is below the plan's.
                delta = max(0, wanted - after) - max(0, wanted - (after - sign))
                if delta:
                    held[state.paths[leaf]] += delta * entry.profile
        self._held_raw = (plan, state.journal_cursor(), held)
        # A stale plan may hold more than is left: hold at most what is left.
        clipped = np.minimum(held, np.maximum(state.caps - state.ledger.load, 0.0))
        self._held_cache = ((self._plan_seq, state.version), clipped)
        return plan, clipped

    def _held_from_counts(
        self, plan: object, targets: Mapping[str, NDArray[np.int64]]
    ) -> NDArray[np.float64]:
        """The unclipped held watts per domain, from scratch."""
        state = self.state
        names, wanted, profiles = self._plan_matrix(plan, targets)
        leaves = state.tree.leaves
        rows = np.array([state.service_row(n) for n in names], dtype=np.int64)
        have = np.zeros((len(names), leaves.size), dtype=np.int64)
        seen = rows >= 0  # services with no pod yet have none anywhere
        have[seen] = state.counts[rows[seen]][:, leaves]
        missing = (wanted - have).clip(min=0)
        busy = np.flatnonzero(missing.any(axis=1))
        held = np.zeros_like(state.ledger.load)
        held[leaves] = np.ascontiguousarray(missing[busy].T, dtype=np.float64) @ profiles[busy]
        for level in reversed(state.levels[1:]):  # leaves up to the root
            np.add.at(held, state.tree.parents[level], held[level])
        return held

    def _plan_matrix(
        self, plan: object, targets: Mapping[str, NDArray[np.int64]]
    ) -> tuple[list[str], NDArray[np.int64], NDArray[np.float64]]:
        """The plan's services with a profile: names, targets per leaf (services ×
        leaves) and profiles (services × T). Cached per plan."""
        if self._plan_cache is not None and self._plan_cache[0] is plan:
            return self._plan_cache[1]
        leaves = self.state.tree.leaves
        names = [s for s in targets if (e := self.config.services.get(s)) and e.profile is not None]
        wanted = np.array([targets[s][leaves] for s in names], dtype=np.int64).reshape(
            len(names), leaves.size
        )
        profiles = np.array(
            [self.config.services[s].profile for s in names], dtype=np.float64
        ).reshape(len(names), self.state.grid.slots)
        self._plan_cache = (plan, (names, wanted, profiles))
        return names, wanted, profiles

    def _outside_held(
        self, demand: Demand, hard: NDArray[np.bool_], held: NDArray[np.float64]
    ) -> tuple[NDArray[np.bool_], Explainer]:
        """Where the pod fits without using power the plan holds for others. A pod of
        a service the plan wants more of under a leaf takes its own held share there,
        so only the caps apply to it."""
        assert demand.profile is not None and self.plan is not None
        state = self.state
        outside = fitting_domains(state.ledger, demand.profile, state.caps, held=held)
        own = np.zeros(state.tree.size, dtype=bool)
        target = self.plan.targets(demand.service) if demand.service else None
        row = state.service_row(demand.service)
        if target is not None:
            own = target > (state.counts[row] if row >= 0 else 0)
        return hard & (own | outside), Explainer(state.ledger.load, demand.profile, held)

    def _rise(self, demand: Demand, view: _DomainView) -> NDArray[np.float64]:
        if view.rise is None:
            assert demand.profile is not None
            view.rise = peak_increase(self.state.ledger, demand.profile, self.state.caps)
        return view.rise

    def _why_not(self, view: _DomainView, leaf: int) -> str:
        """The message for a leaf the pod does not fit under."""
        if not view.hard_fits[leaf] or view.held is None:
            return view.hard.message(self.state, leaf)
        return view.held.message(self.state, leaf, held=True)

    # --- filter ---------------------------------------------------------------------------
    def filter(self, args: ExtenderArgs, *, reasons_if_some_pass: bool = True) -> FilterOutcome:
        """Which candidates the pod may go to (see the module doc).

        ``reasons_if_some_pass``: say why each failing candidate fails even when some
        pass. kube-scheduler reads the reasons only when no candidate is left (for its
        event and for preemption), so the filter verb gives them only then, unless
        ``scheduler.failureReasons`` is ``always``. When none passes, every candidate
        says why, whatever this is."""
        self.state.expire_assumed(ttl_s=self.config.scheduler.assumed_pod_ttl_s)
        names = args.candidate_names()
        demand = self.demand(args.pod)
        if not demand.managed:
            self._decided("filter", "unmanaged")
            return FilterOutcome(list(range(len(names))), {}, {})
        if demand.rejected or demand.profile is None:
            message = f"powercap: {demand.problem}"
            self._decided("filter", "rejected_profile")
            return FilterOutcome([], {}, dict.fromkeys(names, message))
        failed: dict[str, str] = {}
        unresolvable: dict[str, str] = {}
        targets = self._targets(demand) if self.filter_to_plan else None
        narrowed = some_failed = False
        with self.state.lock:
            view = self._view(demand)
            found = self._candidates(names, demand, view)
            offered = found.ok
            if targets is not None:
                planned = found.ok & self._wanted(demand, targets, found.leaf)
                # Where the plan wants more of the service and some node fits, only
                # those are offered; the others fit and are not failed, just not offered.
                narrowed = bool(planned.any()) and not planned.all()
                if narrowed:
                    offered = planned
            if offered.all():
                passed = list(range(len(names)))
            else:
                positions = np.flatnonzero(offered)
                passed = positions.tolist()
                some_failed = not found.ok.all()
                if some_failed and (reasons_if_some_pass or not passed):
                    failed, unresolvable = self._rejections(names, demand, view, found)
                # kube-scheduler asks prioritize about exactly these next.
                self.state.note_slots(_pick(names, positions), found.slots[positions])
        if not passed:
            outcome = "none_fit"
        elif narrowed:
            outcome = "planned"
        elif some_failed:
            outcome = "some_fit"
        else:
            outcome = "all_fit"
        self._decided("filter", outcome + ("_nameplate" if demand.fallback else ""))
        return FilterOutcome(passed, failed, unresolvable)

    def _candidates(self, names: list[str], demand: Demand, view: _DomainView) -> _Candidates:
        """Where the request's nodes are and whether the pod fits each; call under the
        state lock."""
        state = self.state
        slots = state.node_slots(names)
        known = slots >= 0
        leaf = state.node_leaf[slots]  # slot -1 reads the last entry; masked by known
        free = state.node_gpus[slots] - state.node_used[slots]
        power_ok = known & view.fits[leaf]
        return _Candidates(slots, known, leaf, free, power_ok, power_ok & (free >= demand.gpus))

    def _rejections(
        self, names: list[str], demand: Demand, view: _DomainView, found: _Candidates
    ) -> tuple[dict[str, str], dict[str, str]]:
        """``(failed, unresolvable)``: why each candidate the pod does not fit fails, in
        the request's order; call under the state lock. Classified with numpy, each
        distinct text made once: a site-wide call fails thousands of nodes for a few
        hundred reasons."""
        state = self.state
        bad = np.flatnonzero(~found.ok)
        known = found.known[bad]
        over_cap = known & ~found.power_ok[bad]
        fits_power = known & found.power_ok[bad]
        total = state.node_gpus[found.slots[bad]]
        too_few = fits_power & (total < demand.gpus)
        busy = fits_power & ~too_few
        texts = np.empty(bad.size, dtype=object)
        texts[~known] = UNKNOWN_NODE
        if over_cap.any():
            texts[over_cap] = self._why_not_many(view, found.leaf[bad[over_cap]])
        if too_few.any():
            texts[too_few] = _texts_by(total[too_few], lambda n: too_few_gpus_text(n, demand.gpus))
        if busy.any():
            free = found.free[bad[busy]]
            texts[busy] = _texts_by(free, lambda n: busy_gpus_text(n, demand.gpus))
        unresolved = ~known | too_few
        failed = dict(zip(_pick(names, bad[~unresolved]), texts[~unresolved].tolist(), strict=True))
        unresolvable = dict(
            zip(_pick(names, bad[unresolved]), texts[unresolved].tolist(), strict=True)
        )
        return failed, unresolvable

    def _why_not_many(self, view: _DomainView, leaves: NDArray[np.int64]) -> NDArray[np.object_]:
        """:meth:`_why_not` for many leaves (an object array of texts)."""
        hard = ~view.hard_fits[leaves] if view.held is not None else np.ones(leaves.size, bool)
        texts = np.empty(leaves.size, dtype=object)
        if hard.any():
            texts[hard] = view.hard.texts(self.state, leaves[hard])
        if view.held is not None and not hard.all():
            texts[~hard] = view.held.texts(self.state, leaves[~hard], held=True)
        return texts

    # --- prioritize ------------------------------------------------------------------------
    def prioritize(self, args: ExtenderArgs) -> tuple[list[str], list[int]]:
        """``(hosts, scores)``: 0–10 per candidate, in the request's order."""
        names = args.candidate_names()
        demand = self.demand(args.pod)
        if not demand.managed or demand.profile is None:
            self._decided("prioritize", "neutral")
            return names, [0] * len(names)
        state = self.state
        targets = self._targets(demand)
        with state.lock:
            view = self._view(demand)
            found = self._candidates(names, demand, view)
            ok, leaf = found.ok, found.leaf
            if not ok.any():
                self._decided("prioritize", "none_fit")
                return names, [0] * len(names)
            # Only fitting candidates compete for the 0–10 range.
            cost = self._rise(demand, view)[leaf[ok]]
            peak = np.zeros(len(names), dtype=np.float64)
            peak[ok] = scores_0_to_10(cost)
            want = None
            if targets is not None:
                want = self._wanted(demand, targets, leaf).astype(np.float64)
        if want is None:
            score = peak
            self._decided("prioritize", "peak_only")
        else:
            w = self.plan_weight
            score = w * 10.0 * want + (1.0 - w) * peak
            self._decided("prioritize", "with_plan")
        out = np.rint(score).astype(np.int64).clip(0, 10)
        out[~ok] = 0
        return names, out.tolist()

    def _targets(self, demand: Demand) -> NDArray[np.int64] | None:
        """The plan's replicas of the pod's service per domain (``None``: no plan, or
        none for the service)."""
        if self.plan is None or not demand.service:
            return None
        return self.plan.targets(demand.service)

    def _wanted(
        self, demand: Demand, targets: NDArray[np.int64], leaf: NDArray[np.int64]
    ) -> NDArray[np.bool_]:
        """Per candidate leaf, whether the plan wants more of the service there than it
        has; call under the state lock."""
        state = self.state
        row = state.service_row(demand.service)
        have = state.counts[row, leaf] if row >= 0 else 0
        return np.asarray(targets[leaf] > have)

    # --- bind --------------------------------------------------------------------------------
    def bind(self, args: ExtenderBindingArgs) -> str:
        """Bind the pod (see the module doc); returns ``""`` on success or when the pod
        is already bound to ``Node`` (a retried bind), else the error for the scheduler.
        A refused bind leaves the state as it was."""
        pod = PodRef(args.pod_namespace, args.pod_name, args.pod_uid)
        # Every API call this bind makes shares one budget, so the answer comes before
        # kube-scheduler's httpTimeout however many calls it takes.
        deadline = time.monotonic() + self.config.kubernetes.bind_timeout_s
        self.state.expire_assumed(ttl_s=self.config.scheduler.assumed_pod_ttl_s)
        if pod.uid in self.state.unsure:
            refused = self._settle(pod, deadline=deadline)
            if refused:
                return refused
        recorded = self._record_if_fits(pod, args.node)
        if isinstance(recorded, str):
            return recorded
        return self._create_binding(pod, args.node, recorded, deadline=deadline)

    def _refuse(self, outcome: str, pod: PodRef, why: str) -> str:
        self._decided("bind", outcome)
        return f"powercap: bind of {pod} refused: {why}"

    def _record_if_fits(self, pod: PodRef, node: str) -> PodRecord | str:
        """Check the pod and ``node`` and re-check the power under the state lock, and
        record the pod as assumed; the record, or the answer for the scheduler (``""``
        when already bound there)."""
        if not pod.uid:
            return self._refuse(
                "no_uid",
                pod,
                "PodUID is empty; the extender binds a pod by its UID only: send the pod's "
                "metadata.uid as PodUID (kube-scheduler always does)",
            )
        state = self.state
        with state.lock:
            existing = state.pods.get(pod.uid)
            if existing is not None:
                return self._bound_already(pod, existing, node)
            waiting = self._waiting(pod)
            if isinstance(waiting, str):
                return waiting
            demand = waiting.demand
            assert demand.profile is not None  # _waiting refuses pods without one
            slot = state.node_slot(node)
            if slot < 0:
                return self._refuse(
                    "unknown_node",
                    pod,
                    f"Node {node!r} is not a node of the power tree the extender knows (the "
                    f"API server has no such node, or it has no {self.config.nodes.domain_label}"
                    " label naming a leaf domain of the config); bind to a node filter passed",
                )
            free = int(state.node_gpus[slot] - state.node_used[slot])
            if free < demand.gpus:
                return self._refuse(
                    "no_gpus",
                    pod,
                    f"Node {node} has {free} free GPUs now and the pod needs {demand.gpus}; "
                    "retry: filter offers the nodes with room",
                )
            leaf = int(state.node_leaf[slot])
            # The exact check on the node's path; the plan's holds only when enabled.
            within_caps = fits_on_path(
                ledger=state.ledger, profile=demand.profile, caps=state.caps, path=state.paths[leaf]
            )
            if not within_caps or (self.reserve_plan and not self._view(demand).fits[leaf]):
                self._decided("bind", "over_cap")
                why = self._why_not(self._view(demand), leaf)
                return f"{why} (re-checked at bind; retry)"
            record = PodRecord(
                uid=pod.uid,
                namespace=pod.namespace,
                name=pod.name,
                node=node,
                service=demand.service,
                profile=demand.profile,
                gpus=demand.gpus,
                profile_key=demand.profile_key,
            )
            # Recorded before the API call so a concurrent bind sees this pod's watts, and
            # assumed so a relist before its watch event keeps it.
            state.assume(record)
        return record

    def _bound_already(self, pod: PodRef, existing: PodRecord, node: str) -> str:
        """The answer for a pod the state has bound: ``""`` when bound to ``node`` (a
        retried bind), else why not; call under the state lock."""
        if (existing.namespace, existing.name) != (pod.namespace, pod.name):
            return self._refuse(
                "uid_mismatch",
                pod,
                f"PodUID {pod.uid} is the UID of {existing.namespace}/{existing.name}, not of "
                "PodNamespace/PodName; send the namespace, name and UID of one pod",
            )
        if existing.node == node:
            self._decided("bind", "already_bound")
            return ""
        return self._refuse(
            "conflict",
            pod,
            f"the pod is already bound to {existing.node}; a pod is bound once",
        )

    def _waiting(self, pod: PodRef) -> PendingPod | str:
        """The pod waiting for a node that ``pod`` names, if it may be bound here; else
        the refusal. Call under the state lock."""
        state = self.state
        waiting = state.pending.get(pod.uid)
        if waiting is None:
            current = state.pending_uid_of(pod.namespace, pod.name)
            if current is not None:
                return self._refuse(
                    "uid_mismatch",
                    pod,
                    f"PodUID {pod.uid} is not the UID of {pod} (the API server's pod of that "
                    f"name is {current}: it was deleted and created again); bind the current "
                    "pod by its UID",
                )
            return self._refuse(
                "unknown_pod",
                pod,
                f"PodUID {pod.uid} is unknown to the extender: its mirror of the API server "
                "has no pod with this UID waiting for a node (never created, already bound or "
                "deleted, or not yet delivered by the watch); retry once the pod is pending",
            )
        demand = waiting.demand
        if (demand.pod.namespace, demand.pod.name) != (pod.namespace, pod.name):
            return self._refuse(
                "uid_mismatch",
                pod,
                f"PodUID {pod.uid} is the UID of {demand.pod}, not of PodNamespace/PodName; "
                "send the namespace, name and UID of one pod",
            )
        ours = self.config.scheduler.name
        if waiting.scheduler != ours:
            return self._refuse(
                "other_scheduler",
                pod,
                f"its spec.schedulerName is {waiting.scheduler!r}; this extender binds only "
                f"pods of {ours!r} (config scheduler.name): set the pod's schedulerName, or "
                "scheduler.name to the scheduler the extender runs beside",
            )
        if not demand.managed:
            gpu = self.config.nodes.gpu_resource
            return self._refuse(
                "unmanaged",
                pod,
                f"the pod is not managed by powercap (no {gpu} request, no powercap.io/ label "
                f"or annotation); request {gpu} or label it powercap.io/service, or send it to "
                "the extender only by managedResources",
            )
        if demand.rejected or demand.profile is None:
            self._decided("bind", "rejected_profile")
            return f"powercap: {demand.problem}"
        return waiting

    def _settle(self, pod: PodRef, *, deadline: float) -> str:
        """Settle a pod whose last Binding got no answer by reading where it is: bound
        there, its record stands (confirmed); not bound, the record goes and the bind
        goes on. ``""`` to go on, else the refusal (where it is cannot be read)."""
        # an API call: outside the state lock
        landed = self.binder.bound_node(pod, deadline=deadline)
        state = self.state
        with state.lock:
            record = state.pods.get(pod.uid)
            if record is None or pod.uid not in state.unsure:
                return ""  # the watch or a relist settled it meanwhile
            if landed is None:
                return self._refuse(
                    "binding_unknown",
                    pod,
                    f"its Binding to {record.node} got no answer and where the pod is cannot "
                    "be read now; it keeps its power until that is known: retry",
                )
            if landed == record.node:
                state.add_pod(record)  # created after all, as the watch will say
            else:
                state.remove_pod(pod.uid)  # not created (or bound by another: the watch says)
        return ""

    def _create_binding(self, pod: PodRef, node: str, record: PodRecord, *, deadline: float) -> str:
        try:
            self.binder.bind(pod, node, deadline=deadline)
        except BindError as exc:
            landed = self.binder.bound_node(pod, deadline=deadline) if exc.maybe_bound else ""
            if landed != node:
                if landed is None and self.state.mark_unsure(record):
                    # It may be bound: holding its power until that is read is safe,
                    # freeing power a bound pod draws is not.
                    self._decided("bind", "api_unknown")
                    return f"{exc}; whether the Binding was created is unknown: retry"
                self.state.unassume(record)
                self._decided("bind", "api_error")
                return str(exc)
            # The answer was lost, not the Binding.
        self.state.drop_pending(pod.uid)  # bound: no longer waiting (the watch agrees soon)
        self._decided("bind", "bound")
        return ""

    # --- preempt ------------------------------------------------------------------------------
    def preempt(self, args: ExtenderPreemptionArgs) -> dict[str, MetaVictims]:
        """The candidates on which evicting the given victims lets the pod fit."""
        victims = args.meta_victims()
        demand = self.demand(args.pod)
        if not demand.managed:
            self._decided("preempt", "unmanaged")
            return victims
        if demand.rejected or demand.profile is None:
            self._decided("preempt", "rejected_profile")
            return {}
        with self.state.lock:
            out = {
                node: meta
                for node, meta in victims.items()
                if self._fits_after_eviction(demand, node, meta)
            }
        self._decided("preempt", "some_kept" if out else "none_kept")
        return out

    def _fits_after_eviction(self, demand: Demand, node: str, meta: MetaVictims) -> bool:
        """Whether evicting ``meta``'s pods from ``node`` lets the pod fit there (GPUs and
        every cap on its path); call under the state lock. Only victims recorded on
        ``node`` free anything."""
        assert demand.profile is not None
        state = self.state
        slot = state.node_slot(node)
        if slot < 0:
            return False
        freed = np.zeros(state.grid.slots)
        freed_gpus = 0
        for victim in meta.pods:
            record = state.pods.get(victim.uid)
            if record is not None and record.node == node:
                freed += record.profile
                freed_gpus += record.gpus
        free = int(state.node_gpus[slot] - state.node_used[slot]) + freed_gpus
        if free < demand.gpus:
            return False
        path = state.paths[int(state.node_leaf[slot])]
        return fits_on_path(
            ledger=state.ledger, profile=demand.profile, caps=state.caps, path=path, freed=freed
        )

    def _decided(self, verb: str, outcome: str, count: int = 1) -> None:
        if self.telemetry is not None and count:
            self.telemetry.decided(verb, outcome, count)


def _pick(names: list[str], positions: NDArray[np.int64]) -> list[str]:
    """``names`` at ``positions``, at C speed."""
    if positions.size == 0:
        return []
    if positions.size == 1:
        return [names[int(positions[0])]]
    return list(itemgetter(*positions.tolist())(names))


def _texts_by(values: NDArray[np.int64], text: Callable[[int], str]) -> NDArray[np.object_]:
    """``text(v)`` for every value, made once per distinct value (an object array)."""
    distinct, inverse = np.unique(values, return_inverse=True)
    table = np.empty(distinct.size, dtype=object)
    table[:] = [text(v) for v in distinct.tolist()]
    out: NDArray[np.object_] = table[inverse]
    return out


def candidate_items(args: ExtenderArgs, positions: Sequence[int]) -> list[dict[str, Any]]:
    """The raw node objects at ``positions`` (answering a non-node-cache-capable scheduler)."""
    items = args.nodes.items if args.nodes is not None and args.nodes.items else []
    return [items[i] for i in positions]
