"""The cluster state every decision runs on: nodes, recorded pods and the ledger.

One :class:`ClusterState` per extender. The mirror (watch events), bind and the
planner all touch it, from different threads, so every read that must be consistent
and every change happens under :attr:`ClusterState.lock`.

A pod counts in the ledger (its profile under its node's leaf domain and all
ancestors, its GPUs on the node) while its node is known; a pod on a node not in
the tree yet is remembered and counted as soon as the node arrives.

Beside the recorded pods the state keeps the pods waiting for a node
(:attr:`ClusterState.pending`, as the mirror read them from the API server): the only
pods bind will bind. A pod the extender bound itself is *assumed* (:meth:`assume`), as
kube-scheduler's cache assumes pods, until the watch shows it bound: a relist that
still lists it unbound (:meth:`replace_pods`) keeps it for ``assumed_ttl_s``. An
assumed pod whose Binding call got no answer is also *unsure* (:meth:`mark_unsure`):
whether it is bound must be read before it is bound again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np
from numpy.typing import NDArray

from extender.cluster.pods import Demand
from placement.grid import Grid
from placement.ledger import Ledger
from placement.tree import PowerTree


@dataclass(frozen=True, slots=True)
class PodRecord:
    """A pod holding power and GPUs on a node."""

    uid: str
    namespace: str
    name: str
    node: str
    service: str | None
    profile: NDArray[np.float64]
    gpus: int
    profile_key: str = ""  # Demand.profile_key: which profile the pod was admitted at
    priority: int | None = None  # spec.priority (its PriorityClass value); None: absent


@dataclass(frozen=True, slots=True)
class PendingPod:
    """A pod the API server holds unbound: who it is (``demand.pod``), the scheduler it
    waits for (its ``spec.schedulerName``) and its demand, resolved when it was read."""

    demand: Demand
    scheduler: str

    @property
    def uid(self) -> str:
        return self.demand.pod.uid


@dataclass(frozen=True, slots=True)
class NodeRecord:
    name: str
    leaf: int  # index into the tree
    gpus: int
    idle_watts: float


# Candidate lists whose node slots are kept (ClusterState.node_slots): a pod's filter
# list, what it passed (its prioritize list), and the same for the pod before.
_LOOKUPS = 4


class ClusterState:
    """Nodes, pods and predicted watts per domain per slot.

    ``caps`` are the effective caps, ``cap × (1 − headroom)``: what admission checks.
    ``version`` changes on every change; ``topology_version`` only when nodes,
    services or caps change (what the planner re-plans on). ``clock`` (monotonic
    seconds) times assumed pods.
    """

    def __init__(
        self,
        grid: Grid,
        tree: PowerTree,
        headroom: float = 0.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lock = threading.RLock()
        self.clock = clock
        self.grid = grid
        self.tree = tree
        self.headroom = headroom
        self.caps: NDArray[np.float64] = tree.caps * (1.0 - headroom)
        # The caps as configured; set_caps (live carbon caps) never changes them, so a
        # message can say when a cap in force is lower than its configured value.
        self.configured_caps: NDArray[np.float64] = self.caps.copy()
        self.ledger = Ledger(tree, np.zeros(tree.size))
        self.is_leaf = np.zeros(tree.size, dtype=bool)
        self.is_leaf[tree.leaves] = True
        # Ancestors-or-self of every domain, root first: the levels a bind re-checks.
        self.paths: tuple[NDArray[np.int64], ...] = tree.paths
        # Domains by depth, for level-by-level passes down the tree.
        self.levels: list[NDArray[np.int64]] = list(tree.levels)
        self.slot_labels: tuple[str, ...] = tuple(grid.slot_label(t) for t in range(grid.slots))
        # Nodes live in parallel arrays indexed by slot; freed slots are reused.
        self._node_slot: dict[str, int] = {}
        self._nodes: list[NodeRecord | None] = []
        self._free_slots: list[int] = []
        # The slots of the last lists of names looked up (node_slots, note_slots), valid
        # while no node is added or removed: (node epoch, names, slots), newest last.
        self._node_epoch = 0
        self._lookups: list[tuple[int, list[str], NDArray[np.int64]]] = []
        self.node_leaf = np.full(0, -1, dtype=np.int64)
        self.node_gpus = np.zeros(0, dtype=np.int64)
        self.node_used = np.zeros(0, dtype=np.int64)
        # Never empty: an unknown name maps to slot -1, which must index something
        # (a free slot, leaf -1) for vectorised lookups that mask it out afterwards.
        self._grow()
        # Pods, by uid and by node name (the latter also for nodes not known yet).
        self.pods: dict[str, PodRecord] = {}
        self._pods_on: dict[str, set[str]] = {}
        # Pods this extender bound whose bound watch event has not arrived: uid → when;
        # and those of them whose Binding call ended without an answer.
        self.assumed: dict[str, float] = {}
        self.unsure: set[str] = set()
        # Pods waiting for a node, by uid and by (namespace, name). They hold nothing:
        # changing them leaves the version alone.
        self.pending: dict[str, PendingPod] = {}
        self._pending_names: dict[tuple[str, str], str] = {}
        # Replicas per (service, leaf domain), for following the plan, and a journal
        # of their changes so plan reservations update incrementally.
        self.service_index: dict[str, int] = {}
        self.counts = np.zeros((0, tree.size), dtype=np.int64)
        self.journal: list[tuple[str, int, int, int]] = []
        self.journal_base = 0
        self.journal_epoch = 0
        self._journal_max = 100_000
        # Measured overage of domains in breach, added on top of the predictions
        # (set_feedback); kept apart so it can be replaced, never accumulated.
        self.feedback: NDArray[np.float64] = np.zeros_like(self.ledger.load)
        self.version = 0
        self.topology_version = 0
        self.synced = False
        self.last_change = time.monotonic()
        self.topology_changed_at = self.last_change

    # --- nodes --------------------------------------------------------------------
    def _grow(self) -> None:
        size = max(16, 2 * len(self._nodes))
        extra = size - len(self._nodes)
        self.node_leaf = np.concatenate([self.node_leaf, np.full(extra, -1, dtype=np.int64)])
        self.node_gpus = np.concatenate([self.node_gpus, np.zeros(extra, dtype=np.int64)])
        self.node_used = np.concatenate([self.node_used, np.zeros(extra, dtype=np.int64)])
        self._free_slots.extend(range(size - 1, len(self._nodes) - 1, -1))
        self._nodes.extend([None] * extra)

    def _changed(self, topology: bool) -> None:
        self.version += 1
        self.last_change = time.monotonic()
        if topology:
            self.topology_version += 1
            self.topology_changed_at = self.last_change

    def _count(self, pod: PodRecord, slot: int, sign: int) -> None:
        leaf = int(self.node_leaf[slot])
        if sign > 0:
            self.ledger.add(pod.profile, leaf)
        else:
            self.ledger.remove(pod.profile, leaf)
        self.node_used[slot] += sign * pod.gpus
        if pod.service is not None:
            row = self.service_slot(pod.service)
            self.counts[row, leaf] += sign
            self._journal(pod.service, leaf, sign, int(self.counts[row, leaf]))

    def _journal(self, service: str, leaf: int, sign: int, count: int) -> None:
        self.journal.append((service, leaf, sign, count))
        if len(self.journal) > self._journal_max:
            drop = len(self.journal) // 2
            del self.journal[:drop]
            self.journal_base += drop

    def journal_since(self, cursor: tuple[int, int]) -> list[tuple[str, int, int, int]] | None:
        """Replica-count changes ``(service, leaf, sign, count after)`` since ``cursor``
        (from :meth:`journal_cursor`), or ``None`` when they are no longer all kept
        (the caller recomputes from :attr:`counts`)."""
        epoch, position = cursor
        if epoch != self.journal_epoch or position < self.journal_base:
            return None
        return self.journal[position - self.journal_base :]

    def journal_cursor(self) -> tuple[int, int]:
        return self.journal_epoch, self.journal_base + len(self.journal)

    def _attach(self, node: NodeRecord, slot: int, sign: int) -> None:
        """Count (sign 1) or uncount (-1) a node's idle draw and every pod on it."""
        if sign > 0:
            self.node_leaf[slot] = node.leaf
            self.node_gpus[slot] = node.gpus
            self.node_used[slot] = 0
        idle = np.full(self.grid.slots, sign * node.idle_watts)
        self.ledger.add_watts(idle, node.leaf)
        for uid in self._pods_on.get(node.name, ()):
            self._count(self.pods[uid], slot, sign)
        if sign < 0:
            self.node_leaf[slot] = -1
            self.node_gpus[slot] = 0
            self.node_used[slot] = 0

    def upsert_node(self, name: str, leaf: int, gpus: int, *, idle_watts: float = 0.0) -> bool:
        """Add a node under leaf domain ``leaf`` or update it; returns whether anything
        changed. Raises ``ValueError`` for a domain that is not a leaf."""
        if not (0 <= leaf < self.tree.size) or not self.is_leaf[leaf]:
            raise ValueError(f"node {name}: domain index {leaf} is not a leaf of the tree")
        record = NodeRecord(name, leaf, gpus, float(idle_watts))
        with self.lock:
            slot = self._node_slot.get(name)
            if slot is not None:
                old = self._nodes[slot]
                if old == record:
                    return False
                assert old is not None
                self._attach(old, slot, -1)
            else:
                if not self._free_slots:
                    self._grow()
                slot = self._free_slots.pop()
                self._node_slot[name] = slot
                self._node_epoch += 1
            self._nodes[slot] = record
            self._attach(record, slot, 1)
            self._changed(topology=True)
            return True

    def remove_node(self, name: str) -> bool:
        """Forget a node (its pods stay remembered, uncounted, until they go)."""
        with self.lock:
            slot = self._node_slot.pop(name, None)
            if slot is None:
                return False
            self._node_epoch += 1
            node = self._nodes[slot]
            assert node is not None
            self._attach(node, slot, -1)
            self._nodes[slot] = None
            self._free_slots.append(slot)
            self._changed(topology=True)
            return True

    def node(self, name: str) -> NodeRecord | None:
        slot = self._node_slot.get(name)
        return None if slot is None else self._nodes[slot]

    def node_slot(self, name: str) -> int:
        """Index of ``name`` into the node arrays, -1 when unknown."""
        return self._node_slot.get(name, -1)

    def node_slots(self, names: Sequence[str]) -> NDArray[np.int64]:
        """:meth:`node_slot` for many names at once (read-only). Call under the lock.

        The answers for the last few lists are kept until a node is added or removed:
        kube-scheduler asks prioritize about exactly the nodes filter passed, in that
        order (:meth:`note_slots`), and may send a filter list again; comparing two lists
        of 20,000 names costs a fraction of looking each one up (a new request's names
        are new strings whose hashes are not computed yet). A list in another order is
        looked up anew."""
        epoch = self._node_epoch
        for known_epoch, known, slots in reversed(self._lookups):
            if known_epoch == epoch and len(known) == len(names) and known == names:
                return slots
        found = np.fromiter(
            map(self._node_slot.get, names, repeat(-1)), dtype=np.int64, count=len(names)
        )
        self.note_slots(list(names), found)
        return found

    def note_slots(self, names: list[str], slots: NDArray[np.int64]) -> None:
        """Remember that ``names`` (a list no one changes afterwards) are at ``slots``, as
        :meth:`node_slots` found them, so a request naming them again skips the lookup.
        Call under the lock."""
        slots.setflags(write=False)
        epoch = self._node_epoch
        kept = [entry for entry in self._lookups[1 - _LOOKUPS :] if entry[0] == epoch]
        self._lookups = [*kept, (epoch, names, slots)]

    def nodes(self) -> list[NodeRecord]:
        """Known nodes, in slot order."""
        with self.lock:
            return [n for n in self._nodes if n is not None]

    def node_names(self) -> list[str]:
        with self.lock:
            return [n.name for n in self._nodes if n is not None]

    def free_gpus(self, name: str) -> int:
        """GPUs not held by recorded pods on ``name`` (0 when unknown)."""
        with self.lock:
            slot = self._node_slot.get(name)
            if slot is None:
                return 0
            return int(self.node_gpus[slot] - self.node_used[slot])

    # --- services and pods ---------------------------------------------------------
    def service_slot(self, service: str) -> int:
        """Row of ``service`` in :attr:`counts`, registering it on first sight."""
        row = self.service_index.get(service)
        if row is None:
            row = len(self.service_index)
            self.service_index[service] = row
            if row >= self.counts.shape[0]:
                grown = np.zeros((max(8, 2 * self.counts.shape[0]), self.tree.size), np.int64)
                grown[: self.counts.shape[0]] = self.counts
                self.counts = grown
        return row

    def service_row(self, service: str | None) -> int:
        """Row of ``service`` in :attr:`counts`, -1 when no pod of it was ever seen."""
        return -1 if service is None else self.service_index.get(service, -1)

    def add_pod(self, pod: PodRecord) -> bool:
        """Record a pod as the API server reports it bound; a pod already recorded on
        the same node is left as is (returns ``False``), one recorded elsewhere is
        moved. Either way an assumed pod is confirmed."""
        with self.lock:
            self.assumed.pop(pod.uid, None)
            self.unsure.discard(pod.uid)
            return self._record(pod)

    def assume(self, pod: PodRecord) -> bool:
        """Record a pod this extender is binding, before its Binding exists: it holds
        its power and GPUs as a bound pod does, and a relist keeps it (see
        :meth:`replace_pods`) until :meth:`add_pod` confirms it or :meth:`remove_pod`
        drops it. Returns what :meth:`add_pod` does."""
        with self.lock:
            changed = self._record(pod)
            self.assumed[pod.uid] = self.clock()
            return changed

    def unassume(self, pod: PodRecord) -> bool:
        """Undo :meth:`assume` of ``pod`` (its Binding was not created): forget it,
        unless the watch has confirmed it bound or recorded it anew meanwhile. Returns
        whether it was forgotten."""
        with self.lock:
            if pod.uid not in self.assumed or self.pods.get(pod.uid) is not pod:
                return False
            self.remove_pod(pod.uid)
            return True

    def expire_assumed(self, *, ttl_s: float) -> list[str]:
        """Forget the pods assumed more than ``ttl_s`` ago that the mirror still shows
        waiting for a node: their Binding never landed (one that lands reaches the watch
        and confirms the pod), and holding their power longer would keep others out
        with nothing left to retry them. Unsure pods included: an API server that
        answered nothing for ``ttl_s`` did not bind them. Returns the UIDs forgotten."""
        with self.lock:
            if not self.assumed:
                return []
            now = self.clock()
            stale = [
                uid
                for uid, since in self.assumed.items()
                if now - since >= ttl_s and uid in self.pending
            ]
            for uid in stale:
                self.remove_pod(uid)
            return stale

    def mark_unsure(self, pod: PodRecord) -> bool:
        """Note that the Binding of assumed ``pod`` got no answer (it may exist or not);
        ``False`` when the watch has settled the pod meanwhile."""
        with self.lock:
            if pod.uid not in self.assumed or self.pods.get(pod.uid) is not pod:
                return False
            self.unsure.add(pod.uid)
            return True

    def _record(self, pod: PodRecord) -> bool:
        """:meth:`add_pod` without touching :attr:`assumed`; call under the lock."""
        old = self.pods.get(pod.uid)
        if old is not None:
            if old.node == pod.node and old.gpus == pod.gpus:
                return False
            self._drop(old)
        if pod.service is not None:
            self.service_slot(pod.service)
        self.pods[pod.uid] = pod
        self._pods_on.setdefault(pod.node, set()).add(pod.uid)
        slot = self._node_slot.get(pod.node)
        if slot is not None:
            self._count(pod, slot, 1)
        self._changed(topology=False)
        return True

    def _drop(self, pod: PodRecord) -> None:
        del self.pods[pod.uid]
        on_node = self._pods_on.get(pod.node)
        if on_node is not None:
            on_node.discard(pod.uid)
            if not on_node:
                del self._pods_on[pod.node]
        slot = self._node_slot.get(pod.node)
        if slot is not None:
            self._count(pod, slot, -1)

    def remove_pod(self, uid: str) -> PodRecord | None:
        """Forget a pod (assumed or not); returns its record, or ``None`` if it was not
        recorded."""
        with self.lock:
            self.assumed.pop(uid, None)
            self.unsure.discard(uid)
            pod = self.pods.get(uid)
            if pod is None:
                return None
            self._drop(pod)
            self._changed(topology=False)
            return pod

    def pods_on(self, node: str) -> list[PodRecord]:
        with self.lock:
            return [self.pods[u] for u in self._pods_on.get(node, ())]

    # --- pods waiting for a node ------------------------------------------------------
    def set_pending(self, pod: PendingPod) -> None:
        """Remember a pod waiting for a node (replacing what was known of its uid)."""
        ref = pod.demand.pod
        with self.lock:
            self.drop_pending(pod.uid)
            self.pending[pod.uid] = pod
            self._pending_names[(ref.namespace, ref.name)] = pod.uid

    def drop_pending(self, uid: str) -> None:
        """Forget a waiting pod (bound, terminal or deleted); unknown uids are ignored."""
        with self.lock:
            old = self.pending.pop(uid, None)
            if old is not None:
                key = (old.demand.pod.namespace, old.demand.pod.name)
                if self._pending_names.get(key) == uid:
                    del self._pending_names[key]

    def pending_uid_of(self, namespace: str, name: str) -> str | None:
        """The uid of the waiting pod ``namespace/name``, or ``None``."""
        with self.lock:
            return self._pending_names.get((namespace, name))

    def replace_pods(
        self, bound: Iterable[PodRecord], pending: Iterable[PendingPod], *, assumed_ttl_s: float
    ) -> None:
        """Make the pods exactly a fresh list's (a relist): ``bound`` recorded, ``pending``
        waiting, every other pod forgotten — except an assumed pod the list still shows
        waiting, assumed less than ``assumed_ttl_s`` ago. The list was read before its
        Binding landed; forgetting it would free power a bind has just taken."""
        records = {p.uid: p for p in bound}
        waiting = list(pending)
        with self.lock:
            listed_waiting = {p.uid for p in waiting}
            now = self.clock()
            for uid in [u for u in self.pods if u not in records]:
                since = self.assumed.get(uid)
                if since is not None and uid in listed_waiting and now - since < assumed_ttl_s:
                    continue
                self.remove_pod(uid)
            for record in records.values():
                self.add_pod(record)
            self.pending.clear()
            self._pending_names.clear()
            for p in waiting:
                self.set_pending(p)

    # --- whole-state operations ------------------------------------------------------
    def replace(self, nodes: Iterable[NodeRecord], pods: Iterable[PodRecord]) -> None:
        """Make the state exactly ``nodes`` and ``pods``, rebuilding the ledger from
        scratch so float drift from many add/remove pairs is shed. Nothing stays
        assumed; the mirror's relist of pods is :meth:`replace_pods`."""
        nodes = list(nodes)
        pods = list(pods)
        with self.lock:
            before = {n.name: n for n in self.nodes()}
            topology_changed = before != {n.name: n for n in nodes}
            self._node_slot.clear()
            self._node_epoch += 1
            self._nodes = []
            self._free_slots = []
            self.node_leaf = np.full(0, -1, dtype=np.int64)
            self.node_gpus = np.zeros(0, dtype=np.int64)
            self.node_used = np.zeros(0, dtype=np.int64)
            self._grow()
            self.pods.clear()
            self._pods_on.clear()
            self.assumed.clear()
            self.unsure.clear()
            self.counts[:] = 0
            self.journal_epoch += 1  # counts reset without journal entries
            self.journal.clear()
            self.ledger.load[:] = self.feedback
            for n in nodes:
                self.upsert_node(n.name, n.leaf, n.gpus, idle_watts=n.idle_watts)
            for p in pods:
                self.add_pod(p)
            self._changed(topology=topology_changed)

    def set_caps(self, caps: NDArray[np.float64]) -> None:
        """New raw caps (domains × T), e.g. a carbon-aware schedule; headroom applies."""
        with self.lock:
            self.tree = self.tree.with_caps(caps)
            self.ledger.tree = self.tree
            self.caps = self.tree.caps * (1.0 - self.headroom)
            self._changed(topology=True)

    def mark_changed(self) -> None:
        """Something the plan depends on outside the state changed (the demand): a
        topology change, so the planner re-plans after its debounce."""
        with self.lock:
            self._changed(topology=True)

    def set_configured_caps(self, caps: NDArray[np.float64]) -> None:
        """New configured caps (domains × T), e.g. a PowerDomain's cap edited: they are
        the caps in force and the configured ones at once; headroom applies."""
        with self.lock:
            self.set_caps(caps)
            self.configured_caps = self.caps.copy()

    def set_feedback(self, adds: NDArray[np.float64]) -> bool:
        """Make the controller's feedback exactly ``adds`` (domains × T, with ``add_watts``
        semantics: each domain's amount raises it and every ancestor, as
        :func:`placement.control.breach.feedback_watts` returns them per slot), replacing whatever
        feedback was there before. All zeros removes it. Returns whether the ledger
        changed."""
        adds = np.asarray(adds, dtype=np.float64)
        if adds.shape != self.feedback.shape:
            raise ValueError(f"expected {self.feedback.shape} watts, got {adds.shape}")
        # Domain a rises by the amounts of a and of every domain below it.
        new = self.tree.membership.astype(np.float64) @ np.clip(adds, 0.0, None)
        with self.lock:
            if np.array_equal(new, self.feedback):
                return False
            self.ledger.load += new - self.feedback
            self.feedback = new
            self._changed(topology=False)
            return True

    def predicted_watts(self, slot: int) -> NDArray[np.float64]:
        """Per domain, the predicted load of ``slot`` without the controller's feedback."""
        with self.lock:
            return self.ledger.load[:, slot] - self.feedback[:, slot]

    def headroom_watts(self) -> NDArray[np.float64]:
        """Per domain: the least ``cap − load`` over slots (negative when over)."""
        with self.lock:
            return (self.caps - self.ledger.load).min(axis=1)
